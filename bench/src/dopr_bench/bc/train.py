"""One behavior-cloning run: build the arm's optimizer, train with L2 loss, evaluate the EMA weights (final, and where
the logged validation loss was lowest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.arms import build_optimizer, telemetry
from ..core.checkpoints import LowestVal
from ..core.loop import fit
from ..core.nets import EMA
from .policy import AP_EXCLUDE, ResidualMLP
from .spec import BCSpec


@dataclass
class BCData:
    obs: torch.Tensor
    act: torch.Tensor
    val_obs: torch.Tensor
    val_act: torch.Tensor


@torch.no_grad()
def mse(model: nn.Module, obs: torch.Tensor, act: torch.Tensor, chunk: int = 8192) -> float:
    total = 0.0
    for i in range(0, len(obs), chunk):
        total += float(((model(obs[i:i + chunk]) - act[i:i + chunk]) ** 2).sum())
    return total / act.numel()


def train_bc(arm: str, seed: int, lr: float, data: BCData, spec: BCSpec,
             obs_stats: tuple[np.ndarray, np.ndarray] | None, progress: Any = None,
             lowest: LowestVal | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train one policy; returns the EMA model and a record (loss curves, final losses, wall time). ``lowest``, if
    given, keeps the EMA weights where the logged validation loss was lowest (the record gets that loss and step)."""
    obs_dim, act_dim = data.obs.shape[1], data.act.shape[1]
    torch.manual_seed(seed)  # same init for every arm with this seed
    model = ResidualMLP(obs_dim, act_dim, spec.width, spec.blocks)
    if spec.zca:
        model.norm.fit_zca(data.obs.double().numpy(), spec.std_floor, spec.clip)
    elif spec.standardize and obs_stats is not None:
        mean, std = obs_stats
        model.norm.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        model.norm.std.copy_(torch.as_tensor(std + spec.std_floor, dtype=torch.float32))
        model.norm.clip.fill_(spec.clip)
    ema = EMA(model, spec.ema)
    opt = build_optimizer(model, arm, lr, spec, exclude=AP_EXCLUDE[spec.ap_layers])
    gen = torch.Generator().manual_seed(10_000 + seed)  # same minibatch order for every arm with this seed
    n, batch = len(data.obs), min(spec.batch, len(data.obs))
    train_curve: list[list[float]] = []
    val_curve: list[list[float]] = []

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(0, n, (batch,), generator=gen)
        return ((model(data.obs[idx]) - data.act[idx]) ** 2).mean()

    def log(step: int, train_loss: float) -> None:
        train_curve.append([step, train_loss])
        val_curve.append([step, mse(ema.model, data.val_obs, data.val_act)])
        if lowest is not None:
            lowest.offer(step, val_curve[-1][1], ema.model)

    model.train()
    end = fit(opt, model.parameters(), spec.steps, loss_at, log_every=spec.log_every, log=log,
              after_step=lambda step: ema.update(model), progress=progress)
    diverged = end.diverged
    ema.model.eval()
    nan = float("nan")
    rec: dict[str, Any] = {
        "train_curve": train_curve,
        "val_curve": val_curve,
        "train_loss": mse(ema.model, data.obs, data.act) if not diverged else nan,
        "val_loss": mse(ema.model, data.val_obs, data.val_act) if not diverged else nan,
        "train_loss_raw_weights": mse(model.eval(), data.obs, data.act) if not diverged else nan,
        **end.record(),
    }
    if lowest is not None:  # the same EMA weights and loss as val_loss where the lowest is the last step
        rec["val_loss_min"] = lowest.val_loss if not diverged and lowest.step is not None else nan
        rec["min_val_step"] = lowest.step
    if hasattr(opt, "preconditioner"):  # a DoPr arm: the layers that got AP (the --ap-layers ablation)
        got = {id(p) for p in opt.preconditioner.preconditioned_parameters()}
        rec["preconditioned"] = [name for name, m in model.named_modules()
                                 if any(id(p) in got for p in m.parameters(recurse=False))]
    if not diverged and (stats := telemetry(opt)) is not None:
        rec["dopr_stats"] = stats
    return ema.model, rec
