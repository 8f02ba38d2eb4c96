"""save_npz / load_pretrained: round trip, head replacement, pre_logits, resizing, errors."""

import logging

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


def test_save_npz_records_the_grid_so_a_non_square_table_round_trips(tmp_path, caplog):
    # 4x9 = 36 = 6x6: unrecorded, the table would be read as the official square grid and
    # resized (with a warning); recorded by save_npz, it comes back exactly.
    model = _model(image_size=(16, 36))
    assert model.grid_size == (4, 9)
    params = _random_params(model)
    path = str(tmp_path / "recorded.npz")
    vit.save_npz(params, path, grid_size=model.grid_size)
    with np.load(path) as data:
        assert data["posembed_grid"].tolist() == [4, 9]
    with caplog.at_level(logging.WARNING):
        loaded = vit.load_pretrained(path, model)
    np.testing.assert_array_equal(_posembed(loaded), _posembed(params))
    assert "ignoring" not in caplog.text and "read as a" not in caplog.text
    # The recorded grid is resized like a given checkpoint_grid for another model.
    tall = _model(image_size=(36, 16))
    np.testing.assert_allclose(
        _posembed(vit.load_pretrained(path, tall)),
        vit.resize_posembed(_posembed(params), 1, (9, 4), old_grid=(4, 9)), rtol=1e-6)

    unrecorded = _save(params, tmp_path, "unrecorded.npz")
    with caplog.at_level(logging.WARNING):
        guessed = vit.load_pretrained(unrecorded, model)
    assert "36 positions read as a (6, 6) grid" in caplog.text
    assert "checkpoint_grid=(4, 9)" in caplog.text
    assert not np.allclose(_posembed(guessed), _posembed(params))
    with pytest.raises(ValueError, match=r"grid_size=\(4,\) must be the model's"):
        vit.save_npz(params, path, grid_size=(4,))


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
    # Checked before the missing keys, so the message names the classifier, not a lone 'cls'.
    gap = _save(_random_params(_model(classifier="gap")), tmp_path, "gap.npz")
    with pytest.raises(ValueError, match=r"checkpoint has no class token \('cls'\); build the "
                                         r"model with the checkpoint's classifier='gap'"):
        vit.load_pretrained(gap, _model())
    with pytest.raises(ValueError, match=r"has no distillation token \('dist_token'\).*"
                                         r"distillation_token=False"):
        vit.load_pretrained(token, _model(distillation_token=True))


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


def _head(params, name="head"):
    return {k: np.asarray(v) for k, v in params[name].items()}


def _initial_head(model, name="head"):
    height, width = to_pair(model.image_size)
    return _head(model.init(jax.random.key(0), jnp.zeros((1, height, width, 3)))["params"], name)


def test_head_is_replaced_whole_never_a_new_kernel_with_an_old_bias(tmp_path):
    # A representation layer 8 wide gives a head kernel [8, 10] whose bias [10] fits the model:
    # keeping that bias under a new kernel would be half of a head trained for other inputs.
    path = _save(_random_params(_model(representation_size=8)), tmp_path)
    loaded = _head(vit.load_pretrained(path, _model()))
    np.testing.assert_array_equal(loaded["kernel"], np.zeros((32, 10)))
    np.testing.assert_array_equal(loaded["bias"], np.zeros(10))
    # The other way round: a kernel that fits with a bias that does not.
    flat = flatten_params(_random_params(_model()))
    flat["head/bias"] = np.ones(7, np.float32)
    odd = str(tmp_path / "odd_bias.npz")
    np.savez(odd, **flat)
    loaded = _head(vit.load_pretrained(odd, _model()))
    assert not np.any(loaded["kernel"]) and not np.any(loaded["bias"])


