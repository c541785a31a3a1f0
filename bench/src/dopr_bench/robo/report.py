"""summary.md (mean +- 95% t-interval per arm, paired DoPr - base differences) and plots of the manipulation bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.plots import arm_colors, line_style, pyplot, save_figure, scatter_figure
from ..core.stats import arm_order, cell, pairs


def summary_markdown(results: dict[str, Any]) -> str:
    runs, s, demos = results["runs"], results["settings"], results.get("demos", {})
    lr = runs[0]["lr"] if runs else "?"
    lines = [f"# {results['task']} ({s['env_name']}): flow-matching image policy, base vs DoPr", ""]
    lines.append(f"Demos: {s['demos']} training ({demos.get('train_frames', '?')} frames), {s['val_demos']} validation "
                 f"({demos.get('val_frames', '?')} frames), source `{s['source']}`.")
    if "expert_success" in demos:
        lines.append(f"Scripted expert: {demos['expert_success']:.0%} success over the {demos['expert_attempts']} "
                     f"episodes tried for these demos (only successes are kept), {demos['expert_mean_length']:.0f} "
                     f"steps on average.")
    params = runs[0]["params"] if runs else "?"
    lines += [f"Policy: {params:,} parameters; cameras {', '.join(s['cameras'])} at {s['image_size']} px "
              f"(render: {s['render']}), chunk {s['chunk']} actions, {s['execute']} executed per plan, "
              f"{s['euler_steps']} Euler steps. Training: {s['steps']} steps at batch {s['batch']}, lr {lr}, "
              f"damping {s['damping']:g}, EMA rate {s['ema']}, random shift ±{s['shift']} px.",
              f"Evaluation: EMA weights, {s['episodes']} rollouts (≤ {s['max_episode_steps']} steps, fixed start "
              f"states and sampling noise) at each of {s['evals']} checkpoints; best = the best checkpoint "
              f"(robomimic's protocol), final = the last, at min val = the checkpoint with the lowest validation loss.",
              "", f"Command: `{results.get('command', '')}`" if results.get("command") else "",
              "", "Mean ± 95% t-interval over seeds.", "",
              "| arm | seeds | val FM loss (final) | train FM loss (final) | success best | success final | "
              "success at min val | train s | rollout s |", "|---|---|---|---|---|---|---|---|---|"]
    for arm in arm_order(runs):
        rs = [r for r in runs if r["optimizer"] == arm]
        lines.append(f"| {arm} | {len(rs)} | {cell([r['val_loss'] for r in rs], '{:.4f}')} | "
                     f"{cell([r['train_loss'] for r in rs], '{:.4f}')} | "
                     f"{cell([r['success_best'] for r in rs])} | {cell([r['success_final'] for r in rs])} | "
                     f"{cell([r['success_at_min_val'] for r in rs])} | {np.mean([r['train_s'] for r in rs]):.0f} | "
                     f"{np.mean([r['eval_s'] for r in rs]):.0f} |")
    ps_all = pairs(runs)
    if ps_all:
        lines += ["", "Paired per-seed differences DoPr − base (success: higher is better; loss: lower is better; "
                  "wins = seeds where DoPr's best-checkpoint success is higher / equal):", "",
                  "| pair | seeds | Δ success best | Δ success final | Δ val FM loss | DoPr wins / ties |",
                  "|---|---|---|---|---|---|"]
        for (arm, _), ps in ps_all.items():
            db = [a["success_best"] - b["success_best"] for a, b in ps]
            df = [a["success_final"] - b["success_final"] for a, b in ps]
            dv = [a["val_loss"] - b["val_loss"] for a, b in ps]
            lines.append(f"| {arm} − {arm[5:]} | {len(ps)} | {cell(db, '{:+.2f}')} | {cell(df, '{:+.2f}')} | "
                         f"{cell(dv, '{:+.4f}')} | {sum(d > 0 for d in db)} / {sum(d == 0 for d in db)} |")
    lines += ["", "Per seed (success best / final, final val loss):", ""]
    for arm in arm_order(runs):
        rs = sorted((r for r in runs if r["optimizer"] == arm), key=lambda r: r["seed"])
        lines.append(f"- {arm}: " + ", ".join(f"s{r['seed']} {r['success_best']:.2f} / {r['success_final']:.2f}, "
                                              f"{r['val_loss']:.4f}" + (" (diverged)" if r["diverged"] else "")
                                              for r in rs))
    return "\n".join(lines) + "\n"


def make_plots(results: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    runs = results["runs"]
    arms = arm_order(runs)
    col = arm_colors(arms)

    def points(arm: str) -> tuple[list[float], list[float]]:
        cks = [c for r in runs if r["optimizer"] == arm for c in r["checkpoints"]]
        return [c["val_loss"] for c in cks], [c["success_rate"] for c in cks]

    paths = [scatter_figure(out / "val_loss_vs_success.png", arms, points, {"s": 36, "alpha": 0.8},
                            xlabel="validation flow-matching loss (EMA weights, fixed draws)",
                            ylabel="rollout success rate", ylim=(-0.05, 1.05),
                            title=f"{results['task']}: validation loss vs success (one point per checkpoint)")]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        rs = [r for r in runs if r["optimizer"] == arm and r["checkpoints"]]
        if not rs:
            continue
        ls = line_style(arm)
        steps = [c["step"] for c in rs[0]["checkpoints"]]
        rates = np.array([[c["success_rate"] for c in r["checkpoints"]] for r in rs
                          if len(r["checkpoints"]) == len(steps)])
        axes[0].plot(steps, rates.mean(0), color=col[arm], ls=ls, marker="o", label=f"{arm} (mean of {len(rates)})")
        for i, r in enumerate(rs):
            c = np.asarray(r["val_curve"])
            if len(c):
                axes[1].plot(c[:, 0], c[:, 1], color=col[arm], ls=ls, alpha=0.5, label=arm if i == 0 else None)
    axes[0].set(xlabel="training step", ylabel="success rate", ylim=(-0.05, 1.05),
                title="rollout success over training (EMA weights)")
    axes[1].set(xlabel="training step", ylabel="validation FM loss", yscale="log", title="validation loss")
    for a in axes:
        a.legend(fontsize=8)
    fig.suptitle(f"{results['task']} (dashed: base, solid: DoPr)")
    paths.append(save_figure(fig, out / "success_over_training.png"))
    return paths
