"""Refresh steps: from the accumulated statistics of each input group to its new factor.

``Sigma = total / rows`` (or its EMA), then one batched factorization per bucket of equal-size
matrices: full Sigmas of one size, and the diagonal blocks of block-diagonal Sigmas (all blocks of
one size, from any number of groups, go into one call, each block with its whole Sigma's damping).
Groups that kept their rows (fewer rows than columns) are factorized in the Woodbury form.
Failures are returned, not handled: what to fall back to is the preconditioner's policy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .factors import Factor, LowRank, new_factor
from .functional import (
    Factors,
    LowRankFactor,
    _factorize_diagonal,
    factorize_,
    factorize_low_rank,
    pad_blocks_,
    retry_in_float64,
    retry_low_rank_in_float64,
)
from .groups import Group

__all__ = ["Failure", "Stack", "Workspaces", "fall_back", "refresh_groups"]


@dataclass
class Stack:
    """One batched factorization: ``sigmas`` (``B x d x d``, or ``B x d`` diagonals) and, for blocks, their lambdas."""

    sigmas: Tensor
    diagonal: bool
    cholesky: bool
    damping: Tensor | None = None  # B lambdas (blocks); None: factorize computes gamma tr(Sigma)/d + eps


@dataclass
class Failure:
    group: Group
    trace: float
    kind: str


Factorizer = Callable[[list[Stack]], list[Factors]]


def refresh_groups(groups: list[Group], *, gamma: float, eps: float, sigma_mode: str, ema_decay: float,
                   uses_cholesky: Callable[[Group], bool], factorizer: Factorizer | None = None,
                   workspaces: Workspaces | None = None, on_device: bool | None = None) -> list[Failure]:
    """Set ``factor``/``kind``/telemetry of each group from its statistics; return the groups that failed.

    ``on_device`` (capturable): no host read; a failed factorization is replaced on the device by the group's last
    factor (True) or the identity (False, or no last factor), and counted in ``group.fallbacks``; nothing is
    returned. Groups must have their sums (no kept rows).

    ``factorizer`` factorizes a list of stacks (default: :func:`~dopr.functional.factorize_` on each, in
    this process and in the stacks' memory; the distributed one splits them over ranks). ``workspaces`` keeps
    the stacks' memory from one refresh to the next (see :class:`Workspaces`).
    """
    if factorizer is None:
        factorizer = lambda stacks: [  # noqa: E731
            _factorize_diagonal(s.sigmas, gamma, eps, s.damping) if s.diagonal
            else factorize_(s.sigmas, gamma, eps=eps, cholesky=s.cholesky, damping=s.damping)
            for s in stacks]
    workspaces = Workspaces() if workspaces is None else workspaces
    failures: list[Failure] = []
    buckets: dict[tuple, list[tuple[Group, Tensor, float]]] = {}
    low_rank: list[tuple[Group, LowRankFactor]] = []
    for group in groups:
        if group.total is None:
            low_rank.append((group, _low_rank_factor(group, gamma, eps)))
            continue
        source, scale = _current_sigma(group, sigma_mode, ema_decay)
        key = (tuple(source.shape[1:]) if _stacked(group) else tuple(source.shape), group.diagonal,
               group.blocks > 1, uses_cholesky(group), source.dtype, source.device)
        buckets.setdefault(key, []).append((group, source, scale))
    stacks, traces = [], []
    for key, items in buckets.items():
        shape, diagonal, blocked = key[0], key[1], key[2]
        count = sum(_matrices(g) for g, _, _ in items)
        sigmas = workspaces.take((key, tuple(g.members[0] for g, _, _ in items)), (count, *shape),
                                 items[0][1].dtype, items[0][1].device)
        bucket_traces = _fill(sigmas, items)
        damping = None
        if blocked:  # every block of a group gets lambda = gamma tr(Sigma) / dim of the whole group
            damping = torch.cat([(gamma * t / g.dim + eps).expand(g.blocks)
                                 for (g, _, _), t in zip(items, bucket_traces)])
        stacks.append(Stack(sigmas, diagonal, key[3], damping))
        traces.append(bucket_traces)
    workspaces.end_refresh()
    factors = factorizer(stacks)
    if on_device is not None:
        if low_rank:
            raise RuntimeError("a group kept its rows (the Woodbury form) in a capturable refresh")
        for items, bucket_traces, f in zip(buckets.values(), traces, factors):
            _select_on_device(items, bucket_traces, f, keep_last=on_device)
        return []
    # the one device sync of a refresh: whether each factorization worked
    oks = _host_flags([f.ok for f in factors] + [f.ok.reshape(1) for _, f in low_rank])
    for (group, f), ok in zip(low_rank, oks[len(factors):]):
        if not ok[0]:  # rare: redo it in float64
            retry_low_rank_in_float64(f)
            ok[0] = bool(f.ok)
        failures += _set_low_rank(group, f, ok[0])
    for stack, f, ok, items in zip(stacks, factors, oks, buckets.values()):
        if not all(ok):  # rare: redo the failed float32 factorizations in float64, from Sigma built anew
            undamped = torch.empty_like(stack.sigmas)
            _fill(undamped, items)
            retry_in_float64(f, undamped, [i for i, good in enumerate(ok) if not good])
            ok[:] = f.ok.tolist()
    for items, bucket_traces, f, ok in zip(buckets.values(), traces, factors, oks):
        offset = 0
        for (group, _, _), trace in zip(items, bucket_traces):
            part = slice(offset, offset + _matrices(group))
            offset += _matrices(group)
            group.refreshes += 1
            group.trace = trace
            if not all(ok[part]):
                if group.factor is not None:  # the last good factor may live in a workspace the next refresh reuses
                    group.factor = group.factor.clone()
                failures.append(Failure(group, float(trace), f.kind))
                continue
            group.factor = _factor_of(group, f, part)
            group.damping, group.condition = _damping_of(group, f, part), f.condition[part].amax()
            group.float64_retries += f.used_float64[part].any()  # a tensor: read when telemetry is
    return failures


def _select_on_device(items: list[tuple[Group, Tensor, float]], traces: list[Tensor], f: Factors,
                      keep_last: bool) -> None:
    """Each group's new factor where its factorization worked, else its last one (or the identity), chosen on
    the device: ``torch.where`` rather than a host read of the flags."""
    offset = 0
    for (group, _, _), trace in zip(items, traces):
        part = slice(offset, offset + _matrices(group))
        offset += _matrices(group)
        new, ok = _factor_of(group, f, part), f.ok[part] if _stacked(group) else f.ok[part.start]
        last = group.factor
        if not (keep_last and type(last) is type(new) and last.kind == new.kind
                and last.tensor.shape == new.tensor.shape):
            last = new.identity()
        group.factor = new.where(ok, last)
        group.refreshes += 1
        group.fallbacks = (~ok).sum() + group.fallbacks  # a tensor until read
        group.trace = trace
        group.damping, group.condition = _damping_of(group, f, part), f.condition[part].amax()


def _stacked(group: Group) -> bool:
    """Whether the group's Sigma is a stack of matrices (blocks, or the groups of a grouped convolution)."""
    return group.blocks > 1 or group.groups > 1


def _matrices(group: Group) -> int:
    return group.groups if group.groups > 1 else group.blocks


def _factor_of(group: Group, f: Factors, part: slice) -> Factor:
    return new_factor(f.kind, f.factor[part] if _stacked(group) else f.factor[part.start], blocks=group.blocks,
                      groups=group.groups)


def _damping_of(group: Group, f: Factors, part: slice) -> Tensor:
    # a block-diagonal Sigma's blocks share the whole Sigma's lambda; a grouped one's groups each have their own
    return f.damping[part].mean() if group.groups > 1 else f.damping[part.start]


def fall_back(failure: Failure, *, keep_last: bool, damping: float, dtype: torch.dtype,
              device: torch.device) -> None:
    """A group whose factorization failed in float32 and float64 keeps its last factor (``keep_last`` and there is
    one) or takes the identity (the plain gradient, as a factor of ``dtype`` on ``device``); counted and warned."""
    group = failure.group
    group.fallbacks += 1
    kept = keep_last and group.factor is not None
    warnings.warn(
        f"Cholesky of Sigma + lambda I failed in float32 and float64 for layer(s) {group.members} "
        f"(trace of Sigma {failure.trace:.3g}, damping {damping}); "
        f"{'keeping the last good factor' if kept else 'using the plain gradient'} for this step. "
        "Raise damping, or check for activations far from unit scale (e.g. |z| < 1e-15).",
        RuntimeWarning, stacklevel=5,
    )
    if not kept:
        shape = group.sigma_shape()
        eye = torch.ones(shape if group.diagonal else shape[:-1], dtype=dtype, device=device)
        group.factor = new_factor("diagonal" if group.diagonal else failure.kind,
                                  eye if group.diagonal else torch.diag_embed(eye), blocks=group.blocks,
                                  groups=group.groups)


class Workspaces:
    """The memory each bucket of equal-size Sigmas is factorized in, kept from one refresh to the next.

    A factorization overwrites its stack (:func:`~dopr.functional.factorize_`) and the groups' factors are views
    of it, so a bucket alternates between two buffers: the factors of the last refresh stay intact while the next
    one is computed (a group whose factorization fails keeps its last factor, cloned out of the pool). Reusing
    warm memory saves the allocations, page faults and copies of fresh tensors of Sigma's size at every refresh.
    Buckets not refreshed in a refresh are released (their groups' factors keep their memory alive).
    """

    def __init__(self) -> None:
        self._pools: dict[tuple, tuple[list[Tensor], int]] = {}
        self._used: set[tuple] = set()

    def take(self, key: tuple, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        buffers, turn = self._pools.get(key, ([], 0))
        if not buffers or buffers[0].shape != shape:
            buffers, turn = [torch.empty(shape, dtype=dtype, device=device) for _ in range(2)], 0
        self._pools[key] = (buffers, 1 - turn)
        self._used.add(key)
        return buffers[turn]

    def end_refresh(self) -> None:
        self._pools = {k: v for k, v in self._pools.items() if k in self._used}
        self._used = set()

    def clear(self) -> None:
        self._pools.clear()
        self._used.clear()


def _fill(sigmas: Tensor, items: list[tuple[Group, Tensor, float]]) -> list[Tensor]:
    """Write each group's Sigma (``source * scale``) into its rows of ``sigmas``; return their traces."""
    traces, offset = [], 0
    for group, source, scale in items:
        part = sigmas[offset : offset + _matrices(group)] if _stacked(group) else sigmas[offset]
        offset += _matrices(group)
        if torch.compiler.is_compiling():  # out= into a slice is a graph break
            part.copy_(source * scale)
        else:
            torch.mul(source, scale, out=part)
        if group.blocks > 1:
            traces.append(pad_blocks_(part, group.dim))
        elif group.groups > 1:
            traces.append(part.diagonal(dim1=-2, dim2=-1).sum())
        else:
            traces.append(part.sum() if group.diagonal else part.diagonal().sum())
    return traces


def _host_flags(flags: list[Tensor]) -> list[list[bool]]:
    """The boolean vectors ``flags`` on the host, read with one transfer."""
    if not flags:
        return []
    joined = torch.cat(flags).tolist()
    out, offset = [], 0
    for f in flags:
        out.append(joined[offset : offset + f.shape[0]])
        offset += f.shape[0]
    return out


def _current_sigma(group: Group, sigma_mode: str, ema_decay: float) -> tuple[Tensor, float]:
    """This refresh's Sigma as ``(tensor, scale)``: Sigma is ``tensor * scale`` (no temporary of Sigma's size)."""
    if sigma_mode != "ema":
        return group.total, 1.0 / group.rows
    if group.ema is None:
        group.ema = group.total / group.rows
    else:
        group.ema.mul_(ema_decay).add_(group.total, alpha=(1 - ema_decay) / group.rows)
    return group.ema, 1.0


def _low_rank_factor(group: Group, gamma: float, eps: float) -> LowRankFactor:
    z = torch.cat(group.kept)
    if group.bias:
        z = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)], dim=1)
    return factorize_low_rank(z, gamma, eps=eps, retry=False)


def _set_low_rank(group: Group, f: LowRankFactor, ok: bool) -> list[Failure]:
    group.refreshes += 1
    group.trace = f.rows.square().sum() / f.rows.shape[0]
    if not ok:
        return [Failure(group, float(group.trace), "inverse")]
    group.factor = LowRank(f.rows, f.chol, f.damping)
    group.damping, group.condition = f.damping, f.condition
    group.float64_retries += f.used_float64
    return []
