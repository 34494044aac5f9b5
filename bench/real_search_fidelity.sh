#!/usr/bin/env bash
# The real search on full Fashion-MNIST for a CPU without fast bf16, search and final models
# within 2.5 hours (issue "More accuracy per CPU-hour"): studies/fashion-mnist-mixer-fidelity.toml
# with 2 workers, then the single best and an ensemble of the 3 best (also with flipped test
# images averaged in), 3 seeds each, then the
# report. Resumable: run it again after a stop and each step continues where it was (the study
# resumes its running trials from their checkpoints; evaluate reuses the seeds already scored).
# Writes bench/results/real-search-fidelity.{db,run.log,evaluate.log} and
# docs/fashion-mnist-mixer-fidelity-report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
HPSEARCH="${HPSEARCH:-.venv/bin/hpsearch}"
DB="sqlite:///bench/results/real-search-fidelity.db"
NAME="fashion-mnist-mixer-fidelity"
K="${ENSEMBLE:-3}"  # members of the ensemble
stamp() { echo "== $(date -u +%FT%TZ) $*" | tee -a bench/results/real-search-fidelity-times.log; }

stamp "search"
"$HPSEARCH" run studies/$NAME.toml --workers 2 --db "$DB" \
  --log-dir bench/results/real-search-fidelity-logs 2>&1 | tee -a bench/results/real-search-fidelity-run.log
stamp "final models"
"$HPSEARCH" evaluate "$NAME" --ensemble "$K" --seeds 3 --tta flip --db "$DB" 2>&1 \
  | tee -a bench/results/real-search-fidelity-evaluate.log
stamp "report"
"$HPSEARCH" report "$NAME" --db "$DB" -o docs/fashion-mnist-mixer-fidelity-report.html
stamp "done"
