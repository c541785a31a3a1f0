"""Paired tables across result folders of one bench: the `dopr-bench paired`, `arms`, `checkpoints` and `shared-lr`
commands.

Folders of one protocol share data, initialization and minibatch order per seed, so a seed's runs in two folders
differ only in what the folders' settings (or arms) differ in; every difference here is paired by seed, with its
mean ± 95% t-interval over seeds. Each arm "at its own best lr" is selected on its mean validation loss and,
separately, on its mean test metric (optimistic: chosen on the numbers it reports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .bench import Bench, Metric, get_bench
from .dampings import dampings_of
from .report import best_lr, lr_section
from .results import load_results, run_damping

Run = dict[str, Any]


def _load(folders: Any, one_damping: bool = True) -> dict[str, dict[str, Any]]:
    """Each folder's results, read once; a folder of several dampings is refused (these tables select over lrs
    only, and would pool its dampings: its summary.md has the damping x lr tables) unless the caller picks one."""
    loaded = {str(f): load_results(Path(f)) for f in dict.fromkeys(map(str, folders))}
    for folder, results in loaded.items():
        if one_damping and len(dampings_of(results)) > 1:
            raise SystemExit(f"{folder} ran DoPr at several dampings ({dampings_of(results)}); these tables select "
                             "over lrs only: read its summary.md (damping x lr), or compare folders of one damping")
    return loaded


def _one_bench(loaded: dict[str, dict[str, Any]]) -> Bench:
    """The folders' one bench (a table of arms never mixes benches)."""
    benches = {r["bench"] for r in loaded.values()}
    if len(benches) != 1:
        raise SystemExit(f"these folders come from different benches ({sorted(benches)}); compare one bench's")
    return get_bench(benches.pop())


def _deltas(ps: list[tuple[Run, Run]], val: Metric, test: Metric) -> tuple[list[float], list[float], int]:
    """Per pair (x, y): x − y of the test metric and of the validation loss, and how many x are better."""
    return ([test.of(x) - test.of(y) for x, y in ps], [val.of(x) - val.of(y) for x, y in ps],
            sum(test.better(test.of(x), test.of(y)) for x, y in ps))


def folder_difference(arm: str, a: str, b: str, *more_a: str) -> str:
    """One arm, B − A per (lr, seed) between folder B and folder A; ``more_a`` are more seeds of A's setting."""
    loaded = _load((a, b, *more_a))
    bench = get_bench(loaded[a]["bench"])
    runs_a = [r for f in (a, *more_a) for r in stats.select(loaded[f]["runs"], arm)]
    runs_b = stats.select(loaded[b]["runs"], arm)
    return (f"{arm}: B = {b} minus A = {', '.join((a, *more_a))}; test metric {bench.test.label}, "
            f"validation {bench.val.label}\n\n" + _difference_table(bench, runs_a, runs_b))


def pooled_difference(arm_a: str, arm_b: str, *folders: str) -> str:
    """Arm B − arm A per (lr, seed) over the runs of all ``folders`` pooled (seeds of one setting made in several
    folders); where the runs hold several lrs, also each arm at its own best lr (the bench report's lr section)."""
    loaded = _load(folders)
    bench = get_bench(loaded[folders[0]]["bench"])
    runs = [r for f in folders for r in loaded[f]["runs"]]
    runs_a, runs_b = stats.select(runs, arm_a), stats.select(runs, arm_b)
    out = [f"B = {arm_b} minus A = {arm_a}, runs pooled from {', '.join(folders)}; test metric {bench.test.label}, "
           f"validation {bench.val.label}\n\n", _difference_table(bench, runs_a, runs_b)]
    grid = {r["lr"] for r in runs_a + runs_b}
    if len(grid) >= 2:
        cells = [{r["seed"] for r in rs if r["lr"] == lr} for rs in (runs_a, runs_b) for lr in grid]
        seeds = set.intersection(*cells)
        full = [r for r in runs_a + runs_b if r["seed"] in seeds]
        out.append(f"\n\nSeeds with every lr ({', '.join(f'{lr:g}' for lr in sorted(grid))}) of both arms: "
                   f"{sorted(seeds)}\n\n")
        out.append(lr_section(full, bench.val, bench.test))
    return "".join(out)


