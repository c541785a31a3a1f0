"""Best-against-best table of arms that live in different result folders of one protocol (issue 15's ablations).

Usage: ``python scripts/evidence/arm_table.py REF_LABEL=FOLDER:ARM LABEL=FOLDER:ARM ...``

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


def label_arm(runs: list[Run]) -> str:
    return str(runs[0]["optimizer"])


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    np.seterr(all="ignore")
    print(table(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
