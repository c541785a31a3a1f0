#!/usr/bin/env bash
# Issue 15 on Hopper-v5. Two settings:
#  * the regime chosen by results/hopper-std-scan (how the BASE did, see its NOTE.md): 5 clean demonstrations,
#    1,000 steps, standardized observations; AdamW at lr 1e-3 got 2,190 of the expert's 3,532 (seed 0).
#    `main` sweeps adamw and dopr-adamw over LRS; `first`, `hidden`, `zca` are the ablations over ABL_LRS.
#  * the raw-observation setting where DoPr wins (results/hopper-raw-5demos: 5 demos, 3,000 steps, lr 1e-3,
#    AdamW 1,899 vs DoPr-AdamW 3,198): `raw-ablations` runs, at that folder's shared lr and seeds, AP on the input
#    layer only, AP on every layer but the input layer, AdamW on ZCA-whitened inputs and AdamW/DoPr-AdamW on
#    standardized inputs; each pairs by seed with the raw folder (same demos, initialization and minibatch order).
# `bases`: the paper's other base optimizers in the regime, each with and without DoPr, one folder per pair
# ($R-muon, $R-signum, $R-adamuon), each over its own grid (MUON_LRS, SIGNUM_LRS, ADAMUON_LRS; signum's update has
# RMS 1, so its grid starts lower).
# Resumable: finished runs are skipped; rerun a step with more seeds or lrs to extend it.
# Usage: [LRS=..] [ABL_LRS=..] scripts/evidence/queue_hopper.sh [main|first|hidden|zca|regime|bases|raw-ablations] [SEEDS] [CORE]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/evidence/library.sh
what=${1:-regime}
seeds=${2:-5}
core=${3:-1}
LRS=${LRS:-1e-4,3e-4,1e-3,3e-3,1e-2}
ABL_LRS=${ABL_LRS:-3e-4,1e-3,3e-3,1e-2}
MUON_LRS=${MUON_LRS:-3e-4,1e-3,3e-3,1e-2,3e-2}
SIGNUM_LRS=${SIGNUM_LRS:-3e-5,1e-4,3e-4,1e-3,3e-3}
ADAMUON_LRS=${ADAMUON_LRS:-3e-4,1e-3,3e-3,1e-2,3e-2}
R=results/hopper-std-d5-s1000
run() {  # run OUT [flags...]
  local out=$1; shift
  record_library "$out"
  taskset -c "$core" .venv/bin/dopr-bench run hopper --demos 5 --seeds "$seeds" --threads 1 --no-progress --out "$out" "$@"
}
case $what in
  main|regime) run "$R" --steps 1000 --lrs "$LRS" --standardize --optimizers adamw,dopr-adamw ;;&
  first|regime) run "$R-ap-first" --steps 1000 --lrs "$ABL_LRS" --standardize --ap-layers first --optimizers dopr-adamw ;;&
  hidden|regime) run "$R-ap-hidden" --steps 1000 --lrs "$ABL_LRS" --standardize --ap-layers hidden --optimizers dopr-adamw ;;&
  zca|regime) run "${R/std/zca}" --steps 1000 --lrs "$ABL_LRS" --zca --optimizers adamw ;;
  bases)
    run "$R-muon" --steps 1000 --lrs "$MUON_LRS" --standardize --optimizers muon,dopr-muon
    run "$R-signum" --steps 1000 --lrs "$SIGNUM_LRS" --standardize --optimizers signum,dopr-signum
    run "$R-adamuon" --steps 1000 --lrs "$ADAMUON_LRS" --standardize --optimizers adamuon,dopr-adamuon ;;
  raw-ablations) scripts/evidence/queue_raw_ablations.sh hopper "$seeds" "$core" ;;
esac
