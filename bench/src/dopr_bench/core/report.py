"""summary.md of any bench's results, the learning-rate section, and one plain sentence per DoPr/base pair."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .bench import Bench, Metric, get_bench
from .results import machine_line, save_json
from .stats import metric_mean as _mean
from .stats import signed_interval as _signed

Run = dict[str, Any]


def dopr_options(s: dict[str, Any]) -> str:
    """The DoPr options a folder's ``settings`` changed from the paper's method, as a headline suffix."""
    return (("" if s.get("refresh_every", 1) == 1 else f", refresh {s['refresh_every']}")
            + ("" if s.get("sigma", "batch") == "batch" else f", Sigma {s['sigma']}")
            + ("" if s.get("max_block") is None else f", max_block {s['max_block']}")
            + ("" if s.get("max_rows") is None else f", Sigma from <= {s['max_rows']} rows"))


def _by_lr(bench: Bench, results: dict[str, Any]) -> str:
    """The bench's own summary, split by lr unless it lays lrs out itself."""
    values = stats.lrs(results["runs"])
    if bench.sweeps_lrs or len(values) <= 1:
        return bench.summary(results)
    return "\n".join(bench.summary(results | {"runs": stats.select(results["runs"], lr=lr)}) for lr in values)


def _has(runs: list[Run], metric: Metric) -> bool:
    return any(np.isfinite(metric.of(r)) for r in runs)


def summary_markdown(results: dict[str, Any]) -> str:
    """The bench's own summary (one block per damping where DoPr ran at several, each split by lr), then the
    selection section: over lrs, or over (lr, damping) with several dampings; again for each other checkpoint the
    bench judges runs at (e.g. the lowest validation loss) where the runs have it."""
    from .dampings import by_damping, damping_section  # it builds on this module's helpers

    bench = get_bench(results["bench"])
    views = by_damping(results)
    md = "\n".join(_by_lr(bench, view) for _, view in views)
    runs = results["runs"]
    metrics = [("", bench.val, bench.test)] + [(f" ({name})", v, t) for name, v, t in bench.checkpoints
                                                if _has(runs, t)]
    for title, val, test in metrics:
        if len(views) > 1:
            md += "\n" + damping_section(results, val, test, title)
        elif len(stats.lrs(runs)) > 1:
            md += "\n" + lr_section(runs, val, test, title)
    return md + _machines_section(runs)


def _machines_section(runs: list[Run]) -> str:
    """Where the runs ran (runs made before machines were recorded are counted as such; none: no section)."""
    counts: dict[str, int] = {}
    for r in runs:
        key = machine_line(r["machine"]) if r.get("machine") else "not recorded (made before 2026-12-07)"
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1 and next(iter(counts)).startswith("not recorded"):
        return ""
    return "\n## Machines\n\n" + "\n".join(f"- {n} run(s): {m}" for m, n in counts.items()) + "\n"


def write_report(out: Path, results: dict[str, Any], plots: bool = True) -> str:
    md = summary_markdown(results)
    (out / "summary.md").write_text(md)
    if plots and results["runs"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_bench(results["bench"]).plots(results, out)
    return md


def best_lr(runs: list[Run], arm: str, metric: Metric) -> float | None:
    """The lr at which ``arm``'s mean ``metric`` over seeds is best (None if no lr has a finite mean)."""
    best: float | None = None
    best_value = float("nan")
    for lr in stats.lrs(stats.select(runs, arm)):
        m = _mean(stats.select(runs, arm, lr), metric)
        if metric.better(m, best_value):
            best, best_value = lr, m
    return best


def lr_section(runs: list[Run], val: Metric, test: Metric, title: str = "") -> str:
    lines = [f"## Learning-rate sweep: each arm at its own best lr{title}", "",
             f"The lr of each arm selected on the validation metric ({val.label}) and, separately, on the test "
             f"metric ({test.label}; optimistic: it is chosen on the numbers it reports). Means over seeds.", "",
             f"| arm | lr by {val.label} | {val.label} | {test.label} | lr by {test.label} | {val.label} | "
             f"{test.label} |", "|---|---|---|---|---|---|---|"]
    arms = stats.arm_order(runs)
    chosen: dict[tuple[str, str], float | None] = {}
    for arm in arms:
        cells = []
        for key, metric in (("val", val), ("test", test)):
            lr = chosen[(arm, key)] = best_lr(runs, arm, metric)
            rs = stats.select(runs, arm, lr) if lr is not None else []
            cells.append(f"{lr:g} | {val.fmt(_mean(rs, val))} | {test.fmt(_mean(rs, test))}" if rs else "n/a | | ")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Best against best: DoPr at its own best lr minus its base at the base's best lr, paired by seed "
              "(95% t-interval; wins = seeds where DoPr's test metric is better).", "",
              f"| pair | selected on | lr DoPr / base | seeds | Δ {test.label} | Δ {val.label} | DoPr wins |",
              "|---|---|---|---|---|---|---|"]
    for arm in arms:
        base = arm[5:]
        if not arm.startswith("dopr-") or base not in arms:
            continue
        for key, label in (("val", val.label), ("test", test.label)):
            la, lb = chosen[(arm, key)], chosen[(base, key)]
            if la is None or lb is None:
                continue
            ps = stats.paired_by_seed(stats.select(runs, arm, la), stats.select(runs, base, lb))
            dt = [test.of(a) - test.of(b) for a, b in ps]
            dv = [val.of(a) - val.of(b) for a, b in ps]
            wins = sum(test.better(test.of(a), test.of(b)) for a, b in ps)
            lines.append(f"| {arm} − {base} | {label} | {la:g} / {lb:g} | {len(ps)} | {_signed(test, dt)} | "
                         f"{_signed(val, dv)} | {wins}/{len(ps)} |")
    return "\n".join(lines) + "\n"


