"""``config.optimizer.layer_decay``: BEiT's layer-wise learning-rate decay (timm's
``--layer-decay``) over a ViT's parameters, scanned or not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import vit_digits
from trainer import config_validation
from trainer.optimizers import layer_decay_scales, make_optimizer


def _vit_params(scan_layers, distillation_token=False):
    import vit

    model = vit.create_model("ViT-Ti_16", num_classes=10, image_size=32, num_layers=2,
                             scan_layers=scan_layers, distillation_token=distillation_token)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))["params"]


def _expected_scale(path, decay):
    """timm's numbering, written out for a 2-block ViT: the embeddings and tokens are layer
    0 (decay³), block i is layer i + 1, the final norm and heads layer 3 (1)."""
    joined = "/".join(path)
    if path[0] in ("embedding", "cls", "dist_token") or "posembed_input" in joined:
        return decay**3
    for block in (0, 1):
        if f"encoderblock_{block}/" in joined:
            return decay ** (2 - block)
    return 1.0


@pytest.mark.parametrize("distillation_token", [False, True])
def test_each_leaf_gets_timms_layer_scale(distillation_token):
    decay = 0.5
    params = _vit_params(False, distillation_token)
    flat = traverse_util.flatten_dict(layer_decay_scales(params, decay))
    assert set(flat) == set(traverse_util.flatten_dict(params))
    for path, scale in flat.items():
        assert float(scale) == _expected_scale(path, decay), path
    assert float(flat[("Transformer", "encoderblock_0", "LayerNorm_0", "scale")]) == 0.25
    assert float(flat[("head", "kernel")]) == 1.0
    if distillation_token:
        assert float(flat[("dist_token",)]) == 0.125


def test_a_scanned_stack_gets_the_same_scales_along_its_leading_axis():
    decay = 0.5
    flat = traverse_util.flatten_dict(layer_decay_scales(_vit_params(True), decay))
    kernel = flat[("Transformer", "encoderblock", "block", "MlpBlock_3", "Dense_0", "kernel")]
    np.testing.assert_array_equal(np.asarray(kernel).reshape(-1), [0.25, 0.5])
    assert np.asarray(kernel).shape == (2, 1, 1)  # broadcasts over [2, 192, 768]
    assert float(flat[("cls",)]) == 0.125 and float(flat[("head", "bias")]) == 1.0


def test_an_update_is_the_learning_rate_times_the_layer_scale():
    """Plain SGD, no clipping: each leaf moves by -lr · scale · gradient (Adam: -lr ·
    scale); with the layer decay off, by -lr · gradient."""
    config = vit_digits.get_config()
    config.optimizer.update(name="sgd", momentum=0.0, grad_clip_norm=0.0, weight_decay=0.0,
                            learning_rate=0.1, layer_decay=0.5)
    config.schedule.update(name="constant", warmup_steps=0)
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), _vit_params(False))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    tx, _ = make_optimizer(config, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    for path, update in traverse_util.flatten_dict(updates).items():
        np.testing.assert_allclose(update, -0.1 * 2.0 * _expected_scale(path, 0.5), rtol=1e-6)
    # With Adam the first update is -lr · g/|g| = -lr: a scale applied to the gradients
    # (before Adam) would cancel out; applied to the update, it stays.
    config.optimizer.name = "adamw"
    tx, _ = make_optimizer(config, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    for path, update in traverse_util.flatten_dict(updates).items():
        np.testing.assert_allclose(update, -0.1 * _expected_scale(path, 0.5), rtol=1e-5)
    config.optimizer.update(name="sgd", layer_decay=1.0)
    tx, _ = make_optimizer(config, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    jax.tree.map(lambda u: np.testing.assert_allclose(u, -0.2, rtol=1e-6), updates)


def test_a_model_without_encoder_blocks_and_a_bad_decay_are_refused():
    config = vit_digits.get_config()
    config.optimizer.layer_decay = 0.75
    tx, _ = make_optimizer(config, config.num_train_steps)
    with pytest.raises(ValueError, match="config.optimizer.layer_decay=0.75 needs a ViT's "
                                         "encoder blocks"):
        tx.init({"Dense_0": {"kernel": jnp.ones((2, 2))}})
    config.task = "seq2seq"  # encoder and decoder blocks: no ViT numbering
    with pytest.raises(ValueError, match="config.task='seq2seq' trains no ViT"):
        config_validation.validate(config)
    config.task = "classification"
    for bad in (0.0, 1.5, float("nan")):
        config.optimizer.layer_decay = bad
        with pytest.raises(ValueError, match=rf"config.optimizer.layer_decay={bad!r} must be "
                                             r"a number in \(0, 1\]"):
            config_validation.validate(config)
