"""The scripts of benchmarks/gpu.sh run, on CPU and tiny: a device call is rare (15 minutes a task, when lent), and
a script that rotted since the last one (overhead.py read ``Group.kind`` after the typed factors removed it) would
waste it. Each runs with gpu.sh's options (variants, bases, modes) at the smallest size, in a subprocess as gpu.sh
runs it; the numbers are not checked, only that every arm prints its row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUNS = {
    "overhead-gpt": (["overhead.py", "--model", "gpt", "--tokens", "128", "--steps", "1", "--warmup", "1",
                      "--variants", "exact:;auto:max_rows=auto;block64:max_block=64;fast:refresh_every=10;"
                      "ema10:sigma=ema,refresh_every=10"], ["dopr-adamw ema10", "dopr-muon block64"]),
    "overhead-gpt-tokens": (["overhead.py", "--model", "gpt", "--tokens", "64,128", "--bases", "adamw", "--variants",
                             "exact:;auto:max_rows=auto", "--steps", "1", "--warmup", "1", "--no-profile"],
                            ["dopr-adamw auto"]),
    "overhead-cnn": (["overhead.py", "--model", "cnn", "--steps", "1", "--warmup", "1",
                      "--variants", "exact:;block256:max_block=256;fast:refresh_every=10"], ["dopr-muon block256"]),
    "overhead-robo": (["overhead.py", "--model", "robo", "--bases", "adamw", "--steps", "1", "--warmup", "1",
                       "--variants", "exact:;auto:max_rows=auto"], ["dopr-adamw auto"]),
    "compile-speed": (["compile_speed.py", "--model", "mlp", "--rounds", "1", "--warmup", "1", "--capturable",
                       "--compile-step"], ["dopr-adamw compiled capturable", "optimizer step compiled too"]),
    "solve-crossover": (["solve_crossover.py", "--widths", "17"], ["17 |"]),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_gpu_script_runs(name: str) -> None:
    args, expected = RUNS[name]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for row in expected:
        assert row in done.stdout, done.stdout[-3000:]
