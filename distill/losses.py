"""Distillation objectives: pure functions of logits, hidden states and attention maps.

Every function computes in float32 and puts the teacher behind ``jax.lax.stop_gradient``, so
a teacher passed by mistake with gradients attached still receives none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jnp.ndarray
REDUCTIONS = ("batchmean", "mean", "none")
DEIT_TYPES = ("hard", "soft", "none")


def _teacher(x: Array) -> Array:
    return jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))


def _weighted_mean(values: Array, weights: Array | None) -> Array:
    if weights is None:
        return jnp.mean(values)
    weights = jnp.asarray(weights, jnp.float32)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def _cross_entropy(logits: Array, labels: Array, label_smoothing: float) -> Array:
    """Per-example CE ``[B]`` to integer labels, with optional label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(jnp.asarray(logits, jnp.float32), targets)


def soft_distillation_loss(student_logits: Array, teacher_logits: Array, temperature: float,
                           reduction: str = "batchmean", weights: Array | None = None) -> Array:
    """Hinton et al. (2015): T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)).

    KL = Σ_k p_t,k (log p_t,k − log p_s,k) over the K classes of each example.

    Args:
      student_logits, teacher_logits: ``[batch, K]``.
      temperature: T > 0; the T² factor keeps gradient magnitudes comparable across T.
      reduction: ``"batchmean"`` — sum over classes, mean over examples (Hinton; PyTorch's
        ``kl_div(..., reduction="batchmean")``); ``"mean"`` — mean over all B·K elements
        (what DeiT's code computes), i.e. ``batchmean / K``; ``"none"`` — ``[batch]``.
      weights: optional ``[batch]`` example weights (0 for padding).
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; expected one of {REDUCTIONS}")
    log_p_student = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32) / temperature)
    log_p_teacher = jax.nn.log_softmax(_teacher(teacher_logits) / temperature)
    per_example = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    per_example = per_example * temperature**2
    if reduction == "none":
        return per_example
    loss = _weighted_mean(per_example, weights)
    return loss / student_logits.shape[-1] if reduction == "mean" else loss


def hinton_loss(student_logits: Array, teacher_logits: Array, labels: Array, *,
                temperature: float, alpha: float, reduction: str = "batchmean",
                label_smoothing: float = 0.0, weights: Array | None = None) -> Array:
    """(1 − α) · CE(student, labels) + α · soft_distillation_loss (T² scaled)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    label_loss = _weighted_mean(_cross_entropy(student_logits, labels, label_smoothing),
                                weights)
    distill = soft_distillation_loss(student_logits, teacher_logits, temperature, reduction,
                                     weights)
    return (1.0 - alpha) * label_loss + alpha * distill


def hard_distillation_loss(student_logits: Array, teacher_logits: Array, labels: Array, *,
                           label_smoothing: float = 0.0, weights: Array | None = None) -> Array:
    """DeiT (Touvron et al., 2021): ½ CE(student, labels) + ½ CE(student, argmax teacher)."""
    teacher_labels = jnp.argmax(_teacher(teacher_logits), axis=-1)
    label_loss = _cross_entropy(student_logits, labels, label_smoothing)
    teacher_loss = _cross_entropy(student_logits, teacher_labels, 0.0)
    return _weighted_mean(0.5 * label_loss + 0.5 * teacher_loss, weights)


def deit_distillation_token_loss(cls_logits: Array, dist_logits: Array, teacher_logits: Array,
                                 labels: Array, *, distillation_type: str = "hard",
                                 alpha: float = 0.5, temperature: float = 1.0,
                                 label_smoothing: float = 0.0,
                                 weights: Array | None = None) -> Array:
    """DeiT's distillation token: the class head learns from labels, the distillation head
    (never the class head) from the teacher.

    loss = (1 − α) · CE(cls_logits, labels) + α · D(dist_logits, teacher), with D the CE to the
    teacher's argmax (``"hard"``) or the T²-scaled KL (``"soft"``, DeiT's element-mean).
    ``"none"`` trains the class head on labels alone.
    """
    if distillation_type not in DEIT_TYPES:
        raise ValueError(f"distillation_type={distillation_type!r} is not supported; expected "
                         f"one of {DEIT_TYPES}")
    label_loss = _weighted_mean(_cross_entropy(cls_logits, labels, label_smoothing), weights)
    if distillation_type == "none":
        return label_loss
    if distillation_type == "hard":
        teacher_labels = jnp.argmax(_teacher(teacher_logits), axis=-1)
        distill = _weighted_mean(_cross_entropy(dist_logits, teacher_labels, 0.0), weights)
    else:
        distill = soft_distillation_loss(dist_logits, teacher_logits, temperature, "mean",
                                         weights)
    return (1.0 - alpha) * label_loss + alpha * distill


