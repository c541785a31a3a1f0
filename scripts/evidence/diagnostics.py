"""Issue 15, item 7: does a feature-learning diagnostic predict the rollout better than the validation loss?

Usage: ``python scripts/evidence/diagnostics.py FOLDER [FOLDER ...]``

Pools every finished (not diverged) run of the given control-bench folders (all arms, learning rates and seeds:
the question is whether a number a user could compute without rollouts ranks runs the way their return does) and
prints Spearman's rank correlation of each diagnostic with the run's mean return, with a 95% bootstrap interval
over runs. The state drift is measured on the evaluation rollouts' own states, so it is a description of the
outcome, not a rollout-free predictor; the losses, the condition numbers and the CKA need no rollout. A diagnostic
a run does not have (folders made before it was recorded) is left out for that run; the table gives the number of
runs behind each row. Signs: a good predictor of a high return has rho < 0 for losses, drift and condition
numbers, rho > 0 for the CKA to the expert's features.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dopr_bench.bc.report import run_return
from dopr_bench.core.results import load_results

Run = dict[str, Any]

DIAGNOSTICS: dict[str, Callable[[Run], float]] = {
    "validation loss": lambda r: r["val_loss"],
    "train loss": lambda r: r["train_loss"],
    "state drift (std.)": lambda r: r["drift_std"],
    "state drift (raw)": lambda r: r["drift"],
    "CKA of first features to the expert's": lambda r: r.get("feature_cka_expert", np.nan),
    "log10 cond, input layer's input": lambda r: r.get("input_log10_cond", {}).get("inp", np.nan),
    "log10 cond, mean over layers": lambda r: (float(np.mean(list(r["input_log10_cond"].values())))
                                               if r.get("input_log10_cond") else np.nan),
}


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties averaged."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = ranks(x), ranks(y)
    sx, sy = rx.std(), ry.std()
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy)) if sx > 0 and sy > 0 else float("nan")


def bootstrap(x: np.ndarray, y: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = [spearman(x[i], y[i]) for i in (rng.integers(0, len(x), len(x)) for _ in range(n))]
    lo, hi = np.nanpercentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def _common(runs: list[Run]) -> str:
    """Every diagnostic on the same runs (those that have all of them), with the difference of its |rho| to the
    validation loss's |rho| on the same bootstrap resamples: > 0 means it ranks the runs' returns better."""
    rows = [[get(r) for get in DIAGNOSTICS.values()] + [run_return(r)] for r in runs]
    data = np.array([row for row in rows if all(np.isfinite(row))])
    if len(data) < 5:
        return "Too few runs have every diagnostic for the same-runs comparison."
    y, val = data[:, -1], data[:, 0]
    rng = np.random.default_rng(0)
    idx = [rng.integers(0, len(y), len(y)) for _ in range(2000)]
    lines = [f"Same {len(y)} runs for every row (those with every diagnostic); Delta|rho| = |rho| - |rho of the "
             "validation loss|, 95% bootstrap interval on shared resamples (> 0: ranks the returns better).", "",
             "| diagnostic | rho with return | Delta abs(rho) vs validation loss | 95% interval |", "|---|---|---|---|"]
    for j, name in enumerate(DIAGNOSTICS):
        x = data[:, j]
        if np.ptp(x) == 0:  # e.g. the input layer's condition under fixed data: a property of the data, not the run
            lines.append(f"| {name} | (the same in every run) | | |")
            continue
        d = [abs(spearman(x[i], y[i])) - abs(spearman(val[i], y[i])) for i in idx]
        lo, hi = np.nanpercentile(d, [2.5, 97.5])
        gap = abs(spearman(x, y)) - abs(spearman(val, y))
        lines.append(f"| {name} | {spearman(x, y):+.2f} | " + ("" if j == 0 else f"{gap:+.2f}") + " | "
                     + ("" if j == 0 else f"[{lo:+.2f}, {hi:+.2f}]") + " |")
    return "\n".join(lines)


def table(folders: list[str]) -> str:
    runs = [r for f in folders for r in load_results(Path(f))["runs"] if not r.get("diverged")]
    lines = [f"Runs pooled from {', '.join(folders)}: {len(runs)} finished runs "
             "(every arm, learning rate and seed). Spearman rho with the mean return, 95% bootstrap interval; "
             "the state drift comes from the evaluation rollouts themselves.", "",
             "| diagnostic | runs | rho with return | 95% interval |", "|---|---|---|---|"]
    for name, get in DIAGNOSTICS.items():
        pairs = [(get(r), run_return(r)) for r in runs]
        pairs = [(a, b) for a, b in pairs if np.isfinite(a) and np.isfinite(b)]
        if len(pairs) < 5:
            lines.append(f"| {name} | {len(pairs)} | (too few runs) | |")
            continue
        x, y = np.array(pairs).T
        if np.ptp(x) == 0:
            lines.append(f"| {name} | {len(x)} | (the same in every run) | |")
            continue
        lo, hi = bootstrap(x, y)
        lines.append(f"| {name} | {len(x)} | {spearman(x, y):+.2f} | [{lo:+.2f}, {hi:+.2f}] |")
    return "\n".join(lines + ["", _common(runs)])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(table(sys.argv[1:]))
