"""Refresh steps: from the accumulated statistics of each input group to its new factor.

``Sigma = total / rows`` (or its EMA), then one batched factorization per bucket of equal-size
matrices: full Sigmas of one size, and the diagonal blocks of block-diagonal Sigmas (all blocks of
one size, from any number of groups, go into one call, each block with its whole Sigma's damping).
Groups that kept their rows (fewer rows than columns) are factorized in the Woodbury form.
Failures are returned, not handled: what to fall back to is the preconditioner's policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .functional import (
    Factors,
    LowRankFactor,
    factorize,
    factorize_low_rank,
    pad_blocks_,
    retry_in_float64,
    retry_low_rank_in_float64,
)
from .groups import Group

__all__ = ["Failure", "Stack", "refresh_groups"]


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
                   uses_cholesky: Callable[[Group], bool], factorizer: Factorizer | None = None) -> list[Failure]:
    """Set ``factor``/``kind``/telemetry of each group from its statistics; return the groups that failed.

    ``factorizer`` factorizes a list of stacks (default: :func:`~dopr.functional.factorize` on each, in
    this process; the distributed one splits them over ranks).
    """
    if factorizer is None:
        factorizer = lambda stacks: [  # noqa: E731
            factorize(s.sigmas, gamma, eps=eps, diagonal=s.diagonal, cholesky=s.cholesky, damping=s.damping,
                      retry=False)
            for s in stacks]
    failures: list[Failure] = []
    buckets: dict[tuple, list[tuple[Group, Tensor, Tensor]]] = {}
    low_rank: list[tuple[Group, LowRankFactor]] = []
    for group in groups:
        if group.total is None:
            low_rank.append((group, _low_rank_factor(group, gamma, eps)))
            continue
        sigma = _current_sigma(group, sigma_mode, ema_decay)
        if group.blocks > 1:
            sigma = sigma.clone() if sigma is group.ema else sigma  # the padding must not enter the EMA
            trace = pad_blocks_(sigma, group.dim)
        else:
            trace = (sigma if group.diagonal else sigma.diagonal()).sum()
            sigma = sigma[None]
        key = (sigma.shape[1:], group.diagonal, group.blocks > 1, uses_cholesky(group), sigma.dtype, sigma.device)
        buckets.setdefault(key, []).append((group, sigma, trace))
    stacks = []
    for (_, diagonal, blocked, cholesky, *_), items in buckets.items():
        sigmas = torch.cat([s for _, s, _ in items])
        damping = None
        if blocked:  # every block of a group gets lambda = gamma tr(Sigma) / dim of the whole group
            damping = torch.cat([(gamma * t / g.dim + eps).expand(g.blocks) for g, _, t in items])
        stacks.append(Stack(sigmas, diagonal, cholesky, damping))
    factors = factorizer(stacks)
    # the one device sync of a refresh: whether each factorization worked
    oks = _host_flags([f.ok for f in factors] + [f.ok.reshape(1) for _, f in low_rank])
    for (group, f), ok in zip(low_rank, oks[len(factors):]):
        if not ok[0]:  # rare: redo it in float64
            retry_low_rank_in_float64(f)
            ok[0] = bool(f.ok)
        failures += _set_low_rank(group, f, ok[0])
    for stack, f, ok in zip(stacks, factors, oks):
        if not all(ok):  # rare: redo the failed float32 factorizations in float64
            retry_in_float64(f, stack.sigmas, [i for i, good in enumerate(ok) if not good])
            ok[:] = f.ok.tolist()
    for items, f, ok in zip(buckets.values(), factors, oks):
        offset = 0
        for group, sigma, trace in items:
            count = sigma.shape[0]
            part = slice(offset, offset + count)
            offset += count
            group.refreshes += 1
            group.trace = trace
            if not all(ok[part]):
                failures.append(Failure(group, float(trace), f.kind))
                continue
            group.factor = f.factor[part] if group.blocks > 1 else f.factor[part.start]
            group.kind = f.kind
            group.low_rank_chol = group.low_rank_damping = None
            group.damping, group.condition = f.damping[part.start], f.condition[part].amax()
            group.float64_retries += f.used_float64[part].any()  # a tensor: read when telemetry is
    return failures


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


def _current_sigma(group: Group, sigma_mode: str, ema_decay: float) -> Tensor:
    sigma = group.total / group.rows
    if sigma_mode != "ema":
        return sigma
    if group.ema is None:
        group.ema = sigma.clone()
    else:
        group.ema.mul_(ema_decay).add_(sigma, alpha=1 - ema_decay)
    return group.ema


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
    group.factor, group.kind, group.low_rank_chol, group.low_rank_damping = f.rows, "low_rank", f.chol, f.damping
    group.damping, group.condition = f.damping, f.condition
    group.float64_retries += f.used_float64
    return []
