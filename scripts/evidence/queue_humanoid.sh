#!/usr/bin/env bash
# Issue 15, Humanoid-v5 evidence queue in the regime chosen by results/humanoid-std-scan (how the BASE did):
# 5 demonstrations from the expert with action noise 0.3 (demonstrator return ~6,036), 1,000 steps, standardized
# observations; AdamW there got 3,793 at lr 1e-3 (seed 0), well off both the ceiling and the floor.
# Every step is resumable (finished runs are skipped); a step's seeds or lrs can be extended by rerunning it with
# larger --seeds / more --lrs. Usage: [LRS=a,b,..] [ABL_LRS=a,b,..] [MUON_LRS=..] [SIGNUM_LRS=..] [ADAMUON_LRS=..]
# scripts/evidence/queue_humanoid.sh [main|first|hidden|zca|all|muon|signum|adamuon|bases] [SEEDS]. The first pass
# ran lrs 3e-4,1e-3,3e-3; both arms' validation loss was lowest at the smallest, so the grid was extended downwards
# to span the optimum.
# `bases` (issue 15 item 3): the paper's other base optimizers, each with and without DoPr, one folder per pair
# ($R-muon, $R-signum, $R-adamuon), same regime flags as main; each pair sweeps its own grid (MUON_LRS, SIGNUM_LRS,
# ADAMUON_LRS), to be extended by factors of ~3 until both arms' best lr by val loss and by return are interior.
# Muon runs with adjust_lr_fn match_rms_adamw (lr scale like AdamW's); signum's update has RMS 1, so its grid starts
# lower. Not in `all`.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/evidence/library.sh
what=${1:-all}
seeds=${2:-5}
LRS=${LRS:-3e-5,1e-4,3e-4,1e-3,3e-3}  # main comparison
ABL_LRS=${ABL_LRS:-3e-5,1e-4,3e-4,1e-3}  # ablation arms
MUON_LRS=${MUON_LRS:-1e-4,3e-4,1e-3,3e-3}
SIGNUM_LRS=${SIGNUM_LRS:-1e-5,3e-5,1e-4,3e-4}
ADAMUON_LRS=${ADAMUON_LRS:-1e-4,3e-4,1e-3,3e-3}
R=results/humanoid-std-d5-noise0.3-s1000
run() {  # run OUT [flags...]
  local out=$1; shift
  record_library "$out"
  taskset -c 1 .venv/bin/dopr-bench run humanoid --demos 5 --demo-noise 0.3 --steps 1000 \
    --seeds "$seeds" --threads 1 --no-progress --out "$out" "$@"
}
case $what in
  main|all) run "$R" --lrs "$LRS" --standardize --optimizers adamw,dopr-adamw ;;&
  first|all) run "$R-ap-first" --lrs "$ABL_LRS" --standardize --ap-layers first --optimizers dopr-adamw ;;&
  hidden|all) run "$R-ap-hidden" --lrs "$ABL_LRS" --standardize --ap-layers hidden --optimizers dopr-adamw ;;&
  zca|all) run "${R/std/zca}" --lrs "$ABL_LRS" --zca --optimizers adamw ;;&
  muon|bases) run "$R-muon" --lrs "$MUON_LRS" --standardize --optimizers muon,dopr-muon ;;&
  signum|bases) run "$R-signum" --lrs "$SIGNUM_LRS" --standardize --optimizers signum,dopr-signum ;;&
  adamuon|bases) run "$R-adamuon" --lrs "$ADAMUON_LRS" --standardize --optimizers adamuon,dopr-adamuon ;;
esac
