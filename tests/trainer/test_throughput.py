"""FLOP counting and the peak used for MFU."""

import jax
import jax.numpy as jnp

from trainer import throughput


def test_lowered_flops_of_a_matmul_is_two_n_cubed():
    x = jnp.ones((64, 32), jnp.float32)
    y = jnp.ones((32, 16), jnp.float32)
    assert throughput.lowered_flops(jax.jit(jnp.matmul), x, y) == 2 * 64 * 32 * 16


def test_cpu_peak_is_a_measured_matmul():
    peak, source = throughput.peak_flops("float32", matmul_size=128)
    assert peak > 0 and "measured float32 128x128 matmul" in source
