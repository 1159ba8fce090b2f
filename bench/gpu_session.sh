#!/usr/bin/env bash
# Every GPU check and figure the CPU-only sessions owe, as one prepared run for a session that is
# lent a GPU (the device tool: `run` with command "bash bench/gpu_session.sh all", timeout 600 s;
# or one stage per call). Uses the machine's own python3 (its torch, triton, transformers); the
# repo's src/ on PYTHONPATH, nothing installed. Results land in $OUT (default bench/results/gpu).
#
#   stages: tests    the GPU-marked tests (kernels compiled for real, runtime, solvers)    ~2 min
#           kernels  bench/kernel_decode.py: per-layer decode at LLaMA-7B shapes, 1 and 16 tokens ~2-3 min
#           model    bench/infer_model.py: a whole LLaMA-2-7B-shaped model, 2:4 + 4-bit   ~4 min
#           solver   bench/solver.py and bench/pipeline.py (issue 3's figures)              ~3 min
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
stage() { echo "=== $1 ($(date +%T))"; }
run_tests() {
    stage tests
    $PY -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_kernels.py tests/runtime/test_gpu_runtime.py \
        tests/walker/test_gpu_prefetch.py \
        tests/solvers/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
}
run_kernels() { stage kernels; $PY bench/kernel_decode.py --out "$OUT/kernels_h200.json" 2>&1 | tee "$OUT/kernels.log"; }
run_model() {
    stage model
    $PY bench/infer_model.py --settings "2:4 + 4-bit grouped" --json "$OUT/infer_model_h200.json" \
        --work-dir /tmp 2>&1 | tee "$OUT/infer_model.log"
}
run_solver() {
    stage solver
    $PY bench/solver.py --device cuda --json "$OUT/solver_h200.json" 2>&1 | tee "$OUT/solver.log"
    $PY bench/pipeline.py --blocks 4 --json "$OUT/pipeline_h200_4blocks.json" 2>&1 | tee "$OUT/pipeline.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/machine.txt"
$PY -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" \
    2>&1 | tee -a "$OUT/machine.txt"
case "${1:-all}" in
    tests) run_tests ;;
    kernels) run_kernels ;;
    model) run_model ;;
    solver) run_solver ;;
    all) run_tests; run_kernels; run_model ;;
    *) echo "usage: bench/gpu_session.sh [tests|kernels|model|solver|all]" >&2; exit 2 ;;
esac
