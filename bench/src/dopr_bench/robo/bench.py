"""The manipulation bench (``dopr-bench run robo TASK``): image-based robosuite tasks, in its own ``.venv-robo``.

Every (arm, seed) on the same demos, initialization, minibatches, image shifts and flow noise; the EMA weights are
rolled out at evenly spaced checkpoints, judged by their success rate.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.bench import Bench, Metric
from ..core.progress import interactive
from ..core.report import dopr_options
from .envs import PROPRIO_KEYS, TASKS
from .experts import Demo
from .report import make_plots, summary_markdown
from .spec import DEMO_HORIZON, MAX_EPISODE_STEPS, RoboSpec, planned, resolve


def _first(path: Path, n: int, keys: tuple[str, ...]) -> tuple[list[Demo], dict[str, Any], list[int]]:
    import h5py

    from .data import read_hdf5

    demos, env_args, _ = read_hdf5(path, keys, names=[f"demo_{i}" for i in range(n)])
    with h5py.File(path, "r") as f:
        failed = json.loads(f["data"].attrs.get("dopr_failed_seeds", "[]"))
    kept = list(demos.values())
    last_seed = kept[-1].seed if kept and kept[-1].seed is not None else None
    return kept, env_args, [s for s in failed if last_seed is None or s < last_seed]


def load_demos(task: str, spec: RoboSpec, cache: Path,
               progress: bool) -> tuple[list[Demo], list[Demo], dict[str, Any], dict[str, Any]]:
    """Training and validation demos, the env_args to roll out in, and a description of the source."""
    from .data import cached_expert_demos, read_hdf5, split

    keys = tuple(f"{c}_image" for c in spec.cameras) + PROPRIO_KEYS
    if spec.dataset:
        demos, env_args, masks = read_hdf5(Path(spec.dataset), keys)
        train, valid = split(list(demos), masks, spec.demos, spec.val_demos)
        if not env_args:
            raise SystemExit(f"{spec.dataset} has no data.attrs['env_args']: cannot rebuild its environment")
        return ([demos[n] for n in train], [demos[n] for n in valid], env_args,
                {"source": f"dataset:{Path(spec.dataset).resolve()}", "train_names": train[:3] + ["..."]})
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


class Prepared:
    def __init__(self, spec: RoboSpec, task: str, cache: Path) -> None:
        import importlib.util

        if importlib.util.find_spec("robosuite") is None:
            raise SystemExit("the robo bench needs robosuite: run it in .venv-robo (./scripts/setup-robo)")
        from .envs import RoboEnv
        from .train import make_data

        t0 = time.time()
        train_demos, val_demos, env_args, source = load_demos(task, spec, cache / "robo", interactive())
        sizes = {d.obs[f"{c}_image"].shape[1] for d in train_demos for c in spec.cameras}
        if sizes != {spec.image_size}:
            raise SystemExit(f"images are {sorted(sizes)} pixels, the bench is set for {spec.image_size} "
                             "(--image-size)")
        if spec.max_episode_steps is None:
            spec = replace(spec, max_episode_steps=MAX_EPISODE_STEPS.get(env_args["env_name"], 400))
        self.spec = spec
        self.env = RoboEnv(env_args, spec.cameras, spec.image_size, spec.render)
        self.settings = {"env_name": env_args["env_name"], "source": source["source"], "render": self.env.render,
                         "max_episode_steps": spec.max_episode_steps}
        self.demos = source | {"train_frames": sum(map(len, train_demos)), "val_frames": sum(map(len, val_demos)),
                               "prepare_s": time.time() - t0}
        self.train = make_data(train_demos, spec.cameras, spec.chunk, spec.shift)
        self.val = make_data(val_demos, spec.cameras, spec.chunk, 0)

    def info(self, old: dict[str, Any]) -> dict[str, Any]:
        return {"demos": self.demos}

    def run(self, arm: str, seed: int, lr: float, progress: Any) -> dict[str, Any]:
        from .train import train_run

        return train_run(arm, seed, lr, self.spec, self.train, self.val, self.env, progress)

    def line(self, run: dict[str, Any]) -> str:
        return (f"{run['optimizer']:>12} lr {run['lr']:g} seed {run['seed']}: val {run['val_loss']:.4f}  success "
                f"best {run['success_best']:.2f} final {run['success_final']:.2f}  ({run['train_s']:.0f}s train, "
                f"{run['eval_s']:.0f}s rollouts)")

    def close(self, results: dict[str, Any], out: Path) -> None:
        self.env.close()


def headline(results: dict[str, Any]) -> str:
    s = results["settings"]
    return f"{results['task']} ({s['env_name']}), {s['demos']} demos, images, {s['steps']} steps" + dopr_options(s)


BENCH = Bench(
    name="robo", help="robosuite image-based manipulation (lift, stack, or --dataset HDF5): success rate (.venv-robo)",
    spec_type=RoboSpec, tasks=tuple(TASKS), default_task="lift", resolve=resolve, planned=planned,
    data_keys=frozenset({"env_name", "source", "render", "max_episode_steps"}), prepare=Prepared,
    val=Metric("val FM loss", lambda r: r["val_loss"], False, lambda v: f"{v:.4f}"),
    test=Metric("success (best ckpt)", lambda r: r["success_best"], True, lambda v: f"{v:.2f}"),
    summary=summary_markdown, plots=make_plots, headline=headline, out_name=lambda task, spec: f"robo-{task}")
