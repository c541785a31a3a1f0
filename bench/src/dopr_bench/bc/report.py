"""summary.md and plots of the behavior-cloning bench, the README headline of a folder, and what committed folders
say about standardized observations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.plots import arm_colors, line_style, pyplot, save_figure, scatter_figure
from ..core.report import dopr_options
from ..core.results import run_damping
from ..core.stats import arm_order, ci, lrs, pairs


def run_return(run: dict[str, Any]) -> float:
    return float(np.mean(run["returns"])) if run.get("returns") else float("nan")


def run_return_at_min_val(run: dict[str, Any]) -> float:
    """Mean return of the EMA weights at the lowest logged validation loss (nan for runs made before it was)."""
    return float(np.mean(run["returns_at_min_val"])) if run.get("returns_at_min_val") else float("nan")


AP_LAYERS = {"first": "the input layer only (inp)", "hidden": "every layer but the input layer"}


def _obs(s: dict[str, Any]) -> str:
    return "ZCA-whitened" if s.get("zca") else "standardized" if s["standardize"] else "raw"


def _variant(s: dict[str, Any]) -> str:
    """What a folder changes from the bench's defaults in the arms or the demonstrations (empty for old folders)."""
    out = ""
    if s.get("ap_layers", "all") != "all":
        out += f" DoPr arms precondition {AP_LAYERS[s['ap_layers']]}; their other layers get the base alone."
    if s.get("demo_noise", 0.0):
        out += (f" Demonstrator: the expert with Gaussian action noise of std {s['demo_noise']:g} x half the action "
                "range (executed and recorded).")
    return out


