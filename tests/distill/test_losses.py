"""Distillation losses against hand-computed values, gradients and invariances.

Expected values are written out by hand or computed with the small numpy references below,
which share no code with ``distill.losses``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distill

STUDENT = jnp.array([[0.0, 0.0]])  # student probabilities [0.5, 0.5]
TEACHER = jnp.array([[math.log(3.0), 0.0]])  # teacher probabilities [0.75, 0.25]
KL_HAND = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL([.75, .25] || [.5, .5])


def np_softmax(logits, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def np_kl_per_example(student, teacher, temperature):
    p_s, p_t = np_softmax(student, temperature), np_softmax(teacher, temperature)
    return temperature**2 * np.sum(p_t * np.log(p_t / p_s), -1)


def np_ce(logits, targets):
    return -np.sum(targets * np.log(np_softmax(logits)), -1)


def random_logits(seed, *shape):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=shape) * 2, jnp.float32)


# --- soft_distillation_loss -------------------------------------------------------------------


def test_soft_loss_hand_computed():
    assert KL_HAND == pytest.approx(0.1308120, rel=1e-6)
    got = distill.soft_distillation_loss(STUDENT, TEACHER, 1.0)
    assert got.shape == () and got.dtype == jnp.float32
    assert float(got) == pytest.approx(KL_HAND, rel=1e-6)


def test_soft_loss_at_temperature_two_is_scaled_by_four():
    # At T=2 the teacher's soft labels are softmax([ln 3 / 2, 0]) = [√3, 1] / (√3 + 1).
    p = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    kl = p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5)
    got = distill.soft_distillation_loss(STUDENT, TEACHER, 2.0)
    assert float(got) == pytest.approx(4 * kl, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_loss_reductions_against_numpy(temperature):
    s, t = random_logits(0, 4, 5), random_logits(1, 4, 5)
    per_example = np_kl_per_example(s, t, temperature)
    none = distill.soft_distillation_loss(s, t, temperature, "none")
    assert none.shape == (4,)
    np.testing.assert_allclose(none, per_example, rtol=1e-5)
    batchmean = distill.soft_distillation_loss(s, t, temperature, "batchmean")
    mean = distill.soft_distillation_loss(s, t, temperature, "mean")
    assert float(batchmean) == pytest.approx(per_example.mean(), rel=1e-5)
    assert float(mean) == pytest.approx(per_example.sum() / (4 * 5), rel=1e-5)


def test_batchmean_and_mean_differ_by_exactly_the_number_of_classes():
    for classes in (2, 5, 10):
        s, t = random_logits(2, 4, classes), random_logits(3, 4, classes)
        batchmean = float(distill.soft_distillation_loss(s, t, 2.0, "batchmean"))
        mean = float(distill.soft_distillation_loss(s, t, 2.0, "mean"))
        assert batchmean == pytest.approx(classes * mean, rel=1e-6)


def test_gradient_pushes_student_towards_teacher():
    # ∂/∂z_s of T²·KL is T·(p_s − p_t): negative for the class the teacher prefers.
    grad = jax.grad(lambda s: distill.soft_distillation_loss(s, TEACHER, 1.0))(STUDENT)
    np.testing.assert_allclose(grad, [[0.5 - 0.75, 0.5 - 0.25]], rtol=1e-6)
    grad_t2 = jax.grad(lambda s: distill.soft_distillation_loss(s, TEACHER, 2.0))(STUDENT)
    p = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    np.testing.assert_allclose(grad_t2, [2.0 * (0.5 - p)], rtol=1e-5)
    # On random logits the gradient has the sign of p_s − p_t everywhere.
    s, t = random_logits(4, 4, 5), random_logits(5, 4, 5)
    grad = jax.grad(lambda x: distill.soft_distillation_loss(x, t, 1.5, "none").sum())(s)
    np.testing.assert_allclose(grad, 1.5 * (np_softmax(s, 1.5) - np_softmax(t, 1.5)),
                               rtol=1e-4, atol=1e-6)
    assert np.all(np.sign(grad) == np.sign(np_softmax(s, 1.5) - np_softmax(t, 1.5)))
    # A small step against the gradient lowers the loss.
    loss = lambda x: distill.soft_distillation_loss(x, t, 1.5)
    assert float(loss(s - 0.1 * grad)) < float(loss(s))


def test_temperature_squared_keeps_gradients_comparable_across_temperatures():
    # Hinton et al. §2.1: for large T and zero-mean logits the T²-scaled loss tends to
    # Σ(z_t − z_s)² / (2K) and its gradient to (z_s − z_t) / K, independent of T.
    z_t = jnp.array([[1.0, -1.0, 0.5, -0.5]])
    z_s = jnp.array([[-0.3, 0.2, 0.4, -0.3]])
    classes = 4
    for temperature in (50.0, 100.0):
        loss = float(distill.soft_distillation_loss(z_s, z_t, temperature))
        assert loss == pytest.approx(float(jnp.sum((z_t - z_s) ** 2)) / (2 * classes), rel=2e-2)
    # The gradient T·(p_s − p_t) stays accurate in float32 even where the loss value, a KL of
    # order 1/T², has lost digits to cancellation (T = 500).
    for temperature in (50.0, 500.0):
        grad = jax.grad(distill.soft_distillation_loss)(z_s, z_t, temperature)
        # O(z/T) corrections: about 1% of the largest entry at T=50.
        np.testing.assert_allclose(grad, (z_s - z_t) / classes, rtol=0, atol=3e-3)
    # Without the T² factor the gradient would shrink as 1/T²; with it, T=5 and T=10 agree
    # to first order.
    g5 = jax.grad(lambda s: distill.soft_distillation_loss(s, z_t, 5.0))(z_s)
    g10 = jax.grad(lambda s: distill.soft_distillation_loss(s, z_t, 10.0))(z_s)
    assert float(jnp.linalg.norm(g10) / jnp.linalg.norm(g5)) == pytest.approx(1.0, abs=0.05)


def test_zero_loss_when_student_equals_teacher():
    logits = random_logits(6, 4, 5)
    for temperature in (0.5, 1.0, 3.0):
        assert float(distill.soft_distillation_loss(logits, logits, temperature)) == (
            pytest.approx(0.0, abs=1e-6))
    # Softmax ignores a per-example shift of the logits.
    shifted = logits + jnp.arange(4.0)[:, None]
    assert float(distill.soft_distillation_loss(shifted, logits, 2.0)) == pytest.approx(
        0.0, abs=1e-5)


def test_teacher_classes_with_minus_infinite_logits_give_finite_loss():
    teacher = jnp.array([[math.log(3.0), 0.0, -jnp.inf]])  # [.75, .25, 0]
    student = jnp.array([[0.0, 0.0, -jnp.inf]])
    assert float(distill.soft_distillation_loss(student, teacher, 1.0)) == pytest.approx(
        KL_HAND, rel=1e-6)
    student = jnp.zeros((1, 3))  # [1/3, 1/3, 1/3]
    expected = 0.75 * math.log(0.75 * 3) + 0.25 * math.log(0.25 * 3)
    assert float(distill.soft_distillation_loss(student, teacher, 1.0)) == pytest.approx(
        expected, rel=1e-6)
    grad = jax.grad(lambda s: distill.soft_distillation_loss(s, teacher, 1.0))(student)
    assert np.all(np.isfinite(grad))


def test_weights_ignore_padded_examples():
    s, t = random_logits(7, 2, 5), random_logits(8, 2, 5)
    padded_s = jnp.concatenate([s, jnp.full((2, 5), jnp.nan)])  # garbage in the padding
    padded_t = jnp.concatenate([t, jnp.zeros((2, 5))])
    weights = jnp.array([1, 1, 0, 0])
    for reduction in ("batchmean", "mean"):
        expected = float(distill.soft_distillation_loss(s, t, 2.0, reduction))
        got = float(distill.soft_distillation_loss(padded_s, padded_t, 2.0, reduction, weights))
        assert got == pytest.approx(expected, rel=1e-6)
    empty = distill.soft_distillation_loss(s, t, 2.0, weights=jnp.zeros(2))
    assert float(empty) == 0.0


def test_token_level_logits_with_a_length_axis():
    # [batch, length, vocab] with a [batch, length] padding mask: same as the flat valid tokens.
    s, t = random_logits(9, 2, 3, 5), random_logits(10, 2, 3, 5)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    flat = np_kl_per_example(s, t, 2.0)[np.asarray(mask, bool)]
    got = distill.soft_distillation_loss(s, t, 2.0, weights=mask)
    assert float(got) == pytest.approx(flat.mean(), rel=1e-5)
    assert distill.soft_distillation_loss(s, t, 2.0, "none").shape == (2, 3)


def test_computes_in_float32_from_bfloat16_inputs():
    s, t = random_logits(11, 4, 5), random_logits(12, 4, 5)
    s16, t16 = s.astype(jnp.bfloat16), t.astype(jnp.bfloat16)
    got = distill.soft_distillation_loss(s16, t16, 2.0)
    assert got.dtype == jnp.float32
    reference = np_kl_per_example(np.asarray(s16, np.float32), np.asarray(t16, np.float32), 2.0)
    assert float(got) == pytest.approx(reference.mean(), rel=1e-5)
    assert distill.hinton_loss(s16, t16, jnp.zeros(4, jnp.int32), temperature=2.0,
                               alpha=0.5).dtype == jnp.float32


def test_works_under_jit_with_a_traced_temperature():
    s, t = random_logits(13, 4, 5), random_logits(14, 4, 5)
    scheduled = jax.jit(distill.soft_distillation_loss)(s, t, 3.0)
    assert float(scheduled) == pytest.approx(np_kl_per_example(s, t, 3.0).mean(), rel=1e-5)


# --- Hinton, hard (DeiT), distillation token ----------------------------------------------------


def test_hinton_mixes_label_and_soft_losses():
    ce = -math.log(0.5)
    got = distill.hinton_loss(STUDENT, TEACHER, jnp.array([1]), temperature=1.0, alpha=0.3)
    assert float(got) == pytest.approx(0.7 * ce + 0.3 * KL_HAND, rel=1e-6)
    assert float(distill.hinton_loss(STUDENT, TEACHER, jnp.array([1]), temperature=1.0,
                                     alpha=1.0)) == pytest.approx(KL_HAND, rel=1e-6)
    assert float(distill.hinton_loss(STUDENT, TEACHER, jnp.array([1]), temperature=1.0,
                                     alpha=0.0)) == pytest.approx(ce, rel=1e-6)


def test_hinton_label_smoothing_and_reductions():
    student = jnp.array([[math.log(4.0), 0.0]])  # [.8, .2]
    # ε = 0.2 over K = 2 classes: label 1 becomes [0.1, 0.9].
    ce = -(0.1 * math.log(0.8) + 0.9 * math.log(0.2))
    kl = 0.75 * math.log(0.75 / 0.8) + 0.25 * math.log(0.25 / 0.2)
    got = distill.hinton_loss(student, TEACHER, jnp.array([1]), temperature=1.0, alpha=0.4,
                              label_smoothing=0.2)
    assert float(got) == pytest.approx(0.6 * ce + 0.4 * kl, rel=1e-6)
    # "mean" divides only the soft term by K (DeiT): the label term stays a per-example mean.
    got = distill.hinton_loss(student, TEACHER, jnp.array([1]), temperature=1.0, alpha=0.4,
                              reduction="mean", label_smoothing=0.2)
    assert float(got) == pytest.approx(0.6 * ce + 0.4 * kl / 2, rel=1e-6)
    s, t = random_logits(15, 4, 5), random_logits(16, 4, 5)
    labels = jnp.array([0, 2, 1, 4])
    none = distill.hinton_loss(s, t, labels, temperature=2.0, alpha=0.25, reduction="none")
    expected = 0.75 * np_ce(s, np.eye(5)[labels]) + 0.25 * np_kl_per_example(s, t, 2.0)
    np.testing.assert_allclose(none, expected, rtol=1e-5)


def test_hinton_accepts_mixup_target_distributions():
    s, t = random_logits(17, 4, 5), random_logits(18, 4, 5)
    labels = jnp.array([0, 3, 1, 4])
    one_hot = jax.nn.one_hot(labels, 5)
    by_ids = distill.hinton_loss(s, t, labels, temperature=2.0, alpha=0.5)
    by_dist = distill.hinton_loss(s, t, one_hot, temperature=2.0, alpha=0.5)
    assert float(by_dist) == pytest.approx(float(by_ids), rel=1e-6)
    mixed = jnp.array([[0.6, 0.4, 0.0, 0.0, 0.0]] * 4)
    expected = (0.5 * np_ce(s, np.asarray(mixed)).mean()
                + 0.5 * np_kl_per_example(s, t, 2.0).mean())
    got = distill.hinton_loss(s, t, mixed, temperature=2.0, alpha=0.5)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_hard_distillation_uses_teacher_argmax():
    student = jnp.log(jnp.array([[0.2, 0.3, 0.5]]))
    teacher = jnp.array([[0.0, 5.0, 1.0]])  # argmax 1
    got = distill.hard_distillation_loss(student, teacher, jnp.array([2]))
    assert float(got) == pytest.approx(0.5 * -math.log(0.5) + 0.5 * -math.log(0.3), rel=1e-6)
    # Smoothing (ε = 0.3, K = 3: label 2 -> [.1, .1, .8]) touches the true label only.
    smoothed = -(0.1 * math.log(0.2) + 0.1 * math.log(0.3) + 0.8 * math.log(0.5))
    got = distill.hard_distillation_loss(student, teacher, jnp.array([2]), label_smoothing=0.3)
    assert float(got) == pytest.approx(0.5 * smoothed + 0.5 * -math.log(0.3), rel=1e-6)
    # The hard loss depends on the teacher only through its argmax.
    assert float(distill.hard_distillation_loss(student, teacher * 100, jnp.array([2]))) == (
        pytest.approx(0.5 * -math.log(0.5) + 0.5 * -math.log(0.3), rel=1e-6))


def test_deit_token_loss_hand_computed():
    cls_logits = jnp.log(jnp.array([[0.2, 0.3, 0.5]]))
    dist_logits = jnp.log(jnp.array([[0.6, 0.3, 0.1]]))
    teacher = jnp.array([[0.0, 2.0, 1.0]])  # argmax 1
    labels = jnp.array([2])
    hard = distill.deit_distillation_token_loss(cls_logits, dist_logits, teacher, labels,
                                                distillation_type="hard", alpha=0.25)
    assert float(hard) == pytest.approx(0.75 * -math.log(0.5) + 0.25 * -math.log(0.3),
                                        rel=1e-6)
    p_t = np_softmax(teacher)[0]
    kl = np.sum(p_t * np.log(p_t / np.array([0.6, 0.3, 0.1])))
    soft = distill.deit_distillation_token_loss(cls_logits, dist_logits, teacher, labels,
                                                distillation_type="soft", alpha=0.25)
    # DeiT's soft term is T²·KL summed and divided by numel = B·K = 3.
    assert float(soft) == pytest.approx(0.75 * -math.log(0.5) + 0.25 * kl / 3, rel=1e-5)
    none = distill.deit_distillation_token_loss(cls_logits, dist_logits, teacher, labels,
                                                distillation_type="none")
    assert float(none) == pytest.approx(-math.log(0.5), rel=1e-6)
    np.testing.assert_allclose(
        distill.deit_inference_logits(jnp.array([[1.0, 3.0]]), jnp.array([[3.0, -1.0]])),
        [[2.0, 1.0]])


def test_deit_token_loss_sends_teacher_signal_only_to_distillation_head():
    cls_logits, dist_logits, teacher = (random_logits(seed, 4, 5) for seed in (19, 20, 21))
    labels = jnp.array([0, 1, 2, 4])
    for kind in ("hard", "soft"):
        loss = lambda c, d, a, kind=kind: distill.deit_distillation_token_loss(
            c, d, teacher, labels, distillation_type=kind, alpha=a, temperature=2.0)
        cls_grad, dist_grad = jax.grad(loss, argnums=(0, 1))(cls_logits, dist_logits, 1.0)
        np.testing.assert_array_equal(cls_grad, 0.0)  # class head: no teacher gradient
        assert np.any(np.asarray(dist_grad) != 0)
        cls_grad, dist_grad = jax.grad(loss, argnums=(0, 1))(cls_logits, dist_logits, 0.0)
        np.testing.assert_array_equal(dist_grad, 0.0)  # distillation head: no label gradient
        assert np.any(np.asarray(cls_grad) != 0)
        half = loss(cls_logits, dist_logits, 0.5)
        assert float(half) == pytest.approx(
            0.5 * float(loss(cls_logits, dist_logits, 0.0))
            + 0.5 * float(loss(cls_logits, dist_logits, 1.0)), rel=1e-6)


def test_label_weights_restrict_the_label_term_to_labelled_examples():
    """Transfer-set distillation: labels of unlabelled examples (weight 0) change nothing; each
    example's label term is multiplied by its weight, and the mean is over all examples."""
    s, t = random_logits(26, 4, 5), random_logits(27, 4, 5)
    labels = jnp.array([0, 2, 1, 4])
    relabelled = jnp.array([0, 2, 3, 3])  # differs only where the weight is 0
    weights = jnp.array([1.0, 1.0, 0.0, 0.0])
    ce = np_ce(s, np.eye(5)[labels])
    kl = np_kl_per_example(s, t, 2.0)
    teacher_ce = np_ce(s, np.eye(5)[np.argmax(np.asarray(t), -1)])
    cases = {
        "hinton": (lambda y: distill.hinton_loss(s, t, y, temperature=2.0, alpha=0.25,
                                                 label_weights=weights),
                   0.75 * ce[:2].sum() / 4 + 0.25 * kl.mean()),
        "hard": (lambda y: distill.hard_distillation_loss(s, t, y, label_weights=weights),
                 0.5 * ce[:2].sum() / 4 + 0.5 * teacher_ce.mean()),
        "deit_token": (lambda y: distill.deit_distillation_token_loss(
            s, s, t, y, distillation_type="hard", alpha=0.25, label_weights=weights),
            0.75 * ce[:2].sum() / 4 + 0.25 * teacher_ce.mean()),
    }
    for name, (loss, expected) in cases.items():
        assert float(loss(labels)) == pytest.approx(expected, rel=1e-5), name
        assert float(loss(relabelled)) == pytest.approx(expected, rel=1e-5), name
    # All ones is the ordinary loss; padding weights multiply the label weights.
    assert float(distill.hinton_loss(s, t, labels, temperature=2.0, alpha=0.25,
                                     label_weights=jnp.ones(4))) == pytest.approx(
        float(distill.hinton_loss(s, t, labels, temperature=2.0, alpha=0.25)), rel=1e-6)
    padded = distill.hinton_loss(s, t, labels, temperature=2.0, alpha=0.25,
                                 weights=jnp.array([1.0, 0.0, 1.0, 1.0]), label_weights=weights)
    assert float(padded) == pytest.approx(0.75 * ce[0] / 3 + 0.25 * kl[[0, 2, 3]].mean(),
                                          rel=1e-5)
    per_example = distill.hinton_loss(s, t, labels, temperature=2.0, alpha=0.25,
                                      reduction="none", label_weights=weights)
    np.testing.assert_allclose(per_example, 0.75 * ce * np.asarray(weights) + 0.25 * kl,
                               rtol=1e-5)


