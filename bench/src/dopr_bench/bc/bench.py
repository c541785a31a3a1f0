"""The behavior-cloning bench (``dopr-bench run [bc] TASK``): clone an expert on a MuJoCo control task with each
arm, on the same demonstrations, initialization and minibatches; judge each policy by its rollouts' return."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import EVAL_SEED, VAL_SEED
from ..core.bench import Bench, Metric
from ..core.progress import interactive
from ..core.spec import Common, opt
from .data import Episode, drift, expert_demos, read_minari, rollout
from .diagnostics import diagnostics, expert_first_features
from .report import headline, make_plots, run_return, standardization_notes, summary_markdown
from .train import BCData, train_bc


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


def load_episodes(spec: BCSpec, cache: Path) -> tuple[list[Episode], list[Episode], str, str]:
    """Training and validation demonstrations, the env id to roll out in, and a description of the source."""
    if spec.dataset:
        eps, env_id = read_minari(spec.dataset, root=cache, download=True)
        need = spec.demos + spec.val_demos
        if len(eps) < need:
            raise SystemExit(f"dataset {spec.dataset} has {len(eps)} episodes; {need} needed (demos + val demos)")
        return eps[:spec.demos], eps[spec.demos:need], env_id or spec.env_id, f"minari:{spec.dataset}"
    from .experts import expert_tag, load_expert

    expert = load_expert(spec.name, spec.env_id)
    tag = expert_tag(spec.name)
    bars = interactive()
    noise = spec.demo_noise
    train = expert_demos(spec.name, spec.env_id, expert, spec.demos, 0, tag, cache, progress=bars, noise=noise)
    val = expert_demos(spec.name, spec.env_id, expert, spec.val_demos, VAL_SEED, tag, cache, progress=bars,
                       noise=noise)
    return train, val, spec.env_id, f"expert:{tag}" + (f"+noise{noise:g}" if noise else "")


def _stack(eps: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([e.observations[:-1] for e in eps]), np.concatenate([e.actions for e in eps])


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32)


class Prepared:
    def __init__(self, spec: BCSpec, task: str, cache: Path) -> None:
        import gymnasium as gym

        self.spec = spec
        train_eps, val_eps, self.env_id, source = load_episodes(spec, cache)
        self.settings = {"env_id": self.env_id, "source": source}
        obs, act = _stack(train_eps)
        vobs, vact = _stack(val_eps)
        self.stats = obs.mean(0), obs.std(0)
        self.data = BCData(_tensor(obs), _tensor(act), _tensor(vobs), _tensor(vact))
        self.expert_obs = np.concatenate([obs, vobs])
        self.expert_return = float(np.mean([e.ret for e in train_eps + val_eps]))
        self.expert_features = None  # the expert's first hidden features on the validation states (diagnostics)
        if not spec.dataset:
            from .experts import load_expert

            self.expert_features = expert_first_features(load_expert(spec.name, spec.env_id), vobs)
        self.env = gym.make(self.env_id)
        self.low = self.env.action_space.low.astype(np.float64)
        self.high = self.env.action_space.high.astype(np.float64)
        self.models: dict[str, torch.nn.Module] = {}

    def info(self, old: dict[str, Any]) -> dict[str, Any]:
        return {"n_train_transitions": len(self.data.obs), "expert_demo_return": self.expert_return}

    def run(self, arm: str, seed: int, lr: float, progress: Any) -> dict[str, Any]:
        from .policy import ActPolicy

        model, rec = train_bc(arm, seed, lr, self.data, self.spec, self.stats, progress)
        t1 = time.time()
        policy = ActPolicy(model, self.low, self.high)
        n = 0 if rec["diverged"] else self.spec.episodes
        eps = [rollout(self.env, policy, EVAL_SEED + i, self.spec.max_episode_steps) for i in range(n)]
        pol_obs = np.concatenate([e.observations for e in eps]) if eps else None
        mean, std = self.stats
        if self.spec.video:
            self.models[f"{arm}-s{seed}"] = model
        if not rec["diverged"]:
            rec |= diagnostics(model, self.data.val_obs, self.expert_features)
        return rec | {"returns": [e.ret for e in eps], "lengths": [e.length for e in eps],
                      "eval_seeds": [EVAL_SEED + i for i in range(len(eps))],
                      "drift": drift(self.expert_obs, pol_obs) if eps else float("nan"),
                      "drift_std": drift(self.expert_obs, pol_obs, mean, std) if eps else float("nan"),
                      "eval_s": time.time() - t1}

    def line(self, run: dict[str, Any]) -> str:
        return (f"{run['optimizer']:>12} lr {run['lr']:g} seed {run['seed']}: val {run['val_loss']:.3e}  return "
                f"{np.mean(run['returns'] or [np.nan]):8.1f}  len {np.mean(run['lengths'] or [0]):6.1f}  drift "
                f"{run['drift_std']:.3g}  ({run['wall_s']:.0f}s)")

    def close(self, results: dict[str, Any], out: Path) -> None:
        self.env.close()
        if self.spec.video:
            from .video import save_model, side_by_side

            for name, model in self.models.items():
                save_model(model, out / "models" / f"{name}.pt")
            side_by_side(results, out, self.env_id, self.low, self.high, self.spec.max_episode_steps)


BENCH = Bench(
    name="bc", help="behavior cloning on MuJoCo control (idp, hopper, walker2d, humanoid): rollout return",
    spec_type=BCSpec, tasks=tuple(TASKS), default_task="idp", resolve=resolve, planned=planned,
    data_keys=frozenset({"env_id", "source"}), prepare=Prepared,
    val=Metric("val loss", lambda r: r["val_loss"], False, lambda v: f"{v:.2e}"),
    test=Metric("return", run_return, True, lambda v: f"{v:,.0f}"),
    summary=summary_markdown, plots=make_plots, headline=headline, notes=standardization_notes)
