#!/usr/bin/env bash
# Issue 15 item 4: what AP adds in the raw-observation settings where DoPr wins, at each setting's shared lr and
# seeds: AP on the input layer only, AP on every layer but the input layer, AdamW on ZCA-whitened inputs, and
# AdamW / DoPr-AdamW on standardized inputs. Each folder pairs by seed with the raw one (same demos, initialization
# and minibatch order; the bench regenerates the demos deterministically, and n_train_transitions and
# expert_demo_return in results.json show they match).
#   hopper:   results/hopper-raw-5demos (5 demos, 3,000 steps, lr 1e-3; DoPr-AdamW +1,300 over AdamW)
#   walker2d: results/walker2d-raw-5demos (5 demos, 3,000 steps, lr 1e-3; DoPr-AdamW +947 over AdamW)
#   humanoid: results/humanoid-raw-60demos (60 demos, 8,000 steps, lr 1e-3; DoPr-AdamW +5,767), whose
#             standardized pair is results/humanoid-std-60demos
# Resumable: finished runs are skipped. Usage: scripts/evidence/queue_raw_ablations.sh hopper|walker2d|humanoid [SEEDS] [CORE]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/evidence/library.sh
task=$1
seeds=${2:-5}
core=${3:-0}
case $task in
  hopper|walker2d) flags=(--demos 5); raw=results/$task-raw-5demos ;;
  humanoid) flags=(--demos 60 --steps 8000); raw=results/humanoid-raw-60demos ;;
  *) echo "unknown task $task (hopper, walker2d or humanoid)" >&2; exit 2 ;;
esac
run() {  # run OUT [flags...]
  local out=$1; shift
  record_library "$out"
  taskset -c "$core" .venv/bin/dopr-bench run "$task" "${flags[@]}" --seeds "$seeds" --threads 1 --no-progress \
    --out "$out" "$@"
}
run "$raw-ap-first" --lrs 1e-3 --ap-layers first --optimizers dopr-adamw
run "$raw-ap-hidden" --lrs 1e-3 --ap-layers hidden --optimizers dopr-adamw
run "${raw/raw/zca}" --lrs 1e-3 --zca --optimizers adamw
run "${raw/raw/std}" --lrs 1e-3 --standardize --optimizers adamw,dopr-adamw
