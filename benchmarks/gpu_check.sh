#!/usr/bin/env bash
# One command for a GPU machine (issue 16): the CUDA tests and bench_e2e on CUDA, in about 3 minutes,
# installing nothing from the network.  Tables and test results go to $OUT/gpu_check.txt.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh          # (the run tool sets OUT)
#
# Wheels the machine lacks (mido, music21, rwkv, ...) are installed offline from $WHEELS (default .whl,
# git-ignored: carry it along) into /tmp/site.  Without CUDA the same script runs the CPU parts: the CUDA
# tests skip and the benchmark runs --quick on the CPU.  PIP_KERNEL=1 lets the rwkv package build its
# CUDA kernel for the prefill comparison (needs nvcc; minutes on a cold cache), else it runs without it.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.txt"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
export PYTHONPATH="$PWD"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl >/dev/null 2>&1 \
        && export PYTHONPATH="/tmp/site:$PWD"
fi
{
    echo "# gpu_check $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
    "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__)"
} 2>&1 | tee "$LOG"
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

echo -e "\n## CUDA tests (pytest -k 'cuda or static or graph')" | tee -a "$LOG"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider -rs tests/model/test_perf_paths.py \
    tests/sampling/test_sampling_device.py tests/sampling/test_cuda_graph_path.py tests/sampling/test_determinism.py \
    tests/model/test_prefill_chunked.py -k "cuda or static or graph" 2>&1 | tail -25 | tee -a "$LOG"

echo -e "\n## bench_e2e" | tee -a "$LOG"
KERNEL=()
[ "${PIP_KERNEL:-0}" = 1 ] && KERNEL=(--pip-cuda-kernel)
if [ "$CUDA" = 1 ]; then
    timeout 150 "$PY" benchmarks/bench_e2e.py --device cuda --steps 32 --batch 1 32 256 --prefill 512 --repeat 1 \
        "${KERNEL[@]}" 2>"$OUT/bench_e2e.err" | tee -a "$LOG"
else
    timeout 150 "$PY" benchmarks/bench_e2e.py --device cpu --quick --repeat 1 2>"$OUT/bench_e2e.err" | tee -a "$LOG"
fi
echo "(bench exit ${PIPESTATUS[0]}; 124 = cut at its time limit; progress and notes in bench_e2e.err)" | tee -a "$LOG"
tail -8 "$OUT/bench_e2e.err" >> "$LOG"

if [ "$CUDA" = 1 ]; then
    echo -e "\n## bench_prefill (CUDA, v4/v5.2/v6/v7 beside the rwkv package)" | tee -a "$LOG"
    timeout 120 "$PY" benchmarks/bench_prefill.py --device cuda --versions 4 5.2 6 7 --length 512 \
        2>"$OUT/bench_prefill.err" | tee -a "$LOG"
fi