def test_head_is_replaced_when_its_pre_logits_is_dropped(tmp_path, caplog):
    # As in the official i21k checkpoints, representation_size == hidden_size: the head fits
    # by shape, but it was trained on tanh(pre_logits(x)), which this model no longer computes.
    params = _random_params(_model(representation_size=32))
    path = _save(params, tmp_path)
    import logging

    with caplog.at_level(logging.INFO):
        loaded = vit.load_pretrained(path, _model(head_bias_init=-1.5))
    assert "pre_logits" not in loaded
    for key, value in _initial_head(_model(head_bias_init=-1.5)).items():
        np.testing.assert_array_equal(loaded["head"][key], value)
    assert "head/kernel" in caplog.text and "pre_logits layer is dropped" in caplog.text
    with pytest.raises(ValueError, match=r"head/kernel: checkpoint \(32, 10\) vs model "
                                         r"\(32, 10\) \(num_classes=10\).*pre_logits"):
        vit.load_pretrained(path, _model(), allow_new_head=False)
    # A model that keeps the representation layer keeps the head too.
    kept = vit.load_pretrained(path, _model(representation_size=32), allow_new_head=False)
    np.testing.assert_array_equal(kept["head"]["kernel"], params["head"]["kernel"])


def test_distillation_head_is_replaced_when_its_pre_logits_is_dropped(tmp_path):
    deit = dict(distillation_token=True)
    params = _random_params(_model(representation_size=32, **deit))
    loaded = vit.load_pretrained(_save(params, tmp_path), _model(**deit))
    assert "pre_logits_dist" not in loaded
    for name in ("head", "head_dist"):
        assert not np.any(loaded[name]["kernel"]) and not np.any(loaded[name]["bias"])
    np.testing.assert_array_equal(loaded["dist_token"], params["dist_token"])


def test_new_head_is_the_models_initial_head_with_head_bias_init(tmp_path):
    path = _save(_random_params(_model()), tmp_path)
    model = _model(num_classes=3, head_bias_init=-6.9)
    loaded = _head(vit.load_pretrained(path, model))
    expected = _initial_head(model)
    np.testing.assert_array_equal(loaded["kernel"], expected["kernel"])
    np.testing.assert_array_equal(loaded["bias"], expected["bias"])
    np.testing.assert_allclose(loaded["bias"], -6.9)


def test_new_head_true_starts_the_initial_heads_even_when_the_checkpoints_fit(tmp_path):
    """``new_head=True`` (vit_jax's fine-tuning, big_vision's ``dont_load=["head/.*"]``):
    both heads of a distillation-token model start anew although their shapes fit; every
    other parameter is the checkpoint's."""
    model = _model(distillation_token=True, head_bias_init=-2.0)
    params = _random_params(model)
    path = _save(params, tmp_path)
    loaded = vit.load_pretrained(path, model, new_head=True)
    for name in ("head", "head_dist"):
        assert not np.any(loaded[name]["kernel"]), name
        np.testing.assert_allclose(loaded[name]["bias"], -2.0)
    flat, saved = flatten_params(loaded), flatten_params(params)
    for key in saved:
        if not key.startswith("head"):
            np.testing.assert_array_equal(flat[key], saved[key])
    with pytest.raises(ValueError, match=r"new_head=True, allow_new_head=False"):
        vit.load_pretrained(path, model, new_head=True, allow_new_head=False)


def test_allow_new_head_false_refuses_a_head_that_does_not_fit(tmp_path):
    params = _random_params(_model())
    path = _save(params, tmp_path)
    with pytest.raises(ValueError, match=r"head/kernel: checkpoint \(32, 10\) vs model \(32, 3\) "
                                         r"\(num_classes=3\)"):
        vit.load_pretrained(path, _model(num_classes=3), allow_new_head=False)
    flat = flatten_params(params)
    del flat["head/kernel"], flat["head/bias"]
    headless = str(tmp_path / "headless.npz")
    np.savez(headless, **flat)
    with pytest.raises(ValueError, match=r"head/kernel: checkpoint None vs model \(32, 10\)"):
        vit.load_pretrained(headless, _model(), allow_new_head=False)
    kept = vit.load_pretrained(path, _model(), allow_new_head=False)
    np.testing.assert_array_equal(kept["head"]["bias"], params["head"]["bias"])


def test_deeper_checkpoint_is_refused_unless_fewer_layers_are_allowed(tmp_path, caplog):
    params = _random_params(_model(num_layers=3))
    path = _save(params, tmp_path)
    with pytest.raises(ValueError, match=r"3 encoder layers .*num_layers=2.*allow_fewer_layers"):
        vit.load_pretrained(path, _model())
    import logging

    with caplog.at_level(logging.WARNING):
        loaded = vit.load_pretrained(path, _model(), allow_fewer_layers=True)
    assert "Transformer/encoderblock_2/" in caplog.text
    assert sorted(k for k in loaded["Transformer"] if k.startswith("encoderblock")) == [
        "encoderblock_0", "encoderblock_1"]
    np.testing.assert_array_equal(
        flatten_params(loaded["Transformer"]["encoderblock_1"])["LayerNorm_0/scale"],
        flatten_params(params["Transformer"]["encoderblock_1"])["LayerNorm_0/scale"])


