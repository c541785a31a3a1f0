"""The results index, ``results/README.md``, written from the result folders (``dopr-bench index results/``).

One row per folder, lr and DoPr/base pair (or lone arm): mean over seeds of the validation and test metrics and
the paired DoPr − base difference of the test metric with its 95% t-interval. Folders named as sources of a
``dopr-bench merge`` line in another folder's COMMAND.txt are parts of that folder and are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import stats
from .bench import Metric, get_bench
from .dampings import by_damping
from .results import load_results
from .stats import signed_interval as _signed

BEGIN = "<!-- results-index: begin (written by `dopr-bench index results/`; do not edit by hand) -->"
END = "<!-- results-index: end -->"


def _mean(runs: list[dict], metric: Metric) -> str:
    v = [metric.of(r) for r in runs]
    v = [x for x in v if np.isfinite(x)]
    return metric.fmt(float(np.mean(v))) if v else "n/a"


def merged_parts(root: Path) -> set[Path]:
    parts: set[Path] = set()
    for cmd in root.glob("**/COMMAND.txt"):
        for line in cmd.read_text().splitlines():
            words = line.split()
            if words[:2] == ["dopr-bench", "merge"]:
                parts |= {(root.parent / w).resolve() for w in words[3:]}
    return parts


def index_table(root: Path, folders: list[Path] | None = None) -> str:
    """The table of the folders under ``root`` (``folders``: only these, e.g. the git-tracked ones)."""
    parts = merged_parts(root)
    paths = sorted(root.glob("**/results.json")) if folders is None else sorted(f / "results.json" for f in folders)
    lines = ["| folder | setting | lr | arms (base / DoPr) | seeds | val: base / DoPr | test: base / DoPr | "
             "Δ test, DoPr − base (95% t) | DoPr better |", "|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        if path.parent.resolve() in parts:
            continue
        results = load_results(path)
        bench = get_bench(results["bench"])
        val, test = bench.val, bench.test
        name = f"`{path.parent.relative_to(root.parent)}`"
        for _, view in by_damping(results):  # a damping sweep: one block of rows per damping, its headline says it
            lines += _rows(name, bench.headline(view), view["runs"], val, test)
    return "\n".join(lines) + "\n"


def _rows(name: str, setting: str, runs: list[dict], val: Metric, test: Metric) -> list[str]:
    """One row per lr and DoPr/base pair (or lone arm) of one view of a folder."""
    lines = []
    for lr in stats.lrs(runs):
        at = stats.select(runs, lr=lr)
        ps = stats.pairs(at)
        paired = {a for pair in ps for a in pair}
        for (arm, base), pp in ps.items():
            d = [test.of(a) - test.of(b) for a, b in pp]
            wins = sum(test.better(test.of(a), test.of(b)) for a, b in pp)
            ra, rb = [a for a, _ in pp], [b for _, b in pp]
            lines.append(f"| {name} | {setting} | {lr:g} | {base} / {arm} | {len(pp)} | {_mean(rb, val)} / "
                         f"{_mean(ra, val)} | {test.label} {_mean(rb, test)} / {_mean(ra, test)} | "
                         f"{_signed(test, d)} | {wins}/{len(pp)} |")
        for arm in stats.arm_order(at):
            if arm not in paired:
                rs = stats.select(at, arm)
                lines.append(f"| {name} | {setting} | {lr:g} | {arm} | {len(rs)} | {_mean(rs, val)} | "
                             f"{test.label} {_mean(rs, test)} | | |")
    return lines


def write_index(root: Path, readme: Path, check: bool = False, folders: list[Path] | None = None) -> bool:
    """Put the table between the markers of ``readme``; returns whether it changed (``check``: do not write)."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no results-index markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{index_table(root, folders)}{END}{tail}"
    if new != text and not check:
        readme.write_text(new)
    return new != text
