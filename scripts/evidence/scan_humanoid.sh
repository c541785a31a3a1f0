#!/usr/bin/env bash
# Issue 15, regime scan: the BASE only (AdamW, standardized observations, lr 1e-3), 1 seed, Humanoid-v5.
# Data size x training length, then a noisier demonstrator at 5 demos. The regime is chosen from these numbers
# (where the base is clearly below the expert), never from DoPr's. Resumable: each point is its own result folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
run() {  # run OUT [flags...]
  local out=$1; shift
  taskset -c 1 .venv/bin/dopr-bench run humanoid --standardize --optimizers adamw --seeds 1 --lrs 1e-3 \
    --threads 1 --no-progress --out "results/humanoid-std-scan/$out" "$@"
}
for steps in 1000 4000; do
  for demos in 1 2 5; do
    run "d${demos}-s${steps}" --demos "$demos" --steps "$steps"
  done
done
for noise in 0.3 1; do
  run "d5-s1000-noise${noise}" --demos 5 --steps 1000 --demo-noise "$noise"
done
