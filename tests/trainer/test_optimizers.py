import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.common import base_config
from trainer.optimizers import make_optimizer, make_schedule, weight_decay_mask


def _schedule(name, warmup=10, total=100, base=1.0, end=0.0):
    config = ml_collections.ConfigDict(dict(name=name, warmup_steps=warmup,
                                            end_learning_rate_factor=end))
    return make_schedule(config, base, total)


def test_warmup_then_cosine():
    lr = _schedule("warmup_cosine")
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(55)) == pytest.approx(0.5, abs=1e-6)
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-6)


def test_warmup_then_linear_to_end_factor():
    lr = _schedule("warmup_linear", end=0.1)
    assert float(lr(55)) == pytest.approx(0.55)
    assert float(lr(100)) == pytest.approx(0.1)


def test_constant_after_warmup():
    lr = _schedule("constant", warmup=10)
    assert [float(lr(step)) for step in (0, 5, 10, 99)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert float(_schedule("constant", warmup=0)(0)) == 1.0


def test_adam_weight_decay_is_l2_and_adamw_decoupled():
    """On the first step Adam normalises the gradient: with L2 (adam) the decay term is
    normalised with it, decoupled (adamw) it is added after: the two must differ."""
    config = base_config()
    config.optimizer.update(dict(weight_decay=0.1, learning_rate=0.01, grad_clip_norm=0.0))
    config.schedule.update(dict(name="constant", warmup_steps=0))
    params = {"kernel": jnp.full((2,), 2.0)}
    grads = {"kernel": jnp.full((2,), 1.0)}
    updates = {}
    for name in ("adam", "adamw"):
        config.optimizer.name = name
        tx, _ = make_optimizer(config, total_steps=10)
        updates[name] = float(tx.update(grads, tx.init(params), params)[0]["kernel"][0])
    # adam: -lr · m̂/√v̂ of g + wd·w (= 1.2): -0.01; adamw: -lr · (1 + wd·w) = -0.012.
    assert updates["adam"] == pytest.approx(-0.01, rel=1e-5)
    assert updates["adamw"] == pytest.approx(-0.012, rel=1e-5)


def test_inverse_square_root_schedule_of_the_paper():
    lr = _schedule("warmup_rsqrt", warmup=4000, total=100_000)
    # Warms up linearly from 0 like the other schedules and flax's examples/wmt (it once
    # clamped the step to 1: lr(0) = lr(1) = 1/4000).
    assert float(lr(0)) == 0.0
    assert float(lr(1)) == pytest.approx(1 / 4000)
    assert float(lr(2000)) == pytest.approx(0.5)
    assert float(lr(4000)) == pytest.approx(1.0)
    assert float(lr(16000)) == pytest.approx(0.5)
    # No warmup: the peak from step 0 (no division by zero), then 1/sqrt(step).
    no_warmup = _schedule("warmup_rsqrt", warmup=0)
    assert [float(no_warmup(step)) for step in (0, 1, 4)] == pytest.approx([1.0, 1.0, 0.5])


def test_no_weight_decay_on_biases_norms_embeddings():
    params = {"embedding": {"kernel": 1, "bias": 1}, "cls": 1,
              "Transformer": {"posembed_input": {"pos_embedding": 1},
                              "LayerNorm_0": {"scale": 1, "bias": 1},
                              "Dense_0": {"kernel": 1}},
              "token_embed": {"embedding": 1}}
    mask = weight_decay_mask(params)
    assert mask["embedding"]["kernel"] and mask["Transformer"]["Dense_0"]["kernel"]
    assert not mask["embedding"]["bias"] and not mask["cls"]
    assert not mask["Transformer"]["posembed_input"]["pos_embedding"]
    assert not mask["Transformer"]["LayerNorm_0"]["scale"]
    assert not mask["token_embed"]["embedding"]


def test_adamw_decays_kernels_only():
    config = base_config()
    config.optimizer.weight_decay = 0.5
    config.optimizer.learning_rate = 0.1
    config.schedule.name = "constant"
    config.schedule.warmup_steps = 0
    tx, _ = make_optimizer(config, total_steps=10)
    params = {"kernel": jnp.ones((2,)), "bias": jnp.ones((2,))}
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5)
    np.testing.assert_allclose(updates["bias"], 0.0)


