"""summary.md and plots of the flow-matching bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.plots import pyplot, save_figure
from ..core.stats import arm_order, cell


def summary_markdown(results: dict[str, Any]) -> str:
    runs, s = results["runs"], results["settings"]
    lr = runs[0]["lr"] if runs else "?"
    ns = [str(n) for n in s["integration_steps"]]
    lines = [f"# flow matching on 8x8 digits: {s['steps']} steps, batch {s['batch']}, lr {lr}, "
             f"damping {s['damping']:g}, {s['samples']} samples, evaluator {s['evaluator']}", "",
             f"Command: `{results.get('command', '')}`", "",
             "Mean ± 95% t-interval over seeds. Frechet distance (lower is better) of EMA samples after N Euler steps.",
             "", "| arm | seeds | val FM loss | " + " | ".join(f"FD N={n}" for n in ns) + " | coverage N=max |",
             "|---|---|---|" + "---|" * len(ns) + "---|"]

    for arm in arm_order(runs):
        rs = [r for r in runs if r["optimizer"] == arm]
        fds = [cell([r["quality"][n]["frechet"] for r in rs], "{:.1f}") for n in ns]
        cov = cell([r["quality"][ns[-1]]["coverage"] for r in rs], "{:.1f}")
        lines.append(f"| {arm} | {len(rs)} | {cell([r['val_loss'] for r in rs], '{:.4f}')} | "
                     + " | ".join(fds) + f" | {cov} |")
    lines += ["", "Paired per-seed differences DoPr − base (negative is better for both columns):", "",
              "| pair | val FM loss | " + " | ".join(f"FD N={n}" for n in ns) + " |", "|---|---|" + "---|" * len(ns)]
    arms = arm_order(runs)
    for arm in arms:
        if not arm.startswith("dopr-") or arm[5:] not in arms:
            continue
        by_seed = {r["seed"]: r for r in runs if r["optimizer"] == arm[5:]}
        pairs = [(r, by_seed[r["seed"]]) for r in runs if r["optimizer"] == arm and r["seed"] in by_seed]
        if not pairs:
            continue
        dv = cell([a["val_loss"] - b["val_loss"] for a, b in pairs], "{:+.4f}")
        dfd = [cell([a["quality"][n]["frechet"] - b["quality"][n]["frechet"] for a, b in pairs], "{:+.1f}")
               for n in ns]
        lines.append(f"| {arm} − {arm[5:]} (n={len(pairs)}) | {dv} | " + " | ".join(dfd) + " |")
    return "\n".join(lines) + "\n"


def make_plots(results: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    runs = results["runs"]
    arms = arm_order(runs)
    ns = [str(n) for n in results["settings"]["integration_steps"]]
    colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(arms)}
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        rs = [r for r in runs if r["optimizer"] == arm]
        ax[0].scatter([r["val_loss"] for r in rs], [r["quality"][ns[-1]]["frechet"] for r in rs],
                      color=colors[arm], label=arm, marker="o" if arm.startswith("dopr-") else "x")
        fd = np.array([[r["quality"][n]["frechet"] for n in ns] for r in rs])
        ax[1].errorbar([int(n) for n in ns], fd.mean(0), yerr=fd.std(0), color=colors[arm], label=arm, capsize=3)
    ax[0].set(xlabel="validation flow-matching loss", ylabel=f"Frechet distance (N={ns[-1]})",
              title="validation loss vs sample quality")
    ax[1].set(xscale="log", yscale="log", xlabel="Euler steps N", ylabel="Frechet distance",
              title="sample quality vs rollout length")
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    paths = [save_figure(fig, out / "flow_quality.png")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        steps, losses = zip(*r["train_curve"])
        ax.plot(steps, losses, color=colors[r["optimizer"]], alpha=0.6, label=r["optimizer"] if r["seed"] ==
                min(x["seed"] for x in runs if x["optimizer"] == r["optimizer"]) else None)
    ax.set(yscale="log", xlabel="step", ylabel="train FM loss (minibatch)", title="training curves")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / "flow_curves.png"))
    return paths
