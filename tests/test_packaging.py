"""The two distributions of this repo, built as a user's `pip install` would get them: `dopr` holds the library
alone (torch its only dependency, `py.typed`), `dopr-bench` the bench with its expert checkpoints; both carry the
one version of `src/dopr/_version.py`, the CHANGELOG's newest entry names it, and `twine check` passes."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import dopr

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("build")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    for project in (ROOT, ROOT / "bench"):
        done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(project)],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"building {project} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    found = {p.name: p for p in out.iterdir()}
    v = dopr.__version__
    names = {"lib": f"dopr-{v}-py3-none-any.whl", "bench": f"dopr_bench-{v}-py3-none-any.whl",
             "lib_sdist": f"dopr-{v}.tar.gz", "bench_sdist": f"dopr_bench-{v}.tar.gz"}
    assert set(names.values()) == set(found), f"expected {sorted(names.values())}, built {sorted(found)}"
    return {k: found[n] for k, n in names.items()}


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        return z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def _requires(wheel: Path) -> list[str]:
    """The dependencies a plain install pulls (no extra)."""
    return [line.split(":", 1)[1].strip() for line in _metadata(wheel).splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def test_the_library_wheel_is_the_library_alone(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["lib"]) as z:
        files = [n for n in z.namelist() if ".dist-info/" not in n]
    assert files and all(n.startswith("dopr/") for n in files), [n for n in files if not n.startswith("dopr/")]
    assert "dopr/py.typed" in files
    assert not [n for n in files if n.endswith((".pt", ".json", ".hdf5", ".md"))]
    assert _requires(dists["lib"]) == ["torch>=2.9"]


def test_the_bench_wheel_holds_the_bench_and_its_experts(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["bench"]) as z:
        files = [n for n in z.namelist() if ".dist-info/" not in n]
        entry = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
        linked = z.read("dopr_bench/_version.py").decode()
    assert all(n.startswith("dopr_bench/") for n in files)
    experts = sorted(n.rsplit("/", 1)[1] for n in files if n.startswith("dopr_bench/bc/experts/")
                     and n.endswith((".pt", ".json")))
    assert experts == [f"{t}.{e}" for t in ("hopper", "humanoid", "walker2d") for e in ("json", "pt")]
    assert "dopr_bench/py.typed" in files
    assert "dopr-bench = dopr_bench.cli:main" in entry
    assert linked == (ROOT / "src/dopr/_version.py").read_text(), "the bench's _version.py is not the library's"
    assert "dopr" in _requires(dists["bench"])


def test_one_version_everywhere(dists: dict[str, Path]) -> None:
    v = dopr.__version__
    for wheel in (dists["lib"], dists["bench"]):
        assert f"\nVersion: {v}\n" in _metadata(wheel)
    with tarfile.open(dists["bench_sdist"]) as t:  # the link is stored as the file it points at
        member = t.getmember(f"dopr_bench-{v}/src/dopr_bench/_version.py")
        assert member.isfile()
    newest = re.search(r"^## \[?(\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert newest and newest.group(1) == v, "CHANGELOG.md's newest entry is not src/dopr/_version.py's version"
    assert not re.search(r"^\s*version\s*=\s*\"", (ROOT / "pyproject.toml").read_text(), re.M)
    assert not re.search(r"^\s*version\s*=\s*\"", (ROOT / "bench/pyproject.toml").read_text(), re.M)


def test_twine_check_passes(dists: dict[str, Path]) -> None:
    pytest.importorskip("twine")
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dists.values())],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
