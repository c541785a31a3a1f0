#!/usr/bin/env bash
# Issue 14: does a Sigma row cap keep exact mode's test metric where rows are many? The LM bench (synthetic
# arithmetic SFT, batch 16, Sigma over the attention-masked tokens: several hundred rows per step against 129-wide
# attention inputs, so max_rows='auto' (4 per input dimension) bites there) in exact mode and with the cap, same
# seeds: the folders share data, initialization and batch order per seed. Resumable: finished runs are skipped.
# Usage: scripts/quality/lm_rows.sh [SEEDS] [CORE]
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=${1:-5}
core=${2:-0}
for mode in exact auto; do
  extra=()
  [ "$mode" = auto ] && extra=(--max-rows auto)
  taskset -c "$core" .venv/bin/dopr-bench run lm --optimizers dopr-adamw,dopr-muon --lrs 1e-3,3e-3 \
    --seeds "$seeds" --threads 1 --no-progress --out "results/lm-rows-$mode" "${extra[@]}"
done
