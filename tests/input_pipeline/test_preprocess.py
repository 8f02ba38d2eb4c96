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
    ("random_resized_crop(12)", (12, 12, 3)), ("resize_small(10,'bicubic',True)", (10, 15, 3)),
    ("inception_crop(12,method='bicubic')", (12, 12, 3)),
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


def test_central_crop_offsets_round_down_as_big_vision():
    """An odd margin (11 rows, 21 columns) cannot be split evenly: big_vision's central_crop
    puts the extra pixel below and right (offsets 5 and 10, rounded down); rounding half up,
    as torchvision's CenterCrop can, would start one row lower."""
    image = np.random.default_rng(1).integers(0, 256, (21, 31, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_run("central_crop(10)", image=image)["image"],
                                  image[5:15, 10:20])


def test_flip_lr_mirrors_the_columns_of_half_the_images():
    """Each output is the image or its left-right mirror (columns reversed, rows kept), the
    mirror for about half of the seeds: a flip of the rows, or a flip probability other than
    1/2, fails."""
    flipped = 0
    for seed in range(64):
        out = _run("flip_lr", seed=seed)["image"]
        if np.array_equal(out, IMAGE[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, IMAGE)
    assert 20 <= flipped <= 44, flipped  # Binomial(64, 1/2): 32 ± 3 standard deviations


def test_random_crop_offsets_reach_both_edges():
    """random_crop(8) of a 12x12 image whose pixels hold their row and column: every offset
    0..4 is drawn, in rows and in columns, so crops flush with the bottom and right edges
    exist, as with torchvision's RandomCrop (randint's high end included)."""
    rows, cols = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    image = np.stack([rows, cols, rows], -1).astype(np.uint8)
    tops, lefts = set(), set()
    for seed in range(60):
        out = _run("random_crop(8)", image=image, seed=seed)["image"]
        top, left = int(out[0, 0, 0]), int(out[0, 0, 1])
        np.testing.assert_array_equal(out, image[top:top + 8, left:left + 8])
        tops.add(top)
        lefts.add(left)
    assert tops == lefts == {0, 1, 2, 3, 4}


def test_unknown_op_lists_known_ones():
    with pytest.raises(ValueError, match="unknown preprocessing op 'blur'.*known ops"):
        parse_preprocess("resize(8)|blur(3)")
    with pytest.raises(ValueError, match="bad arguments"):
        parse_preprocess("resize(1,2,'area',False,5)")  # one more than resize takes
    with pytest.raises(ValueError, match="bad arguments"):
        parse_preprocess("resize(8,size=3)")


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_sum_to_one(mixup, cutmix):
    """Four examples, image i constant at 10**i with label i. Targets sum to one, and a
    mixed image's mean is sum_k target[k] * 10**k only if the targets mix the labels of the
    very images mixed (timm's partner, the batch reversed; with two examples, as below,
    every pairing is the reversal). With both methods, switch_prob=1 always cuts (each pixel
    one of the two images') and switch_prob=0 always mixes (each pixel the same blend)."""
    values = 10.0 ** np.arange(4)
    images = jnp.asarray(np.broadcast_to(values[:, None, None, None], (4, 6, 6, 1)),
                         jnp.float32)
    mix = jax.jit(lambda r, p: mixup_cutmix(r, images, jnp.eye(4), mixup_alpha=mixup,
                                            cutmix_alpha=cutmix, switch_prob=p))
    for switch_prob in ((1.0, 0.0) if mixup and cutmix else (0.5,)):
        for seed in range(3):
            mixed, targets = (np.asarray(x) for x in mix(jax.random.key(seed), switch_prob))
            assert mixed.shape == images.shape and not np.allclose(mixed, images)
            np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
            np.testing.assert_allclose(mixed.mean(axis=(1, 2, 3)), targets @ values, rtol=1e-5)
            partner = targets[np.arange(4), 3 - np.arange(4)]
            assert np.all(partner > 0.01), partner  # else the pairing check is vacuous
            for i, image in enumerate(mixed):
                if switch_prob == 1.0:
                    assert set(np.unique(image)) <= {values[i], values[3 - i]}
                elif switch_prob == 0.0:
                    assert np.unique(image).size == 1


def test_cutmix_label_weight_is_the_box_area():
    images = jnp.zeros((2, 10, 10, 1)).at[1].set(1.0)
    labels = jnp.eye(2)
    mixed, targets = mixup_cutmix(jax.random.key(0), images, labels, cutmix_alpha=1.0)
    pasted = float(mixed[0].mean())  # example 0 received a box of example 1's ones
    np.testing.assert_allclose(targets[0, 1], pasted, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 2])  # lam = 0.57 and 0.05
def test_mixup_label_weight_is_the_partners_share_of_the_image(seed):
    """Images of zeros and ones: example 0's mixed pixels are the partner's weight (1 - lam),
    which its target must give the partner's label. A mixup whose targets used lam instead
    (the image mostly one example, the target mostly the other) sums to one all the same."""
    images = jnp.zeros((2, 10, 10, 1)).at[1].set(1.0)
    labels = jnp.eye(2)
    mixed, targets = mixup_cutmix(jax.random.key(seed), images, labels, mixup_alpha=0.8)
    partner_share = float(mixed[0].mean())
    # Away from 1/2, where lam and 1 - lam would agree and the check would prove nothing.
    assert abs(partner_share - 0.5) > 0.05, partner_share
    np.testing.assert_allclose(targets[0, 1], partner_share, atol=1e-6)
    np.testing.assert_allclose(targets[1, 0], 1.0 - float(mixed[1].mean()), atol=1e-6)


def test_mixup_lam_is_drawn_from_a_symmetric_beta():
    """The mixing ratio lam ~ Beta(alpha, alpha) (Zhang et al., 2018): for alpha = 0.4, mean
    1/2 and variance 1 / (4 (2 alpha + 1)) = 0.139, read from 4000 seeded draws (image 0
    zeros, its partner ones, so image 0's pixels are 1 - lam). The tolerances are about 4
    standard errors (0.006 for the mean, 0.0014 for the variance); Beta(alpha, 1), drawn
    in place of Beta(alpha, alpha), has mean 0.29 and variance 0.085."""
    alpha = 0.4
    images = jnp.zeros((2, 1, 1, 1)).at[1].set(1.0)
    draw = jax.jit(jax.vmap(lambda r: 1.0 - mixup_cutmix(r, images, jnp.eye(2),
                                                          mixup_alpha=alpha)[0][0, 0, 0, 0]))
    lam = np.asarray(draw(jax.random.split(jax.random.key(0), 4000)), np.float64)
    variance = 1.0 / (4.0 * (2.0 * alpha + 1.0))
    assert abs(lam.mean() - 0.5) < 4 * np.sqrt(variance / lam.size), lam.mean()
    assert abs(lam.var() - variance) < 3 * variance / np.sqrt(lam.size), (lam.var(), variance)


def test_mixup_and_cutmix_together_keep_bfloat16_images():
    """With both methods on, lax.cond needs both branches in one dtype: mixup's float32 lam
    used to promote bfloat16 images there, and tracing failed. (eval_shape traces without
    compiling: the failure was at trace time.)"""
    images = jnp.zeros((2, 8, 8, 1), jnp.bfloat16).at[1].set(1.0)
    labels = jnp.eye(2)
    mixed, targets = jax.eval_shape(lambda r: mixup_cutmix(
        r, images, labels, mixup_alpha=0.8, cutmix_alpha=1.0), jax.random.key(0))
    assert mixed.dtype == jnp.bfloat16 and mixed.shape == images.shape
    # The values: mixup alone (no cond) mixes in float32 and casts back, like the branch.
    mixed, targets = mixup_cutmix(jax.random.key(0), images, labels, mixup_alpha=0.8)
    assert mixed.dtype == jnp.bfloat16
    # bfloat16 holds the mixed values to about 3 significant digits.
    np.testing.assert_allclose(targets[0, 1], float(mixed[0].astype(jnp.float32).mean()),
                               atol=1e-2)


def test_cutmix_box_sides_are_at_most_the_cut_and_empty_when_lam_is_1():
    """timm's rand_bbox: sides sqrt(1 - lam) of the image's, clipped at its edges, so lam=1
    pastes nothing and lam=0.75 pastes at most 4x4 of 8x8 (exactly 4x4 away from the
    edges)."""
    from input_pipeline.mixup import _cutmix_box

    sides = set()
    for seed in range(8):
        assert not np.asarray(_cutmix_box(jax.random.key(seed), 8, 8, 1.0)).any()
        box = np.asarray(_cutmix_box(jax.random.key(seed), 8, 8, 0.75))
        rows, cols = np.nonzero(box)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert box.sum() == height * width  # a rectangle
        sides |= {int(height), int(width)}
    assert max(sides) == 4, sides


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
    ("resize(32,method='nearest')", r"op resize: method='nearest' must be one of "
                                     r"\('bilinear', 'bicubic', 'area'\)"),
    ("resize(32,antialias=1)", r"op resize: antialias=1 must be True or False"),
    ("resize_small(32,'area',True)", r"op resize_small: method='area' takes no "
                                     r"antialias=True; antialiased resizing is one of"),
    ("inception_crop(32,method='lanczos3')", r"op inception_crop: method='lanczos3' must be"),
    ("random_resized_crop(0)", r"op random_resized_crop: size=0 must be a positive integer"),
    ("random_resized_crop(32,8,100)", r"op random_resized_crop: scale_min=8, scale_max=100 "
                                      r"must satisfy 0 < scale_min <= scale_max <= 1: they "
                                      r"are fractions .* written 0.08, 1.0"),
    ("random_resized_crop(32,0.5,0.1)", r"scale_min=0.5, scale_max=0.1 must satisfy"),
    ("random_resized_crop(32,scale_min=0)", r"scale_min=0, scale_max=1 must satisfy"),
    ("random_resized_crop(32,scale_max='1')", r"op random_resized_crop: scale_max='1' must be "
                                              r"a finite number"),
    ("random_resized_crop(32,method='area')", r"op random_resized_crop: method='area' must be "
                                              r"one of \('bilinear', 'bicubic'\)"),
    ("resize(32,method=bicubic)", r"malformed preprocessing op 'resize\(32,method=bicubic\)'"
                                  r".*Python literals"),
    ("resize(32,**{'method':'area'})", r"malformed preprocessing op"),
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
    ("random_erasing(1.5)", r"op random_erasing: prob=1.5 must be in \[0, 1\]"),
    ("random_erasing(0.25,2,33)", r"op random_erasing: area_min=2, area_max=33 must satisfy "
                                  r"0 < area_min <= area_max < 1 \(fractions"),
    ("random_erasing(0.25,aspect_min=3)", r"op random_erasing: aspect_min=3 must be in"),
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


# ----------------------------------------------------------------------------- resizing
# big_vision resizes with TF2's tf.image.resize (half-pixel centres, no antialiasing) and casts
# back to uint8 by truncation. jax.image.resize(antialias=False) follows the same convention,
# so it is an independent float reference; float input images come back as floats (big_vision
# casts back to the input dtype), which exposes the op's values before the cast.
RESIZE_SHAPES = [(7, 11), (45, 37), (13, 40)]  # down, up, down one axis and up the other


@pytest.mark.parametrize("shape", RESIZE_SHAPES)
def test_resize_is_tf2_bilinear_then_truncated_to_uint8(shape):
    want = np.asarray(jax.image.resize(IMAGE.astype(np.float32), shape + (3,), "linear",
                                       antialias=False))
    floats = _run(f"resize{shape}", image=IMAGE.astype(np.float32))["image"]
    assert floats.dtype == np.float32
    # float32 accuracy, not agreement to the last bit: at (45, 37) both this op and JAX's
    # resize are up to 2.4e-4 from the float64 value (pixels 0-255), and JAX's own result
    # moves by 2e-4 with XLA's code generation (its LLVM optimisation level, tests/xla_flags.py).
    # A wrong convention (pixel centres, corners, antialiasing) is off by whole units.
    np.testing.assert_allclose(floats, want, atol=1e-3)
    out = _run(f"resize{shape}")["image"]
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.floor(np.clip(floats, 0, 255)))
    assert np.any(out != np.rint(floats))  # truncated: PIL (and rounding) would differ here