def test_gradients_are_clipped_to_the_global_norm_before_weight_decay():
    """Plain SGD (lr 0.1, no momentum) with grad_clip_norm=1: a gradient of global norm 5,
    split over two leaves, is scaled by 1/5 as a whole (not leaf by leaf), before the
    decoupled weight decay is added."""
    config = base_config()
    config.optimizer.update(dict(name="sgd", momentum=0.0, learning_rate=0.1,
                                 grad_clip_norm=1.0, weight_decay=0.0))
    config.schedule.update(dict(name="constant", warmup_steps=0))
    params = {"kernel": jnp.ones((2,)), "bias": jnp.ones((1,))}
    grads = {"kernel": jnp.array([3.0, 0.0]), "bias": jnp.array([4.0])}

    def update(grads):
        tx, _ = make_optimizer(config, total_steps=10)
        return tx.update(grads, tx.init(params), params)[0]

    clipped = update(grads)
    np.testing.assert_allclose(clipped["kernel"], [-0.06, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["bias"], [-0.08], rtol=1e-6)
    assert float(optax.tree.norm(clipped)) == pytest.approx(0.1 * 1.0)  # lr · clip
    # A gradient under the norm is left alone.
    small = update(jax.tree.map(lambda g: g / 10, grads))
    np.testing.assert_allclose(small["kernel"], [-0.03, 0.0], rtol=1e-6)
    # Decay after clipping: -lr · (g/5 + wd·w) on the kernel; clipping g + wd·w instead would
    # give [-0.0656, -0.0094] (bias: no decay).
    config.optimizer.weight_decay = 0.5
    decayed = update(grads)
    np.testing.assert_allclose(decayed["kernel"], [-0.11, -0.05], rtol=1e-6)
    np.testing.assert_allclose(decayed["bias"], [-0.08], rtol=1e-6)


def test_adam_sees_clipped_gradients():
    """Gradients of norm 50 then 5, clipped to 5: Adam sees the same gradient twice, so its
    second update is -lr·m̂/√v̂ = -lr on each entry. Unclipped (or clipped after Adam, whose
    normalised update is far under 5) the moments of the two differ: about -0.74·lr."""
    config = base_config()
    config.optimizer.update(dict(name="adamw", learning_rate=0.1, grad_clip_norm=5.0,
                                 weight_decay=0.0, eps=1e-8))
    config.schedule.update(dict(name="constant", warmup_steps=0))
    tx, _ = make_optimizer(config, total_steps=10)
    params = {"kernel": jnp.zeros((2,))}
    state = tx.init(params)
    for gradient in ([30.0, 40.0], [3.0, 4.0]):
        updates, state = tx.update({"kernel": jnp.array(gradient)}, state, params)
    np.testing.assert_allclose(updates["kernel"], [-0.1, -0.1], rtol=1e-4)  # float32 moments


def test_unknown_optimizer_and_bad_warmup():
    config = base_config()
    config.optimizer.name = "lamb"
    with pytest.raises(ValueError, match="optimizer.name"):
        make_optimizer(config, 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        _schedule("warmup_cosine", warmup=200, total=100)


def _updates_over_three_steps(config, reference):
    """Updates of ``make_optimizer(config)`` and of ``reference`` for the same 3 gradients."""
    tx, _ = make_optimizer(config, total_steps=10)
    params = {"kernel": jnp.ones((2,))}
    state, want_state = tx.init(params), reference.init(params)
    for gradient in ([1.0, -2.0], [0.5, 0.1], [-1.0, 3.0]):
        grads = {"kernel": jnp.array(gradient)}
        got, state = tx.update(grads, state, params)
        want, want_state = reference.update(grads, want_state, params)
        np.testing.assert_allclose(got["kernel"], want["kernel"], rtol=1e-6)


def test_unset_optimizer_fields_default_as_optax_and_torch():
    """Without b1/b2/eps, adamw is optax.adam's (0.9, 0.999, 1e-8); sgd's momentum is 0.9
    and nesterov is honoured (compared with optax's own sgd over three steps, where the
    momentum and its Nesterov correction show)."""
    config = base_config()
    config.schedule.update(dict(name="constant", warmup_steps=0))
    config.optimizer = ml_collections.ConfigDict(dict(name="adamw", learning_rate=0.1))
    _updates_over_three_steps(config, optax.adam(0.1))
    config.optimizer = ml_collections.ConfigDict(dict(name="sgd", learning_rate=0.1))
    _updates_over_three_steps(config, optax.sgd(0.1, momentum=0.9))
    config.optimizer.nesterov = True
    _updates_over_three_steps(config, optax.sgd(0.1, momentum=0.9, nesterov=True))


def test_warmup_cosine_ends_at_the_end_factor():
    """Cosine from the peak to end_learning_rate_factor · peak (DeiT's min_lr), halfway
    between them halfway through the decay."""
    lr = _schedule("warmup_cosine", end=0.1)
    assert float(lr(100)) == pytest.approx(0.1, abs=1e-6)
    assert float(lr(55)) == pytest.approx(0.55, abs=1e-6)


def _timm_cosine_rates(peak, warmup_init, min_lr, warmup_epochs, epochs, per_epoch, lag):
    """The rate of every step of a loop that steps timm's ``CosineLRScheduler`` (written
    out from timm/scheduler/cosine_lr.py) after each epoch: DeiT's main.py calls
    ``step(epoch)`` (lag 1), timm's train.py ``step(epoch + 1)`` (lag 0)."""
    import math

    def timm_rate(t):
        if t < warmup_epochs:
            return warmup_init + t * (peak - warmup_init) / warmup_epochs
        return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * t / epochs))

    rate, rates = timm_rate(0), []  # the scheduler's constructor sets the warmup rate
    for epoch in range(epochs):
        rates += [rate] * per_epoch
        rate = timm_rate(epoch + 1 - lag)
    return rates


