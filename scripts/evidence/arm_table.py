"""Best-against-best table of arms that live in different result folders of one protocol (issue 15's ablations).

Usage: ``python scripts/evidence/arm_table.py REF_LABEL=FOLDER:ARM LABEL=FOLDER:ARM ...``, or
``python scripts/evidence/arm_table.py --pairs FOLDER:BASE,DOPR ...`` for one row per base/DoPr pair and selection
(issue 15's four base optimizers: each pair best against best, with the lr each arm's best fell on).

Each arm is taken at its own best lr, selected on the mean validation loss and, separately, on the mean return
(optimistic: chosen on the numbers it reports). Differences to the first (reference) arm are paired by seed: the
folders share demonstrations, initialization and minibatch order per seed, so a seed's runs in two folders differ
only in what the folders' settings differ in. Only the seeds every arm has are used.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from dopr_bench.bc.bench import BENCH
from dopr_bench.core import stats
from dopr_bench.core.report import best_lr
from dopr_bench.core.results import load_results

Run = dict[str, Any]
VAL, TEST = BENCH.val, BENCH.test


def _arm(spec: str) -> tuple[str, list[Run]]:
    label, rest = spec.split("=", 1)
    folder, arm = rest.rsplit(":", 1)
    runs = stats.select(load_results(Path(folder))["runs"], arm)
    if not runs:
        raise SystemExit(f"no {arm} runs in {folder}")
    return label, runs


def table(specs: list[str]) -> str:
    arms = [_arm(s) for s in specs]
    seeds = set.intersection(*({r["seed"] for r in runs} for _, runs in arms))
    arms = [(label, [r for r in runs if r["seed"] in seeds]) for label, runs in arms]
    lines = [f"Seeds {sorted(seeds)} (the ones every arm has); mean ± 95% t-interval over seeds.", "",
             "| arm | lr | val loss | return |", "|---|---|---|---|"]
    for label, runs in arms:
        for lr in stats.lrs(runs):
            rs = stats.select(runs, lr=lr)
            lines.append(f"| {label} | {lr:g} | {stats.ci([VAL.of(r) for r in rs], sci=True)} | "
                         f"{stats.ci([TEST.of(r) for r in rs])} |")
    ref_label, ref = arms[0]
    lines += ["", f"Each arm at its own best lr; Δ = arm − {ref_label} (at its own best lr), paired by seed.", "",
              "| arm | selected on | lr | val loss | return | Δ return | Δ val loss | arm better (return) |",
              "|---|---|---|---|---|---|---|---|"]
    for label, runs in arms:
        for metric in (VAL, TEST):
            lr, lr_ref = best_lr(runs, label_arm(runs), metric), best_lr(ref, label_arm(ref), metric)
            rs, rr = stats.select(runs, lr=lr), stats.select(ref, lr=lr_ref)
            ps = stats.paired_by_seed(rs, rr)
            dt = [TEST.of(a) - TEST.of(b) for a, b in ps]
            dv = [VAL.of(a) - VAL.of(b) for a, b in ps]
            wins = sum(TEST.better(TEST.of(a), TEST.of(b)) for a, b in ps)
            delta = "" if label == ref_label else f"{stats.ci(dt)} | {stats.ci(dv, sci=True)} | {wins}/{len(ps)}"
            lines.append(f"| {label} | {metric.label} | {lr:g} | {stats.ci([VAL.of(r) for r in rs], sci=True)} | "
                         f"{stats.ci([TEST.of(r) for r in rs])} | {delta or ' | | '} |")
    return "\n".join(lines) + "\n"


def pairs_table(specs: list[str]) -> str:
    lines = ["Each arm at its own best lr (selected on its mean validation loss, and separately on its mean return); "
             "Δ = DoPr − base, paired by seed; mean ± 95% t-interval.", "",
             "| base | selected on | seeds | base lr | base val loss | base return | DoPr lr | DoPr val loss | "
             "DoPr return | Δ return | Δ val loss | DoPr better (return) |", "|---" * 12 + "|"]
    for spec in specs:
        folder, arms = spec.rsplit(":", 1)
        base_arm, dopr_arm = arms.split(",")
        runs = load_results(Path(folder))["runs"]
        base, dopr = stats.select(runs, base_arm), stats.select(runs, dopr_arm)
        grid = stats.lrs(base + dopr)

        def mark(lr: float, edge: tuple[float, float] = (min(grid), max(grid))) -> str:
            return f"{lr:g}" + (" (grid edge)" if lr in edge else "")

        for metric in (VAL, TEST):
            lr_b, lr_d = best_lr(base, base_arm, metric), best_lr(dopr, dopr_arm, metric)
            rb, rd = stats.select(base, lr=lr_b), stats.select(dopr, lr=lr_d)
            ps = stats.paired_by_seed(rd, rb)
            dt = [TEST.of(a) - TEST.of(b) for a, b in ps]
            dv = [VAL.of(a) - VAL.of(b) for a, b in ps]
            wins = sum(TEST.better(TEST.of(a), TEST.of(b)) for a, b in ps)
            lines.append(f"| {base_arm} | {metric.label} | {len(ps)} | {mark(lr_b)} | "
                         f"{stats.ci([VAL.of(r) for r in rb], sci=True)} | {stats.ci([TEST.of(r) for r in rb])} | "
                         f"{mark(lr_d)} | {stats.ci([VAL.of(r) for r in rd], sci=True)} | "
                         f"{stats.ci([TEST.of(r) for r in rd])} | {stats.ci(dt)} | {stats.ci(dv, sci=True)} | "
                         f"{wins}/{len(ps)} |")
    return "\n".join(lines) + "\n"


def label_arm(runs: list[Run]) -> str:
    return str(runs[0]["optimizer"])


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    np.seterr(all="ignore")
    print(pairs_table(argv[1:]) if argv[0] == "--pairs" else table(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
