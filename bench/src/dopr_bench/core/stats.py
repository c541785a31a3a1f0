"""Mean ± 95% Student-t interval, paired DoPr − base differences, and their formatting (every bench)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Run = dict[str, Any]


def t_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval (nan half-width for n < 2)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) < 2:
        return float(x.mean()), float("nan")
    from scipy import stats

    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def fmt_ci(mean: float, half: float, sci: bool = False) -> str:
    """``1,234 ± 56`` (thousands separators from 100 up, 3 significant digits below) or ``1.23e-04 ± ...``."""
    if not np.isfinite(mean):
        return "n/a"
    f = (lambda v: f"{v:.2e}") if sci else (lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")
    return f"{f(mean)} ± {f(half)}" if np.isfinite(half) else f(mean)


def ci(values: list[float], sci: bool = False) -> str:
    """:func:`fmt_ci` of the mean ± half-width of ``values``."""
    return fmt_ci(*t_ci(values), sci=sci)


def fmt_fixed(mean: float, half: float, digits: int = 3) -> str:
    """``0.123 ± 0.045`` with ``digits`` decimals."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if np.isfinite(half) else f"{mean:.{digits}f}"


def cell(values: list[float], fmt: str = "{:.2f}") -> str:
    """Mean ± half-width of ``values`` with a format string (a ``+`` in it signs the mean only)."""
    mean, half = t_ci(values)
    if not np.isfinite(mean):
        return "n/a"
    return fmt.format(mean) + (f" ± {fmt.replace('+', '').format(half)}" if np.isfinite(half) else "")


def arm_order(runs: list[Run]) -> list[str]:
    """Arms in order of first appearance."""
    seen: list[str] = []
    for r in runs:
        if r["optimizer"] not in seen:
            seen.append(r["optimizer"])
    return seen


def lrs(runs: list[Run]) -> list[float]:
    return sorted({float(r["lr"]) for r in runs})


def select(runs: list[Run], arm: str | None = None, lr: float | None = None) -> list[Run]:
    return [r for r in runs if (arm is None or r["optimizer"] == arm) and (lr is None or float(r["lr"]) == lr)]


def pairs(runs: list[Run], lr: float | None = None) -> dict[tuple[str, str], list[tuple[Run, Run]]]:
    """(dopr-X, X) -> [(DoPr run, base run)] matched on lr and seed (only ``lr`` if given), by lr then seed."""
    by = {(r["optimizer"], float(r["lr"]), r["seed"]): r for r in runs}
    out: dict[tuple[str, str], list[tuple[Run, Run]]] = {}
    for arm in arm_order(runs):
        if not arm.startswith("dopr-"):
            continue
        base = arm[5:]
        ps = [(r, by[(base, k[1], k[2])]) for k, r in by.items()
              if k[0] == arm and (lr is None or k[1] == lr) and (base, k[1], k[2]) in by]
        if ps:
            out[(arm, base)] = sorted(ps, key=lambda p: (float(p[0]["lr"]), p[0]["seed"]))
    return out


def paired_by_seed(a: list[Run], b: list[Run]) -> list[tuple[Run, Run]]:
    """Runs of two groups (e.g. each arm at its own best lr) matched on seed."""
    by = {r["seed"]: r for r in b}
    return sorted(((r, by[r["seed"]]) for r in a if r["seed"] in by), key=lambda p: p[0]["seed"])


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 along the last axis, ties averaged (exact: an average of consecutive integers is an integer or
    a half)."""
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1) - 1.0


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Spearman's rank correlation along the last axis (nan where either side is constant); rows of 2-D inputs
    are independent samples."""
    rx, ry = ranks(np.asarray(x)), ranks(np.asarray(y))
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    sx, sy = np.sqrt((rx * rx).mean(-1)), np.sqrt((ry * ry).mean(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where((sx > 0) & (sy > 0), (rx * ry).mean(-1) / (sx * sy), np.nan)
    return float(rho) if rho.ndim == 0 else rho


def bootstrap_rows(n: int, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """``resamples`` bootstrap index rows over ``n`` items (one seeded stream, drawn row by row)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, n) for _ in range(resamples)])


def spearman_interval(x: np.ndarray, y: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of Spearman's rho over the pairs (x_i, y_i)."""
    idx = bootstrap_rows(len(x), n, seed)
    lo, hi = np.nanpercentile(spearman(x[idx], y[idx]), [2.5, 97.5])
    return float(lo), float(hi)


def metric_mean(runs: list[Run], metric: Any) -> float:
    """Mean of ``metric`` (a bench Metric) over the runs where it is finite (nan if none is)."""
    v = [metric.of(r) for r in runs]
    v = [x for x in v if np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def signed_interval(metric: Any, values: list[float]) -> str:
    """``+1.2 ± 0.3`` in ``metric``'s format: the mean of paired differences and its 95% t half-width."""
    mean, half = t_ci(values)
    if not np.isfinite(mean):
        return "n/a"
    text = ("+" if mean >= 0 else "−") + metric.fmt(abs(mean))
    return text + (f" ± {metric.fmt(half)}" if np.isfinite(half) else "")
