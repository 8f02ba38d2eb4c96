"""Input pipelines: TFDS datasets read with grain, transforms, tokenisation, offline datasets.

Imports nothing else of ours. Batches are dicts of numpy arrays with a leading batch axis.
"""

from input_pipeline.datasets import DatasetNotFoundError, get_source
from input_pipeline.digits import Digits, prepare_digits
from input_pipeline.loader import make_eval_batches, make_train_loader
from input_pipeline.mixup import mixup_cutmix
from input_pipeline.partial_labels import PartiallyLabelled
from input_pipeline.preprocess import OPS as PREPROCESS_OPS
from input_pipeline.preprocess import Keep, parse_preprocess
from input_pipeline.synthetic_seq2seq import SYNTHETIC_TASKS, Seq2SeqTaskSource

__all__ = [
    "DatasetNotFoundError", "Digits", "Keep", "PREPROCESS_OPS", "PartiallyLabelled",
    "SYNTHETIC_TASKS", "Seq2SeqTaskSource",
    "get_source", "make_eval_batches", "make_train_loader", "mixup_cutmix", "parse_preprocess",
    "prepare_digits",
]
