"""results.json of every bench: atomic writes, and resuming only into a directory made with the same settings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any


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


def save_json(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``path`` atomically (an interrupted write never leaves a truncated file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def saved_results(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The results saved at ``path`` if they were made with ``settings``; None if there are none.

    Raises SystemExit naming the differing settings when the directory holds other results.
    """
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path} is not valid JSON ({err}); move it away or delete it to start over") from err
    saved = old.get("settings", {})
    if saved != json.loads(json.dumps(settings, default=float)):
        diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        raise SystemExit(f"{path} was made with other settings {diff}; use another --out or delete it")
    return old


def run_key(run: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies one run in any bench: (lr where the bench sweeps it, optimizer, seed)."""
    return run.get("lr"), run["optimizer"], run["seed"]


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from several made with the same settings (e.g. seeds run on different machines).

    Raises ValueError if the settings differ or a run appears twice; the first part's other fields are kept.
    """
    if not parts:
        raise ValueError("nothing to merge")
    merged = dict(parts[0])
    merged["runs"] = []
    seen: set[tuple[Any, ...]] = set()
    for i, part in enumerate(parts):
        if part.get("settings") != parts[0].get("settings"):
            diff = {k: (parts[0]["settings"].get(k), v) for k, v in part.get("settings", {}).items()
                    if parts[0]["settings"].get(k) != v}
            raise ValueError(f"part {i} was made with other settings {diff}; only runs of one setting can be merged")
        for run in part["runs"]:
            if run_key(run) in seen:
                raise ValueError(f"run {run_key(run)} (lr, optimizer, seed) is in more than one part")
            seen.add(run_key(run))
            merged["runs"].append(run)
    return merged
