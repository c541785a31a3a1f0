"""Expert policies: an analytic LQR controller for InvertedDoublePendulum and self-trained PPO experts.

PPO experts are stored as ``<task>.pt`` (a flat dict of tensors, loaded with ``torch.load(weights_only=True)``)
plus ``<task>.json`` (the command that made it and its measured return). No pickled code is ever loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

EXPERT_DIR = Path(__file__).resolve().parent


class Expert(Protocol):
    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


class MLPExpert:
    """Deterministic Gaussian-policy mean: normalize obs (VecNormalize statistics), tanh MLP, linear head, clip."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.obs_mean = state["obs_mean"].double().numpy()
        self.obs_std = np.sqrt(state["obs_var"].double().numpy() + float(state["obs_eps"]))
        self.clip_obs = float(state["clip_obs"])
        self.low = state["act_low"].double().numpy()
        self.high = state["act_high"].double().numpy()
        n_hidden = int(state["n_hidden"])
        layers: list[nn.Module] = []
        for i in range(n_hidden):
            w = state[f"hidden.{i}.weight"]
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data.copy_(w)
            lin.bias.data.copy_(state[f"hidden.{i}.bias"])
            layers += [lin, nn.Tanh()]
        w = state["action.weight"]
        head = nn.Linear(w.shape[1], w.shape[0])
        head.weight.data.copy_(w)
        head.bias.data.copy_(state["action.bias"])
        self.net = nn.Sequential(*layers, head).double().eval()

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        return np.clip((obs - self.obs_mean) / self.obs_std, -self.clip_obs, self.clip_obs)

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.normalize(np.asarray(obs, dtype=np.float64)))
        return np.clip(self.net(x).numpy(), self.low, self.high)


def expert_paths(task: str, directory: Path | None = None) -> tuple[Path, Path]:
    d = EXPERT_DIR if directory is None else Path(directory)
    return d / f"{task}.pt", d / f"{task}.json"


def load_mlp_expert(task: str, directory: Path | None = None) -> MLPExpert:
    pt, _ = expert_paths(task, directory)
    if not pt.exists():
        raise FileNotFoundError(f"no expert checkpoint {pt}; make one with `dopr-bench train-expert {task}`")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
        return MLPExpert(state)
    except Exception as err:  # truncated file, foreign pickle, missing or misshapen tensors
        raise ValueError(
            f"expert checkpoint {pt} is unreadable or incomplete ({type(err).__name__}: {err}); restore it with "
            f"`git checkout -- {pt}` or remake it with `dopr-bench train-expert {task}`"
        ) from err


def expert_info(task: str, directory: Path | None = None) -> dict[str, Any]:
    _, js = expert_paths(task, directory)
    return json.loads(js.read_text()) if js.exists() else {}


def load_expert(task: str, env_id: str, directory: Path | None = None) -> Expert:
    """The expert for ``task``: LQR for idp, the committed PPO checkpoint otherwise."""
    if task == "idp":
        from .lqr import lqr_expert

        return lqr_expert(env_id)
    return load_mlp_expert(task, directory)


def expert_tag(task: str) -> str:
    """Cache tag of the expert: 'lqr' for idp, a hash of the checkpoint file for PPO experts."""
    if task == "idp":
        return "lqr"
    import hashlib

    pt, _ = expert_paths(task)
    return "ppo-" + hashlib.sha1(pt.read_bytes()).hexdigest()[:10] if pt.exists() else "ppo-missing"
