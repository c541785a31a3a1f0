#!/usr/bin/env bash
# Issue 14 cost tables of this checkout in one queue, one core, arms interleaved in each script (wall and CPU time):
# the MLP policy, the robosuite image policy and the CNN (exact and max_rows='auto'), the GPT at 2k and 8k tokens
# per step, and the second-order peers at 2k tokens with their default update periods amortized.
# Usage: scripts/overhead_v6.sh [CORE]   (the peers need: .venv/bin/pip install -e '.[peers]')
set -euo pipefail
cd "$(dirname "$0")/.."
core=${1:-1}
rel=results/overhead-cpu-v6
out=$PWD/$rel
mkdir -p "$out"
py() { taskset -c "$core" ../.venv/bin/python "$@" 2>&1 | grep -v USDT; }
log() { echo "$*" >> "$out/COMMAND.txt"; }
git rev-parse --short HEAD > "$out/LIBRARY.txt"
cd benchmarks
log "cd benchmarks && taskset -c $core ../.venv/bin/python mlp_step.py > ../$rel/mlp.txt"
py mlp_step.py > "$out/mlp.txt"
for model in robo cnn; do
  log "cd benchmarks && taskset -c $core ../.venv/bin/python overhead.py --model $model --bases adamw --variants 'exact:;auto:max_rows=auto' --steps 20 --warmup 3 --json ../$rel/$model.json > ../$rel/$model.txt"
  py overhead.py --model "$model" --bases adamw --variants 'exact:;auto:max_rows=auto' --steps 20 --warmup 3 \
    --json "$out/$model.json" > "$out/$model.txt"
done
log "cd benchmarks && taskset -c $core ../.venv/bin/python overhead.py --tokens 2048,8192 --bases adamw --variants 'exact:;auto:max_rows=auto' --steps 4 --warmup 1 --no-profile --json ../$rel/tokens.json > ../$rel/tokens.txt"
py overhead.py --tokens 2048,8192 --bases adamw --variants 'exact:;auto:max_rows=auto' --steps 4 --warmup 1 \
  --no-profile --json "$out/tokens.json" > "$out/tokens.txt"
peers=po-soap@every,po-soap@default,po-shampoo@every,po-shampoo@default,hb-soap@every,hb-soap@default,hb-psgd@every,hb-psgd@default,singd@every,singd@default
log "cd benchmarks && taskset -c $core ../.venv/bin/python overhead.py --tokens 2048 --bases adamw --variants 'exact:;auto:max_rows=auto' --steps 3 --warmup 1 --no-profile --peers $peers --json ../$rel/peers-2k.json > ../$rel/peers-2k.txt"
py overhead.py --tokens 2048 --bases adamw --variants 'exact:;auto:max_rows=auto' --steps 3 --warmup 1 --no-profile \
  --peers "$peers" --json "$out/peers-2k.json" > "$out/peers-2k.txt"
