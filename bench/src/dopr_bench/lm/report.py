"""Summary (mean ± 95% t-interval per lr and arm; paired DoPr − base per seed) and plots for the LM bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.plots import arm_colors, line_style, pyplot
from ..core.stats import arm_order as arms
from ..core.stats import fmt_fixed as _fmt
from ..core.stats import lrs, pairs, select, t_ci


def groups(runs: list[dict[str, Any]]) -> list[str]:
    gs = {g for r in runs for g in r.get("accuracy_by_group", {})}
    return sorted(gs, key=lambda g: (0, int(g)) if g.isdigit() else (1, g))


def nll_accuracy_corr(rs: list[dict[str, Any]]) -> float:
    x = np.array([r["val_nll"] for r in rs], dtype=float)
    y = np.array([r["accuracy"] for r in rs], dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def summary_markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    s = results["settings"]
    src = results.get("source", {})
    mode = "LoRA" if s.get("lora") else "full fine-tuning"
    lines = [f"# {results['task']}: {mode}, base optimizers vs DoPr", ""]
    desc = src.get("description")
    if desc:
        lines += [desc, ""]
    lines.append(f"{s['steps']} steps at batch {s['batch']}, warmup {s['warmup']} then cosine, damping "
                 f"{s['damping']:g}, weight decay {s['weight_decay']}, grad clip {s['grad_clip']}"
                 + (f", LoRA r={s['lora_r']} alpha={s['lora_alpha']} on {s['lora_targets']}" if s.get("lora") else "")
                 + (", DoPr's Sigma over the attention-masked tokens" if s.get("sigma_rows") == "attention-mask"
                    else ", DoPr's Sigma over every token, padding included")
                 + f"; validation NLL on {s['n_val']} held-out examples of the training distribution (teacher-forced, "
                 f"answer tokens, nats/token); accuracy = exact match of the final answer in greedy generations on "
                 f"{s['n_eval']} held-out problems.")
    if "chance" in src:
        lines.append(f"Chance level (always the most frequent answer): {src['chance']:.3f}.")
    if "base_accuracy" in src:
        lines.append(f"Base model before fine-tuning: accuracy {src['base_accuracy']:.3f}, validation NLL "
                     f"{src.get('base_val_nll', float('nan')):.4f}.")
    gs = groups(runs)
    lines += ["", "## Mean ± 95% t-interval over seeds", "",
              "| lr | arm | seeds | val NLL | final train loss | accuracy | diverged |",
              "|---|---|---|---|---|---|---|"]
    for lr in lrs(runs):
        for arm in arms(runs):
            rs = select(runs, arm, lr)
            if not rs:
                continue
            lines.append(f"| {lr:g} | {arm} | {len(rs)} | {_fmt(*t_ci([r['val_nll'] for r in rs]), 4)} | "
                         f"{_fmt(*t_ci([r['train_loss'] for r in rs]), 4)} | "
                         f"{_fmt(*t_ci([r['accuracy'] for r in rs]))} | {sum(bool(r['diverged']) for r in rs)} |")
    if len(gs) > 1:
        lines += ["", "## Accuracy by group (mean over seeds)" + (" — number of reasoning steps k"
                                                                   if all(g.isdigit() for g in gs) else ""), "",
                  "| lr | arm | " + " | ".join(gs) + " |", "|---|---|" + "---|" * len(gs)]
        for lr in lrs(runs):
            for arm in arms(runs):
                rs = select(runs, arm, lr)
                if rs:
                    vals = [np.mean([r["accuracy_by_group"].get(g, np.nan) for r in rs]) for g in gs]
                    lines.append(f"| {lr:g} | {arm} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    lines += ["", "## Paired per-seed differences, DoPr − base (95% t-interval; wins = seeds with higher accuracy)",
              "", "| lr | pair | seeds | Δ accuracy | Δ val NLL | DoPr wins / ties |", "|---|---|---|---|---|---|"]
    for lr in [*lrs(runs), None]:
        for (d, b), ps in pairs(runs, lr).items():
            da = [x["accuracy"] - y["accuracy"] for x, y in ps]
            dv = [x["val_nll"] - y["val_nll"] for x, y in ps]
            wins, ties = sum(v > 0 for v in da), sum(v == 0 for v in da)
            lines.append(f"| {'all' if lr is None else f'{lr:g}'} | {d} − {b} | {len(ps)} | {_fmt(*t_ci(da))} | "
                         f"{_fmt(*t_ci(dv), 4)} | {wins} / {ties} |")
    lines += ["", "## Does a lower validation NLL mean a higher accuracy?", "",
              "Pearson correlation of (val NLL, accuracy) over all runs of an arm (all lrs and seeds); negative = "
              "lower NLL goes with higher accuracy.", "", "| arm | runs | corr(val NLL, accuracy) | best lr by "
              "mean accuracy | best lr by mean val NLL |", "|---|---|---|---|---|"]
    for arm in arms(runs):
        rs = select(runs, arm)
        by_lr = {lr: select(rs, lr=lr) for lr in lrs(rs)}
        acc = {lr: np.mean([r["accuracy"] for r in v]) for lr, v in by_lr.items()}
        vn = {lr: np.nanmean([r["val_nll"] for r in v]) if any(np.isfinite(r["val_nll"]) for r in v) else np.inf
              for lr, v in by_lr.items()}
        lines.append(f"| {arm} | {len(rs)} | {nll_accuracy_corr(rs):.3f} | {max(acc, key=acc.get):g} "
                     f"({max(acc.values()):.3f}) | {min(vn, key=vn.get):g} ({min(vn.values()):.4f}) |")
    lines += ["", "Per run (seed: accuracy / val NLL):", ""]
    for lr in lrs(runs):
        for arm in arms(runs):
            rs = sorted(select(runs, arm, lr), key=lambda r: r["seed"])
            if rs:
                lines.append(f"- lr {lr:g} {arm}: " + ", ".join(f"s{r['seed']} {r['accuracy']:.3f} / "
                                                               f"{r['val_nll']:.4f}" for r in rs))
    return "\n".join(lines) + "\n"


def make_plots(results: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    runs = results["runs"]
    names, all_lrs, gs = arms(runs), lrs(runs), groups(runs)
    col = arm_colors(names)
    markers = "osD^v<>p*h"
    title = results["task"] + (" (LoRA)" if results["settings"].get("lora") else " (full fine-tuning)")
    paths = []

    fig, ax = plt.subplots(figsize=(7, 5))
    for arm in names:
        dopr = arm.startswith("dopr-")
        pts = []
        for j, lr in enumerate(all_lrs):
            rs = [r for r in select(runs, arm, lr) if np.isfinite(r["val_nll"])]
            if not rs:
                continue
            ax.scatter([r["val_nll"] for r in rs], [r["accuracy"] for r in rs], color=col[arm], alpha=0.25, s=14,
                       marker=markers[j % len(markers)])
            mx, my = float(np.mean([r["val_nll"] for r in rs])), float(np.mean([r["accuracy"] for r in rs]))
            pts.append((mx, my))
            ax.scatter([mx], [my], color=col[arm], s=70, marker=markers[j % len(markers)],
                       facecolors=col[arm] if dopr else "none", linewidths=1.5)
            ax.annotate(f"{lr:g}", (mx, my), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if pts:
            ax.plot(*zip(*pts), color=col[arm], ls=line_style(arm), lw=1, label=arm)
    ax.set_xlabel("validation NLL (teacher-forced, nats/token)")
    ax.set_ylabel("accuracy of generated answers")
    ax.set_title(f"{title}\nval NLL vs accuracy per lr (large: mean; small: seeds; filled/solid: DoPr)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "nll_vs_accuracy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if gs:
        fig, axes = plt.subplots(1, len(all_lrs), figsize=(4.2 * len(all_lrs), 3.8), squeeze=False, sharey=True)
        for ax, lr in zip(axes[0], all_lrs):
            for arm in names:
                rs = select(runs, arm, lr)
                if not rs:
                    continue
                stats = [t_ci([r["accuracy_by_group"].get(g, np.nan) for r in rs]) for g in gs]
                x = np.arange(len(gs))
                ax.errorbar(x, [m for m, _ in stats], yerr=[0 if not np.isfinite(h) else h for _, h in stats],
                            color=col[arm], ls=line_style(arm), marker="o", ms=3,
                            capsize=2, label=arm)
            ax.set_xticks(np.arange(len(gs)), gs)
            ax.set_xlabel("reasoning steps k" if all(g.isdigit() for g in gs) else "group")
            ax.set_title(f"lr {lr:g}", fontsize=9)
        axes[0][0].set_ylabel("accuracy (mean ± 95% CI over seeds)")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"{title}: accuracy vs number of steps", fontsize=10)
        fig.tight_layout()
        paths.append(out / "accuracy_vs_steps.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    fig, axes = plt.subplots(1, len(all_lrs), figsize=(4.2 * len(all_lrs), 3.5), squeeze=False)
    for ax, lr in zip(axes[0], all_lrs):
        for arm in names:
            for i, r in enumerate(select(runs, arm, lr)):
                c = np.asarray(r["train_curve"])
                if len(c):
                    ax.plot(c[:, 0], c[:, 1], color=col[arm], alpha=0.4, lw=0.8,
                            ls=line_style(arm), label=arm if i == 0 else None)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"train loss, lr {lr:g}", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