def _difference_table(bench: Bench, runs_a: list[Run], runs_b: list[Run]) -> str:
    by_a = {(r["lr"], r["seed"]): r for r in runs_a}
    lines = ["| lr | seeds | A test | B test | Δ test (B − A) | Δ val (B − A) | B better |",
             "|---|---|---|---|---|---|---|"]
    for lr in sorted({r["lr"] for r in runs_b}, key=lambda v: (v is None, v)):
        ps = [(by_a[(lr, r["seed"])], r) for r in runs_b if r["lr"] == lr and (lr, r["seed"]) in by_a]
        if not ps:
            continue
        ta, tb = [bench.test.of(x) for x, _ in ps], [bench.test.of(y) for _, y in ps]
        dt, dv, better = _deltas([(y, x) for x, y in ps], bench.val, bench.test)
        (mt, ht), (mv, hv) = stats.t_ci(dt), stats.t_ci(dv)
        seeds = ",".join(str(y["seed"]) for _, y in ps)
        lines.append(f"| {lr} | {seeds} | {bench.test.fmt(float(np.mean(ta)))} | "
                     f"{bench.test.fmt(float(np.mean(tb)))} | {mt:+.4g} ± {ht:.2g} | {mv:+.3g} ± {hv:.2g} | "
                     f"{better}/{len(ps)} |")
    return "\n".join(lines)


def arm_table(specs: list[str]) -> str:
    """Arms of one protocol from different folders (``LABEL=FOLDER:ARM``, the first the reference): every lr, then
    each arm at its own best lr against the reference at its own, on the seeds every arm has."""
    parsed = [(label, *rest.rsplit(":", 1)) for label, rest in (spec.split("=", 1) for spec in specs)]
    loaded = _load(folder for _, folder, _ in parsed)
    bench = _one_bench(loaded)
    val, test = bench.val, bench.test
    arms = [(label, stats.select(loaded[folder]["runs"], arm)) for label, folder, arm in parsed]
    if empty := [f"no {arm} runs in {folder}" for (_, folder, arm), (_, runs) in zip(parsed, arms) if not runs]:
        raise SystemExit("; ".join(empty))
    seeds = set.intersection(*({r["seed"] for r in runs} for _, runs in arms))
    arms = [(label, [r for r in runs if r["seed"] in seeds]) for label, runs in arms]
    lines = [f"Seeds {sorted(seeds)} (the ones every arm has); mean ± 95% t-interval over seeds.", "",
             f"| arm | lr | {val.label} | {test.label} |", "|---|---|---|---|"]
    for label, runs in arms:
        for lr in stats.lrs(runs):
            rs = stats.select(runs, lr=lr)
            lines.append(f"| {label} | {lr:g} | {stats.ci([val.of(r) for r in rs], sci=True)} | "
                         f"{stats.ci([test.of(r) for r in rs])} |")
    ref_label, ref = arms[0]
    lines += ["", f"Each arm at its own best lr; Δ = arm − {ref_label} (at its own best lr), paired by seed.", "",
              f"| arm | selected on | lr | {val.label} | {test.label} | Δ {test.label} | Δ {val.label} | "
              f"arm better ({test.label}) |", "|---|---|---|---|---|---|---|---|"]
    for label, runs in arms:
        for metric in (val, test):
            lr, lr_ref = best_lr(runs, _arm_name(runs), metric), best_lr(ref, _arm_name(ref), metric)
            rs, rr = stats.select(runs, lr=lr), stats.select(ref, lr=lr_ref)
            ps = stats.paired_by_seed(rs, rr)
            dt, dv, wins = _deltas(ps, val, test)
            delta = "" if label == ref_label else f"{stats.ci(dt)} | {stats.ci(dv, sci=True)} | {wins}/{len(ps)}"
            lines.append(f"| {label} | {metric.label} | {lr:g} | {stats.ci([val.of(r) for r in rs], sci=True)} | "
                         f"{stats.ci([test.of(r) for r in rs])} | {delta or ' | | '} |")
    return "\n".join(lines) + "\n"