@pytest.mark.parametrize("shape", RESIZE_SHAPES)
def test_bicubic_resize_is_tf2_keys_cubic(shape):
    """TF's bicubic kernel is Keys' cubic (a=-0.5), as jax's, but reads the weights from a
    table of 1/1024 steps, hence a tolerance of a fraction of a grey level."""
    want = np.asarray(jax.image.resize(IMAGE.astype(np.float32), shape + (3,), "cubic",
                                       antialias=False))
    got = _run(f"resize({shape[0]},{shape[1]},'bicubic')", image=IMAGE.astype(np.float32))
    np.testing.assert_allclose(got["image"], want, atol=0.25)
    assert np.abs(got["image"] - want).mean() < 0.05


@pytest.mark.parametrize("shape", RESIZE_SHAPES + [(10, 15)])
def test_area_resize_averages_the_covered_box(shape):
    """TF's area resize: each output pixel is the mean of the input box it covers. Repeating
    every pixel out_h x out_w times makes that box a whole block of the repeated image."""
    height, width = shape
    repeated = np.repeat(np.repeat(IMAGE.astype(np.float64), height, 0), width, 1)
    want = repeated.reshape(height, 20, width, 30, 3).mean(axis=(1, 3))
    got = _run(f"resize({height},{width},'area')", image=IMAGE.astype(np.float32))["image"]
    # 2e-3: float32 box edges, as in TF's kernel, against this float64 reference
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_resize_small_defaults_to_area_as_big_vision():
    out = _run("resize_small(10)")["image"]  # 20x30 -> 10x15: means of 2x2 blocks, truncated
    blocks = IMAGE.astype(np.float64).reshape(10, 2, 15, 2, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(out, np.floor(blocks))


def test_resize_small_is_an_area_resize_keeping_the_aspect_ratio():
    """resize_small(8) of 20x30 is a 2.5x area resize to 8x12 (each output pixel the mean of
    the 2.5x2.5 box it covers, as the repeated-pixel reference of the area test), where
    bilinear sampling would differ (at exactly 2x, as in the test above, the two agree). The
    longer side is rounded: 31 * 7/20 = 10.85 gives 11 rows or columns, not 10."""
    floats = IMAGE.astype(np.float32)
    repeated = np.repeat(np.repeat(floats.astype(np.float64), 8, 0), 12, 1)
    want = repeated.reshape(8, 20, 12, 30, 3).mean(axis=(1, 3))
    got = _run("resize_small(8)", image=floats)["image"]
    np.testing.assert_allclose(got, want, atol=2e-3)
    bilinear = _run("resize_small(8,'bilinear')", image=floats)["image"]
    assert np.abs(bilinear - want).max() > 1
    assert _run("resize_small(7)", image=np.zeros((20, 31, 3), np.uint8))["image"].shape == (
        7, 11, 3)
    assert _run("resize_small(7)", image=np.zeros((31, 20, 3), np.uint8))["image"].shape == (
        11, 7, 3)


def test_antialias_is_pils_filter():
    from PIL import Image

    for method, pil_filter in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
        want = np.asarray(Image.fromarray(IMAGE).resize((11, 7), pil_filter))
        got = _run(f"resize(7,11,'{method}',antialias=True)")["image"]
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- crops
def _tf_generate_random_crop_port(height, width, rng, area_min, area_max):
    """A plain port of TF's SampleDistortedBoundingBox with big_vision's arguments (no boxes,
    min_object_covered=0, aspect 0.75-1.33, 100 attempts, whole image on failure), float32
    where the kernel uses float, written separately from input_pipeline.preprocess."""
    f32 = np.float32
    lrintf = lambda value: int(np.rint(f32(value)))  # rounds half to even
    low_fraction, high_fraction = f32(area_min / 100.0), f32(area_max / 100.0)
    for _ in range(100):
        aspect = f32(f32(rng.random()) * (f32(1.33) - f32(0.75)) + f32(0.75))
        min_area = f32(f32(low_fraction * f32(width)) * f32(height))
        max_area = f32(f32(high_fraction * f32(width)) * f32(height))
        h = lrintf(np.sqrt(f32(min_area / aspect)))
        max_h = lrintf(np.sqrt(f32(max_area / aspect)))
        if lrintf(f32(max_h) * aspect) > width:
            max_h = int((width + 0.5 - float(f32(1e-7))) / float(aspect))
            if lrintf(f32(max_h) * aspect) > width:
                max_h = max_h - 1
        if max_h > height:
            max_h = height
        if h >= max_h:
            h = max_h
        if h < max_h:
            h = h + int(rng.integers(0, max_h - h + 1))
        w = lrintf(f32(h) * aspect)
        if f32(w * h) < min_area:
            h, w = h + 1, lrintf(f32(h + 1) * aspect)
        if f32(w * h) > max_area:
            h, w = h - 1, lrintf(f32(h - 1) * aspect)
        area = f32(w * h)
        if not (min_area <= area <= max_area and 0 < w <= width and 0 < h <= height):
            continue
        y = int(rng.integers(0, height - h)) if h < height else 0  # Uniform(n): [0, n)
        x = int(rng.integers(0, width - w)) if w < width else 0
        return y, x, h, w
    return 0, 0, height, width


def _crop_statistics(sampler, height, width, seed, n=4000):
    rng = np.random.default_rng(seed)
    boxes = np.array([sampler(height, width, rng, 5, 100) for _ in range(n)])
    area = boxes[:, 2] * boxes[:, 3] / (height * width)
    aspect = boxes[:, 3] / boxes[:, 2]
    quantiles = (0.1, 0.25, 0.5, 0.75, 0.9)
    return dict(area_mean=area.mean(), area_q=np.quantile(area, quantiles),
                aspect_mean=aspect.mean(), aspect_q=np.quantile(aspect, quantiles),
                # crops flush with the bottom edge, which TF's [0, n) offsets never draw
                at_bottom=int(np.sum((boxes[:, 0] + boxes[:, 2] == height)
                                     & (boxes[:, 2] < height))))


def _assert_same_crop_distribution(got, want):
    # About 5 standard errors of 4000 draws per side (fixed seeds, so no flakiness).
    assert abs(got["area_mean"] - want["area_mean"]) < 0.03, (got, want)
    np.testing.assert_allclose(got["area_q"], want["area_q"], atol=0.05)
    assert abs(got["aspect_mean"] - want["aspect_mean"]) < 0.015, (got, want)
    np.testing.assert_allclose(got["aspect_q"], want["aspect_q"], atol=0.03)
    assert got["at_bottom"] == want["at_bottom"] == 0, (got, want)


@pytest.mark.parametrize("height, width", [(32, 32), (375, 500)])
def test_inception_crop_samples_like_tf_sample_distorted_bounding_box(height, width):
    from input_pipeline.preprocess import _inception_crop_box, _random_resized_crop_box

    want = _crop_statistics(_tf_generate_random_crop_port, height, width, seed=1)
    _assert_same_crop_distribution(
        _crop_statistics(_inception_crop_box, height, width, seed=2), want)
    # The check has power: torchvision's sampler (area uniform, ratio log-uniform), which
    # inception_crop used before, fails it.
    torchvision_style = lambda h, w, rng, low, high: _random_resized_crop_box(
        h, w, rng, low / 100, high / 100)
    with pytest.raises(AssertionError):
        _assert_same_crop_distribution(
            _crop_statistics(torchvision_style, height, width, seed=2), want)


def test_inception_crop_resizes_its_box_and_falls_back_to_the_whole_image():
    from input_pipeline.preprocess import _inception_crop_box

    op = parse_preprocess("inception_crop(12,5,100)")[0]
    for seed in range(4):
        top, left, height, width = _inception_crop_box(20, 30, np.random.default_rng(seed), 5,
                                                       100)
        out = op.random_map({"image": IMAGE}, np.random.default_rng(seed))["image"]
        crop = IMAGE[top:top + height, left:left + width]
        np.testing.assert_array_equal(out, _run("resize(12)", image=crop)["image"])
    # No crop of >= 50% of a 4x200 image has an aspect ratio <= 1.33: all 100 attempts fail.
    rng = np.random.default_rng(0)
    assert _inception_crop_box(4, 200, rng, 50, 100) == (0, 0, 4, 200)


def test_random_resized_crop_falls_back_to_a_central_crop_within_the_ratio_range():
    """torchvision's fallback after 10 failed attempts: the largest central crop whose aspect
    ratio is clamped to [3/4, 4/3] (not the whole image, as TF's)."""
    from PIL import Image

    from input_pipeline.preprocess import _random_resized_crop_box

    rng = np.random.default_rng(0)
    # Crops of >= 50% of the area cannot have ratio <= 4/3 within 4 rows: width round(4*4/3).
    assert _random_resized_crop_box(4, 200, rng, 0.5, 1.0) == (0, 97, 4, 5)
    assert _random_resized_crop_box(200, 4, rng, 0.5, 1.0) == (97, 0, 5, 4)
    wide = np.random.default_rng(1).integers(0, 256, (4, 200, 3), dtype=np.uint8)
    out = _run("random_resized_crop(8,0.5,1.0)", image=wide)["image"]
    want = np.asarray(Image.fromarray(wide[:, 97:102]).resize((8, 8), Image.BILINEAR))
    np.testing.assert_array_equal(out, want)  # PIL's antialiasing filter, as torchvision's


def test_random_resized_crop_covers_its_area_and_ratio_range():
    from input_pipeline.preprocess import _random_resized_crop_box

    rng = np.random.default_rng(0)
    boxes = np.array([_random_resized_crop_box(375, 500, rng, 0.08, 1.0) for _ in range(2000)])
    top, left, height, width = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (top + height <= 375) & (left + width <= 500))
    area, ratio = height * width / (375 * 500), width / height
    # rounding to whole pixels moves a crop's area and ratio by about a percent
    assert area.min() >= 0.08 * 0.98 and area.max() <= 1 and area.min() < 0.1
    assert area.max() > 0.9
    assert ratio.min() >= 0.75 * 0.98 and ratio.max() <= 4 / 3 * 1.02
    # torchvision's offsets include both ends, so some crops touch the bottom edge
    assert np.any((top + height == 375) & (height < 375))


