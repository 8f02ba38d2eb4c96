"""The ViT throughput benchmark runs on a tiny shape and writes its JSON (speed is not
asserted; FLOPs and MFU are checked for consistency only)."""

import jax

import vit
from benchmarks.vit_steps import model_flops, peak_reached_since, training_step
from tests.benchmarks.runner import run_benchmark
from trainer import host_memory


def test_vit_throughput_benchmark_runs(tmp_path):
    payload = run_benchmark(tmp_path, "vit_throughput", "--models=ViT-micro", "--batch_size=2",
                            "--image_size=32", "--repeats=1", "--matmul_size=256",
                            timeout=300)
    row = payload["results"][0]
    assert row["model"] == "ViT-micro" and row["train_examples_per_sec"] > 0
    # A training step (forward, backward, AdamW) costs about 3x the forward pass.
    assert row["train_gflops_per_step"] > 2 * row["infer_gflops_per_batch"] > 0
    seconds = row["train_step_ms"] / 1000
    assert abs(row["train_tflops_per_sec"] * seconds * 1e3 - row["train_gflops_per_step"]) \
        < 1e-6 * row["train_gflops_per_step"] + 1e-9
    assert 0 < row["train_mfu"] and payload["peak_tflops"] > 0
    # The peak: measured before the model and after it, the best of the two kept.
    assert len(payload["peak_tflops_measured"]) == 2
    assert payload["peak_tflops"] == max(payload["peak_tflops_measured"])
    assert abs(row["train_mfu"] * payload["peak_tflops"] - row["train_tflops_per_sec"]) \
        < 1e-9 * row["train_tflops_per_sec"]
    # The step's own memory, from XLA's analysis on every backend; the device's counter (the
    # whole process's peak) only beside it, and only where there is one.
    assert row["memory_source"] == "XLA memory analysis of the training step"
    assert row["peak_memory_mb"] > 0
    if jax.default_backend() == "cpu":
        assert row["device_peak_memory_mb"] is None
    assert row["train_page_faults_per_step"] >= 0 and row["train_system_cpu_s_per_step"] >= 0
    # Run as `python -m benchmarks.vit_throughput`, it restarted itself as the launcher does
    # (trainer.host_memory) where glibc and transparent huge pages are there.
    if host_memory.restart_tunables() is not None:
        assert "glibc.malloc.hugetlb=1" in payload["environment"]["glibc_tunables"]


def test_fused_attention_calls_are_counted_in_the_compiled_programs():
    """The benchmark's count of cuDNN attention calls (``attention="cudnn"``): on a GPU one per
    layer in the inference pass and at least forward and backward per layer in the training
    step; on the CPU, where the request falls back to XLA's attention, none."""
    built = training_step("ViT-micro", batch_size=2, image_size=32, precision="bfloat16",
                          attention="cudnn")
    layers = vit.VIT_VARIANTS["ViT-micro"]["num_layers"]
    if jax.default_backend() == "gpu":
        assert built["infer_fused_attention_calls"] == layers
        assert built["train_fused_attention_calls"] >= 2 * layers
        # The FLOP count includes the kernel's matmuls (trainer.throughput.
        # cudnn_attention_flops): XLA's count of the written-out attention within 5% (the
        # softmax's elementwise FLOPs are not counted for the kernel, its padding of 65 tokens
        # to 66 is); without them it would be about a third lower for this model.
        xla = training_step("ViT-micro", batch_size=2, image_size=32, precision="bfloat16",
                            attention="xla")
        for flops in ("train_flops", "infer_flops"):
            assert abs(built[flops] / xla[flops] - 1) < 0.05, (flops, built[flops], xla[flops])
    else:
        assert built["infer_fused_attention_calls"] == 0
        assert built["train_fused_attention_calls"] == 0


def test_a_scanned_or_rematerialised_model_counts_the_plain_models_flops():
    """A scanned stack's layer is one loop body (counted once by XLA's cost analysis), and
    remat adds recomputation: both are counted as the plain model, as in the launcher."""
    plain = model_flops("ViT-micro", batch_size=2, image_size=32, precision="float32")
    assert plain[0] > 2 * plain[1] > 0  # a step costs about three forward passes
    for overrides in ({"scan_layers": True}, {"remat_policy": "full"}):
        assert model_flops("ViT-micro", batch_size=2, image_size=32, precision="float32",
                           model_overrides=overrides) == plain, overrides


def test_a_device_peak_counts_only_when_the_model_raised_it():
    """The device's counter is process-wide: with ViT-B/16 benchmarked before ViT-Ti/16, the
    peak read after ViT-Ti is still ViT-B's, and is not reported as ViT-Ti's."""
    assert peak_reached_since(None, 5) == 5  # nothing held before this model
    assert peak_reached_since(3, 5) == 5
    assert peak_reached_since(5, 5) is None  # an earlier model's peak, not this one's
    assert peak_reached_since(None, None) is None  # the CPU: no counter
