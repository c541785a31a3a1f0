"""Damping x learning-rate sweeps (``--dampings``): the views of a folder by damping, and the selection over
(lr, damping).

Only DoPr arms have a damping; a base arm runs once per (lr, seed) and is the same reference for every damping. A
DoPr run records its damping (older runs used the folder's ``damping`` setting, :func:`~.results.run_damping`).
Each arm is selected at its own best configuration, (lr, damping) for DoPr and lr for a base, once by its mean
validation metric and once by its mean test metric (optimistic: chosen on the numbers it reports), then compared
best against best, paired by seed, as the learning-rate section does for one damping.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import stats
from .bench import Metric
from .results import run_damping
from .stats import metric_mean as _mean
from .stats import signed_interval as _signed

Run = dict[str, Any]
Config = tuple[float, float | None]  # (lr, damping); damping None for a base arm


def dampings_of(results: dict[str, Any]) -> list[float]:
    """The dampings the folder's DoPr runs used, ascending."""
    default = results.get("settings", {}).get("damping")
    return sorted({d for r in results["runs"] if (d := run_damping(r, default)) is not None})


def by_damping(results: dict[str, Any]) -> list[tuple[float | None, dict[str, Any]]]:
    """The folder as one view per damping: the DoPr runs at that damping with every base run, and ``settings``'
    damping set to it (so a bench's summary and headline name it). One damping, or none: the folder as it is (with
    the damping its runs used)."""
    values = dampings_of(results)
    if not values:
        return [(None, results)]
    default = results.get("settings", {}).get("damping")
    out = []
    for g in values:
        view = results if g == default else results | {"settings": results.get("settings", {}) | {"damping": g}}
        if len(values) > 1:
            view = view | {"runs": [r for r in results["runs"] if run_damping(r, default) in (None, g)]}
        out.append((g, view))
    return out


def _configs(runs: list[Run], arm: str, default: float | None) -> list[Config]:
    return sorted({(float(r["lr"]), run_damping(r, default)) for r in runs if r["optimizer"] == arm},
                  key=lambda c: (c[0], c[1] or 0.0))


def _at(runs: list[Run], arm: str, config: Config, default: float | None) -> list[Run]:
    return [r for r in runs if r["optimizer"] == arm and float(r["lr"]) == config[0]
            and run_damping(r, default) == config[1]]


def best_config(runs: list[Run], arm: str, metric: Metric, default: float | None,
                damping: float | None = None) -> Config | None:
    """The (lr, damping) at which ``arm``'s mean ``metric`` over seeds is best (only ``damping``'s if given)."""
    best: Config | None = None
    best_value = float("nan")
    for config in _configs(runs, arm, default):
        if damping is not None and config[1] != damping:
            continue
        m = _mean(_at(runs, arm, config, default), metric)
        if metric.better(m, best_value):
            best, best_value = config, m
    return best


def _label(config: Config, grid: list[float]) -> str:
    lr, g = config
    if g is None:
        return f"{lr:g}"
    edge = " (edge)" if len(grid) > 1 and g in (grid[0], grid[-1]) else ""
    return f"{lr:g}, γ {g:g}{edge}"


