import jax
import jax.numpy as jnp
import numpy as np
import pytest

from input_pipeline import mixup_cutmix, parse_preprocess
from input_pipeline.loader import _apply

IMAGE = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


def _run(spec, image=IMAGE, seed=0):
    import grain

    dataset = _apply(grain.MapDataset.source([{"image": image, "label": 1}]).seed(seed),
                     parse_preprocess(spec))
    return dataset[0]


@pytest.mark.parametrize("spec, shape", [
    ("resize(16)", (16, 16, 3)), ("resize(10,12)", (10, 12, 3)),
    ("resize_small(10)", (10, 15, 3)), ("central_crop(8)", (8, 8, 3)),
    ("inception_crop(12)", (12, 12, 3)), ("random_crop(20,2)", (20, 20, 3)),
    ("randaugment(2,9)", (20, 30, 3)), ("flip_lr", (20, 30, 3)),
])
def test_op_output_shapes(spec, shape):
    assert _run(spec)["image"].shape == shape


def test_value_range_and_normalize():
    out = _run("value_range(-1,1)")["image"]
    assert out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
    np.testing.assert_allclose(out, IMAGE / 255 * 2 - 1, atol=1e-6)
    norm = _run("normalize(0.5,0.5,0.5,0.25,0.25,0.25)")["image"]
    np.testing.assert_allclose(norm, (IMAGE / 255 - 0.5) / 0.25, atol=1e-6)


def test_random_ops_are_seeded():
    spec = "inception_crop(12)|flip_lr|randaugment(2,9)"
    np.testing.assert_array_equal(_run(spec, seed=4)["image"], _run(spec, seed=4)["image"])
    assert any(not np.array_equal(_run(spec, seed=4)["image"], _run(spec, seed=s)["image"])
               for s in range(5, 10))


def test_central_crop_takes_the_middle_and_labels_pass_through():
    out = _run("central_crop(10)")
    np.testing.assert_array_equal(out["image"], IMAGE[5:15, 10:20])
    assert out["label"] == 1


def test_unknown_op_lists_known_ones():
    with pytest.raises(ValueError, match="unknown preprocessing op 'blur'.*known ops"):
        parse_preprocess("resize(8)|blur(3)")
    with pytest.raises(ValueError, match="bad arguments"):
        parse_preprocess("resize(1,2,3,4)")


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_sum_to_one(mixup, cutmix):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(6, 8, 8, 3)), jnp.float32)
    labels = jax.nn.one_hot(jnp.arange(6) % 3, 3)
    mixed, targets = jax.jit(lambda r: mixup_cutmix(
        r, images, labels, mixup_alpha=mixup, cutmix_alpha=cutmix))(jax.random.key(2))
    assert mixed.shape == images.shape
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    assert not np.allclose(mixed, images)


def test_cutmix_label_weight_is_the_box_area():
    images = jnp.zeros((2, 10, 10, 1)).at[1].set(1.0)
    labels = jnp.eye(2)
    mixed, targets = mixup_cutmix(jax.random.key(0), images, labels, cutmix_alpha=1.0)
    pasted = float(mixed[0].mean())  # example 0 received a box of example 1's ones
    np.testing.assert_allclose(targets[0, 1], pasted, atol=1e-6)


@pytest.mark.parametrize("spec, message", [
    ("resize(0)", r"op resize: height=0 must be a positive integer"),
    ("resize(32,'a')", r"op resize: width='a' must be a positive integer"),
    ("resize(32.5)", r"op resize: height=32.5 must be a positive integer"),
    ("resize_small(-1)", r"op resize_small: size=-1 must be a positive integer"),
    ("central_crop(32,0)", r"op central_crop: width=0 must be a positive integer"),
    ("central_crop(0)", r"op central_crop: height=0 must be a positive integer"),
    ("inception_crop(0)", r"op inception_crop: size=0 must be a positive integer"),
    ("inception_crop(32,90,10)", r"op inception_crop: area_min=90, area_max=10 must satisfy "
                                 r"0 < area_min <= area_max <= 100"),
    ("inception_crop(32,0,100)", r"area_min=0, area_max=100 must satisfy 0 < area_min"),
    ("inception_crop(32,5,150)", r"area_max=150 must satisfy"),
    ("inception_crop(32,0.08,1.0)", r"area_min=0.08, area_max=1 .*fractions such as 0.08, "
                                    r"1.0 are written 8, 100"),
    ("random_crop(0)", r"op random_crop: size=0 must be a positive integer"),
    ("random_crop(32,-4)", r"op random_crop: padding=-4 must be an integer >= 0"),
    ("value_range(1,-1)", r"op value_range: low=1, high=-1: expected low < high"),
    ("value_range(0,'x')", r"op value_range: high='x' must be a finite number"),
    ("normalize(0.5,0.5,0.5,0,0,0)", r"op normalize: stds=\[0.0, 0.0, 0.0\] must all be > 0"),
    ("normalize(0.5,0.5,0.25)", r"op normalize: got 3 arguments"),
    ("normalize", r"op normalize: got 0 arguments"),
    ("randaugment(-3,9)", r"op randaugment: num_layers=-3 must be an integer >= 0"),
    ("randaugment(2,11)", r"op randaugment: magnitude=11 must be in \[0, 10\]"),
    ("keep", r"op keep: keys=\(\) must be one or more"),
])
def test_op_arguments_are_checked_when_parsed(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_preprocess(f"decode|{spec}|flip_lr")


def test_central_crop_width_defaults_to_height_only_when_omitted():
    assert _run("central_crop(8,12)")["image"].shape == (8, 12, 3)
    assert _run("resize(8,12)")["image"].shape == (8, 12, 3)


def test_random_crop_larger_than_the_image_names_the_op():
    with pytest.raises(ValueError, match=r"random_crop\(40,2\): size=40 is larger than the "
                                         r"padded image \(24, 34\)"):
        _run("random_crop(40,2)")


def test_keep_drops_other_keys_and_names_missing_ones():
    assert _run("keep('image')").keys() == {"image"}
    with pytest.raises(ValueError, match=r"op keep: the example has no \['mask'\]; it has "
                                         r"keys \['image', 'label'\]"):
        _run("keep('image','mask')")
