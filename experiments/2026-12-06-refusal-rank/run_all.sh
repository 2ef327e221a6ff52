#!/usr/bin/env bash
# The refusal-rank comparison's runs (one thread each, one after the other), from the repository root:
#   bash experiments/2026-12-06-refusal-rank/run_all.sh RUNS   (RUNS: where the run folders go, e.g. runs/eval)
# R2: the round-2 critic (configs/fit/embedded-wide-r2.yaml, exported to runs/embedded-wide-r2/critic).
set -euo pipefail
RUNS=${1:-runs/eval}
R2=${R2:-runs/embedded-wide-r2/critic}
E=experiments/2026-12-06-refusal-rank
ig() { OMP_NUM_THREADS=1 python -m igcritic eval "$@"; }
ig --config $E/own64.yaml --critic "$R2" --out "$RUNS/last-r2-own64"
ig --config $E/short80.yaml --critic "$R2" --out "$RUNS/last-r2-short"
ig --config $E/own64.yaml --critic checkpoints/embedded --out "$RUNS/last-wide-own64"
ig --config $E/short80.yaml --critic checkpoints/embedded --out "$RUNS/last-wide-short"