def pair_sentences(results: dict[str, Any], bench: Bench | None = None) -> list[str]:
    """One plain sentence per DoPr/base pair and lr: the two means, the paired difference and its interval."""
    from .dampings import by_damping

    bench = bench or get_bench(results["bench"])
    views = by_damping(results)
    return [s for g, view in views for s in _sentences(view["runs"], bench.test,
                                                         f" damping {g:g}" if len(views) > 1 else "")]


def _sentences(runs: list[Run], test: Metric, damping: str) -> list[str]:
    out = []
    for lr in stats.lrs(runs):
        for (arm, base), ps in stats.pairs(runs, lr).items():
            d = [test.of(a) - test.of(b) for a, b in ps]
            mean, half = stats.t_ci(d)
            wins = sum(test.better(test.of(a), test.of(b)) for a, b in ps)
            a_mean, b_mean = _mean([a for a, _ in ps], test), _mean([b for _, b in ps], test)
            verdict = ("one seed, so no interval" if not np.isfinite(half) else
                       "the 95% interval excludes zero" if abs(mean) > half else "within noise (the 95% interval "
                       "includes zero)")
            n = f"{len(ps)} seed{'s' if len(ps) > 1 else ''}"
            out.append(f"{arm} against {base} at lr {lr:g}{damping}: {test.label} {test.fmt(a_mean)} against "
                       f"{test.fmt(b_mean)} ({'higher' if test.higher_is_better else 'lower'} is better); DoPr − "
                       f"base {_signed(test, d)} paired over {n}, DoPr better on {wins} of {len(ps)}; {verdict}.")
    return out


def closing_lines(results: dict[str, Any], root: Path = Path("results")) -> list[str]:
    """What the printed report ends with: a sentence per pair, then the bench's notes (from committed folders)."""
    bench = get_bench(results["bench"])
    return pair_sentences(results, bench) + bench.notes(results, root)


def report_dir(out: Path, plots: bool = True) -> str:
    """Rewrite summary.md (and the plots) of a result folder of any bench from its results.json; returns the
    summary and its closing lines."""
    from .results import load_results

    results = load_results(out)
    return write_report(out, results, plots) + "\n" + "\n".join(closing_lines(results)) + "\n"


def merge_dirs(out: Path, sources: list[Path]) -> str:
    """Add the runs of ``sources`` (same bench and settings) to ``out``, then report."""
    from .results import load_results, merge_results

    parts = [load_results(d) for d in ([out] if (out / "results.json").exists() else []) + sources]
    try:
        merged = merge_results(parts)
    except ValueError as err:
        raise SystemExit(f"dopr-bench merge: {err}") from err
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "results.json", merged)
    with (out / "COMMAND.txt").open("a") as f:
        for d in sources:
            if (d / "COMMAND.txt").exists():
                f.write((d / "COMMAND.txt").read_text())
        f.write("dopr-bench merge " + " ".join(map(str, [out, *sources])) + "\n")
    return write_report(out, merged)
