"""results.json of every bench: one schema, provenance, atomic writes, resuming and merging.

Schema (``schema`` 2)::

    {"bench": "bc" | "lm" | "flow" | "robo", "schema": 2, "task": str, "command": str,
     "settings": {...},            # what defines the folder: a run is resumed into it only with equal settings
     "runs": [{"optimizer", "seed", "lr", "diverged", "train_s", "wall_s", "threads", "torch", "dopr", "machine",
               ...}],             # "machine" (CPU, BLAS/oneDNN kernels, GPU) since 2026-12-07
                                   # DoPr runs also record "damping" (since --dampings; older runs used the
                                   # folder's "damping" setting)
     ...}                          # bench-specific fields (e.g. the demonstrations' return)

Every committed folder is in this schema (the folders made by earlier versions were migrated once, on 2026-12-04;
their COMMAND.txt says so); a file of another schema is refused with what to do.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

SCHEMA = 2


def library_version() -> str:
    """dopr's version plus the git commit of its source tree (``+dirty`` if src/dopr has local changes)."""
    import dopr

    src = Path(dopr.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return dopr.__version__
    return f"{dopr.__version__} {sha}{'+dirty' if dirty else ''}" if sha else dopr.__version__


def provenance(threads: int) -> dict[str, Any]:
    """Recorded with every run: torch and dopr versions, the thread count and the machine (:func:`machine`)."""
    import torch

    return {"threads": threads, "torch": torch.__version__, "dopr": library_version(), "machine": machine()}


def machine() -> dict[str, Any]:
    """The machine a run's numbers came from: CPU model and count, the kernels torch picked (CPU capability, BLAS,
    LAPACK, oneDNN) and the GPU, if any. Single runs are not bit-identical across machines (paired comparisons over
    seeds are what reproduces), so each run says where it ran."""
    return dict(_machine())


@functools.cache
def _machine() -> dict[str, Any]:
    import platform

    import torch

    config = torch.__config__.show()

    def found(pattern: str) -> str | None:
        match = re.search(pattern, config)
        return match.group(1).strip() if match else None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": found(r"BLAS_INFO=([^,]+)"), "lapack": found(r"LAPACK_INFO=([^,]+)"),
        "mkl": found(r"Math Kernel Library Version ([^\n]+?) for"),
        "onednn": found(r"MKL-DNN (v[0-9.]+)"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def machine_line(m: dict[str, Any]) -> str:
    """One machine record as a short phrase."""
    kernels = ", ".join(f"{k} {m[k]}" for k in ("blas", "mkl", "onednn") if m.get(k))
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return f"{m.get('cpu')} ({m.get('cpus')} CPUs, {m.get('cpu_capability')}; {kernels}){gpu}"


def save_json(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``path`` atomically (an interrupted write never leaves a truncated file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def load_results(path: Path) -> dict[str, Any]:
    """A results.json (or the folder holding one); SystemExit if it is not valid JSON or not of schema 2."""
    path = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path} is not valid JSON ({err}); move it away or delete it to start over") from err
    if results.get("schema") != SCHEMA:
        raise SystemExit(f"{path} has results schema {results.get('schema')}, and this dopr-bench reads schema "
                         f"{SCHEMA}; re-run its COMMAND.txt into a new --out (dopr-bench 0.2.0 migrated every folder "
                         "it knew of; an older folder is read by the dopr-bench that wrote it)")
    return results


def as_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=float))


def check_settings(path: Path, saved: dict[str, Any], settings: dict[str, Any]) -> None:
    """Raise SystemExit naming the differing settings unless ``saved`` equals ``settings``."""
    settings = as_json(settings)
    if saved != settings:
        keys = sorted(set(saved) | set(settings))
        diff = {k: (saved.get(k), settings.get(k)) for k in keys if saved.get(k) != settings.get(k)}
        raise SystemExit(f"{path} was made with other settings {diff} (saved, now); use another --out or delete it")


def lr_key(lr: float) -> str:
    return f"{float(lr):g}"


def run_damping(run: dict[str, Any], default: float | None) -> float | None:
    """A DoPr run's damping: its own (recorded since ``--dampings``), else ``default`` (the folder's ``damping``
    setting, which every run of an older folder used); None for a base arm, which has no damping."""
    if not str(run["optimizer"]).startswith("dopr-"):
        return None
    d = run.get("damping", default)
    return None if d is None else float(d)


def run_key(run: dict[str, Any], damping: float | None = None) -> tuple[str, str, int, str]:
    """What identifies one run in any bench: (lr, optimizer, seed, damping); the damping is '' for a base arm, and
    ``damping`` (the folder's setting) for a DoPr run that does not record its own."""
    d = run_damping(run, damping)
    return lr_key(run["lr"]), run["optimizer"], run["seed"], "" if d is None else f"{d:g}"


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from several made with the same settings (e.g. seeds run on different machines).

    Raises ValueError if the benches or settings differ or a run appears twice; the first part's other fields
    are kept.
    """
    if not parts:
        raise ValueError("nothing to merge")
    merged = dict(parts[0])
    merged["runs"] = []
    seen: set[tuple[str, str, int, str]] = set()
    default = parts[0].get("settings", {}).get("damping")
    for i, part in enumerate(parts):
        if part.get("bench") != parts[0].get("bench"):
            raise ValueError(f"part {i} is from the {part.get('bench')} bench, part 0 from {parts[0].get('bench')}")
        if part.get("settings") != parts[0].get("settings"):
            diff = {k: (parts[0]["settings"].get(k), v) for k, v in part.get("settings", {}).items()
                    if parts[0]["settings"].get(k) != v}
            raise ValueError(f"part {i} was made with other settings {diff}; only runs of one setting can be merged")
        for run in part["runs"]:
            key = run_key(run, default)
            if key in seen:
                raise ValueError(f"run {key} (lr, optimizer, seed, damping) is in more than one part")
            seen.add(key)
            merged["runs"].append(run)
    return merged


def sort_runs(runs: list[dict[str, Any]], arms: list[str]) -> None:
    """In place: by lr, then the arms' order on the command line (others after), then seed."""
    order = {a: i for i, a in enumerate(arms)}
    runs.sort(key=lambda r: (float(r["lr"]), order.get(r["optimizer"], len(order)), float(r.get("damping", 0.0)),
                             r["seed"]))