def summary_markdown(results: dict[str, Any]) -> str:
    """The summary of results with one lr."""
    runs = results["runs"]
    s = results["settings"]
    lr = runs[0]["lr"] if runs else "?"
    lines = [f"# {results['task']}: behavior cloning, base vs DoPr", ""]
    lines.append(f"env {s['env_id']}, {s['demos']} training demos ({results.get('n_train_transitions', '?')} "
                 f"transitions), {s['val_demos']} validation demos, {s['steps']} steps at batch {s['batch']}, "
                 f"lr {lr}, damping {s['damping']:g}, EMA rate {s['ema']}, observations "
                 f"{_obs(s)}, {s['episodes']} evaluation episodes per seed." + _variant(s))
    if "expert_demo_return" in results:
        lines.append(f"Expert demonstrations: mean return {results['expert_demo_return']:,.1f}.")
    lines += ["", "| arm | seeds | val loss (EMA) | train loss (EMA) | return | episode length | state drift "
              "(raw) | state drift (std.) | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for arm in arm_order(runs):
        rs = [r for r in runs if r["optimizer"] == arm]
        lines.append(
            f"| {arm} | {len(rs)} | {ci([r['val_loss'] for r in rs], sci=True)} | "
            f"{ci([r['train_loss'] for r in rs], sci=True)} | {ci([run_return(r) for r in rs])} | "
            f"{ci([float(np.mean(r['lengths'])) for r in rs])} | {ci([r['drift'] for r in rs])} | "
            f"{ci([r['drift_std'] for r in rs])} | {np.mean([r['train_s'] for r in rs]):.0f} |")
    ps_all = pairs(runs)
    if ps_all:
        lines += ["", "Paired per-seed differences, DoPr − base (95% t-interval; wins = seeds where DoPr's return is "
                  "higher):", "", "| pair | seeds | Δ return | Δ val loss | Δ state drift (std.) | DoPr wins |",
                  "|---|---|---|---|---|---|"]
        for (d, b), ps in ps_all.items():
            dr = [run_return(x) - run_return(y) for x, y in ps]
            dv = [x["val_loss"] - y["val_loss"] for x, y in ps]
            dd = [x["drift_std"] - y["drift_std"] for x, y in ps]
            wins = sum(1 for v in dr if v > 0)
            lines.append(f"| {d} − {b} | {len(ps)} | {ci(dr)} | {ci(dv, sci=True)} | {ci(dd)} | {wins}/{len(ps)} |")
    if any(r.get("returns_at_min_val") for r in runs):
        lines += ["", *_lowest_val_lines(runs)]
    lines += ["", "Per seed (return / val loss):", ""]
    for arm in arm_order(runs):
        rs = sorted((r for r in runs if r["optimizer"] == arm), key=lambda r: r["seed"])
        lines.append(f"- {arm}: " + ", ".join(f"s{r['seed']} {run_return(r):,.0f} / {r['val_loss']:.2e}" for r in rs))
    return "\n".join(lines) + "\n"


def _lowest_val_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Final weights against the checkpoint a user keeps (lowest logged validation loss), per arm and paired."""
    lines = ["Final against lowest-validation-loss checkpoint (EMA weights at the logged step with the lowest "
             "validation loss, rolled out on the same episodes):", "",
             "| arm | seeds | step of min val | min val loss | return at min val | return final | at min val − "
             "final |", "|---|---|---|---|---|---|---|"]
    for arm in arm_order(runs):
        rs = [r for r in runs if r["optimizer"] == arm]
        steps = [float(r["min_val_step"]) for r in rs if r.get("min_val_step") is not None]
        lines.append(f"| {arm} | {len(rs)} | {np.mean(steps) if steps else float('nan'):.0f} | "
                     f"{ci([r.get('val_loss_min', np.nan) for r in rs], sci=True)} | "
                     f"{ci([run_return_at_min_val(r) for r in rs])} | {ci([run_return(r) for r in rs])} | "
                     f"{ci([run_return_at_min_val(r) - run_return(r) for r in rs])} |")
    ps_all = pairs(runs)
    if ps_all:
        lines += ["", "| pair, at the lowest-validation checkpoint | seeds | Δ return | Δ min val loss | DoPr wins |",
                  "|---|---|---|---|---|"]
        for (d, b), ps in ps_all.items():
            dr = [run_return_at_min_val(x) - run_return_at_min_val(y) for x, y in ps]
            dv = [x.get("val_loss_min", np.nan) - y.get("val_loss_min", np.nan) for x, y in ps]
            lines.append(f"| {d} − {b} | {len(ps)} | {ci(dr)} | {ci(dv, sci=True)} | "
                         f"{sum(1 for v in dr if v > 0)}/{len(ps)} |")
    return lines


def headline(results: dict[str, Any]) -> str:
    s = results["settings"]
    obs = "ZCA" if s.get("zca") else "std." if s["standardize"] else "raw"
    return (f"{results['task']}, {s['demos']} demos, {obs} obs., {s['steps']} steps, "
            f"damping {s['damping']:g}"
            + ("" if s.get("ap_layers", "all") == "all" else f", AP on {s['ap_layers']} layers")
            + ("" if not s.get("demo_noise", 0.0) else f", demo noise {s['demo_noise']:g}")
            + dopr_options(s)
            + ("" if s.get("max_episode_steps") is None else f", episodes ≤ {s['max_episode_steps']} steps"))


def _means(results: dict[str, Any]) -> dict[tuple[str, str, float], tuple[float, float]]:
    """(DoPr arm, base, lr) -> mean returns (DoPr, base) over the seeds they share."""
    default = results["settings"].get("damping")
    runs = [r for r in results["runs"] if run_damping(r, default) in (None, default)]  # a damping sweep: its default
    return {(*k, lr): (float(np.mean([run_return(a) for a, _ in ps])), float(np.mean([run_return(b) for _, b in ps])))
            for lr in lrs(runs) for k, ps in pairs(runs, lr).items()}


def standardization_notes(results: dict[str, Any], root: Path) -> list[str]:
    """What standardized observations do to the DoPr − base gap, from committed folders of the same task that differ
    from each other only in ``standardize`` (e.g. results/idp-raw-3demos and results/idp-std-3demos; parts merged
    into another folder are left out)."""
    from ..core.index import merged_parts
    from ..core.results import load_results

    folders = []
    parts = merged_parts(root) if root.is_dir() else set()
    for path in sorted(root.glob("**/results.json")) if root.is_dir() else []:
        if path.parent.resolve() in parts:
            continue
        other = load_results(path)
        if other["bench"] == "bc" and other["settings"].get("name") == results["settings"].get("name"):
            folders.append((path.parent, other))
    notes = []
    for raw_dir, raw in folders:
        for std_dir, std in folders:
            if raw["settings"]["standardize"] or std["settings"] != raw["settings"] | {"standardize": True}:
                continue
            m_raw, m_std = _means(raw), _means(std)
            for key in (k for k in m_raw if k in m_std):
                (d_std, b_std), (d_raw, b_raw) = m_std[key], m_raw[key]
                notes.append(f"Standardized observations (committed runs {std_dir} against {raw_dir}, the same "
                             f"protocol otherwise, lr {key[2]:g}): {key[0]} {d_std:,.0f} against {key[1]} "
                             f"{b_std:,.0f}, a gap of {d_std - b_std:+,.0f}, where raw observations gave "
                             f"{d_raw:,.0f} against {b_raw:,.0f} ({d_raw - b_raw:+,.0f}).")
    return notes


def make_plots(results: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    runs = results["runs"]
    arms = arm_order(runs)
    col = arm_colors(arms)

    def points(arm: str) -> tuple[list[float], list[float]]:
        rs = [r for r in runs if r["optimizer"] == arm]
        return [r["val_loss"] for r in rs], [run_return(r) for r in rs]

    paths = [scatter_figure(out / "scatter_val_vs_return.png", arms, points, {"s": 40},
                            xlabel="validation loss (EMA weights, held-out expert demos)", ylabel="mean rollout return",
                            title=f"{results['task']}: validation loss vs test return (one point per run)")]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        rs = [r for r in runs if r["optimizer"] == arm and r["train_curve"]]
        for key, ax in zip(("train_curve", "val_curve"), axes, strict=True):
            for i, r in enumerate(rs):
                c = np.asarray(r[key])
                ax.plot(c[:, 0], c[:, 1], color=col[arm], alpha=0.35, lw=0.8, ls=line_style(arm),
                        label=arm if i == 0 else None)
    for ax, title in zip(axes, ("train loss (minibatch, live weights)", "validation loss (EMA weights)"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['task']}: training curves (dashed: base, solid: DoPr)")
    paths.append(save_figure(fig, out / "curves.png"))
    return paths