def test_no_gradient_reaches_the_teacher():
    s, t = random_logits(22, 4, 5), random_logits(23, 4, 5)
    labels = jnp.array([0, 1, 3, 4])
    losses = {
        "soft": lambda t: distill.soft_distillation_loss(s, t, 2.0),
        "hinton": lambda t: distill.hinton_loss(s, t, labels, temperature=2.0, alpha=0.7),
        "deit_soft": lambda t: distill.deit_distillation_token_loss(
            s, s, t, labels, distillation_type="soft", alpha=1.0),
    }
    # No hard-label loss or top1_agreement here: their teacher enters only through argmax,
    # whose gradient is zero with or without stop_gradient, so such a case could not fail.
    for name, loss in losses.items():
        np.testing.assert_array_equal(jax.grad(loss)(t), 0.0, err_msg=name)
    h_s, h_t = random_logits(24, 2, 3, 4), random_logits(25, 2, 3, 4)
    for loss in (distill.hidden_state_mse, distill.hidden_state_cosine):
        np.testing.assert_array_equal(jax.grad(loss, argnums=1)(h_s, h_t), 0.0)
    a_s, a_t = (jax.nn.softmax(random_logits(seed, 2, 3, 4, 4)) for seed in (26, 27))
    np.testing.assert_array_equal(jax.grad(lambda t: distill.attention_kl(a_s, t))(a_t), 0.0)


