#!/usr/bin/env bash
# GPU check for the Triton kernels (issue 6), for the day a CUDA machine is lent. Run from anywhere:
#
#     bash bench/gpu_check.sh    # about 3-5 minutes on an H200; results under $OUT (else /tmp/jetspec_gpu_check)
#     JETSPEC_GPU_CHECK_INTERPRETER=1 bash bench/gpu_check.sh   # also rerun the CPU interpreter tests
#
# It needs python3 with torch (CUDA) and triton only (pytest and hypothesis for step 1), no `pip install`:
# a temporary shim on PYTHONPATH exposes jetspec_sglang with kernels/ as jetspec_sglang.kernels, as pyproject's
# package-dir does. Steps: 0. versions and nvidia-smi -> env.txt; 1. the gpu-marked kernel tests (compiled
# kernels == PyTorch twins on CUDA tensors, up to B=64, N=1024) and the dispatch / sm_90 build tests ->
# gpu_tests.log; 2. bench/bench_ops.py --device cuda -> bench_ops.jsonl, bench_ops.md (with the H200 targets:
# tree+mask < 50 us and accept_greedy < 20 us at B=32, N=128), bench.log. Exit status: non-zero if a test
# failed or a kernel differed from its twin in the bench.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${OUT:-${TMPDIR:-/tmp}/jetspec_gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
cd "$ROOT" || exit 2

SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/jetspec_sglang"
for entry in "$ROOT"/jetspec_sglang/*; do ln -s "$entry" "$SHIM/jetspec_sglang/"; done
ln -s "$ROOT/kernels" "$SHIM/jetspec_sglang/kernels"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
# `python -m pytest` puts the working directory (the repository root, whose jetspec_sglang has no kernels/) first on
# sys.path, ahead of the shim: on the first H200 run every kernel test failed to import jetspec_sglang.kernels.
export PYTHONSAFEPATH=1
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the gpu tests need compiled kernels

{
  nvidia-smi || true
  "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda,
'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None); print('triton', triton.__version__)"
} > "$RESULTS/env.txt" 2>&1
cat "$RESULTS/env.txt"

status=0
select=(-m gpu)
[ "${JETSPEC_GPU_CHECK_INTERPRETER:-0}" = 1 ] && select=(-k "not nothing")
"$PY" -m pytest -q -p no:cacheprovider -rs "${select[@]}" tests/test_kernels.py 2>&1 \
  | tee "$RESULTS/gpu_tests.log" || status=1
"$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernels_ops.py 2>&1 \
  | tee -a "$RESULTS/gpu_tests.log" || status=1

"$PY" bench/bench_ops.py --device cuda --time-budget-s 200 \
  --jsonl "$RESULTS/bench_ops.jsonl" --md "$RESULTS/bench_ops.md" 2>&1 | tee "$RESULTS/bench.log" || status=1
cat "$RESULTS/bench_ops.md" 2>/dev/null
exit $status
