#!/usr/bin/env bash
# One device call (< 10 minutes on one H200) measuring DoPr's overhead at GPT-2-small size in bf16.
# Prepared for a session that has the device tool; run from the repository root:
#   device run: bash benchmarks/gpu.sh      (writes $OUT/*.json and $OUT/*.txt)
# Not yet run: no session so far was lent a GPU.
set -euo pipefail
OUT=${OUT:-results/overhead-gpu}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/device.txt"
export PYTHONPATH=src
python benchmarks/overhead.py --model gpt --preset gpt2-small --device cuda --dtype bfloat16 --steps 10 --warmup 2 \
  --variants "exact:;auto:max_rows=auto;block768:max_block=768;fast:refresh_every=10;ema10:sigma=ema,refresh_every=10" \
  --json "$OUT/gpt2-small-bf16.json" 2>&1 | grep -v USDT | tee "$OUT/gpt2-small-bf16.txt"
python benchmarks/overhead.py --model gpt --preset cpu-10m --device cuda --dtype bfloat16 --tokens 2048,8192,32768 \
  --bases adamw --variants "exact:;auto:max_rows=auto" --steps 10 --warmup 2 --no-profile \
  --json "$OUT/gpt-tokens-bf16.json" 2>&1 | grep -v USDT | tee "$OUT/gpt-tokens-bf16.txt"
python benchmarks/overhead.py --model cnn --device cuda --dtype float32 --steps 20 --warmup 5 \
  --variants "exact:;block256:max_block=256;fast:refresh_every=10" --json "$OUT/cnn.json" 2>&1 | grep -v USDT | tee "$OUT/cnn.txt"
python benchmarks/overhead.py --model robo --device cuda --dtype float32 --bases adamw --steps 20 --warmup 5 \
  --variants "exact:;auto:max_rows=auto" --json "$OUT/robo.json" 2>&1 | grep -v USDT | tee "$OUT/robo.txt"
for mode in default reduce-overhead; do  # issue 21: compiled DoPr over compiled AdamW against eager (fullgraph)
  for model in "mlp" "gpt --tokens 8192"; do
    steps=("")
    [ "$mode" = reduce-overhead ] && steps+=("--compile-step")  # with CUDA graphs, the optimizer step compiled too
    for step in "${steps[@]}"; do
      python benchmarks/compile_speed.py --model $model --device cuda --mode $mode --rounds 20 --capturable $step \
        2>&1 | grep -v USDT | tee -a "$OUT/compile-speed.txt"
    done
  done
done
python benchmarks/solve_crossover.py --device cuda --widths 257,513,1025,2049 2>&1 | tee "$OUT/solve-crossover.txt"
date -u +"measured %Y-%m-%dT%H:%MZ with: bash benchmarks/gpu.sh" | tee -a "$OUT/device.txt"