def test_pil_resizing_names_the_dtype_it_needs():
    with pytest.raises(ValueError, match=r"PIL resizing \(antialias=True, random_resized_crop\) "
                                         r"expects uint8 .* got float32"):
        _run("resize(8,antialias=True)", image=IMAGE.astype(np.float32))


def test_random_erasing_fills_one_box_with_noise_in_a_quarter_of_the_images():
    """timm's RandomErasing(0.25, mode="pixel"): a box of 2-33% of the area, aspect 0.3-3.3,
    standard normal noise; the rest of the image untouched."""
    image = np.full((32, 48, 3), 7.0, np.float32)  # a value the noise never takes exactly
    erased, areas = 0, []
    for seed in range(400):
        out = _run("random_erasing(0.25)", image=image, seed=seed)["image"]
        changed = np.any(out != 7.0, axis=-1)
        if not changed.any():
            continue
        erased += 1
        rows, cols = np.nonzero(changed)
        box = out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert np.all(box != 7.0), "the changed pixels form one filled rectangle"
        areas.append(box.shape[0] * box.shape[1] / (32 * 48))
        assert abs(float(box.mean())) < 1 and 0.5 < float(box.std()) < 1.5
    assert 0.18 < erased / 400 < 0.32  # 0.25 within 3.3 standard deviations
    assert 0.015 <= min(areas) and max(areas) <= 0.36
    assert 0.12 < np.mean(areas) < 0.22  # uniform in [0.02, 1/3]: mean 0.18
    with pytest.raises(ValueError, match="random_erasing expects float images after normalize"):
        _run("random_erasing(1.0)")


def test_random_erasing_boxes_are_strictly_inside_and_reach_the_edges():
    """On a 4x6 image timm's box must be strictly smaller than the image in both sides (a box
    of the full height is redrawn), and its offsets include both ends (``randint(0, H - h)``),
    so some boxes touch the bottom and the right edge."""
    image = np.full((4, 6, 1), 7.0, np.float32)
    bottom = right = 0
    for seed in range(200):
        changed = _run("random_erasing(1.0)", image=image, seed=seed)["image"][..., 0] != 7.0
        if not changed.any():
            continue  # 10 attempts without a fit: nothing erased
        rows, cols = np.nonzero(changed)
        assert rows.max() - rows.min() + 1 < 4 and cols.max() - cols.min() + 1 < 6
        bottom += rows.max() == 3
        right += cols.max() == 5
    assert bottom > 0 and right > 0