def pairs_table(specs: list[str]) -> str:
    """One row per ``FOLDER:BASE,DOPR`` pair and selection: each arm best against best, with the lr its best fell
    on (marked where it is an edge of the grid)."""
    loaded = _load(spec.rsplit(":", 1)[0] for spec in specs)
    bench = _one_bench(loaded)
    val, test = bench.val, bench.test
    lines = [f"Each arm at its own best lr (selected on its mean validation loss, and separately on its mean "
             f"{test.label}); Δ = DoPr − base, paired by seed; mean ± 95% t-interval.", "",
             f"| base | selected on | seeds | base lr | base {val.label} | base {test.label} | DoPr lr | "
             f"DoPr {val.label} | DoPr {test.label} | Δ {test.label} | Δ {val.label} | DoPr better ({test.label}) |",
             "|---" * 12 + "|"]
    for spec in specs:
        folder, arms = spec.rsplit(":", 1)
        base_arm, dopr_arm = arms.split(",")
        runs = loaded[folder]["runs"]
        base, dopr = stats.select(runs, base_arm), stats.select(runs, dopr_arm)
        grid = stats.lrs(base + dopr)

        def mark(lr: float, edge: tuple[float, float] = (min(grid), max(grid))) -> str:
            return f"{lr:g}" + (" (grid edge)" if lr in edge else "")

        for metric in (val, test):
            lr_b, lr_d = best_lr(base, base_arm, metric), best_lr(dopr, dopr_arm, metric)
            rb, rd = stats.select(base, lr=lr_b), stats.select(dopr, lr=lr_d)
            ps = stats.paired_by_seed(rd, rb)
            dt, dv, wins = _deltas(ps, val, test)
            lines.append(f"| {base_arm} | {metric.label} | {len(ps)} | {mark(lr_b)} | "
                         f"{stats.ci([val.of(r) for r in rb], sci=True)} | {stats.ci([test.of(r) for r in rb])} | "
                         f"{mark(lr_d)} | {stats.ci([val.of(r) for r in rd], sci=True)} | "
                         f"{stats.ci([test.of(r) for r in rd])} | {stats.ci(dt)} | {stats.ci(dv, sci=True)} | "
                         f"{wins}/{len(ps)} |")
    return "\n".join(lines) + "\n"


def _pair_spec(spec: str) -> tuple[str, str, str, str, float | None]:
    """``LABEL=DIR:BASE,DOPR[@DAMPING]`` as (label, folder, base arm, DoPr arm, damping or None)."""
    try:
        label, rest = spec.split("=", 1)
        folder, arms = rest.rsplit(":", 1)
        base, dopr = arms.split(",")
        dopr, _, damping = dopr.partition("@")
        return label, folder, base, dopr, float(damping) if damping else None
    except ValueError:
        raise SystemExit(f"{spec!r}: a spec is LABEL=DIR:BASE,DOPR or LABEL=DIR:BASE,DOPR@DAMPING "
                         "(e.g. 'Hopper=results/hopper-std-d5-s1000-damping:adamw,dopr-adamw@0.1')") from None


