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



def _run(argv: list[str], tmp_path: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_compare_trains_both_arms_on_the_same_batches(tmp_path: Path) -> None:
    out = _run([sys.executable, str(EXAMPLES / "compare.py"), "--steps", "120"], tmp_path)
    rows = [[float(v) for v in line.split()[1:]] for line in out.splitlines() if re.match(r"^\s*\d+\s", line)]
    assert [len(r) for r in rows] == [4] * 6, out  # adamw/dopr train, adamw/dopr val, six times
    for column in range(4):
        assert math.isfinite(rows[-1][column]) and rows[-1][column] < rows[0][column], out


def test_ddp_and_fsdp2_example_train_identically(tmp_path: Path) -> None:
    """torchrun on 2 CPU processes (gloo): DDP and FSDP2 print the same losses, and the loss falls."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this python")
    argv = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(EXAMPLES / "ddp_torchrun.py")]
    ddp, fsdp2 = _run(argv, tmp_path), _run([*argv, "--fsdp2"], tmp_path)
    losses = [float(m) for m in re.findall(r"loss\s+([0-9.eE+-]+)", ddp)]
    assert ddp == fsdp2 and len(losses) >= 3 and losses[-1] < losses[0], (ddp, fsdp2)
