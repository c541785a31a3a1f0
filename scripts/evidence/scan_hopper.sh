#!/usr/bin/env bash
# Issue 15, regime scan on Hopper-v5 as on Humanoid (scan_humanoid.sh): the BASE only (AdamW, standardized
# observations, lr 1e-3), 1 seed; data size, then a noisier demonstrator. The regime is chosen from these numbers
# (where the base is clearly below its demonstrator and above the floor), never from DoPr's. Resumable: each point
# is its own result folder. Usage: scripts/evidence/scan_hopper.sh [CORE]
set -euo pipefail
cd "$(dirname "$0")/../.."
core=${1:-1}
run() {  # run OUT [flags...]
  local out=$1; shift
  taskset -c "$core" .venv/bin/dopr-bench run hopper --standardize --optimizers adamw --seeds 1 --lrs 1e-3 \
    --threads 1 --no-progress --out "results/hopper-std-scan/$out" "$@"
}
for demos in 1 2 5; do
  run "d${demos}-s1000" --demos "$demos" --steps 1000
done
for demos in 2 5; do
  run "d${demos}-s1000-noise0.3" --demos "$demos" --steps 1000 --demo-noise 0.3
done
