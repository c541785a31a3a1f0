"""Flow-matching generative bench: ``dopr-bench flow``.

A velocity field ``v(x_t, t)`` is trained with the (rectified) flow-matching loss on 8x8 digits:
``x_t = (1 - t) x_0 + t x_1``, ``x_0 ~ N(0, I)``, target ``x_1 - x_0``. Sampling integrates the
model's own field with Euler steps (the rollout: each step feeds on the model's previous output).
Every arm gets the same data, initialization, minibatches, noise and evaluation. Reported per run:
the validation flow-matching loss (fixed noise and times on held-out digits) and the sample quality
of the EMA weights for several numbers of integration steps.
"""

from __future__ import annotations

import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bc import build_optimizer
from ..nets import Block, TimeEmbedding
from ..policy import EMA
from ..report import arm_order, t_ci
from ..results_io import save_json, saved_results
from .data import evaluator, evaluator_fingerprint, load_digits_split, sample_quality


@dataclass(frozen=True)
class FlowSpec:
    steps: int = 2000
    batch: int = 256
    lr: float = 1e-3
    damping: float = 0.1
    weight_decay: float = 0.0
    width: int = 256
    blocks: int = 3
    ema: float = 0.005
    samples: int = 1000
    integration_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    val_draws: int = 4
    log_every: int = 100


QUICK = dict(steps=300, samples=300, integration_steps=(1, 4, 16), log_every=50)


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


def train_flow(arm: str, seed: int, spec: FlowSpec, train_x: torch.Tensor, val: tuple[torch.Tensor, ...],
               judge: nn.Module, progress: bool = False) -> dict[str, Any]:
    val_x, val_x0, val_t = val
    torch.manual_seed(seed)  # same initialization for every arm with this seed
    model = VelocityField(spec.width, spec.blocks)
    opt = build_optimizer(model, arm, spec.lr, spec.damping, spec.weight_decay, None)
    ema = EMA(model, spec.ema)
    g = torch.Generator().manual_seed(10_000 + seed)  # same minibatches, noise and times for every arm
    curve: list[tuple[int, float]] = []
    start = time.perf_counter()
    it = range(1, spec.steps + 1)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"{arm} seed {seed}", leave=False)
    for step in it:
        idx = torch.randint(0, len(train_x), (spec.batch,), generator=g)
        x0 = torch.randn(spec.batch, 64, generator=g)
        t = torch.rand(spec.batch, generator=g)
        opt.zero_grad()
        loss = flow_loss(model, train_x[idx], x0, t)
        loss.backward()
        opt.step()
        ema.update(model)
        if step % spec.log_every == 0 or step == spec.steps:
            curve.append((step, loss.detach().item()))
    train_time = time.perf_counter() - start
    with torch.no_grad():
        val_loss = float(flow_loss(ema.model, val_x, val_x0, val_t))
        train_loss = float(flow_loss(ema.model, train_x, *_fixed_noise(len(train_x), 1, seed=99)))
    noise = torch.randn(spec.samples, 64, generator=torch.Generator().manual_seed(777))  # shared across runs
    quality = {str(n): sample_quality(judge, sample(ema.model, noise, n), val_x) for n in spec.integration_steps}
    return dict(optimizer=arm, seed=seed, val_loss=val_loss, train_loss=train_loss, train_curve=curve,
                quality=quality, train_seconds=train_time, wall_seconds=time.perf_counter() - start)


def _fixed_noise(n: int, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n * draws, 64, generator=g), torch.rand(n * draws, generator=g)


def run_flow_bench(optimizers: list[str], seeds: list[int], out: Path, spec: FlowSpec, cache: Path,
                   threads: int = 1, progress: bool = True) -> dict[str, Any]:
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    train_x, _, val_x, _ = load_digits_split()
    val_x0, val_t = _fixed_noise(len(val_x), spec.val_draws, seed=4242)
    val = (val_x.repeat(spec.val_draws, 1), val_x0, val_t)
    judge = evaluator(cache)
    path = out / "results.json"
    settings = dict(asdict(spec), task="flow-digits", evaluator=evaluator_fingerprint(judge),
                    train_images=len(train_x), val_images=len(val_x))
    results: dict[str, Any] = {"settings": settings, "runs": []}
    if (old := saved_results(path, settings)) is not None:
        results = old
    results["command"] = " ".join(shlex.quote(a) for a in ["dopr-bench", *sys.argv[1:]])
    done = {(r["optimizer"], r["seed"]) for r in results["runs"]}
    for seed in seeds:
        for arm in optimizers:
            if (arm, seed) in done:
                continue
            run = train_flow(arm, seed, spec, train_x, val, judge, progress)
            results["runs"].append(run)
            save_json(path, results)
            best = min(run["quality"].values(), key=lambda q: q["frechet"])["frechet"]
            print(f"{arm:>14} seed {seed}: val loss {run['val_loss']:.4f}  best Frechet {best:.1f}  "
                  f"({run['wall_seconds']:.0f} s)", flush=True)
    (out / "summary.md").write_text(summary(results))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots(results, out)
    print(summary(results))
    return results


