"""Modules shared by the benches: the EMA of weights that every bench evaluates, and the time embedding and
residual block of the flow-matching models (digits generator, robot action chunks)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class TimeEmbedding(nn.Module):
    """t in [0, 1] (``B``) -> ``B x dim`` sines and cosines at log-spaced frequencies 1..100 (times pi)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), dim // 2)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.freqs[None] * math.pi
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class Block(nn.Module):
    """Pre-activation residual block: h + fc2(relu(fc1(relu(h))))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(torch.relu(self.fc1(torch.relu(h))))


class EMA:
    """Exponential moving average of a model's parameters: ema <- (1 - rate) ema + rate * params."""

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.rate = rate
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], self.rate)
