"""The compression report's figures: a model's FLOPs do not depend on how its layers are
scheduled (scanned or not) or how its parameters are placed (FSDP-sharded or replicated)."""

import jax
import numpy as np
import pytest

import vit
from trainer import compression_report, partitioning

# The reference counts are XLA's cost analysis of lowered programs, which JAX gives on the CPU
# only, and the sharding test needs the 8 simulated CPU devices.
pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU cost analysis")

IMAGES = np.zeros((4, 8, 8, 1), np.float32)
LAYERS = 3


def tiny_vit(**fields):
    return vit.create_model("ViT-micro", num_classes=10, image_size=8, patch_size=4,
                            num_channels=1, hidden_size=16, num_layers=LAYERS, num_heads=2,
                            mlp_dim=32, **{"classifier": "gap", **fields})


def init(model):
    """Parameters of the right shapes (ones): FLOPs and timing need no trained values, and
    compiling the initialisers' random numbers took seconds."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), IMAGES[:1])["params"]
    return jax.tree.map(lambda leaf: np.ones(leaf.shape, leaf.dtype), shapes)


def hand_count(layers):
    """Parameters of ``tiny_vit`` (GAP: no class token), written out."""
    width, mlp, patch_pixels, patches, classes = 16, 32, 4 * 4 * 1, 4, 10
    embedding = patch_pixels * width + width
    positions = patches * width
    block = (2 * 2 * width                      # two LayerNorms (scale, bias)
             + 4 * (width * width + width)      # query, key, value, output projections
             + width * mlp + mlp + mlp * width + width)  # MLP
    return embedding + positions + layers * block + 2 * width + width * classes + classes


def lowered_cost_analysis_flops(model, params, images):
    """XLA's own count of the unscanned forward pass, without the report's code."""
    lowered = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(
        params, images)
    return float(lowered.cost_analysis()["flops"])


def test_a_scanned_stack_counts_every_layer(tmp_path):
    """XLA's cost analysis counts a loop's body once: a scanned stack read directly is about
    one layer. The report counts the scanned model as its unrolled twin, so a teacher and a
    student that differ only in scan_layers compress by exactly 1."""
    unscanned, scanned = tiny_vit(), tiny_vit(scan_layers=True)
    unscanned_params, scanned_params = init(unscanned), init(scanned)
    expected = lowered_cost_analysis_flops(unscanned, unscanned_params, IMAGES)
    # The loop undercount the report must avoid (why this test exists).
    assert lowered_cost_analysis_flops(scanned, scanned_params, IMAGES) < 0.6 * expected
    report = compression_report.write_report(
        str(tmp_path), {"student": (unscanned, unscanned_params),
                        "teacher": (scanned, scanned_params)}, IMAGES, {})
    rows = report["models"]
    assert report["compression"]["flops"] == pytest.approx(1.0, rel=1e-9)
    assert report["compression"]["parameters"] == 1.0
    for name in ("student", "teacher"):
        assert rows[name]["flops_per_example"] == pytest.approx(expected / len(IMAGES),
                                                                rel=1e-9), name
        assert rows[name]["parameters"] == hand_count(LAYERS), name


def test_a_scanned_class_token_model_is_counted_with_its_full_last_block():
    """A scanned stack cannot cut its last block short (skip_unread_tokens), so it computes
    every token there: its count is that of the unscanned model that does the same."""
    scanned = tiny_vit(classifier="token", scan_layers=True)
    full = tiny_vit(classifier="token", skip_unread_tokens=False)
    skipping = tiny_vit(classifier="token")
    params = init(full)
    got = compression_report.measure_forward(scanned, init(scanned), IMAGES,
                                             repeats=1)["flops_per_example"] * len(IMAGES)
    assert got == pytest.approx(lowered_cost_analysis_flops(full, params, IMAGES), rel=1e-9)
    assert got > 1.05 * lowered_cost_analysis_flops(skipping, params, IMAGES)


class DeviceSpy:
    """A model whose forward pass records on how many devices each array it reads lives
    (``jax.debug.inspect_array_sharding`` reports the compiled program's placement)."""

    def __init__(self, model):
        self.model, self.devices = model, []

    def apply(self, variables, inputs, train):
        for leaf in jax.tree.leaves((variables, inputs)):
            jax.debug.inspect_array_sharding(
                leaf, callback=lambda sharding: self.devices.append(len(sharding.device_set)))
        return self.model.apply(variables, inputs, train=train)


def test_an_fsdp_sharded_student_is_measured_as_a_replicated_one():
    """On one host the launcher hands over the student in the train state's FSDP sharding and
    the teacher replicated; a per-device count would give the sharded one a fraction of its
    FLOPs. Both are measured on one device, so the figures agree."""
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    model = tiny_vit()
    params = init(model)
    mesh = partitioning.make_mesh({"data": 1, "fsdp": 8})
    shardings = partitioning.state_shardings(jax.eval_shape(lambda: params), mesh,
                                             min_fsdp_size=1)
    sharded = jax.device_put(params, shardings)
    assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded))
    replicated = jax.device_put(params, partitioning.replicated(mesh))
    rows = {name: compression_report.measure_forward(model, p, IMAGES, repeats=1)
            for name, p in (("sharded", sharded), ("replicated", replicated))}
    expected = lowered_cost_analysis_flops(model, params, IMAGES) / len(IMAGES)
    for name, row in rows.items():
        assert row["flops_per_example"] == pytest.approx(expected, rel=1e-9), name
        assert row["parameters"] == hand_count(LAYERS), name
    # Timed alike: the sharded student's forward pass, as the teacher's, runs on one device
    # (a program over 8 devices would be timed with its collectives and 8-way split).
    spy = DeviceSpy(model)
    compression_report.measure_forward(spy, sharded, IMAGES, repeats=1)
    assert spy.devices and set(spy.devices) == {1}