@pytest.mark.parametrize("lag", [1, 0])
def test_timm_cosine_is_timms_scheduler_stepped_once_per_epoch(lag):
    config = ml_collections.ConfigDict(dict(
        name="timm_cosine", warmup_steps=4 * 3, steps_per_epoch=3, lag_epochs=lag,
        warmup_start_factor=0.002, end_learning_rate_factor=0.02))
    lr = make_schedule(config, 5e-4, 20 * 3)
    want = _timm_cosine_rates(5e-4, 1e-6, 1e-5, warmup_epochs=4, epochs=20, per_epoch=3,
                              lag=lag)
    np.testing.assert_allclose([float(lr(step)) for step in range(60)], want, rtol=1e-5)
    # Not optax's warmup_cosine: one rate per epoch, the cosine counted from epoch 0.
    assert float(lr(3 * 10 + lag * 3)) == pytest.approx(1e-5 + 0.5 * (5e-4 - 1e-5), rel=1e-5)


def test_timm_cosine_fields_are_checked():
    config = ml_collections.ConfigDict(dict(name="timm_cosine", warmup_steps=0))
    with pytest.raises(ValueError, match=r"config.schedule.steps_per_epoch=None must be an "
                                         r"integer >= 1"):
        make_schedule(config, 1.0, 10)
    config.steps_per_epoch = 2
    config.lag_epochs = -1
    with pytest.raises(ValueError, match=r"config.schedule.lag_epochs=-1 must be"):
        make_schedule(config, 1.0, 10)
    config.lag_epochs = 0
    config.warmup_start_factor = -0.5
    with pytest.raises(ValueError, match=r"config.schedule.warmup_start_factor=-0.5 must be"):
        make_schedule(config, 1.0, 10)


def test_deit_config_takes_deits_learning_rate_per_epoch():
    """configs/vit_imagenet.py at batch 512 (peak 5e-4): DeiT's 1e-6 for epochs 0 and 1, its
    warmup after, the cosine over 300 epochs from epoch 0 a step behind, 1e-5 at the end."""
    import math

    from configs import vit_imagenet

    config = vit_imagenet.get_config("Ti_16")
    config.batch_size = 512
    lr = make_schedule(config.schedule, config.optimizer.learning_rate, config.num_train_steps)
    per_epoch = 1_281_167 // 512
    rate = lambda epoch: float(lr(epoch * per_epoch))  # noqa: E731
    assert rate(0) == rate(1) == pytest.approx(1e-6)
    assert rate(2) == pytest.approx(1e-6 + (5e-4 - 1e-6) / 5, rel=1e-5)
    cosine = lambda t: 1e-5 + 0.5 * (5e-4 - 1e-5) * (1 + math.cos(math.pi * t / 300))  # noqa
    assert rate(6) == pytest.approx(cosine(5), rel=1e-5)
    assert rate(151) == pytest.approx(cosine(150), rel=1e-5)
    assert float(lr(config.num_train_steps - 1)) == pytest.approx(cosine(298), rel=1e-4)