# --- feature distillation ----------------------------------------------------------------------


def test_hidden_state_mse_hand_computed_and_masked():
    student = jnp.array([[[1.0, 2.0], [3.0, 4.0]]])
    teacher = jnp.zeros((1, 2, 2))
    # Per token: (1 + 4) / 2 = 2.5 and (9 + 16) / 2 = 12.5.
    assert float(distill.hidden_state_mse(student, teacher)) == pytest.approx(7.5)
    assert float(distill.hidden_state_mse(student, teacher, mask=jnp.array([[1, 0]]))) == (
        pytest.approx(2.5))
    assert float(distill.hidden_state_mse(teacher, teacher)) == 0.0


def test_hidden_state_cosine_hand_computed():
    teacher = jnp.array([[[1.0, 1.0], [0.0, 2.0], [3.0, -1.0]]])
    student = jnp.array([[[1.0, 0.0], [5.0, 0.0], [-6.0, 2.0]]])
    # cos = 1/√2, 0 (orthogonal), -1 (opposite).
    per_token = [1 - 1 / math.sqrt(2), 1.0, 2.0]
    got = distill.hidden_state_cosine(student, teacher)
    assert float(got) == pytest.approx(np.mean(per_token), rel=1e-6)
    got = distill.hidden_state_cosine(student, teacher, mask=jnp.array([[1, 0, 1]]))
    assert float(got) == pytest.approx((per_token[0] + per_token[2]) / 2, rel=1e-6)
    assert float(distill.hidden_state_cosine(3 * teacher, teacher)) == pytest.approx(
        0.0, abs=1e-6)


