#!/usr/bin/env bash
# GPU figures for docs/BENCHMARKS.md, in one command (< 8 minutes on an H200-class GPU):
#   1. epoch time of the reference Mixer, 1 and 4 blocks: the coursework loop against
#      hpsearch's trainer on the same GPU (full 60,000-image training set);
#   2. finished trials per hour with 1, 4 and 8 workers sharing GPU 0 (--workers-per-gpu).
# Results: bench/results/gpu-epochs.json and gpu-trials.json. Smoke test on a CPU:
#   bash bench/gpu.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" != "--tiny" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
timeout 300 "$PY" bench/gpu.py epochs "$@"
timeout 300 "$PY" bench/gpu.py trials "$@"
