#!/usr/bin/env bash
# Issue 15: every evidence table, regenerated from the committed result folders into results/EVIDENCE-TABLES.md
# (do not edit that file by hand; the reading of the tables is in scripts/evidence/QUEUE.md and the README).
# Usage: scripts/evidence/tables.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=.venv/bin/dopr-bench
out=results/EVIDENCE-TABLES.md
H=results/humanoid-std-d5-noise0.3-s1000
P=results/hopper-std-d5-s1000
section() { printf '\n## %s\n\n`%s`\n\n' "$1" "$2"; }
shown() { local a out=(); for a in "$@"; do [[ $a == *" "* ]] && out+=("'$a'") || out+=("$a"); done; echo "${out[*]}"; }
arms() {  # arms TITLE ARG...: a section holding `dopr-bench arms ARG...`
  section "$1" "dopr-bench arms $(shown "${@:2}")"
  $bench arms "${@:2}"
}
bases() {  # bases TITLE R: the four base optimizers of regime folder R, each against its DoPr
  arms "$1" --pairs "$2:adamw,dopr-adamw" "$2-signum:signum,dopr-signum" "$2-muon:muon,dopr-muon" \
    "$2-adamuon:adamuon,dopr-adamuon"
}
regime_ablations() {  # regime_ablations TITLE R: AP first / hidden and ZCA against the tuned standardized AdamW
  arms "$1" "adamw std=$2:adamw" "dopr-adamw all std=$2:dopr-adamw" "dopr-adamw first std=$2-ap-first:dopr-adamw" \
    "dopr-adamw hidden std=$2-ap-hidden:dopr-adamw" "adamw ZCA=${2/std/zca}:adamw"
}
raw_ablations() {  # raw_ablations TITLE RAW: the folders of queue_raw_ablations.sh against raw AdamW
  arms "$1" "adamw raw=$2:adamw" "dopr-adamw all raw=$2:dopr-adamw" "dopr-adamw first raw=$2-ap-first:dopr-adamw" \
    "dopr-adamw hidden raw=$2-ap-hidden:dopr-adamw" "adamw ZCA=${2/raw/zca}:adamw" "adamw std=${2/raw/std}:adamw" \
    "dopr-adamw std=${2/raw/std}:dopr-adamw"
}
checkpoints_section() {  # issue 23 item 3: every regime folder whose runs all record the lowest-validation checkpoint
  local W=results/walker2d-std-d2-noise0.3-s1000
  local specs=(
    "Hopper=$P-damping:adamw,dopr-adamw@0.1" "Hopper=$P-muon-damping:muon,dopr-muon@0.1"
    "Humanoid noisy=$H-damping:adamw,dopr-adamw@0.1" "Humanoid noisy=$H-muon-damping:muon,dopr-muon@0.1"
    "Humanoid noisy, 500 steps=${H%-s1000}-length/s500:adamw,dopr-adamw"
    "Walker2d noisy=$W:adamw,dopr-adamw" "Walker2d noisy=$W-signum:signum,dopr-signum"
    "Walker2d noisy=$W-muon:muon,dopr-muon" "Walker2d noisy=$W-adamuon:adamuon,dopr-adamuon")
  section "Final weights against the lowest-validation-loss checkpoint (BC, damping 0.1)" \
    "dopr-bench checkpoints $(shown "${specs[@]}")"
  $bench checkpoints "${specs[@]}"
}
{
  echo "# Issue 15 evidence tables (written by scripts/evidence/tables.sh; do not edit)"
  bases "Humanoid-v5, 5 demos from the noise-0.3 demonstrator, 1,000 steps, standardized: four bases, best against best" "$H"
  regime_ablations "Humanoid-v5, same regime: ablations against the tuned standardized AdamW" "$H"
  regime_ablations "Hopper-v5, 5 clean demos, 1,000 steps, standardized (the regime of results/hopper-std-scan): best against best and ablations" "$P"
  bases "Hopper-v5, same regime: the four bases, best against best" "$P"
  raw_ablations "Hopper-v5, 5 demos, 3,000 steps, raw observations, shared lr 1e-3: what AP adds where DoPr wins" \
    results/hopper-raw-5demos
  raw_ablations "Walker2d-v5, 5 demos, 3,000 steps, raw observations, shared lr 1e-3: what AP adds where DoPr wins" \
    results/walker2d-raw-5demos
  raw_ablations "Humanoid-v5, 60 demos, 8,000 steps, raw observations, shared lr 1e-3: what AP adds where DoPr wins" \
    results/humanoid-raw-60demos
  checkpoints_section
  section "robosuite Lift (images), AdamW against DoPr-AdamW, seeds 0-7 pooled" \
    "dopr-bench paired --pool adamw dopr-adamw results/robo-lift results/robo-lift-s4 results/robo-lift-s0"
  $bench paired --pool adamw dopr-adamw results/robo-lift results/robo-lift-s4 results/robo-lift-s0
  section "Synthetic-arithmetic LM: best against best (from the folder's summary.md)" "results/lm-synthetic-sweep/summary.md"
  sed -n '/^## Learning-rate sweep/,$p' results/lm-synthetic-sweep/summary.md | sed '1d'
  section "Diagnostics: rank correlation with the return across runs, Humanoid regime" \
    "dopr-bench diagnostics $H $H-signum $H-muon $H-adamuon"
  $bench diagnostics "$H" "$H-signum" "$H-muon" "$H-adamuon"
  section "Diagnostics: Hopper regime" "dopr-bench diagnostics $P $P-ap-first $P-ap-hidden ${P/std/zca}"
  $bench diagnostics "$P" "$P-ap-first" "$P-ap-hidden" "${P/std/zca}"
} > "$out" 2> >(grep -v -e RuntimeWarning -e _nanquantile >&2)
echo "wrote $out"