def test_feature_losses_finite_for_zero_vectors_at_padding():
    teacher = random_logits(28, 2, 3, 4)
    student = random_logits(29, 2, 3, 4).at[1, 2].set(0.0)
    teacher = teacher.at[1, 2].set(0.0)
    mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    for loss in (distill.hidden_state_mse, distill.hidden_state_cosine):
        value, grad = jax.value_and_grad(loss)(student, teacher, mask=mask)
        assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad[1, 2], 0.0)  # padding gets no gradient
        assert float(loss(student, teacher, mask=jnp.zeros((2, 3)))) == 0.0


def test_projection_maps_student_width_to_teacher_width():
    student = jnp.array([[[1.0, 2.0], [3.0, 4.0]]])  # width 2
    teacher = jnp.array([[[1.0, 2.0, 1.0], [3.0, 4.0, 0.0]]])  # width 3
    with pytest.raises(ValueError, match="projection"):
        distill.hidden_state_mse(student, teacher)
    with pytest.raises(TypeError, match="mask="):
        distill.hidden_state_mse(student, teacher, jnp.ones((1, 2)))
    projection = distill.FeatureProjection(teacher_width=3)
    params = projection.init(jax.random.key(0), student)["params"]
    assert params["projection"]["kernel"].shape == (2, 3)
    # A hand-set projection that copies the two features and appends a zero:
    # the squared errors are then (0, 0, 1) and (0, 0, 0) -> mean 1/6.
    params = {"projection": {"kernel": jnp.eye(2, 3), "bias": jnp.zeros(3)}}
    apply = lambda p: lambda h: projection.apply({"params": p}, h)
    assert float(distill.hidden_state_mse(student, teacher, apply(params))) == pytest.approx(
        1 / 6, rel=1e-6)
    # The projection is trained with the student: its parameters receive a gradient.
    grads = jax.grad(lambda p: distill.hidden_state_mse(student, teacher, apply(p)))(params)
    assert float(jnp.abs(grads["projection"]["bias"][2])) > 0
    cosine = distill.hidden_state_cosine(student, teacher, projection=apply(params))
    assert np.isfinite(float(cosine))


