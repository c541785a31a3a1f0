"""Collectives for activation statistics under DDP / FSDP2.

Each rank sees its own shard of the batch; the paper's Sigma is the mean over the whole batch, so
the per-rank sums of ``z z^T`` and the row counts are summed over ranks once per refresh (one
flattened all-reduce). Gradients are already averaged by DDP / reduce-scattered by FSDP2, and
``M = G P`` acts on rows of ``G`` independently, so an FSDP2 shard (a block of rows) can be
preconditioned locally with the full ``P``.

With ``split_factorization`` each rank factorizes only its share of the groups (balanced by the
``d^3`` cost) and the factors are summed into place over the ranks: one more all-reduce of the same
volume as Sigma's, in exchange for 1/world of the factorization work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from .functional import Factors, factorize

if TYPE_CHECKING:
    from .refresh import Stack

__all__ = ["all_reduce_sum_", "assign_owners", "factorize_across_ranks", "is_distributed"]


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


def assign_owners(costs: list[float], world: int) -> list[int]:
    """Rank that factorizes each item: largest first, each to the least-loaded rank (deterministic)."""
    load = [0.0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owners[i], load[rank] = rank, load[rank] + costs[i]
    return owners


def factorize_across_ranks(stacks: list[Stack], gamma: float, eps: float, process_group: Any = None) -> list[Factors]:
    """:func:`~dopr.functional.factorize` of each stack (see :class:`~dopr.refresh.Stack`), the work split over ranks.

    Every rank must pass the same stacks (the all-reduced Sigma); every rank gets every factor. Entries a
    rank does not own are zeros in its contribution, so the sum over ranks is exactly the owner's factor.
    """
    rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
    costs = [float(s.sigmas.shape[-1]) ** (1 if s.diagonal else 3) for s in stacks for _ in range(s.sigmas.shape[0])]
    owners = iter(assign_owners(costs, world))
    out: list[Factors] = []
    for s in stacks:
        sigmas = s.sigmas
        mine = torch.tensor([next(owners) == rank for _ in range(sigmas.shape[0])], device=sigmas.device)
        kind = "diagonal" if s.diagonal else "cholesky" if s.cholesky else "inverse"
        full = Factors(torch.zeros_like(sigmas), *(torch.zeros(sigmas.shape[0], dtype=sigmas.dtype,
                                                               device=sigmas.device) for _ in range(4)), kind=kind)
        if bool(mine.any()):
            f = factorize(sigmas[mine], gamma, eps=eps, diagonal=s.diagonal, cholesky=s.cholesky,
                          damping=None if s.damping is None else s.damping[mine])
            full.factor[mine], full.damping[mine], full.condition[mine] = f.factor, f.damping, f.condition
            full.ok[mine], full.used_float64[mine] = f.ok.to(sigmas.dtype), f.used_float64.to(sigmas.dtype)
        out.append(full)
    all_reduce_sum_([t for f in out for t in (f.factor, f.damping, f.condition, f.ok, f.used_float64)],
                    process_group)
    for f in out:
        f.ok, f.used_float64 = f.ok > 0.5, f.used_float64 > 0.5
    return out
