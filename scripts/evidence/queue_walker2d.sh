#!/usr/bin/env bash
# Issue 15 item 4 on Walker2d-v5: what AP adds in the raw-observation setting where DoPr wins
# (results/walker2d-raw-5demos: 5 demos, 3,000 steps, lr 1e-3, 5 seeds). At that folder's shared lr and seeds:
# AP on the input layer only, AP on every layer but the input layer, AdamW on ZCA-whitened inputs and
# AdamW/DoPr-AdamW on standardized inputs; each pairs by seed with the raw folder (same demos, initialization
# and minibatch order). Resumable: finished runs are skipped.
# Usage: scripts/evidence/queue_walker2d.sh [SEEDS] [CORE]
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=${1:-5}
core=${2:-0}
RAW=results/walker2d-raw-5demos
run() {  # run OUT [flags...]
  local out=$1; shift
  mkdir -p "$out"
  echo "$(date -u +%FT%TZ) HEAD $(git rev-parse --short HEAD), src/dopr diff sha1 $(git diff HEAD -- src/dopr | sha1sum | cut -c1-12)" >> "$out/LIBRARY.txt"
  taskset -c "$core" .venv/bin/dopr-bench run walker2d --demos 5 --seeds "$seeds" --threads 1 --no-progress --out "$out" "$@"
}
run "$RAW-ap-first" --lrs 1e-3 --ap-layers first --optimizers dopr-adamw
run "$RAW-ap-hidden" --lrs 1e-3 --ap-layers hidden --optimizers dopr-adamw
run "results/walker2d-zca-5demos" --lrs 1e-3 --zca --optimizers adamw
run "results/walker2d-std-5demos" --lrs 1e-3 --standardize --optimizers adamw,dopr-adamw
