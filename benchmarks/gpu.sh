#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run (issue 7, item 5): cuDNN's fused attention
# checked against XLA's on the GPU, ViT throughput and MFU in bfloat16 with and without the
# fused kernel, a profile of ViT-B/16's step, and the side-by-side with timm. Needs a CUDA
# machine with jax[cuda], flax and optax, and torch + timm for the side-by-side
# (SIDE_BY_SIDE=0 skips it):
#
#   OUT=/tmp/gpu bash benchmarks/gpu.sh          # JSON, run.log and trace.tar under $OUT
#   cp /tmp/gpu/*.json benchmarks/results/ && python -m benchmarks.report
#
# PYTHON, MODELS, BATCH, IMAGE and REPEATS override the defaults (a dry run on the CPU:
# MODELS=ViT-micro BATCH=2 IMAGE=32 REPEATS=1 SIDE_BY_SIDE=0 OUT=/tmp/dry bash benchmarks/gpu.sh).
# Each step has a time limit, and a failed step does not stop the next one (the exit status
# says whether any failed). First run: 2026-11-29 on an H200 (docs/performance.md, "On a GPU").
set -u
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/vitkd-gpu}
MODELS=${MODELS:-ViT-Ti_16,ViT-S_16,ViT-B_16}
BIG_MODEL=${MODELS##*,}  # the last of MODELS: ViT-B/16 by default
BATCH=${BATCH:-256}
IMAGE=${IMAGE:-224}
REPEATS=${REPEATS:-20}
SIDE_BY_SIDE=${SIDE_BY_SIDE:-1}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0

# One log, and the trace in one archive: the device tool brings back 8 files at most.
LOG="$OUT/run.log"
step() {  # step NAME SECONDS COMMAND...: runs COMMAND, its output appended to $LOG, its tail shown
  local name=$1 seconds=$2
  shift 2
  echo "=== $name ($(date +%T))" | tee -a "$LOG"
  timeout "$seconds" "$@" >"$OUT/step.log" 2>&1
  local rc=$?
  cat "$OUT/step.log" >>"$LOG"
  grep -v '^ *$' "$OUT/step.log" | tail -n 25
  rm -f "$OUT/step.log"
  echo "=== $name: rc=$rc" | tee -a "$LOG"
  [ "$rc" = 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv \
  2>/dev/null | tee -a "$OUT/run.log"
"$PYTHON" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/run.log"

step tests 240 "$PYTHON" -m pytest -q -p no:cacheprovider tests/transformer/test_attention.py \
  tests/trainer/test_throughput.py \
  "tests/benchmarks/test_vit_throughput.py::test_fused_attention_calls_are_counted_in_the_compiled_programs"
throughput=(-m benchmarks.vit_throughput --batch_size="$BATCH" --image_size="$IMAGE"
            --precision=bfloat16 --repeats="$REPEATS")
step throughput_cudnn 300 "$PYTHON" "${throughput[@]}" --models="$MODELS" --attention=cudnn \
  --out="$OUT/vit_throughput_gpu.json"
# Kernel by kernel (CUDA graphs off, so each kernel's event names its HLO op); the raw trace
# and the compiled HLO are kept in $OUT/trace.tar.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" step profile 180 "$PYTHON" \
  -m benchmarks.vit_profile --model="$BIG_MODEL" --batch_size="$BATCH" --image_size="$IMAGE" \
  --precision=bfloat16 --attention=cudnn --top=25 --keep_trace_in="$OUT/trace" \
  --out="$OUT/vit_profile_gpu.json"
[ -d "$OUT/trace" ] && tar -cf "$OUT/trace.tar" -C "$OUT" trace && rm -r "$OUT/trace"
step throughput_xla 180 "$PYTHON" "${throughput[@]}" --models="$BIG_MODEL" --attention=xla \
  --out="$OUT/vit_throughput_gpu_xla_attention.json"
if [ "$SIDE_BY_SIDE" = 1 ]; then
  # JAX takes 75% of the GPU's memory by default; PyTorch needs its share in the same process.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 step vs_timm 240 "$PYTHON" -m benchmarks.vit_vs_timm \
    --models="$BIG_MODEL" --batch_size="$BATCH" --image_size="$IMAGE" --precision=bfloat16 \
    --attention=cudnn --rounds=3 --repeats=10 --out="$OUT/vit_vs_timm_gpu.json"
fi
step throughput_batch2x 180 "$PYTHON" "${throughput[@]}" --models="$BIG_MODEL" \
  --batch_size=$((2 * BATCH)) --attention=cudnn --out="$OUT/vit_throughput_gpu_batch2x.json"
# XLA picks between its Triton matmuls and cuBLAS by autotuning; this run shows cuBLAS alone.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false" step throughput_no_triton_gemm 180 \
  "$PYTHON" "${throughput[@]}" --models="$BIG_MODEL" --attention=cudnn \
  --out="$OUT/vit_throughput_gpu_no_triton_gemm.json"
exit $status
