"""save_npz / load_pretrained: round trip, head replacement, pre_logits, resizing, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vit
from vit.checkpoint import flatten_params
from vit.model import to_pair

SMALL = dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)


def _model(num_classes=10, **overrides):
    return vit.create_model("ViT-micro", num_classes, **{**dict(image_size=16, patch_size=4),
                                                          **SMALL, **overrides})


def _random_params(model, seed=0):
    height, width = to_pair(model.image_size)
    params = model.init(jax.random.key(seed), jnp.zeros((1, height, width, 3)))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)


def _save(params, tmp_path, name="ckpt.npz"):
    path = str(tmp_path / name)
    vit.save_npz(params, path)
    return path


def test_round_trip_is_exact_and_uses_official_keys(tmp_path):
    model = _model()
    params = _random_params(model)
    path = _save(params, tmp_path)
    keys = set(np.load(path).files)
    assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in keys
    assert {"embedding/kernel", "cls", "Transformer/posembed_input/pos_embedding",
            "Transformer/encoder_norm/scale", "head/kernel"} <= keys
    loaded = vit.load_pretrained(path, model)
    for key, value in flatten_params(params).items():
        np.testing.assert_array_equal(flatten_params(loaded)[key], value)


@pytest.mark.slow
def test_scanned_model_saves_per_layer_and_loads_stacked(tmp_path):
    scanned = _model(scan_layers=True)
    params = _random_params(scanned)
    path = _save(params, tmp_path)
    assert "Transformer/encoderblock_0/LayerNorm_0/scale" in np.load(path).files
    unrolled = vit.load_pretrained(path, _model())
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.float32)
    restacked = vit.load_pretrained(path, scanned)
    np.testing.assert_allclose(scanned.apply({"params": restacked}, images),
                               _model().apply({"params": unrolled}, images), rtol=1e-5)


def test_head_replaced_with_zeros_when_classes_differ_kept_when_equal(tmp_path):
    params = _random_params(_model())
    path = _save(params, tmp_path)
    kept = vit.load_pretrained(path, _model())
    np.testing.assert_array_equal(kept["head"]["kernel"], params["head"]["kernel"])
    fresh = vit.load_pretrained(path, _model(num_classes=3))
    assert fresh["head"]["kernel"].shape == (32, 3)
    assert not np.any(fresh["head"]["kernel"]) and not np.any(fresh["head"]["bias"])
    np.testing.assert_array_equal(fresh["cls"], params["cls"])


def test_pre_logits_dropped_or_required(tmp_path):
    with_rep = _random_params(_model(representation_size=24))
    path = _save(with_rep, tmp_path)
    dropped = vit.load_pretrained(path, _model(num_classes=5))
    assert "pre_logits" not in dropped
    kept = vit.load_pretrained(path, _model(representation_size=24))
    np.testing.assert_array_equal(kept["pre_logits"]["kernel"],
                                  with_rep["pre_logits"]["kernel"])
    plain = _save(_random_params(_model()), tmp_path, "plain.npz")
    with pytest.raises(ValueError, match="missing.*pre_logits"):
        vit.load_pretrained(plain, _model(representation_size=24))


@pytest.mark.slow
def test_position_embedding_resized_224_to_384(tmp_path):
    model224 = vit.create_model("ViT-Ti_16", 10, image_size=224, **SMALL)
    params = _random_params(model224)
    posembed = params["Transformer"]["posembed_input"]["pos_embedding"]
    constant = np.array(posembed)
    constant[:, 1:] = 0.25  # a constant grid must stay constant
    params["Transformer"]["posembed_input"]["pos_embedding"] = constant
    path = _save(params, tmp_path)
    model384 = vit.create_model("ViT-Ti_16", 10, image_size=384, **SMALL)
    loaded = vit.load_pretrained(path, model384)
    resized = loaded["Transformer"]["posembed_input"]["pos_embedding"]
    assert resized.shape == (1, 1 + 24 * 24, 32)
    np.testing.assert_array_equal(resized[:, 0], constant[:, 0])  # class token kept apart
    np.testing.assert_allclose(resized[:, 1:], 0.25, rtol=1e-6)
    logits = model384.apply({"params": loaded}, jnp.zeros((1, 384, 384, 3)))
    assert logits.shape == (1, 10)


def test_resize_interpolates_a_smooth_grid():
    grid = np.arange(4 * 4, dtype=np.float32).reshape(1, 16, 1)
    posembed = np.concatenate([np.full((1, 1, 1), -7.0, np.float32), grid], axis=1)
    resized = vit.resize_posembed(posembed, 1, (8, 8))[0, 1:, 0].reshape(8, 8)
    assert resized[0, 0] == 0 and resized[-1, -1] == 15
    assert np.all(np.diff(resized, axis=0) >= 0) and np.all(np.diff(resized, axis=1) >= 0)


def _posembed(params):
    return np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])


def test_square_grid_is_resized_to_another_grid_of_as_many_positions(tmp_path):
    # A 4x4 table loaded into a 2x8 grid has the same shape, but copied as is its rows would
    # be read in the wrong places; it must be interpolated like any other change of grid.
    params = _random_params(_model())
    path = _save(params, tmp_path)
    wide = _model(image_size=(8, 32))
    assert wide.grid_size == (2, 8)
    loaded = _posembed(vit.load_pretrained(path, wide))
    expected = vit.resize_posembed(_posembed(params), 1, (2, 8))
    np.testing.assert_allclose(loaded, expected, rtol=1e-6)
    assert not np.allclose(loaded, _posembed(params))


def test_non_square_checkpoint_grid(tmp_path):
    # A table saved from a 2x8 model: by default its 16 positions read as the official square
    # grid; checkpoint_grid says what it is, and an equal grid is then copied exactly.
    wide = _model(image_size=(8, 32))
    params = _random_params(wide)
    path = _save(params, tmp_path)
    exact = vit.load_pretrained(path, wide, checkpoint_grid=(2, 8))
    np.testing.assert_array_equal(_posembed(exact), _posembed(params))
    tall = _model(image_size=(32, 8))
    to_tall = _posembed(vit.load_pretrained(path, tall, checkpoint_grid=(2, 8)))
    np.testing.assert_allclose(
        to_tall, vit.resize_posembed(_posembed(params), 1, (8, 2), old_grid=(2, 8)), rtol=1e-6)
    # A non-square count is the model's own grid when the shapes agree.
    narrow = _model(image_size=(8, 24))
    narrow_params = _random_params(narrow)
    same = vit.load_pretrained(_save(narrow_params, tmp_path, "narrow.npz"), narrow)
    np.testing.assert_array_equal(_posembed(same), _posembed(narrow_params))
    with pytest.raises(ValueError, match="12 grid positions are not a square grid.*"
                                         "checkpoint_grid"):
        vit.load_pretrained(str(tmp_path / "narrow.npz"), _model())


def test_resize_of_a_non_square_grid_keeps_the_corners():
    grid = np.arange(2 * 8, dtype=np.float32).reshape(1, 16, 1)
    resized = vit.resize_posembed(grid, 0, (4, 16), old_grid=(2, 8))[0, :, 0].reshape(4, 16)
    assert resized[0, 0] == 0 and resized[0, -1] == 7 and resized[-1, -1] == 15
    with pytest.raises(ValueError, match="16 grid positions are not a 3x5 grid"):
        vit.resize_posembed(grid, 0, (4, 4), old_grid=(3, 5))


def test_checkpoint_of_another_classifier_is_refused(tmp_path):
    token = _save(_random_params(_model()), tmp_path, "token.npz")
    with pytest.raises(ValueError, match=r"1 class/distillation token\(s\) \['cls'\].*"
                                         r"model has 0 \(classifier='gap'"):
        vit.load_pretrained(token, _model(classifier="gap"))
    with pytest.raises(ValueError, match=r"missing 1 parameter\(s\) the model needs: \['cls'\]"):
        vit.load_pretrained(_save(_random_params(_model(classifier="gap")), tmp_path), _model())


@pytest.mark.slow
def test_other_architecture_fails_naming_key_and_shapes(tmp_path):
    wide = _save(_random_params(_model(hidden_size=48, num_heads=2)), tmp_path, "wide.npz")
    with pytest.raises(ValueError, match=r"encoder_norm/bias: checkpoint \(48,\) vs "
                                         r"model \(32,\)"):
        vit.load_pretrained(wide, _model())
    shallow = _save(_random_params(_model(num_layers=1)), tmp_path, "shallow.npz")
    with pytest.raises(ValueError, match="missing.*encoderblock_1"):
        vit.load_pretrained(shallow, _model())


def test_unexpected_keys_are_reported(tmp_path, caplog):
    flat = flatten_params(_random_params(_model()))
    flat["opt_state/mu/embedding/kernel"] = np.zeros(3)
    path = str(tmp_path / "extra.npz")
    np.savez(path, **flat)
    import logging

    with caplog.at_level(logging.WARNING):
        vit.load_pretrained(path, _model())
    assert "opt_state/mu/embedding/kernel" in caplog.text


def test_missing_file_names_where_checkpoints_live(tmp_path):
    with pytest.raises(FileNotFoundError, match="gs://vit_models"):
        vit.load_pretrained(str(tmp_path / "nope.npz"), _model())