def checkpoints_table(specs: list[str]) -> str:
    """The final weights against every checkpoint the bench also judges (for BC, the lowest logged validation
    loss), per regime (``LABEL=DIR:BASE,DOPR[@DAMPING]``; a damping picks the DoPr runs of a folder of several):
    each arm at its own best lr, selected on the checkpoint's validation metric and separately on its test metric,
    DoPr against its base paired by seed; then, at each arm's lr selected on the final validation metric, what
    the user's checkpoint changes against the final one."""
    parsed = [_pair_spec(s) for s in specs]
    loaded = _load((folder for _, folder, *_ in parsed), one_damping=False)
    bench = _one_bench(loaded)
    if not bench.checkpoints:
        raise SystemExit(f"the {bench.name} bench judges its final weights only: no checkpoints to compare")
    views = [("final", bench.val, bench.test)] + [(name, v, t) for name, v, t in bench.checkpoints]
    test = bench.test
    rows, arm_rows = [], []
    for label, folder, base_arm, dopr_arm, damping in parsed:
        results = loaded[folder]
        default = results.get("settings", {}).get("damping")
        several = len(dampings_of(results)) > 1
        if several and damping is None:
            raise SystemExit(f"{folder} ran DoPr at {dampings_of(results)}: name one, as {folder}:{base_arm},"
                             f"{dopr_arm}@{dampings_of(results)[0]:g}")
        runs = [r for r in results["runs"] if damping is None or run_damping(r, default) in (None, damping)]
        base, dopr = stats.select(runs, base_arm), stats.select(runs, dopr_arm)
        if not base or not dopr:
            raise SystemExit(f"{folder}: no {base_arm if not base else dopr_arm} runs"
                             + (f" at damping {damping:g}" if damping is not None else ""))
        name = f"{label} ({base_arm}{f', γ {damping:g}' if damping is not None else ''})"
        for checkpoint, val_c, test_c in views:
            for metric in (val_c, test_c):
                lr_b, lr_d = best_lr(base, base_arm, metric), best_lr(dopr, dopr_arm, metric)
                ps = stats.paired_by_seed(stats.select(dopr, lr=lr_d), stats.select(base, lr=lr_b))
                dt, dv, wins = _deltas(ps, val_c, test_c)
                rows.append(f"| {name} | {checkpoint} | {'val' if metric is val_c else 'test'} | {len(ps)} | "
                            f"{lr_b:g} / {lr_d:g} | {stats.ci([test_c.of(y) for _, y in ps])} | "
                            f"{stats.ci([test_c.of(x) for x, _ in ps])} | {stats.ci(dt)} | {stats.ci(dv, sci=True)} | "
                            f"{wins}/{len(ps)} |")
        for arm, arm_runs in ((base_arm, base), (dopr_arm, dopr)):
            lr = best_lr(arm_runs, arm, bench.val)
            rs = stats.select(arm_runs, lr=lr)
            final = [test.of(r) for r in rs]
            for checkpoint, _, test_c in views[1:]:
                at = [test_c.of(r) for r in rs]
                steps = [r["min_val_step"] for r in rs if r.get("min_val_step") is not None]
                arm_rows.append(f"| {label} | {arm} | {checkpoint} | {lr:g} | {len(rs)} | "
                                f"{stats.cell(steps, '{:.0f}') if steps else 'n/a'} | {stats.ci(final)} | "
                                f"{stats.ci(at)} | {stats.ci([a - f for a, f in zip(at, final)])} |")
    return "\n".join([
        "Best against best at each checkpoint: each arm at its own best lr selected on that checkpoint's validation "
        "metric (val) or test metric (test; optimistic), DoPr − base paired by seed; mean ± 95% t-interval.", "",
        f"| regime | checkpoint | selected on | seeds | lr base / DoPr | base {test.label} | DoPr {test.label} | "
        f"Δ {test.label} | Δ validation | DoPr better |", "|---" * 10 + "|", *rows, "",
        "Each arm at its lr selected on the final validation metric: the checkpoint a user keeps against the final "
        "weights (same episodes).", "",
        f"| regime | arm | checkpoint | lr | seeds | its step | final {test.label} | {test.label} there | "
        "there − final |", "|---" * 9 + "|", *arm_rows]) + "\n"


def shared_lr_table(folder: Path | str, base: str, dopr: str) -> str:
    """At every lr both arms of one folder ran, DoPr − base per seed, as one compact table."""
    results = _load([folder])[str(folder)]
    bench = get_bench(results["bench"])
    val, test = bench.val, bench.test
    runs = results["runs"]
    b, d = stats.select(runs, base), stats.select(runs, dopr)
    lines = [f"Shared lr, {dopr} − {base} in {folder}, paired by seed (mean ± 95% t; wins = seeds where "
             f"{dopr}'s {test.label} is better).", "",
             f"| lr | seeds | {base} {test.label} | {dopr} {test.label} | Δ {test.label} | Δ {val.label} | "
             f"{dopr} wins |", "|---|---|---|---|---|---|---|"]
    for lr in sorted(set(stats.lrs(b)) & set(stats.lrs(d))):
        ps = stats.paired_by_seed(stats.select(d, lr=lr), stats.select(b, lr=lr))
        dt, dv, wins = _deltas(ps, val, test)
        lines.append(f"| {lr:g} | {len(ps)} | {stats.ci([test.of(y) for _, y in ps])} | "
                     f"{stats.ci([test.of(x) for x, _ in ps])} | {stats.ci(dt)} | {stats.ci(dv, sci=True)} | "
                     f"{wins}/{len(ps)} |")
    return "\n".join(lines) + "\n"


def _arm_name(runs: list[Run]) -> str:
    return str(runs[0]["optimizer"])
