"""Behavior-cloning policy: fixed observation normalizer + residual ReLU MLP + linear ``head``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: ``--ap-layers``: fnmatch patterns of the :class:`ResidualMLP` modules DoPr leaves to the base optimizer.
AP_EXCLUDE: dict[str, tuple[str, ...]] = {
    "all": (),  # every linear layer (the paper's)
    "first": ("blocks.*", "head"),  # the input layer only: per-batch whitening of the (normalized) observations
    "hidden": ("inp",),  # every layer but the input layer
}


def zca_matrix(obs: np.ndarray, floor: float) -> np.ndarray:
    """``U diag(1 / (sqrt(l) + floor)) U^T`` of the centered covariance ``U diag(l) U^T`` of ``obs``: the ZCA
    whitening map, floored like the standardization (for a diagonal covariance it is ``1 / (std + floor)``)."""
    x = np.asarray(obs, dtype=np.float64)
    x = x - x.mean(0)
    lam, u = np.linalg.eigh(x.T @ x / max(len(x), 1))
    return (u / (np.sqrt(np.clip(lam, 0.0, None)) + floor)) @ u.T


class ObsNormalizer(nn.Module):
    """x -> clip(proj (x - mean) / std, +-clip), ``proj`` the identity unless set (ZCA). Buffers only (never
    trained); the identity map until fitted."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("clip", torch.tensor(float("inf")))
        self.register_buffer("proj", None)  # the ZCA map when whitening (state dicts without it stay loadable)

    @torch.no_grad()
    def fit(self, obs: np.ndarray, std_floor: float, clip: float) -> None:
        self.mean.copy_(torch.as_tensor(obs.mean(0), dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(obs.std(0) + std_floor, dtype=self.std.dtype))
        self.clip.fill_(clip)

    @torch.no_grad()
    def fit_zca(self, obs: np.ndarray, floor: float, clip: float) -> None:
        """Whiten once by the ZCA of ``obs`` (see :func:`zca_matrix`), then clip."""
        self.mean.copy_(torch.as_tensor(np.asarray(obs).mean(0), dtype=self.mean.dtype))
        self.std.fill_(1.0)
        self.proj = torch.as_tensor(zca_matrix(obs, floor), dtype=self.mean.dtype)
        self.clip.fill_(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - self.mean
        if self.proj is not None:
            x = x @ self.proj.T
        return (x / self.std).clamp(-self.clip, self.clip)


class ResBlock(nn.Module):
    """h + fc2(relu(fc1(h)))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(torch.relu(self.fc1(h)))


class ResidualMLP(nn.Module):
    """obs -> normalizer -> Linear(obs, width) -> ReLU -> blocks x [h + fc2(relu(fc1(h)))] -> ReLU -> head."""

    def __init__(self, obs_dim: int, act_dim: int, width: int = 256, blocks: int = 2) -> None:
        super().__init__()
        self.norm = ObsNormalizer(obs_dim)
        self.inp = nn.Linear(obs_dim, width)
        self.blocks = nn.ModuleList(ResBlock(width) for _ in range(blocks))
        self.head = nn.Linear(width, act_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(self.norm(obs)))
        for blk in self.blocks:
            h = blk(h)
        return self.head(torch.relu(h))


class ActPolicy:
    """Callable numpy obs -> action for rollouts (float32 forward, clipped to the action box)."""

    def __init__(self, model: nn.Module, low: np.ndarray, high: np.ndarray) -> None:
        self.model, self.low, self.high = model.eval(), low, high

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32)).unsqueeze(0)
        return np.clip(self.model(x)[0].numpy().astype(np.float64), self.low, self.high)
