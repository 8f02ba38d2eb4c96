"""Distillation objectives: pure functions of logits, hidden states and attention maps.

Conventions shared by every function here:

- Inputs are cast to float32 before any arithmetic, so bfloat16 activations from a
  mixed-precision model do not lose the small differences a KL is made of.
- Teacher inputs go through ``jax.lax.stop_gradient``: a teacher passed with gradients attached
  (e.g. a teacher that is itself being fine-tuned in the same step) still receives none.
- Logit losses accept ``[batch, classes]`` and, more generally, ``[..., classes]`` (e.g.
  ``[batch, length, vocab]`` for token-level distillation); "example" then means one position of
  the leading axes. ``weights`` (``[...]``, 0 for padding) turns every mean into a weighted mean,
  so padded evaluation batches give the same number as the unpadded batch.
- ``label_weights`` (``[...]``, 1 labelled, 0 unlabelled; fractional after mixup) multiply
  the label term of each example, while the teacher term covers every example: distillation
  on a transfer set of which only a part is labelled (Hinton et al., 2015, §2; "function
  matching" on unlabelled images, Beyer et al., 2022). The mean is still over all examples,
  so each labelled example weighs as much as it would in a fully labelled batch.
- Hyper-parameters (``temperature``, ``alpha``, ``label_smoothing``) are checked when they are
  Python numbers; traced values (e.g. a temperature schedule inside ``jit``) are not checked.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

REDUCTIONS = ("batchmean", "mean", "none")
DISTILLATION_TYPES = ("hard", "soft", "none")


# ---------------------------------------------------------------------------------------------
# Helpers.


def _float32(x: ArrayLike) -> Array:
    return jnp.asarray(x, jnp.float32)


def _teacher(x: ArrayLike) -> Array:
    return jax.lax.stop_gradient(_float32(x))


def _is_static(value: object) -> bool:
    # Under jit a schedule-driven hyper-parameter is a tracer; comparing it would raise a
    # confusing concretization error instead of the ValueError below, so it is left unchecked.
    return not isinstance(value, jax.core.Tracer)


def _check_temperature(temperature: float) -> None:
    if _is_static(temperature) and not float(temperature) > 0:  # `not >` also rejects NaN
        raise ValueError(f"temperature={temperature!r} is not allowed; expected a number > 0")


def _check_fraction(name: str, value: float, *, include_one: bool = True) -> None:
    if not _is_static(value):
        return
    ok = 0.0 <= float(value) <= 1.0 if include_one else 0.0 <= float(value) < 1.0
    if not ok:
        bounds = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"{name}={value!r} is not allowed; expected a number in {bounds}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; expected one of {REDUCTIONS}")


def _check_same_shape(what: str, student: Array, teacher: Array, hint: str = "") -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student shape {student.shape} differs from the teacher's "
                         f"{teacher.shape}{hint}")


def _checked_weights(name: str, weights: ArrayLike, shape: tuple[int, ...]) -> Array:
    """``weights`` as float32 broadcast to ``shape``, which it must have (or size-1 axes in
    its place): broadcasting aligns trailing axes, so per-example weights ``[B]`` against
    per-token values ``[B, L]`` would weigh positions (when B == L) instead of raising."""
    weights = _float32(weights)
    fits = weights.ndim == len(shape) and all(
        w in (1, v) for w, v in zip(weights.shape, shape, strict=True))
    if weights.ndim and not fits:  # a scalar weighs every entry alike
        raise ValueError(f"{name} has shape {weights.shape}; expected {shape} (one weight per "
                         "entry of the leading axes) or size-1 axes in its place")
    return jnp.broadcast_to(weights, shape)


def _weighted_mean(values: Array, weights: ArrayLike | None, name: str = "weights") -> Array:
    """Mean of ``values``, or ``Σ w·v / Σ w`` with ``weights`` (the argument ``name``) of
    ``values``'s shape (size-1 axes broadcast)."""
    if weights is None:
        return jnp.mean(values)
    weights = _checked_weights(name, weights, values.shape)
    # `where` keeps an inf/NaN at a padded position (weight 0) out of the sum: 0 · inf is NaN.
    total = jnp.sum(jnp.where(weights != 0, values * weights, 0.0))
    # A fully padded batch (Σ w = 0) gives 0 rather than 0/0.
    return total / jnp.maximum(jnp.sum(weights), jnp.finfo(jnp.float32).tiny)


