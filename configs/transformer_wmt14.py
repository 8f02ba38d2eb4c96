"""Transformer-base (or -big) on WMT14 English→German, as in "Attention Is All You Need".

Command:
  python -m trainer.main --config=configs/transformer_wmt14.py --workdir=workdirs/wmt14_base \
      --config.dataset.data_dir=/data/tfds
  python -m trainer.main --config=configs/transformer_wmt14.py:big --workdir=workdirs/wmt14_big \
      --config.dataset.data_dir=/data/tfds

Data: TFDS ``wmt14_translate/de-en`` prepared as ArrayRecord (see the README); one shared
sentencepiece vocabulary of 32k pieces trained on the training split on first use and stored
at ``dataset.vocab_path``. Evaluation on newstest2014 (the ``test`` split).
Model and recipe (paper, §5): d_model 512, 6+6 layers, 8 heads, d_ff 2048, dropout 0.1,
label smoothing 0.1, Adam β=(0.9, 0.98) ε=1e-9, inverse-square-root schedule with 4,000
warmup steps peaking at 512^-0.5·4000^-0.5 ≈ 7e-4, 100k steps, the last 5 checkpoints
averaged.
Big (``:big``; paper, Table 3 and §6.1): d_model 1024, 16 heads, d_ff 4096, dropout 0.3 (the
paper's English→German value), a peak of 1024^-0.5·4000^-0.5 ≈ 4.9e-4, 300k steps, the last 20
checkpoints averaged, 600 steps apart (the paper's 10 minutes of its 3.5 days). With this
vocabulary base has 60.5M parameters and big 209.1M (the paper: 65M and 213M), so a big
checkpoint with its Adam moments is 2.5 GB and the 20 kept about 50 GB (counted from the
model's shapes: ``jax.eval_shape`` of ``trainer.tasks.seq2seq.build_transformer(...).init``).
Batch: Flax's examples/wmt batch, 256 rows of 256 tokens with several sentence pairs packed
per row, with the paper's peak learning rate: about 2.4x the paper's ~25k source + 25k target
tokens per batch (an estimate from packing sentences of assumed WMT-like lengths, not a
count on WMT14 itself).
Other deviations from the paper:
- bfloat16 computation with float32 parameters (``mixed_precision``).
- The last checkpoints are averaged as in the paper (§6.1), but they are a fixed number of
  steps apart, where the paper's were 10 minutes apart. The final evaluation logs both the
  last model (``eval/*``) and the average (``eval_averaged/*``, with ``eval_averaged/bleu``,
  the paper's figure); decode with the average by ``python -m trainer.generate
  --workdir=... --average_last=5`` (big: 20).
- BLEU decodes at most input length + 50 tokens, as the paper does (``bleu_extra_length``),
  and never more than 256 (``dataset.max_length``, the position table's length); an output
  cut at its limit has no EOS. The input length counts the source's EOS.
- Training drops every sentence pair whose source or target, EOS included, is longer than
  256 sentencepiece tokens (``dataset.max_length``), as Flax's example does (its
  ``length_filter``); the paper does not say how it treats long pairs.
- Evaluation keeps every newstest2014 pair (Flax's example drops the overlong ones there
  too) but truncates a side longer than 256 tokens to 255 tokens and EOS: such a pair's
  source reaches the model cut, and its BLEU reference is decoded from the cut target, as
  are the eval loss and accuracies. How many pairs this affects was not counted (no data).
- A 32k sentencepiece unigram vocabulary rather than the paper's ~37k shared BPE.
- BLEU is sacreBLEU's detokenised corpus BLEU (its default 13a tokeniser) against references
  that went through the sentencepiece round trip, not the paper's tokenised BLEU.
- The attention's query/key/value/output projections have biases (the paper and Flax's
  example have none).
- The training loss has no normalising constant for label smoothing, so it bottoms out near
  1.36 nats rather than 0 as Flax's does (see ``trainer/tasks/seq2seq.py``); the eval loss is
  unsmoothed.
Hardware and time: the paper: 12 hours on 8 P100 GPUs (big: 3.5 days); a TPU v3-8 takes a few
hours for base.
Expected result: the paper reports 27.3 BLEU on newstest2014 for base and 28.4 for big
(Table 2); Flax's WMT example reports about 25.5 BLEU after a shorter TPU run. Not
reproduced here (no data, no accelerator); tests/trainer/test_wmt_smoke.py runs base for a few
steps on offline mock data.
"""

from configs.common import base_config, transformer_model

# What differs between the paper's two sizes (Table 3; §6.1 for the averaging; §5.4 for the
# big model's English→German dropout). The learning rate follows d_model (§5.3).
SIZES = {
    "base": dict(d_model=512, dropout_rate=0.1, num_train_steps=100_000,
                 checkpoint_every_steps=1_250, average_last_checkpoints=5),
    "big": dict(d_model=1024, dropout_rate=0.3, num_train_steps=300_000,
                checkpoint_every_steps=600, average_last_checkpoints=20),
}


def get_config(arg: str | None = None):
    size_name = arg or "base"
    if size_name not in SIZES:
        raise ValueError(f"config argument {size_name!r} is not one of {tuple(SIZES)}")
    size = SIZES[size_name]
    config = base_config()
    config.task = "seq2seq"
    config.model = transformer_model(
        size_name, vocab_size=32_000, max_length=256, share_embeddings=True,
        logits_via_embedding=True, norm_placement="post", dropout_rate=size["dropout_rate"])
    config.dataset.name = "wmt14_translate/de-en"
    config.dataset.train_split = "train"
    config.dataset.eval_split = "test"
    config.dataset.source_key = "en"
    config.dataset.target_key = "de"
    config.dataset.vocab_path = "workdirs/wmt14_spm32k.model"
    config.dataset.vocab_size = 32_000
    config.dataset.vocab_train_sentences = 1_000_000
    config.dataset.max_length = 256
    # Rows of 256 tokens packed with several sentence pairs each (as Flax's WMT example does):
    # batches by token count rather than by sentence count.
    config.pack_examples = True
    config.batch_size = 256
    config.eval_batch_size = 256
    config.num_train_steps = size["num_train_steps"]
    config.log_every_steps = 100
    config.eval_every_steps = 5_000
    # The paper's model is the average of the last 5 (base) or 20 (big) checkpoints, written
    # at 10-minute intervals (§6.1): about 1,400 steps of base's 12 hours and 600 of big's
    # 3.5 days; 1,250 and 600 divide the runs' lengths.
    config.checkpoint_every_steps = size["checkpoint_every_steps"]
    config.keep_checkpoints = size["average_last_checkpoints"]
    config.average_last_checkpoints = size["average_last_checkpoints"]
    config.label_smoothing = 0.1
    # BLEU of beam-4 decodes (α = 0.6, as in the paper) on the first eval batches; the full
    # newstest2014 (3,003 sentences) is 12 batches of 256.
    config.bleu_eval_batches = 12
    config.bleu_strategy = "beam"
    config.bleu_extra_length = 50  # §6.1: "maximum output length ... input length + 50"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = size["d_model"] ** -0.5 * 4000**-0.5
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.98
    config.optimizer.eps = 1e-9
    config.optimizer.grad_clip_norm = 0.0
    config.schedule.name = "warmup_rsqrt"
    config.schedule.warmup_steps = 4_000
    config.mixed_precision = True
    return config
