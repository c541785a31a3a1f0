"""``dopr-bench robo TASK``: every (optimizer, seed) on the same demos, resumable; then summary.md and plots."""

from __future__ import annotations

import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..bc import parse_arm
from ..results_io import library_version, save_json, saved_results
from .data import DEFAULT_CACHE, cached_expert_demos, read_hdf5, split
from .envs import PROPRIO_KEYS, TASKS, RoboEnv
from .experts import Demo
from .report import make_plots, summary_markdown
from .train import RoboSpec, make_data, train_run

#: per task: rollout cap (robomimic's horizons for its tasks) and the expert's cap when collecting demos.
MAX_EPISODE_STEPS = {"Lift": 150, "Stack": 250, "PickPlaceCan": 400, "NutAssemblySquare": 400, "ToolHang": 700,
                     "TwoArmTransport": 700}
DEMO_HORIZON = {"lift": 200, "stack": 400}
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"lift": {}, "stack": {"demos": 50}}
QUICK: dict[str, Any] = dict(demos=8, val_demos=3, steps=150, batch=32, episodes=3, evals=1, log_every=50,
                             max_episode_steps=100)


def resolve_spec(task: str, quick: bool, overrides: dict[str, Any], dataset: str | None = None) -> RoboSpec:
    if task not in TASKS and not dataset:
        raise SystemExit(f"unknown task {task!r}; choose one of {sorted(TASKS)}, or give --dataset PATH.hdf5")
    spec = replace(RoboSpec(), **TASK_DEFAULTS.get(task, {}))
    if quick:
        spec = replace(spec, **QUICK)
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def _first(path: Path, n: int, keys: tuple[str, ...]) -> tuple[list[Demo], dict[str, Any], list[int]]:
    import json

    import h5py

    demos, env_args, _ = read_hdf5(path, keys, names=[f"demo_{i}" for i in range(n)])
    with h5py.File(path, "r") as f:
        failed = json.loads(f["data"].attrs.get("dopr_failed_seeds", "[]"))
    kept = list(demos.values())
    last_seed = kept[-1].seed if kept and kept[-1].seed is not None else None
    return kept, env_args, [s for s in failed if last_seed is None or s < last_seed]


def load_demos(task: str, spec: RoboSpec, dataset: str | None, cache: Path,
               progress: bool) -> tuple[list[Demo], list[Demo], dict[str, Any], dict[str, Any]]:
    """Training and validation demos, the env_args to roll out in, and a description of the source."""
    keys = tuple(f"{c}_image" for c in spec.cameras) + PROPRIO_KEYS
    if dataset:
        demos, env_args, masks = read_hdf5(Path(dataset), keys)
        train, valid = split(list(demos), masks, spec.demos, spec.val_demos)
        if not env_args:
            raise SystemExit(f"{dataset} has no data.attrs['env_args']: cannot rebuild its environment")
        return ([demos[n] for n in train], [demos[n] for n in valid], env_args,
                {"source": f"dataset:{Path(dataset).resolve()}", "train_names": train[:3] + ["..."]})
    horizon = DEMO_HORIZON[task]
    tr_path = cached_expert_demos(task, "train", spec.demos, horizon, spec.cameras, spec.image_size, cache, progress)
    va_path = cached_expert_demos(task, "valid", spec.val_demos, horizon, spec.cameras, spec.image_size, cache,
                                  progress)
    train, env_args, tr_failed = _first(tr_path, spec.demos, keys)
    valid, _, va_failed = _first(va_path, spec.val_demos, keys)
    attempts = len(train) + len(valid) + len(tr_failed) + len(va_failed)
    return train, valid, env_args, {"source": f"expert:{tr_path.name.rsplit('-n', 1)[0]}",
                                    "expert_success": (len(train) + len(valid)) / attempts,
                                    "expert_attempts": attempts,
                                    "expert_mean_length": float(sum(len(d) for d in train + valid)
                                                                / len(train + valid))}


def run_robo_bench(task: str, optimizers: list[str], seeds: list[int], out: Path, spec: RoboSpec, *,
                   dataset: str | None = None, cache: Path = DEFAULT_CACHE, threads: int = 1,
                   render: str | None = None, progress: bool = True, argv: list[str] | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    torch.set_num_threads(threads)
    for arm in optimizers:
        parse_arm(arm)
    out.mkdir(parents=True, exist_ok=True)
    command = "dopr-bench robo " + " ".join(shlex.quote(a) for a in argv) if argv is not None else ""
    if command:
        with (out / "COMMAND.txt").open("a") as f:
            f.write(command + "\n")
    t0 = time.time()
    train_demos, val_demos, env_args, source = load_demos(task, spec, dataset, cache, progress)
    sizes = {d.obs[f"{c}_image"].shape[1] for d in train_demos for c in spec.cameras}
    if sizes != {spec.image_size}:
        raise SystemExit(f"images are {sorted(sizes)} pixels, the bench is set for {spec.image_size} (--image-size)")
    if spec.max_episode_steps is None:
        spec = replace(spec, max_episode_steps=MAX_EPISODE_STEPS.get(env_args["env_name"], 400))
    env = RoboEnv(env_args, spec.cameras, spec.image_size, render)
    settings = spec.settings() | {"task": task, "env_name": env_args["env_name"], "dataset": dataset,
                                  "source": source["source"], "render": env.render}
    path = out / "results.json"
    results: dict[str, Any] = {"bench": "robo", "task": task, "settings": settings, "runs": []}
    if (old := saved_results(path, settings)) is not None:
        results["runs"] = old["runs"]
    if command:
        results["command"] = command
    results["demos"] = source | {"train_frames": sum(map(len, train_demos)), "val_frames": sum(map(len, val_demos)),
                                 "prepare_s": time.time() - t0}
    train = make_data(train_demos, spec.cameras, spec.chunk, spec.shift)
    val = make_data(val_demos, spec.cameras, spec.chunk, 0)
    del train_demos, val_demos
    done = {(r["optimizer"], r["seed"]) for r in results["runs"]}
    todo = [(arm, s) for s in seeds for arm in optimizers if (arm, s) not in done]
    if len(todo) < len(optimizers) * len(seeds):
        print(f"resuming: {len(optimizers) * len(seeds) - len(todo)} finished run(s) found in {path}", flush=True)
    version = library_version()
    for arm, seed in todo:
        t1 = time.time()
        with tqdm(total=spec.steps, desc=f"{task} {arm} s{seed}", leave=False, disable=not progress) as bar:
            rec = train_run(arm, seed, spec, train, val, env, progress=bar)
        rec.update(wall_s=time.time() - t1, threads=threads, torch=torch.__version__, dopr=version)
        results["runs"].append(rec)
        save_json(path, results)
        print(f"{arm:>12} seed {seed}: val {rec['val_loss']:.4f}  success best {rec['success_best']:.2f} "
              f"final {rec['success_final']:.2f}  ({rec['train_s']:.0f}s train, {rec['eval_s']:.0f}s rollouts)",
              flush=True)
    env.close()
    order = {a: i for i, a in enumerate(optimizers)}
    results["runs"].sort(key=lambda r: (order.get(r["optimizer"], len(order)), r["seed"]))
    save_json(path, results)
    md = summary_markdown(results)
    (out / "summary.md").write_text(md)
    make_plots(results, out)
    print(md)
    return results
