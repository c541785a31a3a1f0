#!/usr/bin/env bash
# robosuite Lift, where DoPr's conv Sigma over every patch row made a DoPr-AdamW step ~2.5-3x AdamW's:
#  1. issue 15 item 5: AdamW vs DoPr-AdamW on more seeds (results/robo-lift has seeds 0-2, robo-lift-s3 seed 3;
#     this adds seeds 4.. in results/robo-lift-s4, same settings);
#  2. issue 14: DoPr-AdamW with max_rows='auto' (Sigma from <= 4 rows per input dimension) on seeds 0.., paired
#     by seed with the exact runs of those folders (same demos, initialization and batch order per seed).
# Resumable: finished runs are skipped. Usage: scripts/quality/robo_rows.sh [LAST_SEED] [CORE]
set -euo pipefail
cd "$(dirname "$0")/../.."
last=${1:-7}
core=${2:-0}
bench() { taskset -c "$core" .venv-robo/bin/dopr-bench run robo lift --threads 1 --no-progress "$@"; }
bench --optimizers dopr-adamw --max-rows auto --seeds 5 --out results/robo-lift-rows-auto
bench --optimizers adamw,dopr-adamw --first-seed 4 --seeds $((last - 3)) --out results/robo-lift-s4
bench --optimizers dopr-adamw --max-rows auto --seeds $((last + 1)) --out results/robo-lift-rows-auto
