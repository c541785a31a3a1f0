"""The README's two commands work in sequence: the main job, run in a scratch copy of this checkout, writes only
git-ignored files, runs again (resuming) without harm, and the committed-results and docs checks still pass in that
copy afterwards. This is the failure a newcomer met (issue 20): the main job used to write into results/, which the
tests then read as committed evidence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(sys.executable).with_name("dopr-bench")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def scratch_copy(dest: Path) -> Path:
    """This checkout's files as a fresh clone would have them (tracked and not ignored), indexed in a new repo."""
    try:
        files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).split("\0")
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"{ROOT} is not a git checkout ({e})")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f, follow_symlinks=False)
    git("init", "-q", cwd=dest)
    git("add", "-A", cwd=dest)
    return dest


def test_main_job_then_tests_in_a_scratch_copy(tmp_path: Path) -> None:
    if not BENCH.exists():
        pytest.skip(f"no dopr-bench entry point beside {sys.executable}: run ./scripts/setup")
    repo = scratch_copy(tmp_path / "repo")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    before = git("status", "--porcelain", cwd=repo)

    def main_job() -> None:
        done = subprocess.run([str(BENCH), "run", "idp", "--quick"], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    main_job()
    out = repo / "runs" / "idp-quick"
    assert (out / "results.json").exists() and (out / "summary.md").exists()
    assert not (repo / "results" / "idp-quick").exists()
    assert git("status", "--porcelain", cwd=repo) == before, "the main job wrote files git does not ignore"

    # The README's promise: a clear contrast, DoPr far above its base in every seed, for both bases
    runs = json.loads((out / "results.json").read_text())["runs"]
    by = {(r["optimizer"], r["seed"]): mean(r["returns"]) for r in runs}
    for base in ("adamw", "muon"):
        seeds = sorted(s for o, s in by if o == base)
        assert seeds and all(by[f"dopr-{base}", s] > by[base, s] for s in seeds), {k: round(v) for k, v in by.items()}

    main_job()
    assert json.loads((out / "results.json").read_text())["runs"] == runs, "a rerun changed the finished runs"

    checks = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/bench/test_committed.py", "tests/test_docs.py"],
                            cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert checks.returncode == 0, checks.stdout[-4000:] + checks.stderr[-2000:]
