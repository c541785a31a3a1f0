"""A convolution's receptive fields as rows: the ``Z`` of a convolution layer (``dopr.adapters.conv``), also formed
inside a compiled backward (``dopr.sigma_tap``). Imports nothing of DoPr, so both can use it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["patches"]


def patches(x: Tensor, kernel: tuple[int, ...], dilation: tuple[int, ...], pads: list[tuple[int, int]],
            stride: tuple[int, ...], flip: bool = False, select: Tensor | None = None, groups: int = 1) -> Tensor:
    """All receptive fields of ``x`` (``N x C x *spatial``) as rows ``(N * positions) x (C * prod(kernel))``.

    With ``groups > 1`` (a grouped convolution): ``groups x (N * positions) x (C / groups * prod(kernel))``, group
    g's channels, formed in that layout by one copy (a batched product reads it as is).

    ``pads`` holds ``(before, after)`` per spatial dim (negative values crop). Columns are in
    ``(C, k_1, ..., k_s)`` order, the order of a flattened convolution kernel; ``flip`` reverses each
    kernel axis. Works for any number of spatial dims (``F.unfold`` only does two). ``select`` (row
    indices): only those rows, gathered from the windows' view without forming the others.
    """
    spatial = len(kernel)
    flat_pads = [p for before_after in reversed(pads) for p in before_after]
    if any(flat_pads):
        x = F.pad(x, flat_pads)
    for i, (k, d, s) in enumerate(zip(kernel, dilation, stride)):
        span = d * (k - 1) + 1
        x = x.unfold(2 + i, span, s)  # windows as a new last dim
        if d > 1:
            x = x[..., ::d]
    # x: N x C x o_1..o_s x k_1..k_s -> (N, o_1..o_s) x (C, k_1..k_s)
    c = x.shape[1]
    if select is not None:
        where = torch.unravel_index(select, (x.shape[0], *x.shape[2:2 + spatial]))
        rows = x[(where[0], slice(None), *where[1:])]  # count x C x k_1..k_s
        rows = rows.flip(list(range(2, 2 + spatial))) if flip else rows
        if groups > 1:  # count x g x C/g x k.. -> g x count x (C/g, k..)
            return rows.unflatten(1, (groups, c // groups)).transpose(0, 1).reshape(groups, rows.shape[0], -1)
        return rows.reshape(-1, c * math.prod(kernel))
    if flip:
        x = x.flip(list(range(2 + spatial, 2 + 2 * spatial)))
    if groups > 1:  # N x g x C/g x o.. x k.. -> g x (N, o..) x (C/g, k..)
        x = x.unflatten(1, (groups, c // groups))
        order = [1, 0, *range(3, 3 + spatial), 2, *range(3 + spatial, 3 + 2 * spatial)]
        return x.permute(order).reshape(groups, -1, c // groups * math.prod(kernel))
    order = [0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial)]
    return x.permute(order).reshape(-1, c * math.prod(kernel))
