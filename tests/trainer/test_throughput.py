"""FLOP counting and the peak used for MFU."""

import jax
import jax.numpy as jnp
import pytest

from trainer import throughput


def test_lowered_flops_of_a_matmul_is_two_n_cubed():
    x = jnp.ones((64, 32), jnp.float32)
    y = jnp.ones((32, 16), jnp.float32)
    assert throughput.lowered_flops(jax.jit(jnp.matmul), x, y) == 2 * 64 * 32 * 16


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="accelerators use published peaks")
def test_cpu_peak_is_a_measured_matmul():
    peak, source = throughput.peak_flops("float32", matmul_size=128)
    assert peak > 0 and "measured float32 128x128 matmul" in source


def test_cpu_client_counts_a_lowered_program_as_the_backend_does():
    # The GPU's count (JAX has none for a lowered program there) comes from the CPU client.
    lowered = jax.jit(jnp.matmul).lower(jnp.ones((64, 32)), jnp.ones((32, 16)))
    by_cpu = throughput._cost_analysis_by_cpu_client(lowered)
    assert by_cpu["flops"] == 2 * 64 * 32 * 16
    if jax.default_backend() == "cpu":  # a GPU has none of its own (hence the CPU's)
        assert lowered.cost_analysis()["flops"] == by_cpu["flops"]
    assert throughput.lowered_flops(jax.jit(jnp.matmul), jnp.ones((64, 32)),
                                    jnp.ones((32, 16))) == by_cpu["flops"]


def test_cudnn_attention_flops_are_read_from_the_calls_operands():
    # Lines as JAX lowers cuDNN's fused attention (forward and backward) for a ViT-B/16 batch
    # of 256 with the query padded to 198 (transformer.attention), and one unrelated call.
    q = k = "tensor<256x198x12x64xbf16>"
    text = "\n".join([
        f'%5:2 = stablehlo.custom_call @__cudnn$fmhaSoftmax(%1, %2, %3, %4) {{api_version = 2 '
        f': i32, backend_config = "{{}}"}} : ({q}, {k}, {k}, tensor<0xbf16>) -> ({q}, '
        'tensor<256x12x198xf32>)',
        f'%9:3 = "stablehlo.custom_call"(%1, %2, %3) <{{call_target_name = '
        f'"__cudnn$fmhaSoftmaxBackward"}}> : ({q}, {k}, {k}) -> ({q}, {k}, {k})',
        '%10 = stablehlo.custom_call @Sharding(%9) : (tensor<4x4xf32>) -> tensor<4x4xf32>',
    ])
    forward = 4 * 256 * 198 * 12 * 64 * 198
    assert throughput.cudnn_attention_flops(text) == forward + 2 * forward
    assert throughput.cudnn_attention_flops("%1 = stablehlo.dot_general %a, %b") == 0


def test_published_peak_is_the_longest_matching_device_kind():
    assert throughput.published_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert throughput.published_peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert throughput.published_peak_tflops("NVIDIA H200 NVL", "float32") == 60.0
    assert throughput.published_peak_tflops("NVIDIA H200", "bfloat16") == 989.0
    assert throughput.published_peak_tflops("TPU v5 lite", "bfloat16") == 197.0
    assert throughput.published_peak_tflops("TPU v5p", "bfloat16") == 459.0
    assert throughput.published_peak_tflops("cpu", "float32") is None


def test_float32_mfu_on_a_gpu_is_measured_against_the_tf32_peak():
    """XLA:GPU runs float32 dots in TF32 unless the default matmul precision says otherwise,
    so a float32 run's peak is the TF32 one (an H100's plain float32 peak, 67 TFLOP/s, is
    below what its TF32 matmuls reach: MFU above 100%)."""
    assert throughput.matmul_precision("float32", "gpu") == "tensorfloat32"
    assert throughput.published_peak_tflops("NVIDIA H100 80GB HBM3", "tensorfloat32") == 494.5
    assert throughput.matmul_precision("float32", "cpu") == "float32"
    assert throughput.matmul_precision("bfloat16", "gpu") == "bfloat16"
    with jax.default_matmul_precision("highest"):
        assert throughput.matmul_precision("float32", "gpu") == "float32"


def test_a_one_device_step_is_measured_against_one_device_peak(monkeypatch):
    """The benchmarks time a step on the first device alone; the launcher's step uses every
    device. A published peak is multiplied accordingly (with 8 simulated devices here, a
    one-device MFU against the 8-device peak read 8x too low)."""
    kind = jax.local_devices()[0].device_kind
    monkeypatch.setitem(throughput.PEAK_TFLOPS, (kind, "float32"), 1.0)
    assert throughput.peak_flops("float32", devices=1) == (
        1e12, f"published {kind} float32 peak x 1")
    assert throughput.peak_flops("float32")[0] == 1e12 * jax.device_count()


def _launcher_step_flops(**overrides):
    from tests.trainer.tiny import tiny_digits_config
    from trainer.optimizers import make_optimizer
    from trainer.steps import init_state, make_train_step
    from trainer.tasks import create_task
    from trainer.train import model_flops_per_step

    config = tiny_digits_config("unused", **{"model.num_layers": 2, **overrides})
    task = create_task(config)
    tx, schedule = make_optimizer(config, config.num_train_steps)
    batch = task.dummy_batch(8)
    state = init_state(task, tx, 0, batch)
    step = jax.jit(make_train_step(task, tx, schedule, config.optimizer.accum_steps))
    return model_flops_per_step(config, tx, schedule, step, state, batch, {})


@pytest.fixture(scope="module")
def plain_step_flops():
    return _launcher_step_flops()


@pytest.mark.parametrize("override", [{"optimizer.accum_steps": 4}, {"model.scan_layers": True},
                                      {"model.remat_policy": "full"}],
                         ids=["accumulation", "scanned_stack", "remat"])
def test_train_mfu_counts_the_plain_steps_flops(override, plain_step_flops):
    """A scan or accumulation loop's body is counted once by XLA's cost analysis, and remat
    adds recomputation: each is counted as the plain step (before: 1/3.3, 1/1.9, +17%)."""
    assert plain_step_flops > 0
    assert _launcher_step_flops(**override) == pytest.approx(plain_step_flops, rel=1e-6)


def test_matmuls_in_a_loop_are_refused_and_other_loops_counted():
    def matmuls_in_a_scan(x):
        return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=8)[0]

    with pytest.raises(throughput.LoopInProgramError, match="runs matmuls in a loop"):
        throughput.lowered_flops(jax.jit(matmuls_in_a_scan), jnp.ones((16, 16)))

    def matmul_and_a_gamma_draw(x):  # gamma sampling (mixup's Beta) is a while loop
        return x @ x * jax.random.gamma(jax.random.key(0), 2.0)

    assert throughput.lowered_flops(jax.jit(matmul_and_a_gamma_draw),
                                    jnp.ones((16, 16))) >= 2 * 16**3
