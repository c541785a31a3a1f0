"""One run of the manipulation bench: train the flow policy with one arm, roll its EMA weights out at checkpoints.

Every arm with the same seed gets the same initialization, minibatches, image shifts, flow noise and times, the
same validation draws, and the same rollout start states and sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import EVAL_SEED
from ..core.arms import build_optimizer, telemetry
from ..core.checkpoints import at_lowest_val
from ..core.loop import fit
from ..core.nets import EMA
from .envs import PROPRIO_KEYS, RoboEnv
from .experts import Demo
from .policy import FlowPolicy, param_count
from .spec import RoboSpec


@dataclass
class RoboData:
    """Frames of a set of demos: images padded by ``pad`` (replicate), low-dim vectors and action chunks."""

    images: dict[str, torch.Tensor]  # camera -> (N, S + 2 pad, S + 2 pad, 3) uint8
    low: torch.Tensor  # (N, low_dim) float32
    chunks: torch.Tensor  # (N, chunk, act_dim) float32
    pad: int

    def __len__(self) -> int:
        return len(self.low)

    def batch(self, idx: torch.Tensor, dx: torch.Tensor | None = None,
              dy: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Frames ``idx``, cropped at offsets (dx, dy) into the padding (default: centred, i.e. unshifted)."""
        p = self.pad
        out = {}
        for cam, imgs in self.images.items():
            s = imgs.shape[1] - 2 * p
            if dx is None or dy is None or p == 0:
                out[cam] = imgs[idx, p:p + s, p:p + s]
            else:
                out[cam] = torch.stack([imgs[i, y:y + s, x:x + s] for i, x, y in
                                        zip(idx.tolist(), dx.tolist(), dy.tolist())])
        return out, self.low[idx], self.chunks[idx]


def low_dim(obs: dict[str, np.ndarray], keys: tuple[str, ...] = PROPRIO_KEYS) -> np.ndarray:
    """The policy's low-dim input: ``keys`` of (T, d_k) observations concatenated to (T, sum d_k) float32."""
    return np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(len(obs[k]), -1) for k in keys], axis=1)


def make_data(demos: list[Demo], cameras: tuple[str, ...], chunk: int, pad: int) -> RoboData:
    """Stack demos into frames; each frame's target is its next ``chunk`` actions (the last one repeated at the end
    of a demo, as in Diffusion Policy)."""
    chunks = []
    for d in demos:
        t = np.arange(len(d))[:, None] + np.arange(chunk)[None]
        chunks.append(d.actions[np.minimum(t, len(d) - 1)])
    images = {}
    for cam in cameras:
        x = torch.as_tensor(np.concatenate([d.obs[f"{cam}_image"] for d in demos]))
        if pad:  # replicate padding works on floats: pad in blocks to bound the temporary memory
            x = torch.cat([torch.nn.functional.pad(x[i:i + 512].permute(0, 3, 1, 2).float(), (pad,) * 4,
                                                   mode="replicate").to(torch.uint8).permute(0, 2, 3, 1)
                           for i in range(0, len(x), 512)]).contiguous()
        images[cam] = x
    low = np.concatenate([low_dim(d.obs) for d in demos])
    return RoboData(images, torch.as_tensor(low), torch.as_tensor(np.concatenate(chunks), dtype=torch.float32), pad)


@torch.no_grad()
def flow_loss(model: FlowPolicy, data: RoboData, x0: torch.Tensor, t: torch.Tensor, draws: int,
              chunk_size: int = 256) -> float:
    """Flow-matching loss of ``model`` on ``data`` at fixed noise ``x0`` and times ``t`` (``draws`` per frame)."""
    model.eval()
    total, n = 0.0, len(data)
    for i in range(0, n, chunk_size):
        idx = torch.arange(i, min(n, i + chunk_size))
        images, low, chunks = data.batch(idx)
        cond = model.encode(images, low).repeat(draws, 1)
        x1 = chunks.flatten(1).repeat(draws, 1)
        rows = torch.cat([idx + k * n for k in range(draws)])
        xt = (1 - t[rows, None]) * x0[rows] + t[rows, None] * x1
        total += float(((model.velocity(cond, xt, t[rows]) - (x1 - x0[rows])) ** 2).sum())
    return total / (n * draws * data.chunks[0].numel())


def fixed_draws(n: int, dim: int, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n * draws, dim, generator=g), torch.rand(n * draws, generator=g)


@torch.no_grad()
def rollouts(model: FlowPolicy, env: RoboEnv, spec: RoboSpec, episodes: int) -> dict[str, Any]:
    """Closed-loop episodes from the start states of seeds EVAL_SEED, EVAL_SEED + 1, ...: sample a chunk, execute
    its first ``spec.execute`` actions, re-plan; stop at success or ``spec.max_episode_steps``."""
    model.eval()
    successes, lengths = [], []
    dim = model.horizon * model.act_dim
    for k in range(episodes):
        seed = EVAL_SEED + k
        gen = torch.Generator().manual_seed(seed)  # the same sampling noise for every arm
        obs = env.reset(seed)
        queue: list[np.ndarray] = []
        success, steps = False, 0
        while steps < (spec.max_episode_steps or 0):
            steps += 1
            if not queue:
                images = {c: torch.as_tensor(np.ascontiguousarray(obs[f"{c}_image"]))[None] for c in model.cameras}
                low = torch.as_tensor(low_dim({key: np.asarray(obs[key])[None] for key in PROPRIO_KEYS}))
                noise = torch.randn(1, dim, generator=gen)
                plan = model.sample(images, low, noise, spec.euler_steps)[0].clamp(-1.0, 1.0).numpy()
                queue = list(plan[:spec.execute].astype(np.float64))
            obs, _ = env.step(queue.pop(0), images=len(queue) == 0)  # images only where the next plan needs them
            if env.success():
                success = True
                break
        successes.append(success)
        lengths.append(steps)
    return {"success_rate": float(np.mean(successes)) if successes else float("nan"),
            "successes": successes, "lengths": lengths}


