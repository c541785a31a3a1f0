#!/usr/bin/env bash
# Issue 15: every evidence table, regenerated from the committed result folders into results/EVIDENCE-TABLES.md
# (do not edit that file by hand; the reading of the tables is in results/EVIDENCE-QUEUE.md and the README).
# Usage: scripts/evidence/tables.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
out=results/EVIDENCE-TABLES.md
H=results/humanoid-std-d5-noise0.3-s1000
P=results/hopper-std-d5-s1000
RAW=results/hopper-raw-5demos
section() { printf '\n## %s\n\n`%s`\n\n' "$1" "$2"; }
arms() { $py scripts/evidence/arm_table.py "$@"; }
{
  echo "# Issue 15 evidence tables (written by scripts/evidence/tables.sh; do not edit)"
  section "Humanoid-v5, 5 demos from the noise-0.3 demonstrator, 1,000 steps, standardized: four bases, best against best" \
    "arm_table.py --pairs $H:adamw,dopr-adamw $H-signum:signum,dopr-signum $H-muon:muon,dopr-muon $H-adamuon:adamuon,dopr-adamuon"
  arms --pairs "$H:adamw,dopr-adamw" "$H-signum:signum,dopr-signum" "$H-muon:muon,dopr-muon" "$H-adamuon:adamuon,dopr-adamuon"
  section "Humanoid-v5, same regime: ablations against the tuned standardized AdamW" \
    "arm_table.py 'adamw std=$H:adamw' 'dopr-adamw all std=$H:dopr-adamw' 'dopr-adamw first std=$H-ap-first:dopr-adamw' 'dopr-adamw hidden std=$H-ap-hidden:dopr-adamw' 'adamw ZCA=${H/std/zca}:adamw'"
  arms "adamw std=$H:adamw" "dopr-adamw all std=$H:dopr-adamw" "dopr-adamw first std=$H-ap-first:dopr-adamw" \
    "dopr-adamw hidden std=$H-ap-hidden:dopr-adamw" "adamw ZCA=${H/std/zca}:adamw"
  section "Hopper-v5, 5 clean demos, 1,000 steps, standardized (the regime of results/hopper-std-scan): best against best and ablations" \
    "arm_table.py 'adamw std=$P:adamw' 'dopr-adamw all std=$P:dopr-adamw' 'dopr-adamw first std=$P-ap-first:dopr-adamw' 'dopr-adamw hidden std=$P-ap-hidden:dopr-adamw' 'adamw ZCA=${P/std/zca}:adamw'"
  arms "adamw std=$P:adamw" "dopr-adamw all std=$P:dopr-adamw" "dopr-adamw first std=$P-ap-first:dopr-adamw" \
    "dopr-adamw hidden std=$P-ap-hidden:dopr-adamw" "adamw ZCA=${P/std/zca}:adamw"
  section "Hopper-v5, same regime: the four bases, best against best" \
    "arm_table.py --pairs $P:adamw,dopr-adamw $P-signum:signum,dopr-signum $P-muon:muon,dopr-muon $P-adamuon:adamuon,dopr-adamuon"
  arms --pairs "$P:adamw,dopr-adamw" "$P-signum:signum,dopr-signum" "$P-muon:muon,dopr-muon" "$P-adamuon:adamuon,dopr-adamuon"
  section "Hopper-v5, 5 demos, 3,000 steps, raw observations, shared lr 1e-3: what AP adds where DoPr wins" \
    "arm_table.py 'adamw raw=$RAW:adamw' 'dopr-adamw all raw=$RAW:dopr-adamw' 'dopr-adamw first raw=$RAW-ap-first:dopr-adamw' 'dopr-adamw hidden raw=$RAW-ap-hidden:dopr-adamw' 'adamw ZCA=results/hopper-zca-5demos:adamw' 'adamw std=results/hopper-std-5demos:adamw' 'dopr-adamw std=results/hopper-std-5demos:dopr-adamw'"
  arms "adamw raw=$RAW:adamw" "dopr-adamw all raw=$RAW:dopr-adamw" "dopr-adamw first raw=$RAW-ap-first:dopr-adamw" \
    "dopr-adamw hidden raw=$RAW-ap-hidden:dopr-adamw" "adamw ZCA=results/hopper-zca-5demos:adamw" \
    "adamw std=results/hopper-std-5demos:adamw" "dopr-adamw std=results/hopper-std-5demos:dopr-adamw"
  W=results/walker2d-raw-5demos
  section "Walker2d-v5, 5 demos, 3,000 steps, raw observations, shared lr 1e-3: what AP adds where DoPr wins" \
    "arm_table.py 'adamw raw=$W:adamw' 'dopr-adamw all raw=$W:dopr-adamw' 'dopr-adamw first raw=$W-ap-first:dopr-adamw' 'dopr-adamw hidden raw=$W-ap-hidden:dopr-adamw' 'adamw ZCA=results/walker2d-zca-5demos:adamw' 'adamw std=results/walker2d-std-5demos:adamw' 'dopr-adamw std=results/walker2d-std-5demos:dopr-adamw'"
  arms "adamw raw=$W:adamw" "dopr-adamw all raw=$W:dopr-adamw" "dopr-adamw first raw=$W-ap-first:dopr-adamw" \
    "dopr-adamw hidden raw=$W-ap-hidden:dopr-adamw" "adamw ZCA=results/walker2d-zca-5demos:adamw" \
    "adamw std=results/walker2d-std-5demos:adamw" "dopr-adamw std=results/walker2d-std-5demos:dopr-adamw"
  HR=results/humanoid-raw-60demos
  section "Humanoid-v5, 60 demos, 8,000 steps, raw observations, shared lr 1e-3: what AP adds where DoPr wins" \
    "arm_table.py 'adamw raw=$HR:adamw' 'dopr-adamw all raw=$HR:dopr-adamw' 'dopr-adamw first raw=$HR-ap-first:dopr-adamw' 'dopr-adamw hidden raw=$HR-ap-hidden:dopr-adamw' 'adamw ZCA=results/humanoid-zca-60demos:adamw' 'adamw std=results/humanoid-std-60demos:adamw' 'dopr-adamw std=results/humanoid-std-60demos:dopr-adamw'"
  arms "adamw raw=$HR:adamw" "dopr-adamw all raw=$HR:dopr-adamw" "dopr-adamw first raw=$HR-ap-first:dopr-adamw" \
    "dopr-adamw hidden raw=$HR-ap-hidden:dopr-adamw" "adamw ZCA=results/humanoid-zca-60demos:adamw" \
    "adamw std=results/humanoid-std-60demos:adamw" "dopr-adamw std=results/humanoid-std-60demos:dopr-adamw"
  section "robosuite Lift (images), AdamW against DoPr-AdamW, seeds 0-7 pooled" \
    "scripts/quality/paired.py --pool adamw dopr-adamw results/robo-lift results/robo-lift-s4 results/robo-lift-s0"
  $py scripts/quality/paired.py --pool adamw dopr-adamw results/robo-lift results/robo-lift-s4 results/robo-lift-s0
  section "Synthetic-arithmetic LM: best against best (from the folder's summary.md)" "results/lm-synthetic-sweep/summary.md"
  sed -n '/^## Learning-rate sweep/,$p' results/lm-synthetic-sweep/summary.md | sed '1d'
  section "Diagnostics: rank correlation with the return across runs, Humanoid regime" \
    "scripts/evidence/diagnostics.py $H $H-signum $H-muon $H-adamuon"
  $py scripts/evidence/diagnostics.py "$H" "$H-signum" "$H-muon" "$H-adamuon"
  section "Diagnostics: Hopper regime" "scripts/evidence/diagnostics.py $P $P-ap-first $P-ap-hidden ${P/std/zca}"
  $py scripts/evidence/diagnostics.py "$P" "$P-ap-first" "$P-ap-hidden" "${P/std/zca}"
} > "$out" 2> >(grep -v -e RuntimeWarning -e _nanquantile >&2)
echo "wrote $out"
