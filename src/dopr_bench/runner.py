"""``dopr-bench run``: every (optimizer, seed) on the same data, resumable, then the summary and plots."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .bc import BCData, parse_arm, train_bc
from .data import DEFAULT_CACHE, Episode, expert_demos, read_minari, rollout
from .policy import ActPolicy
from .report import make_plots, summary_markdown
from .results_io import library_version, save_json, saved_results
from .tasks import EVAL_SEED, TASKS, VAL_SEED, TaskSpec, drift, expert_tag, quick


def resolve_spec(task: str, is_quick: bool, overrides: dict[str, Any]) -> TaskSpec:
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    spec = quick(TASKS[task]) if is_quick else TASKS[task]
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def load_episodes(spec: TaskSpec, dataset: str | None, cache: Path) -> tuple[list[Episode], list[Episode], str, str]:
    """Training and validation demonstrations, the env id to roll out in, and a description of the source."""
    if dataset:
        eps, env_id = read_minari(dataset, root=cache, download=True)
        need = spec.demos + spec.val_demos
        if len(eps) < need:
            raise SystemExit(f"dataset {dataset} has {len(eps)} episodes; {need} needed (--demos + val demos)")
        return eps[:spec.demos], eps[spec.demos:need], env_id or spec.env_id, f"minari:{dataset}"
    from .experts import load_expert

    expert = load_expert(spec.name, spec.env_id)
    tag = expert_tag(spec.name)
    train = expert_demos(spec.name, spec.env_id, expert, spec.demos, 0, tag, cache, progress=True)
    val = expert_demos(spec.name, spec.env_id, expert, spec.val_demos, VAL_SEED, tag, cache, progress=True)
    return train, val, spec.env_id, f"expert:{tag}"


def _stack(eps: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([e.observations[:-1] for e in eps]), np.concatenate([e.actions for e in eps])


def run_bench(task: str, optimizers: list[str], seeds: list[int], out: Path, spec: TaskSpec, *,
              dataset: str | None = None, cache: Path = DEFAULT_CACHE, threads: int = 1, sigma: str | None = None,
              aux_lr: float | None = None, weight_decay: float = 0.0, video: bool = False,
              progress: bool = True, refresh_every: int | None = None,
              max_block: int | None = None, muon_ns_dtype: str | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    torch.set_num_threads(threads)
    for arm in optimizers:
        parse_arm(arm)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "dopr-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if Path(sys.argv[0]).name == "dopr-bench":
        with (out / "COMMAND.txt").open("a") as f:
            f.write(cmd + "\n")
    settings = spec.settings() | {"dataset": dataset, "sigma": sigma or "batch", "aux_lr": aux_lr,
                                  "weight_decay": weight_decay}
    if refresh_every not in (None, 1):  # only when set, so result folders made before the option still resume
        settings["refresh_every"] = refresh_every
    if max_block is not None:
        settings["max_block"] = max_block
    if muon_ns_dtype not in (None, "bfloat16"):  # bfloat16 is how earlier result folders were made: they still resume
        settings["muon_ns_dtype"] = muon_ns_dtype
    train_eps, val_eps, env_id, source = load_episodes(spec, dataset, cache)
    settings["env_id"], settings["source"] = env_id, source
    obs, act = _stack(train_eps)
    vobs, vact = _stack(val_eps)
    mean, std = obs.mean(0), obs.std(0)
    data = BCData(torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32),
                  torch.as_tensor(vobs, dtype=torch.float32), torch.as_tensor(vact, dtype=torch.float32))
    expert_obs = np.concatenate([obs, vobs])

    res_path = out / "results.json"
    results: dict[str, Any] = {"task": task, "settings": settings, "runs": []}
    if (old := saved_results(res_path, settings)) is not None:
        results["runs"] = old["runs"]
    results["n_train_transitions"] = len(obs)
    results["expert_demo_return"] = float(np.mean([e.ret for e in train_eps + val_eps]))
    done = {(r["optimizer"], r["seed"]) for r in results["runs"]}
    todo = [(arm, s) for s in seeds for arm in optimizers if (arm, s) not in done]
    if len(todo) < len(optimizers) * len(seeds):
        print(f"resuming: {len(optimizers) * len(seeds) - len(todo)} finished run(s) found in {res_path}")

    dopr_version = library_version()
    env = gym.make(env_id)
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    cfg = settings | {"standardize": spec.standardize}
    bar = tqdm(todo, desc=f"{task} runs", disable=not progress or not todo)
    for arm, seed in bar:
        bar.set_postfix_str(f"{arm} seed {seed}")
        t0 = time.time()
        with tqdm(total=spec.steps, desc=f"{arm} s{seed} train", leave=False, disable=not progress) as pb:
            model, rec = train_bc(arm, seed, data, cfg, (mean, std), progress=pb)
        t1 = time.time()
        policy = ActPolicy(model, low, high)
        eps = [] if rec["diverged"] else [
            rollout(env, policy, EVAL_SEED + i, spec.max_episode_steps)
            for i in tqdm(range(spec.episodes), desc=f"{arm} s{seed} rollouts", leave=False, disable=not progress)]
        pol_obs = np.concatenate([e.observations for e in eps]) if eps else np.zeros((0, obs.shape[1]))
        run = {"optimizer": arm, "seed": seed, **rec,
               "returns": [e.ret for e in eps], "lengths": [e.length for e in eps],
               "eval_seeds": [EVAL_SEED + i for i in range(len(eps))],
               "drift": drift(expert_obs, pol_obs) if eps else float("nan"),
               "drift_std": drift(expert_obs, pol_obs, mean, std) if eps else float("nan"),
               "eval_s": time.time() - t1, "wall_s": time.time() - t0, "threads": threads,
               "torch": torch.__version__, "dopr": dopr_version}
        results["runs"].append(run)
        save_json(res_path, results)
        bar.write(f"{arm:>12} seed {seed}: val {rec['val_loss']:.3e}  return {np.mean(run['returns'] or [np.nan]):8.1f}"
                  f"  len {np.mean(run['lengths'] or [0]):6.1f}  drift {run['drift_std']:.3g}  ({run['wall_s']:.0f}s)")
        if video:
            from .video import save_model

            save_model(model, out / "models" / f"{arm}-s{seed}.pt")
    env.close()
    results["runs"].sort(key=lambda r: (optimizers.index(r["optimizer"]) if r["optimizer"] in optimizers else 99,
                                        r["seed"]))
    save_json(res_path, results)
    md = summary_markdown(results)
    (out / "summary.md").write_text(md)
    make_plots(results, out)
    if video:
        from .video import side_by_side

        side_by_side(results, out, env_id, low, high, spec.max_episode_steps)
    print(md)
    return results
