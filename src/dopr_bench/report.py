"""Summary table (mean +- 95% t-interval per arm, paired DoPr - base differences) and PNG plots."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def t_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval (nan half-width for n < 2)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) < 2:
        return float(x.mean()), float("nan")
    from scipy import stats

    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def _fmt(mean: float, half: float, sci: bool = False) -> str:
    if not np.isfinite(mean):
        return "n/a"
    f = (lambda v: f"{v:.2e}") if sci else (lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")
    return f"{f(mean)} ± {f(half)}" if np.isfinite(half) else f(mean)


def run_return(run: dict[str, Any]) -> float:
    return float(np.mean(run["returns"])) if run.get("returns") else float("nan")


def arm_order(runs: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in runs:
        if r["optimizer"] not in seen:
            seen.append(r["optimizer"])
    return seen


def summary_markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    s = results["settings"]
    lines = [f"# {results['task']}: behavior cloning, base vs DoPr", ""]
    lines.append(f"env {s['env_id']}, {s['demos']} training demos ({results.get('n_train_transitions', '?')} "
                 f"transitions), {s['val_demos']} validation demos, {s['steps']} steps at batch {s['batch']}, "
                 f"lr {s['lr']}, damping {s['damping']}, EMA rate {s['ema']}, observations "
                 f"{'standardized' if s['standardize'] else 'raw'}, {s['episodes']} evaluation episodes per seed.")
    if "expert_demo_return" in results:
        lines.append(f"Expert demonstrations: mean return {results['expert_demo_return']:,.1f}.")
    lines += ["", "| arm | seeds | val loss (EMA) | train loss (EMA) | return | episode length | state drift "
              "(raw) | state drift (std.) | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for arm in arm_order(runs):
        rs = [r for r in runs if r["optimizer"] == arm]
        lines.append(
            f"| {arm} | {len(rs)} | {_fmt(*t_ci([r['val_loss'] for r in rs]), sci=True)} | "
            f"{_fmt(*t_ci([r['train_loss'] for r in rs]), sci=True)} | {_fmt(*t_ci([run_return(r) for r in rs]))} | "
            f"{_fmt(*t_ci([float(np.mean(r['lengths'])) for r in rs]))} | {_fmt(*t_ci([r['drift'] for r in rs]))} | "
            f"{_fmt(*t_ci([r['drift_std'] for r in rs]))} | {np.mean([r['train_s'] for r in rs]):.0f} |")
    pairs = paired(runs)
    if pairs:
        lines += ["", "Paired per-seed differences, DoPr − base (95% t-interval; wins = seeds where DoPr's return is "
                  "higher):", "", "| pair | seeds | Δ return | Δ val loss | Δ state drift (std.) | DoPr wins |",
                  "|---|---|---|---|---|---|"]
        for (d, b), ps in pairs.items():
            dr = [run_return(x) - run_return(y) for x, y in ps]
            dv = [x["val_loss"] - y["val_loss"] for x, y in ps]
            dd = [x["drift_std"] - y["drift_std"] for x, y in ps]
            wins = sum(1 for v in dr if v > 0)
            lines.append(f"| {d} − {b} | {len(ps)} | {_fmt(*t_ci(dr))} | {_fmt(*t_ci(dv), sci=True)} | "
                         f"{_fmt(*t_ci(dd))} | {wins}/{len(ps)} |")
    lines += ["", "Per seed (return / val loss):", ""]
    for arm in arm_order(runs):
        rs = sorted((r for r in runs if r["optimizer"] == arm), key=lambda r: r["seed"])
        lines.append(f"- {arm}: " + ", ".join(f"s{r['seed']} {run_return(r):,.0f} / {r['val_loss']:.2e}" for r in rs))
    return "\n".join(lines) + "\n"


def paired(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]]:
    by = {(r["optimizer"], r["seed"]): r for r in runs}
    out: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for arm in arm_order(runs):
        if arm.startswith("dopr-") and any(r["optimizer"] == arm[5:] for r in runs):
            ps = [(by[(arm, s)], by[(arm[5:], s)]) for (a, s) in by if a == arm and (arm[5:], s) in by]
            out[(arm, arm[5:])] = sorted(ps, key=lambda p: p[0]["seed"])
    return out


def arm_colors(arms: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    bases = sorted({a.removeprefix("dopr-") for a in arms})
    return {a: cmap(bases.index(a.removeprefix("dopr-")) % 10) for a in arms}


def scatter_by_arm(ax: Any, arms: list[str], points: Callable[[str], tuple[list[float], list[float]]],
                   **style: Any) -> None:
    """One scatter series per arm (``points(arm) -> (xs, ys)``): base arms as x, DoPr arms as o, log x axis."""
    col = arm_colors(arms)
    for arm in arms:
        xs, ys = points(arm)
        ax.scatter(xs, ys, color=col[arm], label=arm, marker="o" if arm.startswith("dopr-") else "x", **style)
    ax.set_xscale("log")
    ax.legend(fontsize=8)


def save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    arms = arm_order(runs)
    col = arm_colors(arms)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4.5))

    def points(arm: str) -> tuple[list[float], list[float]]:
        rs = [r for r in runs if r["optimizer"] == arm]
        return [r["val_loss"] for r in rs], [run_return(r) for r in rs]

    scatter_by_arm(ax, arms, points, s=40)
    ax.set(xlabel="validation loss (EMA weights, held-out expert demos)", ylabel="mean rollout return",
           title=f"{results['task']}: validation loss vs test return (one point per seed)")
    paths.append(save_figure(fig, out / "scatter_val_vs_return.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        rs = [r for r in runs if r["optimizer"] == arm and r["train_curve"]]
        for key, ax in zip(("train_curve", "val_curve"), axes, strict=True):
            for i, r in enumerate(rs):
                c = np.asarray(r[key])
                ax.plot(c[:, 0], c[:, 1], color=col[arm], alpha=0.35, lw=0.8,
                        ls="-" if arm.startswith("dopr-") else "--", label=arm if i == 0 else None)
    for ax, title in zip(axes, ("train loss (minibatch, live weights)", "validation loss (EMA weights)"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['task']}: training curves (dashed: base, solid: DoPr)")
    paths.append(save_figure(fig, out / "curves.png"))
    return paths
