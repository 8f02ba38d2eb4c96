"""Distillation losses against hand-computed values, gradients and invariances."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distill

STUDENT = jnp.array([[0.0, 0.0]])
TEACHER = jnp.array([[math.log(3.0), 0.0]])  # teacher probabilities [0.75, 0.25]


def test_soft_loss_hand_computed():
    # KL([.75,.25] || [.5,.5]) = .75 ln 1.5 + .25 ln .5
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(distill.soft_distillation_loss(STUDENT, TEACHER, 1.0)) == pytest.approx(
        expected, rel=1e-6)
    assert expected == pytest.approx(0.1308120, rel=1e-6)


def test_temperature_squared_scaling():
    # At T=2 the teacher's soft labels are [√3, 1] / (√3 + 1); the loss is scaled by T² = 4.
    p = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    kl = float(np.sum(p * np.log(p / 0.5)))
    assert float(distill.soft_distillation_loss(STUDENT, TEACHER, 2.0)) == pytest.approx(
        4 * kl, rel=1e-6)
    # For large T the T²-scaled loss tends to the logit-matching limit Σ(z_t - z_s)²/(2K)
    # (zero-mean logits), Hinton et al. §2.1: the T² factor keeps it finite.
    zt = jnp.array([[1.0, -1.0]])
    large_t = float(distill.soft_distillation_loss(jnp.zeros((1, 2)), zt, 100.0))
    assert large_t == pytest.approx(np.sum(np.array([1.0, -1.0]) ** 2) / (2 * 2), rel=1e-2)


def test_gradient_pushes_student_towards_teacher():
    grad = jax.grad(lambda s: distill.soft_distillation_loss(s, TEACHER, 1.0))(STUDENT)
    # d/dz_s = (p_s - p_t) / T · T² : negative for the class the teacher prefers.
    np.testing.assert_allclose(grad, [[0.5 - 0.75, 0.5 - 0.25]], rtol=1e-6)
    grad_t2 = jax.grad(lambda s: distill.soft_distillation_loss(s, TEACHER, 2.0))(STUDENT)
    p = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    np.testing.assert_allclose(grad_t2, [2.0 * (0.5 - p)], rtol=1e-5)


def test_zero_when_student_equals_teacher_and_no_teacher_gradient():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 7)), jnp.float32)
    assert float(distill.soft_distillation_loss(logits, logits, 3.0)) == pytest.approx(0, abs=1e-6)
    teacher_grad = jax.grad(lambda t: distill.soft_distillation_loss(logits * 2, t, 2.0))(logits)
    np.testing.assert_array_equal(teacher_grad, 0.0)


def test_batchmean_and_mean_differ_by_number_of_classes():
    rng = np.random.default_rng(1)
    s, t = (jnp.asarray(rng.normal(size=(5, 6)), jnp.float32) for _ in range(2))
    batchmean = float(distill.soft_distillation_loss(s, t, 2.0, "batchmean"))
    mean = float(distill.soft_distillation_loss(s, t, 2.0, "mean"))
    assert batchmean == pytest.approx(6 * mean, rel=1e-6)
    per_example = distill.soft_distillation_loss(s, t, 2.0, "none")
    assert per_example.shape == (5,)
    assert float(per_example.mean()) == pytest.approx(batchmean, rel=1e-6)


def test_hinton_mixes_label_and_soft_losses():
    labels = jnp.array([1])
    ce = -math.log(0.5)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    got = distill.hinton_loss(STUDENT, TEACHER, labels, temperature=1.0, alpha=0.3)
    assert float(got) == pytest.approx(0.7 * ce + 0.3 * kl, rel=1e-6)


def test_hard_distillation_uses_teacher_argmax():
    student = jnp.log(jnp.array([[0.2, 0.3, 0.5]]))
    teacher = jnp.array([[0.0, 5.0, 1.0]])  # argmax 1
    got = distill.hard_distillation_loss(student, teacher, jnp.array([2]))
    assert float(got) == pytest.approx(0.5 * -math.log(0.5) + 0.5 * -math.log(0.3), rel=1e-6)


def test_deit_token_loss_sends_teacher_signal_only_to_distillation_head():
    rng = np.random.default_rng(2)
    cls_logits, dist_logits, teacher = (jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
                                        for _ in range(3))
    labels = jnp.array([0, 1, 2])
    for kind in ("hard", "soft"):
        grads = jax.grad(lambda c, d: distill.deit_distillation_token_loss(
            c, d, teacher, labels, distillation_type=kind, alpha=1.0), argnums=(0, 1))(
            cls_logits, dist_logits)
        np.testing.assert_array_equal(grads[0], 0.0)  # class head: no teacher gradient
        assert np.any(grads[1] != 0)
    half = distill.deit_distillation_token_loss(cls_logits, dist_logits, teacher, labels,
                                                distillation_type="hard", alpha=0.5)
    labels_only = distill.deit_distillation_token_loss(cls_logits, dist_logits, teacher, labels,
                                                       distillation_type="none")
    teacher_only = distill.deit_distillation_token_loss(cls_logits, dist_logits, teacher,
                                                        labels, distillation_type="hard",
                                                        alpha=1.0)
    assert float(half) == pytest.approx(0.5 * float(labels_only) + 0.5 * float(teacher_only),
                                        rel=1e-6)
    np.testing.assert_allclose(distill.deit_inference_logits(cls_logits, dist_logits),
                               (cls_logits + dist_logits) / 2)


def test_feature_losses():
    rng = np.random.default_rng(3)
    teacher = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    assert float(distill.hidden_state_mse(teacher, teacher)) == 0.0
    assert float(distill.hidden_state_cosine(2 * teacher, teacher)) == pytest.approx(0, abs=1e-6)
    assert float(distill.hidden_state_cosine(-teacher, teacher)) == pytest.approx(2, rel=1e-6)
    shifted = teacher + 1.0
    assert float(distill.hidden_state_mse(shifted, teacher)) == pytest.approx(1.0, rel=1e-6)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    padded = teacher.at[0, 2].add(100.0).at[1, 1:].add(100.0)
    assert float(distill.hidden_state_mse(padded, teacher, mask)) == 0.0
    with pytest.raises(ValueError, match="FeatureProjection"):
        distill.hidden_state_mse(teacher[..., :2], teacher)
    projection = distill.FeatureProjection(teacher_width=4)
    params = projection.init(jax.random.key(0), teacher[..., :2])
    assert projection.apply(params, teacher[..., :2]).shape == (2, 3, 4)


def test_attention_kl_zero_for_equal_maps_and_finite_with_masked_keys():
    probs = jax.nn.softmax(jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 4, 4))), -1)
    probs = probs.at[..., -1].set(0.0)
    probs = probs / probs.sum(-1, keepdims=True)
    probs = probs.at[1, :, 3].set(0.0)  # a fully masked query row
    assert float(distill.attention_kl(probs, probs)) == pytest.approx(0.0, abs=1e-6)
    uniform = jnp.full_like(probs, 0.25)
    value = distill.attention_kl(uniform, probs, mask=jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert np.isfinite(float(value)) and float(value) > 0
    grad = jax.grad(lambda s: distill.attention_kl(s, probs))(uniform)
    assert np.all(np.isfinite(grad))


def test_top1_agreement():
    s = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    t = jnp.array([[2.0, 0.0], [3.0, 0.0], [1.0, -1.0]])
    assert float(distill.top1_agreement(s, t)) == pytest.approx(2 / 3)


@pytest.mark.parametrize("call, name", [
    (lambda: distill.soft_distillation_loss(STUDENT, TEACHER, 0.0), "temperature"),
    (lambda: distill.soft_distillation_loss(STUDENT, TEACHER, 1.0, "sum"), "reduction"),
    (lambda: distill.hinton_loss(STUDENT, TEACHER, jnp.array([0]), temperature=1.0,
                                 alpha=1.5), "alpha"),
    (lambda: distill.deit_distillation_token_loss(STUDENT, STUDENT, TEACHER, jnp.array([0]),
                                                  distillation_type="kl"),
     "distillation_type"),
])
def test_invalid_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
