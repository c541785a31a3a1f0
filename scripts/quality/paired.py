"""Paired difference of one arm between two result folders of one bench that differ in one setting (issue 14's
quality check of a cheaper mode against exact mode): B − A per (lr, seed), with mean ± 95% t-interval.

Usage: ``python scripts/quality/paired.py ARM FOLDER_A FOLDER_B [FOLDER_A2 ...]``. Folders after the second one
are extra parts of A (seeds made in another folder with A's settings, e.g. results/robo-lift + robo-lift-s3).
The folders share data, initialization and batch order per seed, so a pair differs only in the setting.

``python scripts/quality/paired.py --pool ARM_A ARM_B FOLDER [FOLDER ...]`` instead pairs two arms by (lr, seed)
over the runs of all the folders pooled (seeds of one setting made in several folders, e.g. results/robo-lift and
results/robo-lift-s4): B − A, e.g. ``--pool adamw dopr-adamw``. Where the pooled runs hold more than one lr, it
also gives each arm at its own best lr and the best-against-best difference (the bench report's lr section), over
the seeds that have every lr of both arms.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from dopr_bench.core import stats
from dopr_bench.core.bench import get_bench
from dopr_bench.core.report import lr_section
from dopr_bench.core.results import load_results


def main(arm: str, a: str, b: str, *more_a: str) -> None:
    bench = get_bench(load_results(Path(a))["bench"])
    runs_a = [r for f in (a, *more_a) for r in stats.select(load_results(Path(f))["runs"], arm)]
    runs_b = stats.select(load_results(Path(b))["runs"], arm)
    print(f"{arm}: B = {b} minus A = {', '.join((a, *more_a))}; test metric {bench.test.label}, "
          f"validation {bench.val.label}\n")
    table(bench, runs_a, runs_b)


def pool(arm_a: str, arm_b: str, *folders: str) -> None:
    bench = get_bench(load_results(Path(folders[0]))["bench"])
    runs = [r for f in folders for r in load_results(Path(f))["runs"]]
    print(f"B = {arm_b} minus A = {arm_a}, runs pooled from {', '.join(folders)}; test metric {bench.test.label}, "
          f"validation {bench.val.label}\n")
    runs_a, runs_b = stats.select(runs, arm_a), stats.select(runs, arm_b)
    table(bench, runs_a, runs_b)
    grid = {r["lr"] for r in runs_a + runs_b}
    if len(grid) < 2:
        return
    cells = [{r["seed"] for r in rs if r["lr"] == lr} for rs in (runs_a, runs_b) for lr in grid]
    seeds = set.intersection(*cells)
    full = [r for r in runs_a + runs_b if r["seed"] in seeds]
    print(f"\nSeeds with every lr ({', '.join(f'{lr:g}' for lr in sorted(grid))}) of both arms: "
          f"{sorted(seeds)}\n")
    print(lr_section(full, bench.val, bench.test))


def table(bench: Any, runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]]) -> None:
    by_a = {(r["lr"], r["seed"]): r for r in runs_a}
    print("| lr | seeds | A test | B test | Δ test (B − A) | Δ val (B − A) | B better |\n|---|---|---|---|---|---|---|")
    for lr in sorted({r["lr"] for r in runs_b}, key=lambda v: (v is None, v)):
        ps = [(by_a[(lr, r["seed"])], r) for r in runs_b if r["lr"] == lr and (lr, r["seed"]) in by_a]
        if not ps:
            continue
        ta, tb = [bench.test.of(x) for x, _ in ps], [bench.test.of(y) for _, y in ps]
        dt = [y - x for x, y in zip(ta, tb)]
        dv = [bench.val.of(y) - bench.val.of(x) for x, y in ps]
        (mt, ht), (mv, hv) = stats.t_ci(dt), stats.t_ci(dv)
        better = sum(bench.test.better(y, x) for x, y in zip(ta, tb))
        seeds = ",".join(str(y["seed"]) for _, y in ps)
        print(f"| {lr} | {seeds} | {bench.test.fmt(float(np.mean(ta)))} | {bench.test.fmt(float(np.mean(tb)))} | "
              f"{mt:+.4g} ± {ht:.2g} | {mv:+.3g} ± {hv:.2g} | {better}/{len(ps)} |")


if __name__ == "__main__":
    if len(sys.argv) < 4 or (sys.argv[1] == "--pool" and len(sys.argv) < 5):
        raise SystemExit(__doc__)
    if sys.argv[1] == "--pool":
        pool(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
