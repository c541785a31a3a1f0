"""The manipulation bench's options (:class:`RoboSpec`), per-task defaults and caps, and ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..core.spec import Common, opt
from .envs import CAMERAS, TASKS

#: per robosuite env: rollout cap (robomimic's horizons for its tasks)
MAX_EPISODE_STEPS = {"Lift": 150, "Stack": 250, "PickPlaceCan": 400, "NutAssemblySquare": 400, "ToolHang": 700,
                     "TwoArmTransport": 700}
#: per scripted task: the expert's cap when collecting demos
DEMO_HORIZON = {"lift": 200, "stack": 400}


@dataclass(frozen=True)
class RoboSpec(Common):
    demos: int = opt(40, "training demos")
    val_demos: int = opt(10, "held-out validation demos")
    steps: int = opt(3000, "training steps")
    batch: int = opt(64, "minibatch size")
    ema: float = opt(0.005, "EMA rate max(ema, (1 + step) ** -0.75) of the evaluated weights")
    chunk: int = opt(8, "actions predicted per inference")
    execute: int = opt(4, "actions executed open-loop before re-planning")
    euler_steps: int = opt(8, "integration steps when sampling a chunk")
    width: int = opt(256, "width of the flow head")
    blocks: int = opt(2, "residual blocks of the flow head")
    channels: int = opt(32, "conv channels")
    keypoints: int = opt(32, "spatial-softmax keypoints per camera")
    feat: int = opt(64, "features per camera")
    cameras: tuple[str, ...] = opt(CAMERAS, "cameras")
    image_size: int = opt(84, "image side (pixels)")
    shift: int = opt(4, "random-shift augmentation (pixels)")
    episodes: int = opt(20, "rollouts per checkpoint")
    max_episode_steps: int | None = opt(None, "rollout cap (default: the task's, robomimic's horizons)")
    evals: int = opt(3, "evenly spaced checkpoints with rollouts (the last is the final weights)")
    val_draws: int = opt(4, "noise/time draws per validation frame")
    log_every: int = opt(100, "steps between logged losses")
    dataset: str | None = opt(None, "robomimic-layout HDF5 file (e.g. robomimic's image.hdf5) instead of the "
                                    "scripted expert")
    render: str | None = opt(None, "offscreen rendering of rollouts (default: as the demos were rendered)",
                             choices=("fast", "default"), setting=False)


TASK_DEFAULTS: dict[str, dict[str, Any]] = {"lift": {}, "stack": {"demos": 50}}
QUICK: dict[str, Any] = dict(demos=8, val_demos=3, steps=150, batch=32, episodes=3, evals=1, log_every=50,
                             max_episode_steps=100)


def resolve(task: str, quick: bool, overrides: dict[str, Any]) -> RoboSpec:
    if task not in TASKS and not overrides.get("dataset"):
        raise SystemExit(f"unknown task {task!r}; choose one of {sorted(TASKS)}, or give --dataset PATH.hdf5")
    spec = replace(RoboSpec(), **TASK_DEFAULTS.get(task, {}))
    if quick:
        spec = replace(spec, **QUICK)
    spec = replace(spec, **overrides)
    if spec.max_episode_steps is None and task in TASKS and not spec.dataset:
        spec = replace(spec, max_episode_steps=MAX_EPISODE_STEPS[TASKS[task]])
    return spec


def planned(spec: RoboSpec, task: str) -> dict[str, Any]:
    return spec.settings() | {"task": task}
