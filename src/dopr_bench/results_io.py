"""results.json of every bench: atomic writes, and resuming only into a directory made with the same settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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
