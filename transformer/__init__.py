"""Transformer building blocks and the encoder–decoder model (imports nothing of ours)."""

from transformer.attention import (
    ATTENTION_IMPLEMENTATIONS,
    MultiHeadAttention,
    attention_weights,
    dot_product_attention,
)
from transformer.embeddings import AddPositionEmbedding, sinusoidal_table
from transformer.layers import ACTIVATIONS, DecoderBlock, EncoderBlock, MlpBlock
from transformer.masks import (
    PAD_ID,
    combine_masks,
    make_attention_mask,
    make_causal_mask,
    make_padding_mask,
    make_segment_mask,
)
from transformer.model import (
    EOS_ID,
    TRANSFORMER_CONFIGS,
    Transformer,
    create_transformer,
    shift_right,
)
from transformer.stack import REMAT_POLICIES, Decoder, Encoder

__all__ = [
    "ACTIVATIONS", "ATTENTION_IMPLEMENTATIONS", "AddPositionEmbedding", "Decoder",
    "DecoderBlock", "EOS_ID", "Encoder", "EncoderBlock", "MlpBlock", "MultiHeadAttention",
    "PAD_ID", "REMAT_POLICIES", "TRANSFORMER_CONFIGS", "Transformer", "attention_weights",
    "combine_masks", "create_transformer", "dot_product_attention", "make_attention_mask",
    "make_causal_mask", "make_padding_mask", "make_segment_mask", "shift_right", "sinusoidal_table",
]

from transformer.pretrained import (  # noqa: E402
    BertEmbeddings,
    BertEncoder,
    bert_from_config,
    bert_intermediates,
    bert_params_from_state_dict,
    encode_sentences,
    load_bert,
    load_tokenizer,
    mean_pool,
    minilm_model_dir,
    sentence_embeddings,
)

__all__ += [
    "BertEmbeddings", "BertEncoder", "bert_from_config", "bert_intermediates",
    "bert_params_from_state_dict", "encode_sentences", "load_bert", "load_tokenizer",
    "mean_pool", "minilm_model_dir", "sentence_embeddings",
]
