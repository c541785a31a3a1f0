"""The examples run as a user runs them (a subprocess, from a scratch folder) and train: each ends with a finite
final loss lower than its first printed one."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NEEDS = {"accelerate_loop.py": "accelerate", "hf_trainer.py": "transformers", "lightning_module.py": "lightning",
         "nanogpt.py": None}


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_example_trains(script: str, tmp_path: Path) -> None:
    if NEEDS[script]:
        pytest.importorskip(NEEDS[script])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    losses = [float(m) for m in re.findall(r"^(?:step\s+\d+|final)\s+loss\s+([0-9.eE+-]+)", done.stdout, re.M)]
    assert len(losses) >= 2 and done.stdout.rstrip().splitlines()[-1].startswith("final loss"), done.stdout[-2000:]
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0], losses

