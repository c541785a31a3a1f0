"""The control bench's options (:class:`BCSpec`), its tasks and ``--quick``, and how a task resolves to a Spec."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..core.spec import Common, opt


@dataclass(frozen=True)
class BCSpec(Common):
    name: str = opt("idp", cli=False)
    env_id: str = opt("InvertedDoublePendulum-v5", cli=False)
    demos: int = opt(2, "training demonstrations")
    val_demos: int = opt(5, "held-out validation demonstrations")
    steps: int = opt(2000, "training steps")
    batch: int = opt(256, "minibatch size")
    ema: float = opt(0.005, "EMA rate of the evaluated weights")
    width: int = opt(256, "hidden width of the residual MLP")
    blocks: int = opt(2, "residual blocks")
    episodes: int = opt(10, "evaluation rollouts per run")
    std_floor: float = opt(1e-2, "added to the demos' std when standardizing")
    clip: float = opt(10.0, "clip of standardized observations")
    standardize: bool = opt(False, "standardize observations with the training demos' mean and std")
    zca: bool = opt(False, "whiten observations once by the training demos' ZCA (floored by --std-floor, clipped by "
                           "--clip), in training and at rollout; instead of --standardize")
    ap_layers: str = opt("all", "layers the DoPr arms precondition: all, first (the input layer only), hidden (every "
                                "layer but the first); the others get the base optimizer alone",
                         choices=("all", "first", "hidden"))
    demo_noise: float = opt(0.0, "a weaker demonstrator: Gaussian noise of this std times half the action range on "
                                 "the expert's actions, executed and recorded (training and validation demos)")
    max_episode_steps: int | None = opt(None, "cap on rollout length (default: the env's)")
    log_every: int = opt(100, "steps between logged losses")
    dataset: str | None = opt(None, "Minari dataset id or local dataset directory instead of the expert")
    video: bool = opt(False, "record side-by-side rollouts of base and DoPr", setting=False)


TASKS: dict[str, BCSpec] = {
    # LQR expert; raw observations have per-dimension std 0 .. 0.09, so the std floor and the damping are small.
    "idp": BCSpec(name="idp", env_id="InvertedDoublePendulum-v5", demos=2, val_demos=5, steps=2000, ema=0.01,
                  damping=1e-3, std_floor=1e-3, log_every=100),
    "hopper": BCSpec(name="hopper", env_id="Hopper-v5", demos=5, val_demos=5, steps=3000, log_every=250),
    "walker2d": BCSpec(name="walker2d", env_id="Walker2d-v5", demos=5, val_demos=5, steps=3000, log_every=250),
    "humanoid": BCSpec(name="humanoid", env_id="Humanoid-v5", demos=20, val_demos=5, steps=4000, episodes=5,
                       log_every=200),
}

#: ``--quick``: short training, few rollouts, episodes as long as the task's (no cap). The IDP main job trains on
#: 3 demonstrations for 600 steps: the setting where the full protocol's AdamW (results/idp-raw-3demos) is far
#: from the expert at this budget, so the quick job asks the same question as the full one.
QUICK: dict[str, Any] = {"steps": 300, "episodes": 3, "val_demos": 2, "log_every": 50, "seeds": 3}
QUICK_TASK: dict[str, dict[str, Any]] = {"idp": {"demos": 3, "steps": 600}}


def resolve(task: str, quick: bool, overrides: dict[str, Any]) -> BCSpec:
    if task not in TASKS:
        raise SystemExit(f"unknown control task {task!r}; choose one of {sorted(TASKS)}")
    spec = TASKS[task]
    if quick:
        spec = replace(spec, **(QUICK | QUICK_TASK.get(task, {})))
    spec = replace(spec, **overrides)
    if spec.zca and spec.standardize:
        raise SystemExit("--zca and --standardize are two preprocessings: give one")
    if spec.demo_noise < 0:
        raise SystemExit(f"--demo-noise must be >= 0, got {spec.demo_noise}")
    if spec.demo_noise and spec.dataset:
        raise SystemExit("--demo-noise applies to the expert's demonstrations, not to a --dataset")
    return spec


def planned(spec: BCSpec, task: str) -> dict[str, Any]:
    return spec.settings()