def summary(results: dict[str, Any]) -> str:
    runs, s = results["runs"], results["settings"]
    ns = [str(n) for n in s["integration_steps"]]
    lines = [f"# flow matching on 8x8 digits: {s['steps']} steps, batch {s['batch']}, lr {s['lr']}, "
             f"damping {s['damping']}, {s['samples']} samples, evaluator {s['evaluator']}", "",
             f"Command: `{results.get('command', '')}`", "",
             "Mean ± 95% t-interval over seeds. Frechet distance (lower is better) of EMA samples after N Euler steps.",
             "", "| arm | seeds | val FM loss | " + " | ".join(f"FD N={n}" for n in ns) + " | coverage N=max |",
             "|---|---|---|" + "---|" * len(ns) + "---|"]

    def cell(values: list[float], fmt: str = "{:.2f}") -> str:
        m, h = t_ci(values)
        return fmt.format(m) + (f" ± {fmt.replace('+', '').format(h)}" if np.isfinite(h) else "")

    for arm in arm_order(runs):
        rs = [r for r in runs if r["optimizer"] == arm]
        fds = [cell([r["quality"][n]["frechet"] for r in rs], "{:.1f}") for n in ns]
        cov = cell([r["quality"][ns[-1]]["coverage"] for r in rs], "{:.1f}")
        lines.append(f"| {arm} | {len(rs)} | {cell([r['val_loss'] for r in rs], '{:.4f}')} | "
                     + " | ".join(fds) + f" | {cov} |")
    lines += ["", "Paired per-seed differences DoPr − base (negative is better for both columns):", "",
              "| pair | val FM loss | " + " | ".join(f"FD N={n}" for n in ns) + " |", "|---|---|" + "---|" * len(ns)]
    arms = arm_order(runs)
    for arm in arms:
        if not arm.startswith("dopr-") or arm[5:] not in arms:
            continue
        by_seed = {r["seed"]: r for r in runs if r["optimizer"] == arm[5:]}
        pairs = [(r, by_seed[r["seed"]]) for r in runs if r["optimizer"] == arm and r["seed"] in by_seed]
        if not pairs:
            continue
        dv = cell([a["val_loss"] - b["val_loss"] for a, b in pairs], "{:+.4f}")
        dfd = [cell([a["quality"][n]["frechet"] - b["quality"][n]["frechet"] for a, b in pairs], "{:+.1f}")
               for n in ns]
        lines.append(f"| {arm} − {arm[5:]} (n={len(pairs)}) | {dv} | " + " | ".join(dfd) + " |")
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    arms = arm_order(runs)
    ns = [str(n) for n in results["settings"]["integration_steps"]]
    colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(arms)}
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        rs = [r for r in runs if r["optimizer"] == arm]
        ax[0].scatter([r["val_loss"] for r in rs], [r["quality"][ns[-1]]["frechet"] for r in rs],
                      color=colors[arm], label=arm, marker="o" if arm.startswith("dopr-") else "x")
        fd = np.array([[r["quality"][n]["frechet"] for n in ns] for r in rs])
        ax[1].errorbar([int(n) for n in ns], fd.mean(0), yerr=fd.std(0), color=colors[arm], label=arm, capsize=3)
    ax[0].set(xlabel="validation flow-matching loss", ylabel=f"Frechet distance (N={ns[-1]})",
              title="validation loss vs sample quality")
    ax[1].set(xscale="log", yscale="log", xlabel="Euler steps N", ylabel="Frechet distance",
              title="sample quality vs rollout length")
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "flow_quality.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        steps, losses = zip(*r["train_curve"])
        ax.plot(steps, losses, color=colors[r["optimizer"]], alpha=0.6, label=r["optimizer"] if r["seed"] ==
                min(x["seed"] for x in runs if x["optimizer"] == r["optimizer"]) else None)
    ax.set(yscale="log", xlabel="step", ylabel="train FM loss (minibatch)", title="training curves")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "flow_curves.png", dpi=110)
    plt.close(fig)


def quick(spec: FlowSpec) -> FlowSpec:
    return replace(spec, **QUICK)