def test_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    params = _random_params(_model())
    path = _save(params, tmp_path)
    before = open(path, "rb").read()

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        vit.save_npz(params, path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]  # no temporary left
    vit.save_npz(jax.tree.map(lambda x: x + 1, params), path)  # a good save does replace it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    np.testing.assert_array_equal(np.load(path)["cls"], np.asarray(params["cls"]) + 1)


def test_unreadable_file_is_a_value_error_naming_the_path(tmp_path):
    good = open(_save(_random_params(_model()), tmp_path), "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    single = tmp_path / "single.npz"
    np.save(open(single, "wb"), np.zeros(3))
    for path in (truncated, text, single):
        with pytest.raises(ValueError, match=f"checkpoint '{path}'.*(not a readable .npz|not an "
                                             ".npz archive)"):
            vit.load_pretrained(str(path), _model())


def test_big_vision_layout_is_named(tmp_path):
    flat = {"params/img/" + k: v for k, v in flatten_params(_random_params(_model())).items()}
    path = str(tmp_path / "bv.npz")
    np.savez(path, **flat)
    with pytest.raises(ValueError, match="params/img/.*big_vision layout is not supported; "
                                         "convert to the official vision_transformer layout"):
        vit.load_pretrained(path, _model())


def test_missing_keys_message_shows_the_checkpoints_own_keys(tmp_path):
    path = str(tmp_path / "other.npz")
    np.savez(path, **{"encoder/w": np.zeros(2), "decoder/w": np.zeros(2)})
    with pytest.raises(ValueError, match=r"missing \d+ parameter\(s\).*the checkpoint has 2 "
                                         r"entries, e.g. \['decoder/w', 'encoder/w'\]"):
        vit.load_pretrained(path, _model())


def test_resize_is_bilinear_and_keeps_every_prefix_token():
    """``order=1`` as in the official fine-tuning code, against linear interpolation written
    out with ``np.interp``, one axis after the other: a random 4x4 grid zoomed to 7x6 with
    the corners aligned (output i reads input i·(4 − 1)/(7 − 1) along the height). A cubic
    spline differs by up to ~0.3 here. Both prefix tokens (class and distillation) are kept
    apart unchanged."""
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(4, 4, 2)).astype(np.float32)
    prefix = rng.normal(size=(1, 2, 2)).astype(np.float32)
    posembed = np.concatenate([prefix, grid.reshape(1, 16, 2)], axis=1)
    resized = vit.resize_posembed(posembed, 2, (7, 6))
    assert resized.shape == (1, 2 + 7 * 6, 2)
    np.testing.assert_array_equal(resized[:, :2], prefix)

    def interpolate(values, new_length):  # along axis 0
        where = np.arange(new_length) * (len(values) - 1) / (new_length - 1)
        flat = values.reshape(len(values), -1)
        return np.stack([np.interp(where, np.arange(len(values)), column)
                         for column in flat.T], axis=-1).reshape(new_length, *values.shape[1:])

    expected = interpolate(interpolate(grid, 7).transpose(1, 0, 2), 6).transpose(1, 0, 2)
    np.testing.assert_allclose(resized[0, 2:].reshape(7, 6, 2), expected, atol=1e-5)


def test_loaded_parameters_take_the_models_param_dtype_and_image_size(tmp_path):
    """A float32 checkpoint loads in the model's ``param_dtype``; ``image_size=`` loads for
    that resolution (the position grid resized from 4x4 to 8x8) without a new model."""
    path = _save(_random_params(_model()), tmp_path)
    loaded = vit.load_pretrained(path, _model(param_dtype=jnp.bfloat16))
    assert {x.dtype for x in jax.tree.leaves(loaded)} == {jnp.dtype(jnp.bfloat16)}
    bigger = vit.load_pretrained(path, _model(), image_size=32)
    assert _posembed(bigger).shape == (1, 1 + 8 * 8, 32)
