"""The XLA:CPU compiler options of the launcher's steps (trainer.xla_cpu)."""

import json
import pathlib
import re
import subprocess
import sys

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


# Run in a fresh process: the lowering is process-wide, and JAX's own must be seen first.
_DRAWS_BOTH_WAYS = """
import json
import jax, numpy as np
from jax.extend.random import threefry_2x32
from trainer import xla_cpu

KEY = jax.random.key(7)
DRAWS = {
    "bits": lambda k: jax.random.bits(k, (3, 1001)),
    "dropout mask": lambda k: jax.random.bernoulli(k, 0.9, (64, 16, 129)),
    "normal": lambda k: jax.random.normal(jax.random.fold_in(k, 3), (257,)),
    "split": lambda k: jax.random.key_data(jax.random.split(k, 5)),
    "known answer": lambda k: threefry_2x32(np.uint32([0x13198A2E, 0x03707344]),
                                            np.uint32([0x243F6A88, 0x85A308D3])),
}


def draw_all():
    jax.clear_caches()
    out = {}
    for name, draw in DRAWS.items():
        jitted = jax.jit(draw)
        values = np.asarray(jax.tree.leaves(jitted(KEY))).astype(np.int64).ravel()
        out[name] = {"values": values.tolist(), "loop": "while" in jitted.lower(KEY).as_text()}
    return out


jaxs_own = draw_all()
installed = xla_cpu.unroll_threefry_on_cpu()
print(json.dumps({"jax": jaxs_own, "installed": installed, "unrolled": draw_all()}))
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU lowering")
def test_unrolled_threefry_draws_the_same_bits_without_a_loop():
    result = subprocess.run([sys.executable, "-c", _DRAWS_BOTH_WAYS], capture_output=True,
                            text=True, cwd=pathlib.Path(__file__).parents[2], check=True)
    draws = json.loads(result.stdout.splitlines()[-1])
    assert draws["installed"]
    assert draws["jax"]["bits"]["loop"], "JAX's CPU lowering no longer loops: is this needed?"
    for name, jaxs_own in draws["jax"].items():
        unrolled = draws["unrolled"][name]
        assert unrolled["values"] == jaxs_own["values"], name
        assert not unrolled["loop"], name
    # Random123's known-answer vector for Threefry-2x32-20.
    assert draws["unrolled"]["known answer"]["values"] == [0xC4923A9C, 0x483DF7A0]


def test_the_hlo_helper_sees_a_dot_in_a_ynn_fusion():
    # Guards the first test against a helper that can never count anything.
    hlo = ('%fused_computation.1 (p: f32[2,2]) -> f32[2,2] {\n'
           '  ROOT %dot.1 = f32[2,2]{1,0} dot(%p, %p), lhs_contracting_dims={1}\n}\n\n'
           'ENTRY %main.2 (a: f32[2,2]) -> f32[2,2] {\n'
           '  ROOT %ynn_fusion = f32[2,2]{1,0} fusion(%a), kind=kCustom, '
           'calls=%fused_computation.1, backend_config={"fusion_config":'
           '{"kind":"__ynn_fusion"}}\n}\n')
    assert _ynn_fusions_with_a_dot(hlo) == 1