def damping_section(results: dict[str, Any], val: Metric, test: Metric, title: str = "") -> str:
    """The damping x lr section of a folder with several dampings: each arm at its own best configuration, best
    against best, each damping at its own best lr against the base at its best, and the grid of means."""
    runs, default, grid = results["runs"], results.get("settings", {}).get("damping"), dampings_of(results)
    arms = stats.arm_order(runs)
    lines = [f"## Damping × learning rate: each arm at its own best (lr, damping){title}", "",
             f"DoPr arms ran at dampings {', '.join(f'{g:g}' for g in grid)} crossed with the lrs; base arms have no "
             f"damping. Each arm's configuration selected on the validation metric ({val.label}) and, separately, on "
             f"the test metric ({test.label}; optimistic). Means over seeds; (edge): the selected damping is an end "
             "of the damping grid.", "",
             f"| arm | by {val.label}: lr, damping | {val.label} | {test.label} | by {test.label}: lr, damping | "
             f"{val.label} | {test.label} |", "|---|---|---|---|---|---|---|"]
    chosen: dict[tuple[str, str], Config | None] = {}
    for arm in arms:
        cells = []
        for key, metric in (("val", val), ("test", test)):
            config = chosen[(arm, key)] = best_config(runs, arm, metric, default)
            rs = _at(runs, arm, config, default) if config else []
            cells.append(f"{_label(config, grid)} | {val.fmt(_mean(rs, val))} | {test.fmt(_mean(rs, test))}"
                         if config and rs else "n/a | | ")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    pairs = [(arm, arm[5:]) for arm in arms if arm.startswith("dopr-") and arm[5:] in arms]
    lines += ["", "Best against best: DoPr at its own best (lr, damping) minus its base at the base's best lr, paired "
              "by seed (95% t-interval; wins = seeds where DoPr's test metric is better).", "",
              f"| pair | selected on | DoPr lr, damping / base lr | seeds | Δ {test.label} | Δ {val.label} | "
              "DoPr wins |", "|---|---|---|---|---|---|---|"]
    for arm, base in pairs:
        for key, metric in (("val", val), ("test", test)):
            ca, cb = chosen[(arm, key)], chosen[(base, key)]
            if ca is not None and cb is not None:
                lines.append(_pair_row(f"{arm} − {base} | {metric.label}", _label(ca, grid), _label(cb, grid),
                                       _at(runs, arm, ca, default), _at(runs, base, cb, default), val, test))
    lines += ["", "Each damping at its own best lr against the base at its best lr (same selection, paired by seed): "
              "how much the damping matters, and how flat the optimum is.", "",
              f"| pair | damping | selected on | DoPr lr / base lr | seeds | Δ {test.label} | Δ {val.label} | "
              "DoPr wins |", "|---|---|---|---|---|---|---|---|"]
    for arm, base in pairs:
        for g in grid:
            for key, metric in (("val", val), ("test", test)):
                ca, cb = best_config(runs, arm, metric, default, g), chosen[(base, key)]
                if ca is None or cb is None:
                    continue
                mark = " (selected)" if ca == chosen[(arm, key)] else ""
                lines.append(_pair_row(f"{arm} − {base} | {g:g}{mark} | {metric.label}", f"{ca[0]:g}",
                                       f"{cb[0]:g}", _at(runs, arm, ca, default), _at(runs, base, cb, default),
                                       val, test))
    for metric in (val, test):
        lines += ["", *_grid(runs, arms, grid, metric, default)]
    return "\n".join(lines) + "\n"


def _pair_row(head: str, la: str, lb: str, a: list[Run], b: list[Run], val: Metric, test: Metric) -> str:
    ps = stats.paired_by_seed(a, b)
    dt = [test.of(x) - test.of(y) for x, y in ps]
    dv = [val.of(x) - val.of(y) for x, y in ps]
    wins = sum(test.better(test.of(x), test.of(y)) for x, y in ps)
    return f"| {head} | {la} / {lb} | {len(ps)} | {_signed(test, dt)} | {_signed(val, dv)} | {wins}/{len(ps)} |"


def _grid(runs: list[Run], arms: list[str], grid: list[float], metric: Metric, default: float | None) -> list[str]:
    """Mean ``metric`` over seeds at every lr (rows) for each base arm and each DoPr arm at each damping."""
    cols: list[tuple[str, str, float | None]] = []
    for arm in arms:
        cols += [(arm, f"{arm} γ {g:g}", g) for g in grid] if arm.startswith("dopr-") else [(arm, arm, None)]
    lines = [f"Mean {metric.label} over seeds at each lr and damping:", "",
             "| lr | " + " | ".join(label for _, label, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for lr in stats.lrs(runs):
        cells = []
        for arm, _, g in cols:
            m = _mean(_at(runs, arm, (lr, g), default), metric)
            cells.append(metric.fmt(m) if np.isfinite(m) else "")
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return lines
