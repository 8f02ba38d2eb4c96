"""timm's RandAugment (``randaugment_timm``, DeiT's ``rand-m9-mstd0.5-inc1``): its ops give
timm's pixels (``tests/fixtures/randaugment/timm_ops.npz``, made by timm itself; see
``regenerate.py`` there), its draws have timm's distribution, and its arguments are checked when
the preprocessing string is parsed."""

import collections
import math
import os

import numpy as np
import pytest
from PIL import Image

from input_pipeline import parse_preprocess, randaugment

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "randaugment",
                       "timm_ops.npz")


@pytest.fixture(scope="module")
def timm_ops():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def test_each_op_gives_timms_pixels(timm_ops):
    """Every op of both of timm's op sets, at magnitudes 0-10 (9.37 as a noisy draw would be),
    both signs, DeiT's fill and bicubic resampling, and other filters and fills for the
    geometric ops: the same pixels as timm's ``AugmentOp``, exactly (same Pillow)."""
    assert set(timm_ops["op"]) == set(randaugment.TIMM_OPS)
    mismatches = []
    for case in range(len(timm_ops["op"])):
        name, index = str(timm_ops["op"][case]), int(timm_ops["image"][case])
        out = np.asarray(randaugment.timm_op(
            name, Image.fromarray(timm_ops["images"][index]), float(timm_ops["magnitude"][case]),
            bool(timm_ops["negate"][case]), tuple(int(v) for v in timm_ops["fill"][case]),
            str(timm_ops["method"][case])))
        if not np.array_equal(out, timm_ops["output"][case]):
            mismatches.append(f"{name}(magnitude={timm_ops['magnitude'][case]}, negate="
                              f"{timm_ops['negate'][case]}, {timm_ops['method'][case]}, "
                              f"image {index})")
    assert not mismatches, f"{len(mismatches)} cases differ from timm: {mismatches[:8]}"


def test_posterize_to_zero_bits_is_black(timm_ops):
    """Where timm's posterize keeps 0 bits, the installed Pillow raises inside timm; the op
    gives what older Pillow gave timm (and DeiT's runs): black."""
    raises = timm_ops["timm_raises"]
    assert set(timm_ops["op"][raises]) == {"posterize", "posterize_increasing"}
    assert not timm_ops["output"][raises].any()
    image = Image.fromarray(timm_ops["images"][0])
    for name, magnitude in (("posterize_increasing", 10.0), ("posterize", 2.4)):
        assert not np.asarray(randaugment.timm_op(name, image, magnitude)).any()
    assert np.asarray(randaugment.timm_op("posterize", image, 2.5)).any()  # 1 bit


def test_op_sets_and_deits_settings_are_timms(timm_ops):
    assert randaugment.TIMM_TRANSFORMS == tuple(timm_ops["transforms"])
    assert randaugment.TIMM_INCREASING_TRANSFORMS == tuple(timm_ops["increasing_transforms"])
    assert tuple(timm_ops["deit_ops"]) == randaugment.TIMM_INCREASING_TRANSFORMS
    assert randaugment.TIMM_FILL == tuple(timm_ops["deit_fill"])
    assert float(timm_ops["deit_magnitude_max"]) == randaugment.TIMM_LEVEL_DENOM


def test_the_deit_config_uses_timms_deit_randaugment(timm_ops):
    from configs import vit_imagenet

    pp_train = vit_imagenet.get_config("Ti_16").pp_train
    names = [repr(op) for op in parse_preprocess(pp_train)]
    want = (f"randaugment_timm({int(timm_ops['deit_num_layers'])},"
            f"{float(timm_ops['deit_magnitude']):g},"
            f"magnitude_std={float(timm_ops['deit_magnitude_std']):g},"
            f"prob={float(timm_ops['deit_prob']):g},increasing=True,"
            f"fill={tuple(int(v) for v in timm_ops['deit_fill'])},"
            f"method='{timm_ops['deit_method']}')")
    assert want in names, names
    # timm: crop and flip, then RandAugment, then ToTensor + Normalize, then random erasing.
    assert names.index("flip_lr") < names.index(want) < next(
        i for i, n in enumerate(names) if n.startswith("normalize"))
    assert not any(n.startswith("randaugment(") for n in names)


