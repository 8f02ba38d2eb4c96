"""The step's matmuls read from its StableHLO, counted with XLA's FLOPs, and timed alone."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.step_matmuls import Matmul, matmuls_alone_summary, matmuls_of, time_matmuls

BF16_LINE = ("    %7 = stablehlo.dot_general %5, %arg3, batching_dims = [0, 1] x [0, 1], "
             "contracting_dims = [3] x [3], precision = [DEFAULT, DEFAULT] : "
             "(tensor<2x3x5x8xbf16>, tensor<2x3x7x8xbf16>) -> tensor<2x3x5x7xf32>")


def _attention_and_dense(q, k, w):
    """``[b, h, n, d]`` queries and keys, ``[h*d, e]`` weights: two batched dots, one dense."""
    probs = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k))
    out = jnp.einsum("bhqk,bhkd->bhqd", probs, k)
    b, h, n, d = out.shape
    return out.transpose(0, 2, 1, 3).reshape(b, n, h * d) @ w


def test_every_dot_general_is_read_with_xlas_flop_count():
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.normal(size=(2, 3, 5, 8)), jnp.float32) for _ in range(2))
    w = jnp.asarray(rng.normal(size=(24, 16)), jnp.float32)
    lowered = jax.jit(jax.grad(lambda *a: (_attention_and_dense(*a) ** 2).sum(), argnums=(0, 1, 2))
                      ).lower(q, k, w)
    counts = matmuls_of(lowered.as_text())
    # Three dots forward; two backward for each (the gradients of both its operands).
    assert sum(counts.values()) == 9
    dot_flops = sum(m.flops * n for m, n in counts.items())
    only_dots = jax.jit(lambda a, b: jnp.einsum("bhqd,bhkd->bhqk", a, b)).lower(q, k)
    assert matmuls_of(only_dots.as_text()) == collections.Counter({Matmul(
        (2, 3, 5, 8), (2, 3, 5, 8), "f32", "f32", "f32", (0, 1), (0, 1), (3,), (3,)): 1})
    assert next(iter(matmuls_of(only_dots.as_text()))).flops == pytest.approx(
        only_dots.cost_analysis()["flops"])
    # XLA counts the same multiply-adds, plus the softmax and the rest.
    assert 0 < dot_flops <= lowered.cost_analysis()["flops"]


def test_a_bfloat16_line_and_its_dimension_numbers():
    (matmul, count), = matmuls_of(BF16_LINE + "\n" + BF16_LINE).items()
    assert count == 2
    assert matmul == Matmul((2, 3, 5, 8), (2, 3, 7, 8), "bf16", "bf16", "f32", (0, 1), (0, 1),
                            (3,), (3,))
    assert matmul.flops == 2 * 2 * 3 * 5 * 7 * 8
    assert matmul.describe() == "2x3x5x8 . 2x3x7x8 (batch 0,1/0,1, contract 3/3; bf16)"


def test_a_loop_or_an_unreadable_dot_is_refused():
    with pytest.raises(ValueError, match="stablehlo.while"):
        matmuls_of("%0 = stablehlo.while(%arg0) ...\n" + BF16_LINE)
    with pytest.raises(ValueError, match="unreadable dot_general"):
        matmuls_of("%1 = stablehlo.dot_general %a, %b, strange_dims = [1] : (tensor<...>)")


def test_each_distinct_matmul_is_timed_and_counted_by_its_occurrences():
    small = Matmul((4, 8), (8, 16), "f32", "f32", "f32", (), (), (1,), (0,))
    batched = Matmul((2, 4, 8), (2, 8, 4), "f32", "f32", "f32", (0,), (0,), (2,), (1,))
    result = time_matmuls(collections.Counter({small: 3, batched: 1}), {}, rounds=2, repeats=2)
    rows = {row["matmul"]: row for row in result["rows"]}
    assert set(rows) == {small.describe(), batched.describe()}
    assert rows[small.describe()]["total_ms"] == pytest.approx(3 * rows[small.describe()]["ms"])
    assert result["seconds"] * 1e3 == pytest.approx(sum(r["total_ms"] for r in rows.values()))
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    assert result["flops"] == 3 * small.flops + batched.flops
    for matmul in (small, batched):
        row = rows[matmul.describe()]
        assert row["gflop_per_s"] == pytest.approx(matmul.flops / row["ms"] / 1e6)
    # The timed program computes the dot it names.
    fn, lhs, rhs = batched.run({})
    np.testing.assert_allclose(fn(lhs, rhs), np.einsum("bij,bjk->bik", lhs, rhs), rtol=1e-5,
                               atol=1e-5)


def test_the_summary_gives_both_mfus_and_names_untimed_fused_attention():
    alone = {"seconds": 2.0, "flops": 200e9, "step_flops": 240e9, "peak_flops": 150e9,
             "peak_source": "measured", "matmul_only_mfu": 240e9 / 2.0 / 150e9,
             "rows": [{"count": 3}, {"count": 2}]}
    summary = matmuls_alone_summary(alone, step_seconds=2.5)
    assert "5 matmuls (2 shapes)" in summary and "80% of the 2.50 s step" in summary
    assert "MFU is 64.0%" in summary and "make 80.0%" in summary
    assert "fused attention" not in summary
    assert "12 fused attention calls" in matmuls_alone_summary(
        dict(alone, untimed_fused_attention_calls=12), step_seconds=2.5)