def deit_inference_logits(cls_logits: Array, dist_logits: Array) -> Array:
    """DeiT at inference: the mean of the two heads' logits."""
    return (cls_logits + dist_logits) / 2


def _token_weights(mask: Array | None, shape: tuple[int, ...]) -> Array:
    return jnp.ones(shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)


def hidden_state_mse(student_hidden: Array, teacher_hidden: Array,
                     mask: Array | None = None) -> Array:
    """TinyBERT-style feature loss: mean over valid tokens of the mean squared error per token.

    ``student_hidden`` ``[batch, length, D]`` must already have the teacher's width ``D``
    (project it with ``distill.FeatureProjection`` when widths differ); ``mask``
    ``[batch, length]`` marks real tokens.
    """
    student = jnp.asarray(student_hidden, jnp.float32)
    teacher = _teacher(teacher_hidden)
    if student.shape != teacher.shape:
        raise ValueError(f"student hidden states {student.shape} must match the teacher's "
                         f"{teacher.shape}; project the student first (FeatureProjection)")
    per_token = jnp.mean((student - teacher) ** 2, axis=-1)
    return _weighted_mean(per_token, _token_weights(mask, per_token.shape))


def hidden_state_cosine(student_hidden: Array, teacher_hidden: Array,
                        mask: Array | None = None, eps: float = 1e-8) -> Array:
    """1 − cosine similarity per token, averaged over valid tokens (shapes as ``hidden_state_mse``)."""
    student = jnp.asarray(student_hidden, jnp.float32)
    teacher = _teacher(teacher_hidden)
    if student.shape != teacher.shape:
        raise ValueError(f"student hidden states {student.shape} must match the teacher's "
                         f"{teacher.shape}; project the student first (FeatureProjection)")
    cosine = jnp.sum(student * teacher, -1) / jnp.maximum(
        jnp.linalg.norm(student, axis=-1) * jnp.linalg.norm(teacher, axis=-1), eps)
    return _weighted_mean(1.0 - cosine, _token_weights(mask, cosine.shape))


def attention_kl(student_probs: Array, teacher_probs: Array, mask: Array | None = None,
                 eps: float = 1e-12) -> Array:
    """MiniLM-style attention transfer: KL(teacher ‖ student) between attention distributions.

    Args:
      student_probs, teacher_probs: ``[batch, heads, q_length, kv_length]`` rows summing to 1
        (rows of fully masked queries may be all zero).
      mask: ``[batch, q_length]`` valid query positions.

    Returns the mean over heads and valid query rows; zero probabilities contribute nothing
    (0·log 0 = 0), so masked keys never produce NaN.
    """
    student = jnp.asarray(student_probs, jnp.float32)
    teacher = _teacher(teacher_probs)
    if student.shape != teacher.shape:
        raise ValueError(f"attention maps differ in shape: student {student.shape}, teacher "
                         f"{teacher.shape} (heads and lengths must match)")
    per_row = jnp.sum(
        jax.scipy.special.xlogy(teacher, teacher)
        - jax.scipy.special.xlogy(teacher, jnp.maximum(student, eps)), axis=-1)
    weights = _token_weights(mask, (student.shape[0], student.shape[2]))[:, None, :]
    weights = jnp.broadcast_to(weights, per_row.shape)
    return _weighted_mean(per_row, weights)


def top1_agreement(student_logits: Array, teacher_logits: Array,
                   weights: Array | None = None) -> Array:
    """Fraction of examples where student and teacher predict the same class."""
    same = jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1)
    return _weighted_mean(same.astype(jnp.float32), weights)
