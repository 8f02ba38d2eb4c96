"""The step profile runs on a tiny shape and sorts its ops; its HLO parsing on known lines."""

import pytest

from benchmarks.report import profile_section
from benchmarks.step_profile import KINDS, _op_events, hlo_computations, op_kind
from tests.benchmarks.runner import run_benchmark

HLO = """\
%fused_computation.1 (p0: f32[8,4], p1: f32[4,2]) -> f32[8,2] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[4,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
%fused_computation.2 (p0.1: f32[8,2]) -> f32[8] {
  %p0.1 = f32[8,2]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.1 = f32[8]{0} reduce(%p0.1, %c), dimensions={1}, to_apply=%add
}
%fused_computation.3 (p0.2: f32[8,2]) -> f32[8,2] {
  %p0.2 = f32[8,2]{1,0} parameter(0)
  ROOT %tanh.1 = f32[8,2]{1,0} tanh(%p0.2)
}
ENTRY %main (a: f32[8,4], b: f32[4,2]) -> f32[8] {
  %a = f32[8,4]{1,0} parameter(0)
  %b = f32[4,2]{1,0} parameter(1)
  %ynn_fusion.1 = f32[8,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.1
  %copy.1 = f32[2,8]{0,1} copy(%ynn_fusion.1)
  %tanh_fusion = f32[8,2]{1,0} fusion(%ynn_fusion.1), kind=kLoop, calls=%fused_computation.3
  ROOT %reduce_fusion = f32[8]{0} fusion(%tanh_fusion), kind=kInput, calls=%fused_computation.2
}
"""


def test_ops_are_sorted_by_what_their_computation_does():
    lines, opcodes = hlo_computations(HLO)
    kinds = {name: op_kind(lines[name], opcodes)
             for name in ("ynn_fusion.1", "copy.1", "tanh_fusion", "reduce_fusion")}
    assert kinds == {"ynn_fusion.1": "matmul", "copy.1": "transpose/copy",
                     "tanh_fusion": "elementwise", "reduce_fusion": "reduction"}


def test_gpu_custom_calls_and_kernel_events():
    # A GPU's compiled step: cuBLAS and cuDNN custom calls; its trace: the host's event of an
    # op and the device's kernel event naming the same op in args.hlo_op.
    gpu_hlo = HLO.replace(
        "  ROOT %reduce_fusion",
        '  %gemm.1 = (f32[8,2]{1,0}, s8[0]{0}) custom-call(%a, %b), '
        'custom_call_target="__cublas$gemm"\n'
        '  %fmha.1 = (bf16[2,6,2,8]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b, %b), '
        'custom_call_target="__cudnn$fmhaSoftmax"\n'
        "  ROOT %reduce_fusion")
    lines, opcodes = hlo_computations(gpu_hlo)
    assert op_kind(lines["gemm.1"], opcodes) == "matmul"
    assert op_kind(lines["fmha.1"], opcodes) == "fused attention"
    host = {"ph": "X", "name": "gemm.1", "ts": 0, "dur": 5}
    kernel = {"ph": "X", "name": "sm90_xmma_gemm", "ts": 1, "dur": 3,
              "args": {"hlo_op": "gemm.1"}}
    assert _op_events([host, kernel], lines) == [("gemm.1", kernel)]
    assert _op_events([host], lines) == [("gemm.1", host)]  # a CPU trace: op events only


def test_vit_profile_benchmark_runs(tmp_path):
    payload = run_benchmark(tmp_path, "vit_profile", "--model=ViT-micro", "--batch_size=2",
                            "--image_size=32", "--top=5", timeout=300)
    kinds = {row["kind"]: row for row in payload["kinds"]}
    assert set(kinds) <= set(KINDS) and kinds["matmul"]["op_seconds"] > 0
    assert abs(sum(row["share"] for row in payload["kinds"]) - 1.0) < 1e-6
    assert 0 < payload["busy_seconds"] <= payload["step_seconds"] + 1e-6
    assert payload["busy_seconds"] <= payload["op_seconds"] + 1e-6
    assert 0 < len(payload["top_ops"]) <= 5 and payload["page_faults"] >= 0
    alone = payload["matmuls_alone"]  # each matmul of the step timed alone
    assert alone["rows"] and alone["seconds"] > 0 and alone["peak_flops"] > 0
    assert alone["matmul_only_mfu"] == pytest.approx(
        alone["step_flops"] / alone["seconds"] / alone["peak_flops"])
    assert alone["flops"] <= alone["step_flops"]  # the dots are part of XLA's count


@pytest.mark.slow
def test_vit_profile_with_xla_defaults_and_no_top_ops(tmp_path):
    # --xla_defaults: the step is compiled with XLA's defaults and the file says so, and the
    # report renders it so; --top=0: no op listed, an empty table printed.
    payload = run_benchmark(tmp_path, "vit_profile", "--model=ViT-micro", "--batch_size=2",
                            "--image_size=32", "--top=0", "--xla_defaults",
                            "--notime_matmuls", timeout=300)
    assert payload["environment"]["xla_compiler_options"] == {}
    assert payload["top_ops"] == [] and payload["kinds"]
    section = profile_section("vit_profile_micro", payload)
    assert "steps compiled with XLA's default options" in section.splitlines()[3]
    assert "LIBRARY_FUSION_TYPE_REDUCE" not in section
