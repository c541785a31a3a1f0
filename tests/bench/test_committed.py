"""Every committed result folder still reports (summary.md unchanged), resumes (its recorded command gives its
settings) and merges; and the results index (results/README.md) is the one its folders give.

Committed means tracked by git: a folder a bench run wrote into the working tree (``--out results/...``, not yet
added) is not evidence yet and is not read."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from dopr_bench.cli import parse_run  # noqa: E402
from dopr_bench.core.index import index_table, write_index  # noqa: E402
from dopr_bench.core.report import write_report  # noqa: E402
from dopr_bench.core.results import as_json, load_results, merge_results  # noqa: E402
from dopr_bench.core.sweep import resolve_ns_dtype  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"


def tracked_folders() -> list[Path]:
    """The result folders git tracks (their results.json is in the index)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "results"], cwd=ROOT, capture_output=True, check=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"the committed result folders are git's tracked ones, and {ROOT} is not a git checkout ({e})",
                    allow_module_level=True)
    return sorted((ROOT / f).parent for f in out.split("\0") if f.endswith("/results.json"))


FOLDERS = tracked_folders()


def _name(folder: Path) -> str:
    return str(folder.relative_to(RESULTS))


def test_there_are_committed_folders_of_every_bench() -> None:
    assert {load_results(f)["bench"] for f in FOLDERS} == {"bc", "lm", "flow", "robo"}


@pytest.mark.parametrize("folder", FOLDERS, ids=_name)
def test_reports_unchanged(folder: Path, tmp_path: Path) -> None:
    md = write_report(tmp_path, load_results(folder))  # into a scratch folder: the committed one stays as it is
    assert any(tmp_path.glob("*.png"))
    if (folder / "summary.md").exists():
        assert md == (folder / "summary.md").read_text()


def recorded_commands(folder: Path) -> list[list[str]]:
    """The ``dopr-bench run`` commands recorded in the folder's (or its parent's) COMMAND.txt."""
    out = []
    for cmd in (folder / "COMMAND.txt", folder.parent / "COMMAND.txt"):
        for line in cmd.read_text().splitlines() if cmd.exists() else []:
            words = shlex.split(line.split("#")[0])
            if "dopr-bench" not in " ".join(words):
                continue
            words = words[[i for i, w in enumerate(words) if w.endswith("dopr-bench")][0] + 1:]
            words = words[:words.index("&&")] if "&&" in words else words
            if words and words[0] == "run":
                out.append(words[1:])
    return out


@pytest.mark.parametrize("folder", FOLDERS, ids=_name)
def test_resumes_with_its_recorded_command(folder: Path) -> None:
    """The settings a recorded command determines equal the folder's, and the folder has no other settings than
    those and the ones its data determine: the same command resumes into it."""
    old = load_results(folder)
    matches = []
    for argv in recorded_commands(folder):
        bench, task, spec, args = parse_run(argv)
        assert bench.name == old["bench"]
        planned = as_json(bench.planned(resolve_ns_dtype(spec, old), task))
        known = {k: v for k, v in planned.items() if k not in bench.data_keys}
        matches.append(all(old["settings"].get(k) == v for k, v in known.items())
                       and set(old["settings"]) <= set(planned) | bench.data_keys)
        if args.out and Path(args.out).resolve() == folder.resolve():
            assert matches[-1], f"{argv} would not resume into {folder}"
    assert any(matches), f"no recorded command of {folder} gives its settings"


@pytest.mark.parametrize("folder", FOLDERS, ids=_name)
def test_merges(folder: Path) -> None:
    res = load_results(folder)
    seeds = sorted({r["seed"] for r in res["runs"]})
    parts = [res | {"runs": [r for r in res["runs"] if r["seed"] in half]} for half in (seeds[::2], seeds[1::2])]
    merged = merge_results(parts)
    assert sorted(map(str, merged["runs"])) == sorted(map(str, res["runs"]))
    with pytest.raises(ValueError, match="more than one part"):
        merge_results([res, res])


def test_results_index_is_the_folders(tmp_path: Path) -> None:
    index = RESULTS / "README.md"
    assert index_table(RESULTS, FOLDERS) in index.read_text(), "results/README.md is stale: dopr-bench index results/"
    copy = tmp_path / "README.md"
    copy.write_text(index.read_text())
    assert not write_index(RESULTS, copy, check=True, folders=FOLDERS)
