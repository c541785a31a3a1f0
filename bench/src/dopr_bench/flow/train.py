"""One flow-matching run: the velocity field, its loss and Euler sampler, and the training of one arm."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.arms import build_optimizer
from ..core.loop import fit
from ..core.nets import EMA, Block, TimeEmbedding
from .data import sample_quality
from .spec import FlowSpec


class VelocityField(nn.Module):
    """Residual MLP on the 64 pixels and a sinusoidal embedding of t; output layer named ``head``."""

    def __init__(self, width: int = 256, blocks: int = 3) -> None:
        super().__init__()
        self.time = TimeEmbedding()
        self.inp = nn.Linear(64 + 16, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, 64)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, self.time(t)], dim=1))
        for block in self.blocks:
            h = block(h)
        return self.head(torch.relu(h))


def flow_loss(model: nn.Module, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    return ((model(xt, t) - (x1 - x0)) ** 2).mean()


@torch.no_grad()
def sample(model: nn.Module, noise: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Euler integration of the model's velocity field from t=0 (noise) to t=1."""
    x = noise.clone()
    for i in range(n_steps):
        t = torch.full((len(x),), i / n_steps)
        x = x + model(x, t) / n_steps
    return x


def fixed_noise(n: int, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n * draws, 64, generator=g), torch.rand(n * draws, generator=g)


def train_flow(arm: str, seed: int, lr: float, spec: FlowSpec, train_x: torch.Tensor, val: tuple[torch.Tensor, ...],
               judge: nn.Module, progress: Any = None) -> dict[str, Any]:
    val_x, val_x0, val_t = val
    torch.manual_seed(seed)  # same initialization for every arm with this seed
    model = VelocityField(spec.width, spec.blocks)
    opt = build_optimizer(model, arm, lr, spec)
    ema = EMA(model, spec.ema)
    g = torch.Generator().manual_seed(10_000 + seed)  # same minibatches, noise and times for every arm
    curve: list[list[float]] = []

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(train_x), (spec.batch,), generator=g)
        x0 = torch.randn(spec.batch, 64, generator=g)
        t = torch.rand(spec.batch, generator=g)
        return flow_loss(model, train_x[idx], x0, t)

    end = fit(opt, model.parameters(), spec.steps, loss_at, log_every=spec.log_every,
              log=lambda step, loss: curve.append([step, loss]), after_step=lambda step: ema.update(model),
              progress=progress)
    if end.diverged:  # scored as failed, not evaluated (every bench alike)
        nan = float("nan")
        failed = {str(n): dict.fromkeys(("frechet", "coverage", "kl_uniform", "confidence"), nan)
                  for n in spec.integration_steps}
        return dict(val_loss=nan, train_loss=nan, train_curve=curve, quality=failed, **end.record())
    with torch.no_grad():
        val_loss = float(flow_loss(ema.model, val_x, val_x0, val_t))
        train_loss = float(flow_loss(ema.model, train_x, *fixed_noise(len(train_x), 1, seed=99)))
    noise = torch.randn(spec.samples, 64, generator=torch.Generator().manual_seed(777))  # shared across runs
    quality = {str(n): sample_quality(judge, sample(ema.model, noise, n), val_x) for n in spec.integration_steps}
    return dict(val_loss=val_loss, train_loss=train_loss, train_curve=curve, quality=quality, **end.record())
