"""Does a number a user could compute without rollouts rank BC runs the way their return does (issue 15, item 7)?
The `dopr-bench diagnostics FOLDER...` command.

Pools every finished (not diverged) run of the given control-bench folders (all arms, learning rates and seeds) and
gives Spearman's rank correlation of each diagnostic with the run's mean return, with a 95% bootstrap interval over
runs. The state drift is measured on the evaluation rollouts' own states, so it is a description of the outcome,
not a rollout-free predictor; the losses, the condition numbers and the CKA (``bc/diagnostics.py``) need no
rollout. A diagnostic a run does not have (folders made before it was recorded) is left out for that run; the table
gives the number of runs behind each row. Signs: a good predictor of a high return has rho < 0 for losses, drift
and condition numbers, rho > 0 for the CKA to the expert's features.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core import stats
from ..core.results import load_results
from .report import run_return

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


def _common(runs: list[Run]) -> str:
    """Every diagnostic on the same runs (those that have all of them), with the difference of its |rho| to the
    validation loss's |rho| on the same bootstrap resamples: > 0 means it ranks the runs' returns better."""
    rows = [[get(r) for get in DIAGNOSTICS.values()] + [run_return(r)] for r in runs]
    data = np.array([row for row in rows if all(np.isfinite(row))])
    if len(data) < 5:
        return "Too few runs have every diagnostic for the same-runs comparison."
    y, val = data[:, -1], data[:, 0]
    idx = stats.bootstrap_rows(len(y))
    rho_val = np.abs(stats.spearman(val[idx], y[idx]))
    lines = [f"Same {len(y)} runs for every row (those with every diagnostic); Delta|rho| = |rho| - |rho of the "
             "validation loss|, 95% bootstrap interval on shared resamples (> 0: ranks the returns better).", "",
             "| diagnostic | rho with return | Delta abs(rho) vs validation loss | 95% interval |", "|---|---|---|---|"]
    for j, name in enumerate(DIAGNOSTICS):
        x = data[:, j]
        if np.ptp(x) == 0:  # e.g. the input layer's condition under fixed data: a property of the data, not the run
            lines.append(f"| {name} | (the same in every run) | | |")
            continue
        d = np.abs(stats.spearman(x[idx], y[idx])) - rho_val
        lo, hi = np.nanpercentile(d, [2.5, 97.5])
        gap = abs(stats.spearman(x, y)) - abs(stats.spearman(val, y))
        lines.append(f"| {name} | {stats.spearman(x, y):+.2f} | " + ("" if j == 0 else f"{gap:+.2f}") + " | "
                     + ("" if j == 0 else f"[{lo:+.2f}, {hi:+.2f}]") + " |")
    return "\n".join(lines)


def predictor_table(folders: list[str]) -> str:
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
        lo, hi = stats.spearman_interval(x, y)
        lines.append(f"| {name} | {len(x)} | {stats.spearman(x, y):+.2f} | [{lo:+.2f}, {hi:+.2f}] |")
    return "\n".join(lines + ["", _common(runs)])
