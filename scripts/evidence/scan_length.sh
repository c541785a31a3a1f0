#!/usr/bin/env bash
# Training length in the Humanoid regime (issue 23 item 3): every arm overfits the noisy labels after ~400-600
# steps, so a fixed 1,000-step final checkpoint may penalize the faster optimizer. The BASE alone chooses the
# length: AdamW, 8 seeds, lrs 1e-4..1e-2 (widened from 3e-3: the best lr at 500 steps was that edge), at 250, 500 and 2,000 steps (1,000 steps is
# results/humanoid-std-d5-noise0.3-s1000-damping, same machine). Stage `dopr STEPS` then runs DoPr-AdamW at the
# length the base chose. Resumable: each length is its own folder, results/humanoid-std-d5-noise0.3-length/s<STEPS>.
# Usage: [LRS=A,B,...] scripts/evidence/scan_length.sh base|dopr STEPS [CORE]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/evidence/library.sh
stage=${1:?usage: scan_length.sh base|dopr STEPS [CORE]}
steps=${2:?usage: scan_length.sh base|dopr STEPS [CORE]}
core=${3:-0}
out="results/humanoid-std-d5-noise0.3-length/s$steps"
case $stage in
  base) arms=adamw ;;
  dopr) arms=adamw,dopr-adamw ;;
  *) echo "stage is base or dopr" >&2; exit 2 ;;
esac
record_library "$out"
taskset -c "$core" .venv/bin/dopr-bench run humanoid --demos 5 --demo-noise 0.3 --steps "$steps" --seeds 8 \
  --threads 1 --no-progress --standardize --optimizers "$arms" --lrs "${LRS:-1e-4,3e-4,1e-3,3e-3,1e-2}" --out "$out"
