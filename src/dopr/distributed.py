"""Collectives for activation statistics under DDP / FSDP2.

Each rank sees its own shard of the batch; the paper's Sigma is the mean over the whole batch, so
the per-rank sums of ``z z^T`` and the row counts are summed over ranks once per refresh (one
flattened all-reduce). Gradients are already averaged by DDP / reduce-scattered by FSDP2, and
``M = G P`` acts on rows of ``G`` independently, so an FSDP2 shard (a block of rows) can be
preconditioned locally with the full ``P``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum_", "is_distributed"]


def is_distributed(process_group: Any = None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1


def all_reduce_sum_(tensors: list[Tensor], process_group: Any = None) -> None:
    """Sum ``tensors`` in place over the ranks of ``process_group`` with one collective."""
    if not tensors or not is_distributed(process_group):
        return
    by_key: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        by_key.setdefault((t.dtype, t.device), []).append(t)
    for bucket in by_key.values():
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=process_group)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