def test_the_report_divides_teacher_by_student_and_reads_each_accuracy(tmp_path, monkeypatch):
    """The compression ratios are the teacher's parameters and FLOPs over the student's and
    the student's throughput over the teacher's (all > 1 for a smaller, faster student); each
    row's accuracy is its own entry of the final evaluation; the JSON file holds the report
    returned. The measurements are given (a stub), so only the report's arithmetic runs."""
    measured = {"student": dict(parameters=100, flops_per_example=2e3, examples_per_sec=400.0),
                "teacher": dict(parameters=300, flops_per_example=8e3, examples_per_sec=100.0)}
    monkeypatch.setattr(compression_report, "measure_forward",
                        lambda model, params, inputs: dict(measured[model]))
    final_eval = {"eval/accuracy": 0.75, "eval/teacher_accuracy": 0.875, "eval/agreement": 0.5}
    report = compression_report.write_report(
        str(tmp_path), {"student": ("student", None), "teacher": ("teacher", None)}, IMAGES,
        final_eval, quality={"nn_agreement": 0.25})
    assert report["compression"] == {"parameters": 3.0, "flops": 4.0, "speedup": 4.0}
    assert report["models"]["student"]["accuracy"] == 0.75
    assert report["models"]["teacher"]["accuracy"] == 0.875
    assert report["top1_agreement"] == 0.5 and report["quality"] == {"nn_agreement": 0.25}
    import json

    with open(tmp_path / "compression_report.json") as f:
        assert json.load(f) == report


def test_latency_and_throughput_are_one_measurement_in_its_units():
    """``latency_ms_per_batch`` is milliseconds for the whole batch and ``examples_per_sec``
    the batch over that latency in seconds: the two agree, and the latency of a forward pass
    of a tiny model is a plausible number of milliseconds (not seconds, not per example)."""
    model = tiny_vit()
    row = compression_report.measure_forward(model, init(model), IMAGES, repeats=3)
    assert row["batch_size"] == len(IMAGES)
    np.testing.assert_allclose(row["examples_per_sec"],
                               len(IMAGES) / (row["latency_ms_per_batch"] / 1000.0), rtol=1e-9)
    assert 1e-3 < row["latency_ms_per_batch"] < 1e4
