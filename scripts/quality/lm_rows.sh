#!/usr/bin/env bash
# Issue 14: does a Sigma row cap keep exact mode's test metric where rows are many? The LM bench (synthetic
# arithmetic SFT, Sigma over the attention-masked tokens: 71.5 tokens per example, so batch 64 gives ~4,600 rows per
# step, where max_rows='auto' keeps 1,024 for the 128-wide inputs and 1,536 for the 384-wide down projections; at
# the bench's batch 16 (~1,150 rows) it would barely bite) in exact mode and with the cap, same seeds: the folders
# share data, initialization and batch order per seed. Resumable: finished runs are skipped.
# Usage: scripts/quality/lm_rows.sh [SEEDS] [CORE]
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=${1:-5}
core=${2:-0}
for n in $(seq 1 "$seeds"); do  # seed by seed, both modes, so a stopped queue leaves pairs
  for mode in exact auto; do
    extra=()
    [ "$mode" = auto ] && extra=(--max-rows auto)
    taskset -c "$core" .venv/bin/dopr-bench run lm --optimizers dopr-adamw --lrs 1e-3,3e-3 --batch 64 \
      --seeds "$n" --threads 1 --no-progress --out "results/lm-rows-$mode" "${extra[@]}"
  done
done
