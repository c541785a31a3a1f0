#!/usr/bin/env bash
# Issue 15 item 6: the LM bench's four arms (AdamW, DoPr-AdamW, Muon, DoPr-Muon) in best-against-best form, with a
# learning-rate grid that spans each arm's optimum (the older results/lm-synthetic stopped at 1e-3 below, where
# AdamW's accuracy and validation NLL were both best, and at 1e-2 above, where Muon's accuracy was best), 5 seeds,
# the bench's defaults otherwise (Sigma over the attention-masked tokens). The folder's summary.md has the
# best-against-best table (selected on validation NLL and, separately, on accuracy) and the shared-lr pairs.
# Resumable: finished runs are skipped. Usage: scripts/evidence/lm_sweep.sh [SEEDS] [CORE]
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=${1:-5}
core=${2:-0}
out=results/lm-synthetic-sweep
run() { taskset -c "$core" .venv/bin/dopr-bench run lm --seeds "$seeds" --threads 1 --no-progress --out "$out" "$@"; }
run --optimizers adamw,dopr-adamw,muon,dopr-muon --lrs 3e-4,1e-3,3e-3,1e-2
run --optimizers muon,dopr-muon --lrs 3e-4,1e-3,3e-3,1e-2,3e-2
