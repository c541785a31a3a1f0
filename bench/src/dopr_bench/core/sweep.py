"""The sweep runner of every bench: arms x seeds x learning rates (x dampings, DoPr arms only) on the same data,
resumable.

Validate the arms and lrs; settle the Muon precision (given, else the folder's, else the hardware's); refuse a
folder made with other settings before loading any data; record the command; run what is missing, saving
results.json atomically after each run with its provenance; then write summary.md and the plots.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dopr.bases.muon import matmul_probe

from .arms import hardware_ns_dtype, max_rows_option, validate_arms
from .bench import Bench
from .progress import SweepProgress
from .report import closing_lines, write_report
from .results import SCHEMA, as_json, check_settings, load_results, lr_key, provenance, run_key, save_json, sort_runs


def resolve_ns_dtype(spec: Any, old: dict[str, Any] | None) -> Any:
    """The spec with its Muon Newton-Schulz precision settled: as given, else the existing folder's, else the
    hardware's (:func:`~dopr_bench.core.arms.hardware_ns_dtype`)."""
    return replace(spec, muon_ns_dtype=ns_dtype_choice(spec, old)[0])


def ns_dtype_choice(spec: Any, old: dict[str, Any] | None) -> tuple[str, str]:
    """(precision, why): ``given``, ``the folder's`` or ``the hardware's`` (with the probe's timings)."""
    if spec.muon_ns_dtype is not None:
        return spec.muon_ns_dtype, "given"
    saved = old["settings"].get("muon_ns_dtype") if old else None
    if saved:
        return saved, "the folder's"
    ms = matmul_probe()
    return hardware_ns_dtype(), (f"the hardware's: a 256-square matmul took {ms['bfloat16']:.3g} ms in bfloat16, "
                                 f"{ms['float32']:.3g} ms in float32")


def damping_grid(spec: Any) -> tuple[float, ...]:
    """The dampings the DoPr arms run at: ``--dampings``, else ``--damping`` alone; SystemExit unless positive."""
    if not spec.dampings:
        return (float(spec.damping),)
    dampings = tuple(float(g) for g in spec.dampings)
    if any(not g > 0 for g in dampings):
        raise SystemExit(f"--dampings needs positive dampings, got {dampings}")
    if len({f"{g:g}" for g in dampings}) < len(dampings):
        raise SystemExit(f"--dampings lists a damping twice: {dampings}")
    return dampings


def run_sweep(bench: Bench, task: str, spec: Any, out: Path, *, cache: Path, threads: int = 1,
              progress: bool = True, command: str | None = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    arms = list(spec.optimizers)
    validate_arms(arms)
    if not spec.lrs or any(lr <= 0 for lr in spec.lrs):
        raise SystemExit(f"--lrs needs positive learning rates, got {spec.lrs}")
    dampings = damping_grid(spec)
    if spec.max_rows is not None:
        try:
            max_rows_option(spec.max_rows)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    path = out / "results.json"
    old = load_results(path) if path.exists() else None
    ns_dtype, why = ns_dtype_choice(spec, old)
    spec = replace(spec, muon_ns_dtype=ns_dtype)
    planned = as_json(bench.planned(spec, task))
    if old is not None:  # cheap check first: the settings the command alone determines
        known = {k: v for k, v in planned.items() if k not in bench.data_keys}
        check_settings(path, {k: old["settings"].get(k) for k in known}, known)
    prepared = bench.prepare(spec, task, cache)
    settings = as_json(planned | prepared.settings)
    if old is not None:
        check_settings(path, old["settings"], settings)
    out.mkdir(parents=True, exist_ok=True)
    if command:
        with (out / "COMMAND.txt").open("a") as f:
            f.write(command + "\n")
    results: dict[str, Any] = {"bench": bench.name, "schema": SCHEMA, "task": task,
                               "command": command or (old or {}).get("command", ""), "settings": settings,
                               "runs": list(old["runs"]) if old else []}
    results |= prepared.info(old or {})
    done = {run_key(r, spec.damping) for r in results["runs"]}
    # base arms have no damping: they run once per (lr, seed) whatever --dampings says
    grid = [(lr, arm, seed, g) for lr in spec.lrs for seed in spec.seed_list() for arm in arms
            for g in (dampings if arm.startswith("dopr-") else (None,))]
    todo = [(lr, arm, seed, g) for lr, arm, seed, g in grid
            if (lr_key(lr), arm, seed, "" if g is None else f"{g:g}") not in done]
    if len(todo) < len(grid):
        print(f"resuming: {len(grid) - len(todo)} of {len(grid)} run(s) already in {path}", flush=True)
    bar = SweepProgress(len(todo), f"{bench.name} {task} runs", progress)
    base_spec = prepared.spec
    try:
        for lr, arm, seed, g in todo:
            t0 = time.time()
            # the bench builds its optimizer from prepared.spec: this run's damping goes there
            prepared.spec = base_spec if g is None else replace(base_spec, damping=g)
            label = f"{arm} lr {lr_key(lr)}" + ("" if g is None or len(dampings) == 1 else f" damping {g:g}")
            with bar.run(bench.steps(spec), f"{label} s{seed}") as steps:
                rec = prepared.run(arm, seed, lr, steps)
            run = {"optimizer": arm, "seed": seed, "lr": lr, **({} if g is None else {"damping": g}), **rec,
                   "wall_s": time.time() - t0, **provenance(threads)}
            results["runs"].append(run)
            save_json(path, results)
            bar.done(prepared.line(run))
    finally:
        bar.close()
        prepared.spec = base_spec
    sort_runs(results["runs"], arms)
    save_json(path, results)
    prepared.close(results, out)
    md = write_report(out, results)
    notes = closing_lines(results)
    if any(a.removeprefix("dopr-") == "muon" for a in arms):
        notes.append(f"Muon arms: Newton-Schulz in {ns_dtype} ({why}).")
    print(md + ("\n" + "\n".join(notes) + "\n" if notes else ""), flush=True)
    return results
