"""The XLA:CPU compiler options of the launcher's steps (trainer.xla_cpu)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import xla_cpu


@pytest.fixture
def fresh_options():
    """``compiler_options`` is cached per process: clear it around a test that changes its
    inputs."""
    xla_cpu.compiler_options.cache_clear()
    yield
    xla_cpu.compiler_options.cache_clear()


def _ynn_fusions_with_a_dot(hlo: str) -> int:
    """How many ``__ynn_fusion`` calls of the compiled HLO ``hlo`` compute a ``dot``."""
    bodies = dict(re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))
    callees = re.findall(r'calls=%?([\w.\-]+)[^\n]*"kind":"__ynn_fusion"', hlo)
    return sum(" dot(" in bodies.get(name, "") for name in callees)


def _mlp_block(x, w1, w2):
    """``[n, d] -> [n, d]``: LayerNorm, dense, GELU, dense (a transformer MLP block)."""
    mean = x.mean(-1, keepdims=True)
    normed = (x - mean) * jax.lax.rsqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
    return jax.nn.gelu(normed @ w1) @ w2


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_cpu_options_send_matmuls_to_eigen_with_the_same_results(fresh_options):
    options = xla_cpu.compiler_options()
    assert options == xla_cpu.CPU_OPTIONS
    rng = np.random.default_rng(0)
    x, w1, w2 = (jnp.asarray(rng.normal(size=shape), jnp.float32)
                 for shape in [(64, 32), (32, 128), (128, 32)])
    with_options = jax.jit(_mlp_block, compiler_options=options).lower(x, w1, w2).compile()
    assert _ynn_fusions_with_a_dot(with_options.as_text()) == 0
    assert "dot(" in with_options.as_text()
    expected = jax.jit(_mlp_block)(x, w1, w2)
    np.testing.assert_allclose(with_options(x, w1, w2), expected, rtol=1e-5, atol=1e-5)


def test_an_option_this_jaxlib_lacks_is_dropped(fresh_options, monkeypatch):
    monkeypatch.setattr(xla_cpu, "CPU_OPTIONS", {"xla_cpu_no_such_option": "1"})
    assert xla_cpu.compiler_options() == {}


def test_options_can_be_turned_off(fresh_options, monkeypatch):
    monkeypatch.setenv(xla_cpu.OPT_OUT, "0")
    assert xla_cpu.compiler_options() == {}


def test_the_hlo_helper_sees_a_dot_in_a_ynn_fusion():
    # Guards the first test against a helper that can never count anything.
    hlo = ('%fused_computation.1 (p: f32[2,2]) -> f32[2,2] {\n'
           '  ROOT %dot.1 = f32[2,2]{1,0} dot(%p, %p), lhs_contracting_dims={1}\n}\n\n'
           'ENTRY %main.2 (a: f32[2,2]) -> f32[2,2] {\n'
           '  ROOT %ynn_fusion = f32[2,2]{1,0} fusion(%a), kind=kCustom, '
           'calls=%fused_computation.1, backend_config={"fusion_config":'
           '{"kind":"__ynn_fusion"}}\n}\n')
    assert _ynn_fusions_with_a_dot(hlo) == 1
