#!/usr/bin/env bash
# Regime scan on a gym locomotion task, as on Humanoid (scan_humanoid.sh): the BASE only (AdamW, standardized
# observations, lr 1e-3), 1 seed; data size, then a noisier demonstrator. The regime is chosen from these numbers
# (where the base is clearly below its demonstrator and above the floor), never from DoPr's. Resumable: each point
# is its own result folder, results/<env>-std-scan/<point>. Usage: scripts/evidence/scan_regime.sh ENV [CORE]
# (hopper: issue 15; walker2d: issue 23)
set -euo pipefail
cd "$(dirname "$0")/../.."
env=${1:?usage: scan_regime.sh ENV [CORE]}
core=${2:-1}
run() {  # run OUT [flags...]
  local out=$1; shift
  taskset -c "$core" .venv/bin/dopr-bench run "$env" --standardize --optimizers adamw --seeds 1 --lrs 1e-3 \
    --threads 1 --no-progress --out "results/$env-std-scan/$out" "$@"
}
for demos in 1 2 5; do
  run "d${demos}-s1000" --demos "$demos" --steps 1000
done
for demos in 2 5; do
  run "d${demos}-s1000-noise0.3" --demos "$demos" --steps 1000 --demo-noise 0.3
done
