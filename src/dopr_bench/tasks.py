"""Task definitions: environment, expert, and the default BC protocol for each task."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TaskSpec:
    name: str
    env_id: str
    demos: int
    val_demos: int
    steps: int
    batch: int = 256
    lr: float = 1e-3
    damping: float = 0.1
    ema: float = 0.005
    width: int = 256
    blocks: int = 2
    episodes: int = 10
    std_floor: float = 1e-2
    clip: float = 10.0
    standardize: bool = False
    max_episode_steps: int | None = None
    log_every: int = 100

    def settings(self) -> dict[str, Any]:
        return asdict(self)


TASKS: dict[str, TaskSpec] = {
    # LQR expert; raw observations have per-dimension std 0 .. 0.09, so the std floor is small.
    "idp": TaskSpec("idp", "InvertedDoublePendulum-v5", demos=2, val_demos=5, steps=2000, ema=0.01, damping=1e-3,
                    std_floor=1e-3, log_every=100),
    "hopper": TaskSpec("hopper", "Hopper-v5", demos=5, val_demos=5, steps=3000, ema=0.005, damping=0.1,
                       log_every=250),
    "walker2d": TaskSpec("walker2d", "Walker2d-v5", demos=5, val_demos=5, steps=3000, ema=0.005, damping=0.1,
                         log_every=250),
    "humanoid": TaskSpec("humanoid", "Humanoid-v5", demos=20, val_demos=5, steps=4000, ema=0.005, damping=0.1,
                         episodes=5, log_every=200),
}

#: env seeds: training demos start at 0, validation demos at VAL_SEED, evaluation rollouts at EVAL_SEED.
VAL_SEED, EVAL_SEED = 5_000, 100_000


def quick(spec: TaskSpec) -> TaskSpec:
    """A smoke-run version of any task (about two minutes for four arms and one seed)."""
    return replace(spec, steps=min(spec.steps, 300), episodes=min(spec.episodes, 3), val_demos=min(spec.val_demos, 2),
                   max_episode_steps=300, log_every=50)


def expert_tag(task: str) -> str:
    """Cache tag of the expert: 'lqr' for idp, a hash of the checkpoint file for PPO experts."""
    if task == "idp":
        return "lqr"
    from .experts import expert_paths

    pt, _ = expert_paths(task)
    return "ppo-" + hashlib.sha1(pt.read_bytes()).hexdigest()[:10] if pt.exists() else "ppo-missing"


def second_moment(obs: np.ndarray) -> np.ndarray:
    return obs.T @ obs / max(len(obs), 1)


def drift(expert_obs: np.ndarray, policy_obs: np.ndarray, mean: np.ndarray | None = None,
          std: np.ndarray | None = None) -> float:
    """||E_pol[s s^T] - E_exp[s s^T]||_F / ||E_exp[s s^T]||_F, optionally in standardized coordinates.

    In standardized coordinates (mean/std of the training demos, no floor) constant dimensions are dropped.
    """
    if mean is not None and std is not None:
        keep = std > 1e-6  # dimensions constant in the demonstrations have no scale: left out
        m, s = mean[keep], std[keep]
        expert_obs, policy_obs = (expert_obs[:, keep] - m) / s, (policy_obs[:, keep] - m) / s
    se, sp = second_moment(expert_obs), second_moment(policy_obs)
    return float(np.linalg.norm(sp - se) / max(np.linalg.norm(se), 1e-12))
