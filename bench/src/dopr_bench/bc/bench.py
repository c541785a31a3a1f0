"""The behavior-cloning bench (``dopr-bench run [bc] TASK``): clone an expert on a MuJoCo control task with each
arm, on the same demonstrations, initialization and minibatches; judge each policy by its rollouts' return."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import EVAL_SEED, VAL_SEED
from ..core.bench import Bench, Metric
from ..core.checkpoints import LowestVal
from ..core.progress import interactive
from .data import Episode, drift, expert_demos, read_minari, rollout
from .diagnostics import diagnostics, expert_first_features
from .report import headline, make_plots, run_return, run_return_at_min_val, standardization_notes, summary_markdown
from .spec import TASKS, BCSpec, planned, resolve
from .train import BCData, train_bc


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

        lowest = LowestVal()
        model, rec = train_bc(arm, seed, lr, self.data, self.spec, self.stats, progress, lowest)
        t1 = time.time()
        policy = ActPolicy(model, self.low, self.high)
        n = 0 if rec["diverged"] else self.spec.episodes
        eps = [rollout(self.env, policy, EVAL_SEED + i, self.spec.max_episode_steps) for i in range(n)]
        # the checkpoint a user keeps: lowest logged validation loss, on the same episodes (the final weights'
        # rollouts where that is the last step)
        at_min = eps
        if n and lowest.step is not None and lowest.step != rec["steps_done"]:
            early = ActPolicy(lowest.model(model), self.low, self.high)
            at_min = [rollout(self.env, early, EVAL_SEED + i, self.spec.max_episode_steps) for i in range(n)]
        pol_obs = np.concatenate([e.observations for e in eps]) if eps else None
        mean, std = self.stats
        if self.spec.video:
            self.models[f"{arm}-s{seed}"] = model
        if not rec["diverged"]:
            rec |= diagnostics(model, self.data.val_obs, self.expert_features)
        return rec | {"returns": [e.ret for e in eps], "lengths": [e.length for e in eps],
                      "returns_at_min_val": [e.ret for e in at_min], "lengths_at_min_val": [e.length for e in at_min],
                      "eval_seeds": [EVAL_SEED + i for i in range(len(eps))],
                      "drift": drift(self.expert_obs, pol_obs) if eps else float("nan"),
                      "drift_std": drift(self.expert_obs, pol_obs, mean, std) if eps else float("nan"),
                      "eval_s": time.time() - t1}

    def line(self, run: dict[str, Any]) -> str:
        damping = f" damping {run['damping']:g}" if "damping" in run else ""
        return (f"{run['optimizer']:>12} lr {run['lr']:g} seed {run['seed']}{damping}: val {run['val_loss']:.3e}  "
                f"return {np.mean(run['returns'] or [np.nan]):8.1f}  len {np.mean(run['lengths'] or [0]):6.1f}  "
                f"drift {run['drift_std']:.3g}  at min val (step {run.get('min_val_step')}): val "
                f"{run.get('val_loss_min', np.nan):.3e} return {run_return_at_min_val(run):8.1f}  "
                f"({run['wall_s']:.0f}s)")

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
    summary=summary_markdown, plots=make_plots, headline=headline, notes=standardization_notes,
    checkpoints=(("lowest-validation-loss checkpoint",
                  Metric("min val loss", lambda r: r.get("val_loss_min"), False, lambda v: f"{v:.2e}"),
                  Metric("return at min val", run_return_at_min_val, True, lambda v: f"{v:,.0f}")),))
