"""Behavior-cloning policy: fixed observation normalizer + residual ReLU MLP + linear ``head``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ObsNormalizer(nn.Module):
    """x -> clip((x - mean) / std, +-clip). Buffers only (never trained); identity when ``enabled`` is False."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("clip", torch.tensor(float("inf")))

    @torch.no_grad()
    def fit(self, obs: np.ndarray, std_floor: float, clip: float) -> None:
        self.mean.copy_(torch.as_tensor(obs.mean(0), dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(obs.std(0) + std_floor, dtype=self.std.dtype))
        self.clip.fill_(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).clamp(-self.clip, self.clip)


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
