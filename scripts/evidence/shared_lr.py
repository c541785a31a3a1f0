"""Shared-lr paired table of one folder's DoPr arm against its base (issue 15): at every lr both arms ran, the
per-seed differences DoPr − base (same demos, init and minibatch order per seed), as one compact table.

Usage: ``python scripts/evidence/shared_lr.py FOLDER BASE_ARM DOPR_ARM`` (e.g. ``... results/X muon dopr-muon``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dopr_bench.bc.bench import BENCH
from dopr_bench.core import stats
from dopr_bench.core.results import load_results

VAL, TEST = BENCH.val, BENCH.test


def table(folder: Path, base: str, dopr: str) -> str:
    runs = load_results(folder)["runs"]
    b, d = stats.select(runs, base), stats.select(runs, dopr)
    lines = [f"Shared lr, {dopr} − {base} in {folder}, paired by seed (mean ± 95% t; wins = seeds where "
             f"{dopr}'s return is higher).", "",
             f"| lr | seeds | {base} return | {dopr} return | Δ return | Δ val loss | {dopr} wins |",
             "|---|---|---|---|---|---|---|"]
    for lr in sorted(set(stats.lrs(b)) & set(stats.lrs(d))):
        ps = stats.paired_by_seed(stats.select(d, lr=lr), stats.select(b, lr=lr))
        dt = [TEST.of(x) - TEST.of(y) for x, y in ps]
        dv = [VAL.of(x) - VAL.of(y) for x, y in ps]
        wins = sum(TEST.better(TEST.of(x), TEST.of(y)) for x, y in ps)
        lines.append(f"| {lr:g} | {len(ps)} | {stats.ci([TEST.of(y) for _, y in ps])} | "
                     f"{stats.ci([TEST.of(x) for x, _ in ps])} | {stats.ci(dt)} | {stats.ci(dv, sci=True)} | "
                     f"{wins}/{len(ps)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    np.seterr(all="ignore")
    print(table(Path(argv[0]), argv[1], argv[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