# --- attention KL ------------------------------------------------------------------------------


def test_attention_kl_hand_computed():
    teacher = jnp.array([[[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]]])  # [1, 1, 2, 3]
    student = jnp.array([[[[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]]]])
    row_kls = [0.5 * math.log(2) * 2, math.log(2)]  # ln 2 and ln 2
    assert float(distill.attention_kl(student, teacher)) == pytest.approx(
        np.mean(row_kls), rel=1e-6)
    # Two heads, the second one already matching: mean over heads halves the loss.
    teacher2 = jnp.concatenate([teacher, teacher], axis=1)
    student2 = jnp.concatenate([student, teacher], axis=1)
    assert float(distill.attention_kl(student2, teacher2)) == pytest.approx(
        math.log(2) / 2, rel=1e-6)
    student3 = student.at[0, 0, 1].set(jnp.array([0.25, 0.5, 0.25]))  # row 2: KL = ln 4
    assert float(distill.attention_kl(student3, teacher)) == pytest.approx(
        (math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert float(distill.attention_kl(student3, teacher, mask=jnp.array([[1, 0]]))) == (
        pytest.approx(math.log(2), rel=1e-6))


def test_attention_kl_zero_for_equal_maps_and_finite_with_masked_keys_and_rows():
    probs = jax.nn.softmax(random_logits(30, 2, 3, 4, 4), -1)
    probs = probs.at[..., -1].set(0.0)  # a masked key
    probs = probs / probs.sum(-1, keepdims=True)
    probs = probs.at[1, :, 3].set(0.0)  # a fully masked query row
    assert float(distill.attention_kl(probs, probs)) == pytest.approx(0.0, abs=1e-6)
    mask = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    uniform = jnp.full_like(probs, 0.25)
    value, grad = jax.value_and_grad(lambda s: distill.attention_kl(s, probs, mask))(uniform)
    assert np.isfinite(float(value)) and float(value) > 0
    assert np.all(np.isfinite(grad))
    # A student with a zero where the teacher is not: large but finite, finite gradient.
    holes = probs.at[0, 0, 0].set(jnp.array([1.0, 0.0, 0.0, 0.0]))
    value, grad = jax.value_and_grad(lambda s: distill.attention_kl(s, probs))(holes)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    # Every query masked: 0, not NaN.
    assert float(distill.attention_kl(uniform, probs, jnp.zeros((2, 4)))) == 0.0


# --- agreement ---------------------------------------------------------------------------------


def test_top1_agreement():
    s = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    t = jnp.array([[2.0, 0.0], [3.0, 0.0], [1.0, -1.0], [0.0, 5.0]])
    assert float(distill.top1_agreement(s, t)) == pytest.approx(3 / 4)
    assert float(distill.top1_agreement(s, t, mask=jnp.array([1, 1, 0, 0]))) == (
        pytest.approx(1 / 2))


# --- argument checking -------------------------------------------------------------------------


@pytest.mark.parametrize("call, pieces", [
    (lambda: distill.soft_distillation_loss(STUDENT, TEACHER, 0.0), ["temperature=0.0", "> 0"]),
    (lambda: distill.soft_distillation_loss(STUDENT, TEACHER, -2.0), ["temperature=-2.0"]),
    (lambda: distill.soft_distillation_loss(STUDENT, TEACHER, float("nan")), ["temperature"]),
    (lambda: distill.soft_distillation_loss(STUDENT, TEACHER, 1.0, "sum"),
     ["reduction='sum'", "batchmean", "mean", "none"]),
    (lambda: distill.hinton_loss(STUDENT, TEACHER, jnp.array([0]), temperature=1.0,
                                 alpha=1.5), ["alpha=1.5", "[0, 1]"]),
    (lambda: distill.hinton_loss(STUDENT, TEACHER, jnp.array([0]), temperature=1.0,
                                 alpha=0.5, reduction="max"), ["reduction='max'"]),
    (lambda: distill.hinton_loss(STUDENT, TEACHER, jnp.array([0]), temperature=1.0,
                                 alpha=0.5, label_smoothing=1.0), ["label_smoothing=1.0"]),
    (lambda: distill.deit_distillation_token_loss(STUDENT, STUDENT, TEACHER, jnp.array([0]),
                                                  distillation_type="kl"),
     ["distillation_type='kl'", "hard", "soft", "none"]),
    (lambda: distill.deit_distillation_token_loss(STUDENT, STUDENT, TEACHER, jnp.array([0]),
                                                  distillation_type="soft", temperature=0.0),
     ["temperature=0.0"]),
    (lambda: distill.soft_distillation_loss(STUDENT, jnp.zeros((1, 3)), 1.0), ["shape"]),
    (lambda: distill.hard_distillation_loss(STUDENT, TEACHER, jnp.array([0.0])), ["labels"]),
])
def test_invalid_arguments_name_the_argument(call, pieces):
    with pytest.raises(ValueError) as error:
        call()
    for piece in pieces:
        assert piece in str(error.value)


def test_weights_of_another_shape_are_refused_not_broadcast_along_other_axes():
    """Per-example weights ``[B]`` against per-token values ``[B, L]``: broadcasting aligns
    trailing axes, so with B == L they used to weigh positions instead of examples."""
    student = jnp.zeros((3, 3))
    teacher = jnp.ones((3, 3))
    per_example = jnp.array([1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"mask has shape \(3,\); expected \(3, 3\)"):
        distill.hidden_state_mse(student[..., None], teacher[..., None], mask=per_example)
    with pytest.raises(ValueError, match=r"label_weights has shape \(2,\); expected \(4,\)"):
        distill.hinton_loss(jnp.zeros((4, 5)), jnp.zeros((4, 5)), jnp.zeros(4, jnp.int32),
                            temperature=2.0, alpha=0.5, label_weights=jnp.ones(2))
    # The documented shapes, and size-1 axes, still work.
    assert distill.hidden_state_mse(student[..., None], teacher[..., None],
                                    mask=per_example[:, None]) == pytest.approx(1.0)
    assert distill.hidden_state_mse(student[..., None], teacher[..., None],
                                    mask=jnp.ones((3, 3))) == pytest.approx(1.0)


def test_padded_examples_change_no_loss_with_hard_targets():
    """``weights`` (0 for padding) in the losses with hard targets too: the padded batch
    gives the unpadded batch's loss, whatever logits and labels the padding holds."""
    cls, dist, t = random_logits(31, 3, 5), random_logits(32, 3, 5), random_logits(33, 3, 5)
    labels = jnp.array([0, 4, 2])

    def pad(x, fill):
        return jnp.concatenate([x, jnp.full((2, *x.shape[1:]), fill, x.dtype)])

    weights = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    padded = dict(cls=pad(cls, 9.0), dist=pad(dist, -9.0), t=pad(t, 3.0),
                  labels=pad(labels, 1))
    expected = float(distill.hard_distillation_loss(cls, t, labels))
    assert expected == pytest.approx(
        0.5 * np_ce(cls, np.eye(5)[labels]).mean()
        + 0.5 * np_ce(cls, np.eye(5)[np.argmax(np.asarray(t), -1)]).mean(), rel=1e-5)
    got = distill.hard_distillation_loss(padded["cls"], padded["t"], padded["labels"],
                                         weights=weights)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    for kind in ("hard", "soft", "none"):
        loss = lambda c, d, tt, y, w=None, kind=kind: distill.deit_distillation_token_loss(
            c, d, tt, y, distillation_type=kind, alpha=0.5, weights=w)
        assert float(loss(padded["cls"], padded["dist"], padded["t"], padded["labels"],
                          weights)) == pytest.approx(float(loss(cls, dist, t, labels)),
                                                     rel=1e-6), kind


def test_feature_projection_follows_its_settings():
    """``use_bias`` and ``kernel_init`` reach the Dense, and the parameters stay float32
    under a bfloat16 ``dtype`` (the computation alone is bfloat16)."""
    hidden = jnp.ones((1, 2, 4))
    without_bias = distill.FeatureProjection(6, use_bias=False).init(jax.random.key(0), hidden)
    assert set(without_bias["params"]["projection"]) == {"kernel"}
    ones = distill.FeatureProjection(6, kernel_init=jax.nn.initializers.ones)
    params = ones.init(jax.random.key(0), hidden)["params"]["projection"]
    np.testing.assert_array_equal(params["kernel"], np.ones((4, 6)))
    half = distill.FeatureProjection(6, dtype=jnp.bfloat16)
    variables = half.init(jax.random.key(0), hidden)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert half.apply(variables, hidden).dtype == jnp.bfloat16


def test_hidden_state_cosine_is_scale_free_for_small_vectors():
    """Scale-free, as documented: norms far below 1 (0.01 · ‖h‖ here, products ~1e-4) give
    the same loss as the unscaled states, against a NumPy cosine; only norms near ``eps``
    are floored."""
    s, t = random_logits(34, 2, 3, 4), random_logits(35, 2, 3, 4)
    s64, t64 = np.asarray(s, np.float64), np.asarray(t, np.float64)
    cosine = np.sum(s64 * t64, -1) / (np.linalg.norm(s64, axis=-1) * np.linalg.norm(t64, axis=-1))
    for scale in (1.0, 0.01):
        got = distill.hidden_state_cosine(scale * s, scale * t)
        assert float(got) == pytest.approx(np.mean(1 - cosine), rel=1e-5), scale
