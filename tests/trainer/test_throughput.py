"""FLOP counting and the peak used for MFU."""

import jax
import jax.numpy as jnp
import numpy as np
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


@pytest.fixture
def cudnn_traceable(monkeypatch):
    """JAX's cuDNN attention traceable on a machine without cuDNN: its version and GPU checks
    answer as on an H100 with cuDNN 9.10. Tracing needs nothing more; nothing is run."""
    from jax._src.cudnn import fused_attention_stablehlo as fused

    monkeypatch.setattr(fused, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(fused, "check_compute_capability", lambda capability: True)
    return fused


def _cudnn_self_attention(query):
    """cuDNN's fused attention of ``query`` [batch, length, heads, head_dim] with itself."""
    return jax.nn.dot_product_attention(query, query, query, implementation="cudnn")


def test_cudnn_attention_flops_are_read_from_the_calls_operands(cudnn_traceable):
    """A training step's attention: a forward call (QKᵀ and PV) and a backward one (four
    matmuls), a query of 6 and a key of 10 positions; BNTH (heads first) reads the key's
    length from its third axis."""
    query = jnp.zeros((2, 6, 3, 8), jnp.bfloat16)  # [batch, length, heads, head_dim]
    key = jnp.zeros((2, 10, 3, 8), jnp.bfloat16)

    def loss(query):
        out = jax.nn.dot_product_attention(query, key, key, implementation="cudnn")
        return out.astype(jnp.float32).sum()

    forward = 4 * 2 * 6 * 3 * 8 * 10
    assert throughput.cudnn_attention_flops(jax.make_jaxpr(loss)(query).jaxpr) == forward
    assert throughput.cudnn_attention_flops(
        jax.make_jaxpr(jax.grad(loss))(query).jaxpr) == forward + 2 * forward
    heads_first = jax.make_jaxpr(lambda q, k: cudnn_traceable.dot_product_attention(
        q, k, k, qkv_layout="BNTH"))(query.transpose(0, 2, 1, 3), key.transpose(0, 2, 1, 3))
    assert throughput.cudnn_attention_flops(heads_first.jaxpr) == forward
    matmul = jax.make_jaxpr(jnp.matmul)(key, key.swapaxes(-1, -2))
    assert throughput.cudnn_attention_flops(matmul.jaxpr) == 0


def test_cudnn_attention_in_a_cond_counts_its_costliest_branch_as_xla_counts_the_rest(
        cudnn_traceable):
    """One branch of a ``cond`` runs: each branch's attention used to be added up."""
    short, long = jnp.zeros((2, 6, 3, 8), jnp.bfloat16), jnp.zeros((2, 10, 3, 8), jnp.bfloat16)

    def either(predicate):
        return jax.lax.cond(predicate, lambda: _cudnn_self_attention(long)[:, :6],
                            lambda: _cudnn_self_attention(short))

    def matmul_either(predicate, a, b):  # XLA's own count of a conditional, for comparison
        return jax.lax.cond(predicate, lambda: (a @ a).sum(), lambda: (b @ b).sum())

    assert throughput.cudnn_attention_flops(jax.make_jaxpr(either)(True).jaxpr) == (
        4 * 2 * 10 * 3 * 8 * 10)
    a, b = jnp.ones((32, 32)), jnp.ones((16, 16))
    xla_count = jax.jit(matmul_either).lower(True, a, b).cost_analysis()["flops"]
    assert 2 * 32**3 <= xla_count < 2 * 32**3 + 2 * 16**3  # the larger branch, not the sum


@pytest.mark.skipif(len(jax.devices()) < 2, reason="needs two devices (the suite simulates 8)")
def test_cudnn_attention_is_counted_on_a_data_parallel_mesh(cudnn_traceable):
    """Split over two devices, JAX lowers the attention as a CustomSPMDPartitioning call that
    becomes cuDNN's kernel only when compiled: the lowered text (lowered for a GPU here, on
    the CPU) has no cuDNN call, and a count read from it missed the attention of every
    data-parallel run. The traced program has it, on one device as on two."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    counts = {}
    for devices in (1, 2):
        sharding = NamedSharding(Mesh(np.array(jax.devices()[:devices]), ("data",)),
                                 PartitionSpec("data"))
        traced = jax.jit(_cudnn_self_attention, in_shardings=sharding).trace(
            jax.ShapeDtypeStruct((2, 6, 3, 8), jnp.bfloat16, sharding=sharding))
        text = traced.lower(lowering_platforms=("cuda",)).as_text()
        counts[devices] = (text.count("__cudnn$fmha"),
                           throughput.cudnn_attention_flops(traced.jaxpr.jaxpr))
    forward = 4 * 2 * 6 * 3 * 8 * 6
    assert counts == {1: (1, forward), 2: (0, forward)}


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
