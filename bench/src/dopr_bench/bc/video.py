"""``--video``: side-by-side GIFs of base and DoPr policies rolled out from the same start state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import EVAL_SEED
from .policy import ActPolicy, ResidualMLP


def save_model(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def load_model(path: Path, width: int, blocks: int) -> ResidualMLP:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = ResidualMLP(state["inp.weight"].shape[1], state["head.weight"].shape[0], width, blocks)
    model.load_state_dict(state)
    return model.eval()


def _frames(env_id: str, policy: ActPolicy, seed: int, max_steps: int, size: int) -> list[np.ndarray]:
    import gymnasium as gym

    env = gym.make(env_id, render_mode="rgb_array", width=size, height=size)
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    for _ in range(max_steps):
        obs, _, term, trunc, _ = env.step(policy(obs).astype(env.action_space.dtype))
        frames.append(env.render())
        if term or trunc:
            break
    env.close()
    return frames


def side_by_side(results: dict[str, Any], out: Path, env_id: str, low: np.ndarray, high: np.ndarray,
                 max_steps: int | None, size: int = 240, max_frames: int = 300, every: int = 2) -> list[Path]:
    """One GIF per (base, DoPr) pair: left base, right DoPr, same env seed; frames end when an episode ends."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import imageio.v2 as imageio

    s = results["settings"]
    arms = {r["optimizer"] for r in results["runs"]}
    paths = []
    for arm in sorted(a for a in arms if a.startswith("dopr-") and a[5:] in arms):
        seeds = sorted(r["seed"] for r in results["runs"] if r["optimizer"] == arm
                       and (out / "models" / f"{arm}-s{r['seed']}.pt").exists()
                       and (out / "models" / f"{arm[5:]}-s{r['seed']}.pt").exists())
        if not seeds:
            continue
        seed = seeds[0]
        clips = []
        for a in (arm[5:], arm):
            model = load_model(out / "models" / f"{a}-s{seed}.pt", s["width"], s["blocks"])
            clips.append(_frames(env_id, ActPolicy(model, low, high), EVAL_SEED, min(max_steps or max_frames,
                                                                                    max_frames), size))
        n = max(len(c) for c in clips)
        clips = [c + [c[-1]] * (n - len(c)) for c in clips]
        frames = [np.concatenate([a, np.full((size, 4, 3), 255, np.uint8), b], axis=1)
                  for a, b in zip(clips[0][::every], clips[1][::every], strict=True)]
        path = out / f"video_{arm[5:]}_vs_{arm}_seed{seed}.gif"
        imageio.mimsave(path, frames, duration=0.04 * every, loop=0)
        paths.append(path)
        print(f"wrote {path} (left {arm[5:]}, right {arm})")
    return paths
