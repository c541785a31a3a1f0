#!/usr/bin/env bash
# Issue 15, the second regime of results/humanoid-std-scan (chosen by the base): 1 clean expert demonstration,
# 1,000 steps, standardized observations, where AdamW falls (590 at lr 1e-3, seed 0): a floor regime without
# label noise. Resumable; extend with larger SEEDS or more LRS. Usage: [LRS=..] queue_humanoid_floor.sh [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/evidence/library.sh
seeds=${1:-3}
LRS=${LRS:-1e-4,3e-4,1e-3}
out=results/humanoid-std-d1-s1000
record_library "$out"
taskset -c 1 .venv/bin/dopr-bench run humanoid --demos 1 --steps 1000 --standardize --lrs "$LRS" --seeds "$seeds" \
  --optimizers adamw,dopr-adamw --threads 1 --no-progress --out "$out"