def _draws(images, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    return [randaugment.timm_draw(rng, **kwargs) for _ in range(images)]


def _clipped_normal_moments(mean, std, low, high):
    """Mean and std of ``clip(N(mean, std), low, high)``."""
    a, b = (low - mean) / std, (high - mean) / std
    pdf = [math.exp(-z * z / 2) / math.sqrt(2 * math.pi) for z in (a, b)]
    cdf = [0.5 * (1 + math.erf(z / math.sqrt(2))) for z in (a, b)]
    inside = cdf[1] - cdf[0]
    # E[X; a<Z<b] and E[X^2; a<Z<b] for X = mean + std Z, plus the clipped tails.
    first = mean * inside + std * (pdf[0] - pdf[1])
    second = (mean ** 2 * inside + 2 * mean * std * (pdf[0] - pdf[1])
              + std ** 2 * (inside + a * pdf[0] - b * pdf[1]))
    first += low * cdf[0] + high * (1 - cdf[1])
    second += low ** 2 * cdf[0] + high ** 2 * (1 - cdf[1])
    return first, math.sqrt(second - first ** 2)


@pytest.mark.parametrize("magnitude", [9.0, 0.3])
def test_magnitudes_are_normal_around_the_magnitude_and_clipped(magnitude):
    """Each applied op draws its own magnitude from N(magnitude, 0.5), clipped to [0, 10]."""
    plans = _draws(6_000, num_layers=2, magnitude=magnitude, magnitude_std=0.5, prob=1.0,
                   increasing=True)
    values = np.array([m for plan in plans for _, m, _ in plan])
    assert values.size == 12_000 and values.min() >= 0 and values.max() <= 10
    mean, std = _clipped_normal_moments(magnitude, 0.5, 0.0, 10.0)
    assert abs(values.mean() - mean) < 5 * std / math.sqrt(values.size)
    assert abs(values.std() - std) < 5 * std / math.sqrt(2 * values.size)
    # The clipped tail lands on the bound: 10 for m9 (2.3%), 0 for m0.3 (27%).
    bound = 10.0 if magnitude > 5 else 0.0
    tail = 0.5 * (1 + math.erf(-abs(bound - magnitude) / 0.5 / math.sqrt(2)))
    clipped = np.mean(values == bound)
    assert abs(clipped - tail) < 5 * math.sqrt(tail * (1 - tail) / values.size)
    assert len(np.unique(values)) > values.size // 2  # noise per op, not one per image
    fixed = _draws(100, num_layers=2, magnitude=magnitude, prob=1.0)
    assert {m for plan in fixed for _, m, _ in plan} == {magnitude}


@pytest.mark.parametrize("prob", [0.5, 0.2])
def test_each_op_applies_with_probability_prob(prob):
    plans = _draws(6_000, num_layers=2, magnitude=9, magnitude_std=0.5, prob=prob,
                   increasing=True)
    applied = sum(len(plan) for plan in plans) / 12_000
    assert abs(applied - prob) < 5 * math.sqrt(prob * (1 - prob) / 12_000)
    # Independently per op: both applied with probability prob^2.
    both = np.mean([len(plan) == 2 for plan in plans])
    assert abs(both - prob ** 2) < 5 * math.sqrt(prob ** 2 * (1 - prob ** 2) / 6_000)


@pytest.mark.parametrize("increasing", [True, False])
def test_ops_are_chosen_uniformly_with_replacement(increasing):
    plans = _draws(8_000, num_layers=2, magnitude=9, prob=1.0, increasing=increasing)
    names = (randaugment.TIMM_INCREASING_TRANSFORMS if increasing
             else randaugment.TIMM_TRANSFORMS)
    chosen = collections.Counter(name for plan in plans for name, _, _ in plan)
    counts = np.array([chosen[name] for name in names])
    assert counts.sum() == 16_000
    p = 1 / len(names)
    assert np.all(np.abs(counts / 16_000 - p) < 5 * math.sqrt(p * (1 - p) / 16_000))
    same = np.mean([plan[0][0] == plan[1][0] for plan in plans])  # 0 without replacement
    assert abs(same - p) < 5 * math.sqrt(p * (1 - p) / 8_000)


def test_only_signed_ops_draw_a_sign_each_way_half_the_time():
    plans = _draws(4_000, num_layers=2, magnitude=9, magnitude_std=0.5, prob=1.0,
                   increasing=True)
    signed = [negate for plan in plans for name, _, negate in plan
              if randaugment.TIMM_OPS[name].signed]
    unsigned = [negate for plan in plans for name, _, negate in plan
                if not randaugment.TIMM_OPS[name].signed]
    assert not any(unsigned)
    assert abs(np.mean(signed) - 0.5) < 5 * math.sqrt(0.25 / len(signed))
    assert {name for name, op in randaugment.TIMM_OPS.items() if op.signed} == {
        "rotate", "shear_x", "shear_y", "translate_x_rel", "translate_y_rel",
        "color_increasing", "contrast_increasing", "brightness_increasing",
        "sharpness_increasing"}


def test_apply_runs_the_drawn_ops_in_order(timm_ops):
    image = timm_ops["images"][1]
    kwargs = dict(num_layers=3, magnitude=9, magnitude_std=0.5, prob=0.5, increasing=True)
    style = dict(fill=(10, 200, 30), method="bilinear")
    for seed in range(6):
        out = randaugment.timm_apply(image, np.random.default_rng(seed), **kwargs, **style)
        want = Image.fromarray(image)
        for name, magnitude, negate in randaugment.timm_draw(np.random.default_rng(seed),
                                                             **kwargs):
            want = randaugment.timm_op(name, want, magnitude, negate, **style)
        np.testing.assert_array_equal(out, np.asarray(want))
        assert out.dtype == np.uint8 and out.shape == image.shape
    with pytest.raises(ValueError, match=r"randaugment_timm expects uint8 RGB images"):
        randaugment.timm_apply(image[..., :1], np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match=r"randaugment_timm expects uint8 RGB images"):
        randaugment.timm_apply(image / 255.0, np.random.default_rng(0), **kwargs)


def test_the_pp_op_is_seeded_and_keeps_the_shape(timm_ops):
    import grain

    from input_pipeline.loader import _apply

    spec = "randaugment_timm(2,9,magnitude_std=0.5,increasing=True)"
    image = timm_ops["images"][0]

    def run(seed):
        source = grain.MapDataset.source([{"image": image, "label": 3}]).seed(seed)
        return _apply(source, parse_preprocess(spec))[0]

    out = run(1)
    assert out["image"].shape == image.shape and out["label"] == 3
    np.testing.assert_array_equal(out["image"], run(1)["image"])
    assert any(not np.array_equal(out["image"], run(s)["image"]) for s in range(2, 8))


@pytest.mark.parametrize("spec, message", [
    ("randaugment_timm(-1,9)", r"op randaugment_timm: num_layers=-1 must be an integer >= 0"),
    ("randaugment_timm(2.0,9)", r"op randaugment_timm: num_layers=2.0 must be an integer"),
    ("randaugment_timm(2,11)", r"op randaugment_timm: magnitude=11 must be in \[0, 10\]"),
    ("randaugment_timm(2,'9')", r"op randaugment_timm: magnitude='9' must be a finite number"),
    ("randaugment_timm(2,9,-0.5)", r"op randaugment_timm: magnitude_std=-0.5 must be in "
                                   r"\[0, 100\] \(timm's mstd > 100, uniform magnitudes, is "
                                   r"not implemented\)"),
    ("randaugment_timm(2,9,magnitude_std=101)", r"magnitude_std=101 must be in \[0, 100\]"),
    ("randaugment_timm(2,9,prob=1.5)", r"op randaugment_timm: prob=1.5 must be in \[0, 1\]"),
    ("randaugment_timm(2,9,increasing=1)", r"op randaugment_timm: increasing=1 must be True "
                                           r"or False"),
    ("randaugment_timm(2,9,fill=(124,116))", r"op randaugment_timm: fill=\(124, 116\) must be "
                                             r"3 integers in \[0, 255\]"),
    ("randaugment_timm(2,9,fill=(124,116,300))", r"fill=\(124, 116, 300\) must be 3 integers"),
    ("randaugment_timm(2,9,fill=0.5)", r"fill=0.5 must be 3 integers"),
    ("randaugment_timm(2,9,method='lanczos')", r"op randaugment_timm: method='lanczos' must be "
                                               r"one of \('nearest', 'bilinear', 'bicubic'\)"),
    ("randaugment_timm(2,9,flavour='timm')", r"bad arguments for preprocessing op .*"
                                             r"unexpected keyword argument 'flavour'"),
])
def test_arguments_are_checked_when_parsed(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_preprocess(f"decode|{spec}|flip_lr")