def _labelled(label_term: Array, label_weights: ArrayLike | None) -> Array:
    """The per-example label term, zero where ``label_weights`` is 0 (unlabelled)."""
    if label_weights is None:
        return label_term
    return label_term * _checked_weights("label_weights", label_weights, label_term.shape)


def _cross_entropy(logits: ArrayLike, labels: ArrayLike, label_smoothing: float) -> Array:
    """Per-example softmax cross-entropy ``[...]``.

    ``labels`` is either integer class ids ``[...]`` or a target distribution ``[..., K]``
    (mixup / cutmix targets). With label smoothing ε the target becomes (1 − ε)·y + ε/K.
    """
    _check_fraction("label_smoothing", label_smoothing, include_one=False)
    logits = _float32(logits)
    labels = jnp.asarray(labels)
    if labels.shape == logits.shape:
        targets = _float32(labels)
    elif labels.shape == logits.shape[:-1] and jnp.issubdtype(labels.dtype, jnp.integer):
        if _is_static(label_smoothing) and label_smoothing == 0:
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    else:
        raise ValueError(f"labels of shape {labels.shape} and dtype {labels.dtype} do not fit "
                         f"logits {logits.shape}; expected integer ids {logits.shape[:-1]} or "
                         f"a distribution {logits.shape}")
    if not (_is_static(label_smoothing) and label_smoothing == 0):
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


# ---------------------------------------------------------------------------------------------
# Logit distillation.