def eval_steps(spec: RoboSpec) -> list[int]:
    """Training steps after which the EMA weights are rolled out (evenly spaced, the last is ``spec.steps``)."""
    return sorted({max(1, round(spec.steps * (i + 1) / spec.evals)) for i in range(spec.evals)})


def train_run(arm: str, seed: int, lr: float, spec: RoboSpec, train: RoboData, val: RoboData, env: RoboEnv,
              progress: Any = None) -> dict[str, Any]:
    torch.manual_seed(seed)  # the same initialization for every arm with this seed
    act_dim = train.chunks.shape[2]
    model = FlowPolicy(spec.cameras, train.low.shape[1], act_dim, spec.chunk, spec.width, spec.blocks,
                       spec.channels, spec.keypoints, spec.feat)
    model.fit_low_dim(train.low.numpy())
    ema = EMA(model, spec.ema)  # before the optimizer: DoPr's hooks stay on the trained model only
    opt = build_optimizer(model, arm, lr, spec)
    dim = spec.chunk * act_dim
    val_x0, val_t = fixed_draws(len(val), dim, spec.val_draws, seed=4242)
    n_sub = min(len(train), 1000)
    sub = torch.randperm(len(train), generator=torch.Generator().manual_seed(7))[:n_sub]
    train_sub = RoboData({c: v[sub] for c, v in train.images.items()}, train.low[sub], train.chunks[sub], train.pad)
    sub_x0, sub_t = fixed_draws(n_sub, dim, 1, seed=4343)
    gen = torch.Generator().manual_seed(10_000 + seed)  # the same minibatches, shifts and flow draws for every arm
    checkpoints: list[dict[str, Any]] = []
    train_curve: list[list[float]] = []
    val_curve: list[list[float]] = []

    def loss_at(step: int) -> torch.Tensor:
        model.train()
        idx = torch.randint(0, len(train), (spec.batch,), generator=gen)
        dx = torch.randint(0, 2 * train.pad + 1, (spec.batch,), generator=gen)
        dy = torch.randint(0, 2 * train.pad + 1, (spec.batch,), generator=gen)
        x0 = torch.randn(spec.batch, dim, generator=gen)
        t = torch.rand(spec.batch, generator=gen)
        images, low, chunks = train.batch(idx, dx, dy)
        return model.loss(images, low, chunks, x0, t)

    def after_step(step: int) -> None:
        ema.rate = max(spec.ema, (1 + step) ** -0.75)  # warm-up (as in Diffusion Policy), then the constant rate
        ema.update(model)

    def log(step: int, train_loss: float) -> None:
        train_curve.append([step, train_loss])
        val_curve.append([step, flow_loss(ema.model, val, val_x0, val_t, spec.val_draws)])

    def evaluate(step: int) -> None:
        checkpoints.append({"step": step, "val_loss": val_curve[-1][1],
                            "train_loss": flow_loss(ema.model, train_sub, sub_x0, sub_t, 1),
                            **rollouts(ema.model, env, spec, spec.episodes)})

    evals = eval_steps(spec)
    end = fit(opt, model.parameters(), spec.steps, loss_at, log_every=spec.log_every, log=log, after_step=after_step,
              evaluate_at=evals, evaluate=evaluate, progress=progress)
    diverged = end.diverged
    rec: dict[str, Any] = {"params": param_count(model), "train_curve": train_curve, "val_curve": val_curve,
                           "checkpoints": checkpoints, **end.record(),
                           "eval_s": end.eval_s}
    rec.update(summarize_checkpoints(checkpoints, diverged))
    if not diverged and (stats := telemetry(opt)) is not None:
        rec["dopr_stats"] = stats
    return rec


def summarize_checkpoints(checkpoints: list[dict[str, Any]], diverged: bool) -> dict[str, Any]:
    """Success of the best checkpoint (robomimic's protocol), of the final weights, and of the checkpoint with the
    lowest validation loss (what selecting by validation loss would have picked). A diverged run scores 0."""
    if diverged or not checkpoints:
        nan = float("nan")
        return {"success_best": 0.0, "success_final": 0.0, "success_at_min_val": 0.0, "val_loss": nan,
                "train_loss": nan, "val_loss_min": nan}
    best = max(checkpoints, key=lambda c: c["success_rate"])
    by_val = at_lowest_val(checkpoints)
    return {"success_best": best["success_rate"], "best_step": best["step"],
            "success_final": checkpoints[-1]["success_rate"], "success_at_min_val": by_val["success_rate"],
            "val_loss": checkpoints[-1]["val_loss"], "train_loss": checkpoints[-1]["train_loss"],
            "val_loss_min": by_val["val_loss"]}
