"""Image policy: per-camera conv encoders with spatial-softmax keypoints, and a flow-matching action-chunk head.

The head is a velocity field ``v(x_t, t | obs)`` on a chunk of ``horizon`` future actions (flattened): trained with
the flow-matching loss on the straight path ``x_t = (1 - t) x_0 + t x_1`` (``x_0`` Gaussian noise, ``x_1`` the
expert's chunk, target ``x_1 - x_0``), sampled by Euler integration from noise in a few steps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.nets import Block, TimeEmbedding


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) feature maps -> (B, 2C) expected image coordinates of each channel (in [-1, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = torch.softmax(x.flatten(2), dim=-1).view(b, c, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        return torch.cat([(attn.sum(2) * xs).sum(-1), (attn.sum(3) * ys).sum(-1)], dim=1)


class ConvEncoder(nn.Module):
    """84x84 RGB -> Conv(4x4, stride 4: patchify) -> Conv(3x3, s2) -> Conv(3x3) -> 1x1 keypoint maps -> spatial
    softmax -> Linear. The patchify stem keeps the convolutions cheap on a CPU (21x21, 10x10, 8x8 maps)."""

    def __init__(self, channels: int = 32, keypoints: int = 32, out: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels // 2, 4, stride=4)
        self.conv2 = nn.Conv2d(channels // 2, channels, 3, stride=2)
        self.conv3 = nn.Conv2d(channels, channels, 3)
        self.keypoints = nn.Conv2d(channels, keypoints, 1)
        self.softmax = SpatialSoftmax()
        self.proj = nn.Linear(2 * keypoints, out)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(img))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        return self.proj(self.softmax(self.keypoints(h)))


class FlowPolicy(nn.Module):
    """Observation (images of ``cameras`` + standardized low-dim vector) -> velocity of an action chunk.

    ``images`` are uint8 (B, H, W, 3) tensors as robomimic stores them; the low-dim normalizer is a fixed buffer
    (``fit_low_dim``). The output layer is named ``head`` (Muon routes it to AdamW, like the other benches).
    """

    def __init__(self, cameras: tuple[str, ...], low_dim: int, act_dim: int, horizon: int, width: int = 256,
                 blocks: int = 2, channels: int = 32, keypoints: int = 32, feat: int = 64) -> None:
        super().__init__()
        self.cameras, self.act_dim, self.horizon = tuple(cameras), act_dim, horizon
        self.encoders = nn.ModuleDict({c: ConvEncoder(channels, keypoints, feat) for c in self.cameras})
        self.register_buffer("low_mean", torch.zeros(low_dim))
        self.register_buffer("low_std", torch.ones(low_dim))
        self.time = TimeEmbedding(32)
        self.inp = nn.Linear(horizon * act_dim + 32 + feat * len(self.cameras) + low_dim, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, horizon * act_dim)

    @torch.no_grad()
    def fit_low_dim(self, low: np.ndarray, floor: float = 1e-2) -> None:
        self.low_mean.copy_(torch.as_tensor(low.mean(0), dtype=torch.float32))
        self.low_std.copy_(torch.as_tensor(low.std(0) + floor, dtype=torch.float32))

    def encode(self, images: dict[str, torch.Tensor], low: torch.Tensor) -> torch.Tensor:
        """The conditioning vector: camera features and the standardized low-dim observation."""
        feats = [self.encoders[c](images[c].permute(0, 3, 1, 2).float() / 255.0) for c in self.cameras]
        return torch.cat([*feats, (low - self.low_mean) / self.low_std], dim=1)

    def velocity(self, cond: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, self.time(t), cond], dim=1))
        for block in self.blocks:
            h = block(h)
        return self.head(F.relu(h))

    def forward(self, images: dict[str, torch.Tensor], low: torch.Tensor, x: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        return self.velocity(self.encode(images, low), x, t)

    def loss(self, images: dict[str, torch.Tensor], low: torch.Tensor, chunk: torch.Tensor, x0: torch.Tensor,
             t: torch.Tensor) -> torch.Tensor:
        """Flow-matching loss (mean squared velocity error per action coordinate) on flattened chunks."""
        x1 = chunk.flatten(1)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return ((self(images, low, xt, t) - (x1 - x0)) ** 2).mean()

    @torch.no_grad()
    def sample(self, images: dict[str, torch.Tensor], low: torch.Tensor, noise: torch.Tensor,
               steps: int) -> torch.Tensor:
        """Euler integration from ``noise`` (B, horizon * act_dim) at t=0 to t=1; returns (B, horizon, act_dim)."""
        cond = self.encode(images, low)
        x = noise.clone()
        for i in range(steps):
            x = x + self.velocity(cond, x, torch.full((len(x),), i / steps)) / steps
        return x.view(len(x), self.horizon, self.act_dim)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
