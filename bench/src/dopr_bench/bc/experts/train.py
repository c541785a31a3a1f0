"""Train a PPO expert with stable-baselines3 (recipes from MACHINE-NOTES section 3), resumable, best-by-eval.

Working files (SB3 zip + VecNormalize statistics, for resuming only) live in a run directory; the exported
expert (``<task>.pt`` tensors + ``<task>.json``) is what the bench loads.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from . import MLPExpert, expert_paths


@dataclass
class PPORecipe:
    env_id: str
    total_steps: int
    n_envs: int
    n_steps: int = 256
    batch_size: int = 256
    n_epochs: int = 10
    lr: float = 3e-4
    lr_decay: bool = False
    lr_floor: float = 0.1
    net: list[int] = field(default_factory=lambda: [64, 64])
    log_std_init: float = 0.0
    eval_every: int = 50_000
    eval_episodes: int = 3
    final_episodes: int = 10
    target: float | None = None


RECIPES: dict[str, PPORecipe] = {
    "hopper": PPORecipe("Hopper-v5", total_steps=1_500_000, n_envs=8, eval_every=50_000, eval_episodes=5),
    "humanoid": PPORecipe("Humanoid-v5", total_steps=2_000_000, n_envs=16, batch_size=1024, lr_decay=True,
                          net=[256, 256], log_std_init=-1.0, eval_every=100_000, eval_episodes=3, target=6000.0),
    # the humanoid recipe, shorter: Walker2d-v5 is cheaper to simulate and learns faster
    "walker2d": PPORecipe("Walker2d-v5", total_steps=1_500_000, n_envs=16, batch_size=1024, lr_decay=True,
                          net=[256, 256], log_std_init=-1.0, eval_every=100_000, eval_episodes=3),
}


def export_state(model: Any, vecnorm: Any, env: gym.Env) -> dict[str, torch.Tensor]:
    """Flat tensor dict of the deterministic policy (mean) and the observation normalizer."""
    pol = model.policy
    state: dict[str, torch.Tensor] = {}
    lins = [m for m in pol.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(lins):
        state[f"hidden.{i}.weight"] = lin.weight.detach().cpu().clone()
        state[f"hidden.{i}.bias"] = lin.bias.detach().cpu().clone()
    state["action.weight"] = pol.action_net.weight.detach().cpu().clone()
    state["action.bias"] = pol.action_net.bias.detach().cpu().clone()
    state["n_hidden"] = torch.tensor(len(lins))
    state["obs_mean"] = torch.as_tensor(vecnorm.obs_rms.mean, dtype=torch.float64)
    state["obs_var"] = torch.as_tensor(vecnorm.obs_rms.var, dtype=torch.float64)
    state["obs_eps"] = torch.tensor(float(vecnorm.epsilon), dtype=torch.float64)
    state["clip_obs"] = torch.tensor(float(vecnorm.clip_obs), dtype=torch.float64)
    state["act_low"] = torch.as_tensor(env.action_space.low, dtype=torch.float64)
    state["act_high"] = torch.as_tensor(env.action_space.high, dtype=torch.float64)
    return state


def evaluate_expert(expert: Any, env_id: str, episodes: int, seed: int = 10_000) -> tuple[list[float], list[int]]:
    env = gym.make(env_id)
    rets, lens = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, ret, n = False, 0.0, 0
        while not done:
            obs, r, term, trunc, _ = env.step(expert(obs))
            ret, n, done = ret + float(r), n + 1, term or trunc
        rets.append(ret)
        lens.append(n)
    env.close()
    return rets, lens


def train_expert(task: str, run_dir: Path, out_dir: Path | None = None, total_steps: int | None = None,
                 seed: int = 0, threads: int = 1, resume: bool = True) -> dict[str, Any]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(threads)
    if task not in RECIPES:
        raise ValueError(f"no PPO recipe for {task!r}; choose one of {sorted(RECIPES)}")
    rec = RECIPES[task]
    if total_steps is not None:
        rec.total_steps = total_steps
    run_dir.mkdir(parents=True, exist_ok=True)
    pt_path, js_path = expert_paths(task, out_dir)
    pt_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt, vn_path, best_path = run_dir / "ppo_last.zip", run_dir / "vecnorm_last.pkl", run_dir / "best.json"
    log = (run_dir / "train.log").open("a")

    def say(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    venv = make_vec_env(rec.env_id, n_envs=rec.n_envs, seed=seed)
    if resume and ckpt.exists() and vn_path.exists():
        venv = VecNormalize.load(str(vn_path), venv)
        model = PPO.load(str(ckpt), env=venv, device="cpu")
        say(f"resumed at {model.num_timesteps} steps")
    else:
        venv = VecNormalize(venv, gamma=0.99)

        def sched(progress_remaining: float) -> float:
            return rec.lr * max(progress_remaining, rec.lr_floor) if rec.lr_decay else rec.lr

        model = PPO("MlpPolicy", venv, n_steps=rec.n_steps, batch_size=rec.batch_size, n_epochs=rec.n_epochs,
                    learning_rate=sched, gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0,
                    max_grad_norm=0.5, seed=seed, device="cpu", verbose=0,
                    policy_kwargs=dict(net_arch=dict(pi=list(rec.net), vf=list(rec.net)), log_std_init=rec.log_std_init,
                                       activation_fn=torch.nn.Tanh))
    best = json.loads(best_path.read_text()) if (resume and best_path.exists()) else {"return": -float("inf")}
    eval_env = gym.make(rec.env_id)
    t0 = time.time()

    class EvalCb(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_eval = (model.num_timesteps // rec.eval_every + 1) * rec.eval_every

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return True
            self.next_eval += rec.eval_every
            checkpoint()
            return True

    def checkpoint() -> None:
        state = export_state(model, venv, eval_env)
        rets, lens = evaluate_expert(MLPExpert(state), rec.env_id, rec.eval_episodes)
        mean = float(np.mean(rets))
        say(f"steps {model.num_timesteps}: eval return {mean:.1f} (len {np.mean(lens):.0f}), "
            f"{time.time() - t0:.0f}s, best {best['return']:.1f}")
        if mean > best["return"] or not pt_path.exists():
            best.update({"return": mean, "steps": int(model.num_timesteps)})
            torch.save(state, pt_path)
            best_path.write_text(json.dumps(best))
        model.save(str(ckpt))
        venv.save(str(vn_path))

    remaining = rec.total_steps - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=EvalCb(), reset_num_timesteps=False)
    if model.num_timesteps % rec.eval_every != 0 or not pt_path.exists():
        checkpoint()
    expert = MLPExpert(torch.load(pt_path, map_location="cpu", weights_only=True))
    rets, lens = evaluate_expert(expert, rec.env_id, rec.final_episodes)
    info = {
        "task": task, "env_id": rec.env_id, "command": "dopr-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "recipe": asdict(rec), "seed": seed, "best_eval_steps": best.get("steps"), "best_eval_return": best["return"],
        "final_eval_episodes": rec.final_episodes, "final_eval_seed": 10_000, "return_mean": float(np.mean(rets)),
        "return_std": float(np.std(rets)), "returns": rets, "lengths": lens, "total_steps": int(model.num_timesteps),
        "wall_s_last_session": time.time() - t0, "torch": torch.__version__,
    }
    js_path.write_text(json.dumps(info, indent=2, default=float) + "\n")
    say(f"final: {info['return_mean']:.1f} +- {info['return_std']:.1f} over {rec.final_episodes} episodes -> {pt_path}")
    return info