def soft_distillation_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float,
    reduction: str = "batchmean",
    weights: ArrayLike | None = None,
) -> Array:
    """Hinton et al. (2015) soft-target loss: T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)).

    Per example, with p_t = softmax(z_t / T) and p_s = softmax(z_s / T) over the K classes::

        ℓ = T² · Σ_k p_t,k · (log p_t,k − log p_s,k)

    The gradient is ∂ℓ/∂z_s = T · (p_s − p_t): it pulls the student towards the teacher, and
    the T² factor keeps its size comparable across temperatures (the soft targets' gradients
    scale as 1/T² otherwise).

    Args:
      student_logits: ``[batch, K]`` (or ``[..., K]``).
      teacher_logits: same shape; receives no gradient.
      temperature: T > 0.
      reduction: ``"batchmean"``: sum over classes, mean over examples (Hinton; PyTorch's
        ``kl_div(reduction="batchmean")``). ``"mean"``: mean over all B·K elements, i.e.
        ``batchmean / K``, which is what DeiT's code computes (``reduction="sum"`` divided by
        ``numel``). ``"none"``: the per-example loss ``[batch]`` (``[...]``).
      weights: optional ``[batch]`` (``[...]``) example weights, 0 for padding; ignored by
        ``"none"``.

    Returns:
      A float32 scalar, or ``[batch]`` for ``reduction="none"``.
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    student = _float32(student_logits)
    teacher = _teacher(teacher_logits)
    _check_same_shape("soft_distillation_loss logits", student, teacher)
    log_p_student = jax.nn.log_softmax(student / temperature, axis=-1)
    log_p_teacher = jax.nn.log_softmax(teacher / temperature, axis=-1)
    p_teacher = jnp.exp(log_p_teacher)
    # Classes the teacher rules out (logit -inf, e.g. a masked vocabulary) contribute 0, not
    # 0 · (-inf) = NaN.
    terms = jnp.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), 0.0)
    per_example = jnp.sum(terms, axis=-1) * temperature**2
    if reduction == "none":
        return per_example
    loss = _weighted_mean(per_example, weights)
    return loss / student.shape[-1] if reduction == "mean" else loss


def hinton_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: float,
    alpha: float,
    reduction: str = "batchmean",
    label_smoothing: float = 0.0,
    weights: ArrayLike | None = None,
    label_weights: ArrayLike | None = None,
) -> Array:
    """Hinton et al. (2015): (1 − α) · CE(z_s, y) + α · T² · KL(p_t ‖ p_s).

    Args:
      student_logits, teacher_logits: ``[batch, K]`` (or ``[..., K]``).
      labels: integer ids ``[batch]``, or target distributions ``[batch, K]`` (mixup).
      temperature: T > 0 of the soft term only; the label term uses T = 1.
      alpha: weight of the soft term, in [0, 1].
      reduction: of the soft term, as in ``soft_distillation_loss``. The label term is always
        a mean over examples, so ``"mean"`` reproduces DeiT's soft distillation
        (KL averaged over B·K elements, CE over B examples); ``"none"`` returns ``[batch]``
        with the soft term summed over classes.
      label_smoothing: ε in [0, 1) for the label term.
      weights: optional ``[batch]`` example weights, 0 for padding.
      label_weights: optional ``[batch]``, 0 for unlabelled examples: multiplies each
        example's label term.
    """
    _check_fraction("alpha", alpha)
    _check_reduction(reduction)
    label_term = _cross_entropy(student_logits, labels, label_smoothing)
    soft_term = soft_distillation_loss(student_logits, teacher_logits, temperature, "none")
    if reduction == "mean":
        soft_term = soft_term / jnp.shape(student_logits)[-1]
    per_example = (1.0 - alpha) * _labelled(label_term, label_weights) + alpha * soft_term
    return per_example if reduction == "none" else _weighted_mean(per_example, weights)


def hard_distillation_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    label_smoothing: float = 0.0,
    *,
    weights: ArrayLike | None = None,
    label_weights: ArrayLike | None = None,
) -> Array:
    """DeiT hard distillation (Touvron et al., 2021), for a single head::

        ½ · CE(z_s, y) + ½ · CE(z_s, argmax z_t)

    Label smoothing applies to the true labels only; DeiT trains on the teacher's hard
    decision as is.

    Args:
      student_logits, teacher_logits: ``[batch, K]`` (or ``[..., K]``).
      labels: integer ids ``[batch]``, or target distributions ``[batch, K]`` (mixup).
      label_smoothing: ε in [0, 1).
      weights: optional ``[batch]`` example weights, 0 for padding.
      label_weights: optional ``[batch]``, 0 for unlabelled examples: multiplies each
        example's label term.

    Returns:
      A float32 scalar.
    """
    student = _float32(student_logits)
    teacher = _teacher(teacher_logits)
    _check_same_shape("hard_distillation_loss logits", student, teacher)
    label_term = _cross_entropy(student, labels, label_smoothing)
    teacher_term = _cross_entropy(student, jnp.argmax(teacher, axis=-1), 0.0)
    return _weighted_mean(0.5 * _labelled(label_term, label_weights) + 0.5 * teacher_term,
                          weights)


def deit_distillation_token_loss(
    cls_logits: ArrayLike,
    dist_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    distillation_type: str,
    alpha: float = 0.5,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    weights: ArrayLike | None = None,
    label_weights: ArrayLike | None = None,
) -> Array:
    """DeiT with a distillation token: the class head learns from the labels, the distillation
    head (never the class head) from the teacher::

        (1 − α) · CE(cls_logits, y) + α · D(dist_logits, z_t)

    with D = CE(dist_logits, argmax z_t) for ``"hard"`` and D = T² · KL(p_t ‖ p_s) averaged
    over all B·K elements (DeiT's ``reduction="sum" / numel``) for ``"soft"``. ``"none"``
    returns the label term alone, unweighted by α (the distillation head then gets no
    gradient: a model trained without a teacher should have no distillation token).

    Args:
      cls_logits, dist_logits: the two heads' ``[batch, K]``.
      teacher_logits: ``[batch, K]``; receives no gradient.
      labels: integer ids ``[batch]``, or target distributions ``[batch, K]`` (mixup).
      distillation_type: ``"hard"``, ``"soft"`` or ``"none"``.
      alpha: weight of the teacher term, in [0, 1] (DeiT: 0.5).
      temperature: T > 0, used by ``"soft"`` only (DeiT: 1).
      label_smoothing: ε in [0, 1) for the label term.
      weights: optional ``[batch]`` example weights, 0 for padding.
      label_weights: optional ``[batch]``, 0 for unlabelled examples: multiplies each
        example's label term.
    """
    if distillation_type not in DISTILLATION_TYPES:
        raise ValueError(f"distillation_type={distillation_type!r} is not supported; expected "
                         f"one of {DISTILLATION_TYPES}")
    _check_fraction("alpha", alpha)
    label_loss = _weighted_mean(
        _labelled(_cross_entropy(cls_logits, labels, label_smoothing), label_weights), weights)
    if distillation_type == "none":
        return label_loss
    student = _float32(dist_logits)
    teacher = _teacher(teacher_logits)
    _check_same_shape("deit_distillation_token_loss dist_logits", student, teacher)
    if distillation_type == "hard":
        teacher_term = _cross_entropy(student, jnp.argmax(teacher, axis=-1), 0.0)
        teacher_loss = _weighted_mean(teacher_term, weights)
    else:
        teacher_loss = soft_distillation_loss(student, teacher, temperature, "mean", weights)
    return (1.0 - alpha) * label_loss + alpha * teacher_loss


def deit_inference_logits(cls_logits: ArrayLike, dist_logits: ArrayLike) -> Array:
    """DeiT's prediction at test time: (cls_logits + dist_logits) / 2, both ``[batch, K]``.

    DeiT averages the logits, not the softmax probabilities.
    """
    cls_logits, dist_logits = _float32(cls_logits), _float32(dist_logits)
    _check_same_shape("deit_inference_logits", cls_logits, dist_logits)
    return (cls_logits + dist_logits) / 2


def top1_agreement(
    student_logits: ArrayLike, teacher_logits: ArrayLike, mask: ArrayLike | None = None
) -> Array:
    """Fraction of examples on which student and teacher predict the same class.

    Args:
      student_logits, teacher_logits: ``[batch, K]`` (or ``[..., K]``).
      mask: optional ``[batch]`` (``[...]``), 0 for padding.

    Returns:
      A float32 scalar in [0, 1].
    """
    student = _float32(student_logits)
    teacher = _teacher(teacher_logits)
    _check_same_shape("top1_agreement logits", student, teacher)
    same = jnp.argmax(student, axis=-1) == jnp.argmax(teacher, axis=-1)
    return _weighted_mean(same.astype(jnp.float32), mask, "mask")


# ---------------------------------------------------------------------------------------------
# Feature distillation.

_PROJECT_HINT = ("; when the widths differ pass projection= (e.g. a distill.FeatureProjection "
                 "applied with the student's parameters)")


def _student_features(student_hidden: ArrayLike, projection: Callable | None) -> Array:
    if projection is None:
        return _float32(student_hidden)
    if not callable(projection):
        # Catches hidden_state_mse(s, t, mask) written for a signature without `projection`.
        raise TypeError(f"projection must be a callable [..., D_student] -> [..., D_teacher] "
                        f"or None, got {type(projection).__name__}; pass the mask as mask=")
    return _float32(projection(student_hidden))


def hidden_state_mse(
    student_hidden: ArrayLike,
    teacher_hidden: ArrayLike,
    projection: Callable[[Array], Array] | None = None,
    mask: ArrayLike | None = None,
) -> Array:
    """TinyBERT's hidden-state loss: MSE(h_s W, h_t), averaged over features and valid tokens::

        Σ_{b,l} m_bl · (1/D_t) · Σ_d (proj(h_s)_bld − h_t,bld)²  /  Σ_{b,l} m_bl

    Args:
      student_hidden: ``[batch, length, D_s]`` (or ``[..., D_s]``).
      teacher_hidden: ``[batch, length, D_t]``; receives no gradient.
      projection: when D_s ≠ D_t, a callable mapping the student to the teacher's width,
        ``[..., D_s] -> [..., D_t]``. It is learned with the student: use
        ``distill.FeatureProjection`` and keep its parameters in the *student's* train state,
        e.g. ``lambda h: FeatureProjection(768).apply({"params": params["proj"]}, h)`` inside
        the loss function being differentiated, so that the gradient reaches them. It is
        discarded after distillation.
      mask: optional ``[batch, length]`` (``[...]``), 1 for real tokens, 0 for padding.

    Returns:
      A float32 scalar.
    """
    student = _student_features(student_hidden, projection)
    teacher = _teacher(teacher_hidden)
    _check_same_shape("hidden_state_mse", student, teacher, _PROJECT_HINT)
    per_token = jnp.mean((student - teacher) ** 2, axis=-1)
    return _weighted_mean(per_token, mask, "mask")


def hidden_state_cosine(
    student_hidden: ArrayLike,
    teacher_hidden: ArrayLike,
    projection: Callable[[Array], Array] | None = None,
    mask: ArrayLike | None = None,
    eps: float = 1e-8,
) -> Array:
    """1 − cosine similarity per token, averaged over valid tokens::

        Σ_{b,l} m_bl · (1 − ⟨s_bl, t_bl⟩ / max(‖s_bl‖·‖t_bl‖, ε))  /  Σ_{b,l} m_bl

    with s = proj(h_s) and t = h_t. Scale-free, so it ignores the norm mismatch between a
    small student's and a large teacher's residual streams. Arguments as ``hidden_state_mse``;
    the result lies in [0, 2].
    """
    student = _student_features(student_hidden, projection)
    teacher = _teacher(teacher_hidden)
    _check_same_shape("hidden_state_cosine", student, teacher, _PROJECT_HINT)
    # The norm is floored inside the sqrt: ‖0‖ has an infinite derivative, which would turn
    # an all-zero (padded) student token into a NaN gradient even under a zero mask.
    norms = jnp.sqrt(jnp.maximum(jnp.sum(student**2, -1), eps**2)) * jnp.sqrt(
        jnp.maximum(jnp.sum(teacher**2, -1), eps**2))
    cosine = jnp.sum(student * teacher, axis=-1) / jnp.maximum(norms, eps)
    return _weighted_mean(1.0 - cosine, mask, "mask")


def attention_kl(
    student_probs: ArrayLike,
    teacher_probs: ArrayLike,
    mask: ArrayLike | None = None,
    eps: float = 1e-12,
) -> Array:
    """MiniLM's self-attention transfer: KL(teacher ‖ student) per attention row::

        KL_bhq = Σ_k a_t,bhqk · (log a_t,bhqk − log max(a_s,bhqk, ε))

    averaged over batch, heads and valid query positions. Zero teacher probabilities (masked
    keys, fully masked query rows) contribute exactly 0 (0 · log 0 = 0, via ``xlogy``) and
    never a NaN; a zero student probability under a non-zero teacher one is floored at ε.
    MiniLM's value-relation loss is the same function applied to softmax(V Vᵀ / √d).

    Args:
      student_probs, teacher_probs: ``[batch, heads, q_length, kv_length]``, rows summing to 1
        (rows of fully masked queries may be all zero). Head counts must match (MiniLM
        distils the last layer with equal head counts).
      mask: optional ``[batch, q_length]`` valid query positions (or ``[batch, heads or 1,
        q_length]``).

    Returns:
      A float32 scalar; 0 when the maps are equal.
    """
    student = _float32(student_probs)
    teacher = _teacher(teacher_probs)
    _check_same_shape("attention_kl attention maps", student, teacher)
    xlogy = jax.scipy.special.xlogy
    per_row = jnp.sum(xlogy(teacher, teacher) - xlogy(teacher, jnp.maximum(student, eps)), -1)
    if mask is not None:
        mask = _float32(mask)
        if mask.ndim == 2 and per_row.ndim == 3:  # [batch, q_length] -> [batch, 1, q_length]
            mask = mask[:, None, :]
    return _weighted_mean(per_row, mask, "mask")
