"""The flow-matching bench (``dopr-bench run flow``): a generator of 8x8 digits.

A velocity field ``v(x_t, t)`` is trained with the (rectified) flow-matching loss: ``x_t = (1 - t) x_0 + t x_1``,
``x_0 ~ N(0, I)``, target ``x_1 - x_0``. Sampling integrates the model's own field with Euler steps (the rollout:
each step feeds on the model's previous output). Every arm gets the same data, initialization, minibatches, noise
and evaluation. Reported per run: the validation flow-matching loss (fixed noise and times on held-out digits) and
the sample quality of the EMA weights for several numbers of integration steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.arms import build_optimizer
from ..core.bench import Bench, Metric
from ..core.nets import EMA, Block, TimeEmbedding
from ..core.report import dopr_options
from ..core.spec import Common, opt
from .report import make_plots, summary_markdown


@dataclass(frozen=True)
class FlowSpec(Common):
    seeds: int = opt(5, "number of seeds", setting=False)
    steps: int = opt(2000, "training steps")
    batch: int = opt(256, "minibatch size")
    width: int = opt(256, "hidden width of the velocity field")
    blocks: int = opt(3, "residual blocks")
    ema: float = opt(0.005, "EMA rate of the evaluated weights")
    samples: int = opt(1000, "generated samples per evaluation")
    integration_steps: tuple[int, ...] = opt((1, 2, 4, 8, 16, 32), "Euler steps at which samples are judged")
    val_draws: int = opt(4, "noise/time draws per validation image")
    log_every: int = opt(100, "steps between logged losses")


QUICK: dict[str, Any] = dict(steps=300, samples=300, integration_steps=(1, 4, 16), log_every=50)


def resolve(task: str, quick: bool, overrides: dict[str, Any]) -> FlowSpec:
    if task != "digits":
        raise SystemExit(f"unknown flow task {task!r}; the flow bench has one task: digits")
    return replace(FlowSpec(**(QUICK if quick else {})), **overrides)


def planned(spec: FlowSpec, task: str) -> dict[str, Any]:
    return spec.settings() | {"task": "flow-digits"}


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
    from .data import sample_quality

    val_x, val_x0, val_t = val
    torch.manual_seed(seed)  # same initialization for every arm with this seed
    model = VelocityField(spec.width, spec.blocks)
    opt_ = build_optimizer(model, arm, lr, spec)
    ema = EMA(model, spec.ema)
    g = torch.Generator().manual_seed(10_000 + seed)  # same minibatches, noise and times for every arm
    curve: list[tuple[int, float]] = []
    diverged = False
    start = time.perf_counter()
    for step in range(1, spec.steps + 1):
        idx = torch.randint(0, len(train_x), (spec.batch,), generator=g)
        x0 = torch.randn(spec.batch, 64, generator=g)
        t = torch.rand(spec.batch, generator=g)
        opt_.zero_grad()
        loss = flow_loss(model, train_x[idx], x0, t)
        loss.backward()
        opt_.step()
        ema.update(model)
        if not torch.isfinite(loss.detach()):
            diverged = True
            break
        if step % spec.log_every == 0 or step == spec.steps:
            curve.append((step, loss.detach().item()))
        if progress is not None:
            progress.update(1)
    train_s = time.perf_counter() - start
    with torch.no_grad():
        val_loss = float(flow_loss(ema.model, val_x, val_x0, val_t))
        train_loss = float(flow_loss(ema.model, train_x, *fixed_noise(len(train_x), 1, seed=99)))
    noise = torch.randn(spec.samples, 64, generator=torch.Generator().manual_seed(777))  # shared across runs
    quality = {str(n): sample_quality(judge, sample(ema.model, noise, n), val_x) for n in spec.integration_steps}
    return dict(val_loss=val_loss, train_loss=train_loss, train_curve=curve, quality=quality, train_s=train_s,
                diverged=diverged)


class Prepared:
    def __init__(self, spec: FlowSpec, task: str, cache: Path) -> None:
        from .data import evaluator, evaluator_fingerprint, load_digits_split

        self.spec = spec
        self.train_x, _, val_x, _ = load_digits_split()
        val_x0, val_t = fixed_noise(len(val_x), spec.val_draws, seed=4242)
        self.val = (val_x.repeat(spec.val_draws, 1), val_x0, val_t)
        self.judge = evaluator(cache)
        self.settings = {"evaluator": evaluator_fingerprint(self.judge), "train_images": len(self.train_x),
                         "val_images": len(val_x)}

    def info(self, old: dict[str, Any]) -> dict[str, Any]:
        return {}

    def run(self, arm: str, seed: int, lr: float, progress: Any) -> dict[str, Any]:
        return train_flow(arm, seed, lr, self.spec, self.train_x, self.val, self.judge, progress)

    def line(self, run: dict[str, Any]) -> str:
        best = min(q["frechet"] for q in run["quality"].values())
        return (f"{run['optimizer']:>14} lr {run['lr']:g} seed {run['seed']}: val loss {run['val_loss']:.4f}  best "
                f"Frechet {best:.1f}  ({run['wall_s']:.0f} s)")

    def close(self, results: dict[str, Any], out: Path) -> None:
        pass


def headline(results: dict[str, Any]) -> str:
    s = results["settings"]
    return f"8x8 digits, {s['steps']} steps, FD after {max(s['integration_steps'])} Euler steps" + dopr_options(s)


BENCH = Bench(
    name="flow", help="flow-matching generator of 8x8 digits: sample quality against the number of Euler steps",
    spec_type=FlowSpec, tasks=("digits",), default_task="digits", resolve=resolve, planned=planned,
    data_keys=frozenset({"evaluator", "train_images", "val_images"}), prepare=Prepared,
    val=Metric("val FM loss", lambda r: r["val_loss"], False, lambda v: f"{v:.4f}"),
    test=Metric("FD", lambda r: r["quality"][max(r["quality"], key=int)]["frechet"], False, lambda v: f"{v:.1f}"),
    summary=summary_markdown, plots=make_plots, headline=headline, out_name=lambda task, spec: "flow")
