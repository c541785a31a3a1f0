"""The one place that knows how result folders made by earlier versions of the bench read.

Every committed folder under results/ stays resumable and reportable through three rules:

- :data:`ABSENT`: a setting missing from an old folder's ``settings`` had this value (the option did not exist
  yet, or was only recorded when it differed from it). Resuming compares settings after filling these in.
- :func:`upgrade`: old files had no ``bench`` field (it is read off their shape), kept a single ``lr`` in
  ``settings`` instead of one per run, and the flow bench named its times ``train_seconds``/``wall_seconds``.
- :func:`modern_argv`: the commands recorded in old COMMAND.txt files, in today's CLI shape.
"""

from __future__ import annotations

from typing import Any

#: the DoPr options every bench has, as the folders made before each option existed ran them
_DOPR = {"refresh_every": 1, "max_block": None, "max_rows": None, "muon_ns_dtype": "bfloat16"}
#: bench -> {setting: the value an old folder that lacks the key was made with}
ABSENT: dict[str, dict[str, Any]] = {
    "bc": _DOPR | {"ap_layers": "all", "zca": False, "demo_noise": 0.0},
    "lm": _DOPR | {"sigma_rows": "all"},
    "flow": _DOPR | {"aux_lr": None, "sigma": "batch"},
    "robo": _DOPR | {"aux_lr": None, "sigma": "batch"},
}

#: run fields renamed since (old name -> name now)
RENAMED_RUN_FIELDS = {"train_seconds": "train_s", "wall_seconds": "wall_s"}

#: the control bench's --quick before the quick main job was redesigned (applied to the task's full spec)
OLD_BC_QUICK = {"steps": 300, "episodes": 3, "val_demos": 2, "max_episode_steps": 300, "log_every": 50}


def bench_of(results: dict[str, Any]) -> str:
    """The bench that wrote ``results``; for files without a ``bench`` field, read off the shape of the file."""
    if "bench" in results:
        return str(results["bench"])
    if str(results.get("task", "")).startswith("lm:"):
        return "lm"
    if results.get("settings", {}).get("task") == "flow-digits":
        return "flow"
    return "bc"


def upgrade(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` in the current schema (a new dict; version-1 files keep ``schema`` 1 so they report as before)."""
    out = dict(results)
    bench = out["bench"] = bench_of(results)
    out.setdefault("schema", 1)
    settings = ABSENT[bench] | dict(results.get("settings", {}))
    lr = settings.pop("lr", None)
    runs = []
    for run in results.get("runs", []):
        run = {RENAMED_RUN_FIELDS.get(k, k): v for k, v in run.items()}
        if "lr" not in run:
            run["lr"] = lr
        run.setdefault("diverged", False)
        runs.append(run)
    out["settings"], out["runs"] = settings, runs
    if bench == "flow":
        out.setdefault("task", "digits")
    return out


def absent_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """The :data:`ABSENT` settings an old results.json (as read from disk) lacks, with the values it was made with."""
    return {k: v for k, v in ABSENT[bench_of(raw)].items() if k not in raw.get("settings", {})}


def modern_argv(argv: list[str], absent: dict[str, Any] | None = None) -> list[str]:
    """A command recorded by an earlier version (the words after ``dopr-bench``) in today's CLI shape:
    ``flow ...`` and ``robo TASK ...`` became ``run flow ...`` and ``run robo TASK ...``; ``--lr X`` became
    ``--lrs X``; the control bench's ``--quick`` is spelt out as it was then (:data:`OLD_BC_QUICK`); and options
    that did not exist when it ran (``absent``: see :func:`absent_settings`) are given the values it ran with."""
    argv = list(argv)
    for key, value in (absent or {}).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):  # a switch: --name / --no-name
            argv += [] if flag in argv or f"--no-{flag[2:]}" in argv else [flag if value else f"--no-{flag[2:]}"]
        elif value is not None and flag not in argv:
            argv += [flag, str(value)]
    if argv and argv[0] in ("flow", "robo"):
        argv = ["run", *argv]
    argv = ["--lrs" if a == "--lr" else a for a in argv]
    is_bc = len(argv) > 1 and argv[0] == "run" and argv[1] not in ("lm", "flow", "robo")
    if is_bc and "--quick" in argv:
        argv.remove("--quick")
        for key, value in OLD_BC_QUICK.items():
            flag = "--" + key.replace("_", "-")
            if flag not in argv:
                argv += [flag, str(value)]
    return argv
