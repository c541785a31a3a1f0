"""One behavior-cloning run: build the arm's optimizer, train with L2 loss, evaluate the EMA weights."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from .policy import EMA, ResidualMLP

BASE_NAMES = ("adamw", "adam", "sgd", "signum", "muon", "adamuon")


def parse_arm(arm: str) -> tuple[str, bool]:
    """``"dopr-muon"`` -> (``"muon"``, True); ``"muon"`` -> (``"muon"``, False)."""
    dopr = arm.startswith("dopr-")
    base = arm[5:] if dopr else arm
    if base not in BASE_NAMES:
        raise ValueError(f"unknown arm {arm!r}: use one of {list(BASE_NAMES)}, optionally prefixed with 'dopr-'")
    return base, dopr


class MultiOptimizer:
    """Steps several optimizers as one (the plain arms: the same routing as DoPr, without AP)."""

    def __init__(self, bases: list[tuple[str, Optimizer]]) -> None:
        self.bases = bases

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, opt in self.bases:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for _, opt in self.bases:
            opt.step()


def base_kwargs_for(base: str, weight_decay: float, muon_ns_dtype: str | None = None) -> dict[str, Any]:
    kw: dict[str, Any] = {"weight_decay": weight_decay}
    if base == "muon":
        kw["adjust_lr_fn"] = "match_rms_adamw"  # update RMS 0.2 like AdamW, so one lr scale serves every base
        if muon_ns_dtype is not None:  # None: torch's bfloat16 Newton-Schulz
            kw["ns_dtype"] = getattr(torch, muon_ns_dtype)
    return kw


def build_optimizer(model: nn.Module, arm: str, lr: float, damping: float, weight_decay: float,
                    aux_lr: float | None, dopr_kwargs: dict[str, Any] | None = None,
                    muon_ns_dtype: str | None = None) -> Any:
    from dopr import DoPr
    from dopr.routing import DEFAULT_AUX_PATTERNS, build_bases

    base, use_dopr = parse_arm(arm)
    kw = base_kwargs_for(base, weight_decay, muon_ns_dtype)
    aux_kwargs = {"weight_decay": weight_decay}
    if use_dopr:
        return DoPr(model, base=base, lr=lr, damping=damping, aux_lr=aux_lr, aux_kwargs=aux_kwargs,
                    **(dopr_kwargs or {}), **kw)
    bases, _ = build_bases(model, base, lr, kw, aux_lr, aux_kwargs, DEFAULT_AUX_PATTERNS)
    return MultiOptimizer(bases)


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


def train_bc(arm: str, seed: int, data: BCData, cfg: dict[str, Any], obs_stats: tuple[np.ndarray, np.ndarray] | None,
             progress: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train one policy; returns the EMA model and a record (loss curves, final losses, wall time).

    ``cfg`` keys: width, blocks, steps, batch, lr, damping, weight_decay, aux_lr, ema, std_floor, clip,
    standardize, log_every, sigma, and optionally refresh_every, max_block and muon_ns_dtype.
    """
    obs_dim, act_dim = data.obs.shape[1], data.act.shape[1]
    torch.manual_seed(seed)  # same init for every arm with this seed
    model = ResidualMLP(obs_dim, act_dim, cfg["width"], cfg["blocks"])
    if cfg["standardize"] and obs_stats is not None:
        mean, std = obs_stats
        model.norm.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        model.norm.std.copy_(torch.as_tensor(std + cfg["std_floor"], dtype=torch.float32))
        model.norm.clip.fill_(cfg["clip"])
    ema = EMA(model, cfg["ema"])
    dopr_kwargs = {k: cfg[k] for k in ("sigma", "refresh_every", "max_block") if cfg.get(k)} or None
    opt = build_optimizer(model, arm, cfg["lr"], cfg["damping"], cfg["weight_decay"], cfg["aux_lr"], dopr_kwargs,
                          cfg.get("muon_ns_dtype"))
    gen = torch.Generator().manual_seed(10_000 + seed)  # same minibatch order for every arm with this seed
    n, steps, batch = len(data.obs), cfg["steps"], min(cfg["batch"], len(data.obs))
    log_every = max(1, cfg["log_every"])
    train_curve: list[list[float]] = []
    val_curve: list[list[float]] = []
    running, count = 0.0, 0
    t0 = time.time()
    diverged = False
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch,), generator=gen)
        opt.zero_grad()
        loss = ((model(data.obs[idx]) - data.act[idx]) ** 2).mean()
        loss.backward()
        opt.step()
        ema.update(model)
        lv = float(loss.detach())
        if not np.isfinite(lv):
            diverged = True
            break
        running, count = running + lv, count + 1
        if step % log_every == 0 or step == steps:
            train_curve.append([step, running / count])
            val_curve.append([step, mse(ema.model, data.val_obs, data.val_act)])
            running, count = 0.0, 0
        if progress is not None:
            progress.update(1)
    train_s = time.time() - t0
    ema.model.eval()
    rec = {
        "train_curve": train_curve,
        "val_curve": val_curve,
        "train_loss": mse(ema.model, data.obs, data.act) if not diverged else float("nan"),
        "val_loss": mse(ema.model, data.val_obs, data.val_act) if not diverged else float("nan"),
        "train_loss_raw_weights": mse(model.eval(), data.obs, data.act) if not diverged else float("nan"),
        "diverged": diverged,
        "train_s": train_s,
    }
    if hasattr(opt, "stats") and not diverged:
        try:
            st = opt.stats()
            rec["dopr_stats"] = {k: {kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, str))}
                                 for k, v in st.items()}
        except Exception:  # telemetry is optional
            pass
    return ema.model, rec
