"""Sigma inside autograd, for compiled graphs (docs/design-capture.md, decision 1).

Under ``torch.compile`` a tapped read (:mod:`dopr.tap`) cannot run the eager bookkeeping (pending sums, a hook that
commits them when backward reaches the output): Dynamo would break the graph there. Instead the read's output goes
through :class:`SigmaTap`, an identity whose backward returns the statistics of the rows it saved as the gradient
of a *phantom*, a leaf that DoPr owns per layer. Autograd then sums them in ``phantom.grad`` exactly when, and as
often as, backward runs through the layer: forwards whose output is never backpropagated do not count,
accumulation sums, and an activation-checkpointing recompute counts once. The step moves ``phantom.grad`` into the
layer's group (:func:`take`), and ``zero_grad`` clears it with the statistics it belongs to.

A phantom's gradient carries the row count with the sums, so the graph needs no host read:

* a Linear layer (``d_in`` inputs): ``[z 1]^T [z 1]``, ``(d_in + 1) x (d_in + 1)``; the last diagonal entry is the
  number of rows, the last row and column the bias column of Sigma;
* an Embedding (``V`` rows): the counts of the ids read, then their number, ``V + 1``;
* a convolution: as a Linear layer over its patches (``C_in * prod(kernel)`` inputs), formed from the saved input
  in backward; a grouped one: ``groups x (d + 1) x (d + 1)``, one such sum per group.

The phantom itself is a one-element tensor expanded to that shape (no memory of Sigma's size until a backward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .functional import grouped_second_moment_sum, symmetric_gram
from .unfold import patches

__all__ = ["BankSigmaTap", "SigmaTap", "bank_second_moments", "phantom", "take"]


class SigmaTap(torch.autograd.Function):
    """``SigmaTap.apply(out, rows, phantom, unfolding=None)``: ``out`` unchanged; backward adds the statistics of
    ``rows`` (an ``n x d_in`` matrix, ``n`` ids for an embedding, or a convolution's input whose patches, by
    :func:`~dopr.unfold.patches` with the arguments ``unfolding``, are the rows) to ``phantom.grad``."""

    @staticmethod
    def forward(out: Tensor, rows: Tensor, phantom: Tensor, unfolding: tuple | None = None) -> Tensor:
        # a copy, not a view: models change a layer's output in place (Llama 4 adds its shared expert with add_,
        # MobileBERT its bias with +=), which autograd forbids on a custom Function's view; inside a compiled graph
        # the copy fuses into the output's pointwise consumer
        return out.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[1])  # a convolution's input, not its patches: formed in backward only
        ctx.shape, ctx.dtype = inputs[2].shape, inputs[2].dtype
        ctx.unfolding = inputs[3] if len(inputs) > 3 else None

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, Tensor, None]:
        (rows,) = ctx.saved_tensors
        if ctx.unfolding is not None:
            kernel = ctx.unfolding[0]
            rows = patches(rows if rows.ndim == len(kernel) + 2 else rows.unsqueeze(0), *ctx.unfolding)
        if len(ctx.shape) == 1:  # an embedding: the counts of the ids, then how many there were
            ids = rows.reshape(-1)
            counts = torch.zeros(ctx.shape, dtype=ctx.dtype, device=rows.device)
            counts.index_add_(0, ids, torch.ones(ids.shape[0], dtype=ctx.dtype, device=rows.device))
            counts[-1] = ids.shape[0]
            return grad, None, counts, None
        if len(ctx.shape) == 3:  # a grouped convolution: groups x n x d rows, one sum per group
            return grad, None, grouped_second_moment_sum(rows.to(ctx.dtype), augment_bias=True), None
        z = rows.reshape(-1, ctx.shape[0] - 1).to(ctx.dtype)
        col = z.sum(dim=0)
        n = torch.full((1,), z.shape[0], dtype=ctx.dtype, device=z.device)
        gram = symmetric_gram(z)  # out of place, so the compiler keeps library GEMMs
        stats = torch.cat([torch.cat([gram, col[:, None]], dim=1), torch.cat([col, n])[None]], dim=0)
        return grad, None, stats, None


class BankSigmaTap(torch.autograd.Function):
    """``BankSigmaTap.apply(out, rows, offs, phantom)``: ``out`` unchanged; backward adds each expert's
    ``[z 1]^T [z 1]`` to ``phantom.grad`` (``E x (d_in + 1) x (d_in + 1)``), expert ``e`` owning rows
    ``offs[e-1]:offs[e]`` of ``rows`` (a bank of experts read by one ``grouped_mm``, the rows sorted by expert).
    No host read: one grouped GEMM where the kernel takes the dtype (compiled: bfloat16 only), else a one-hot
    contraction (``E x n x d`` work and memory in backward)."""

    @staticmethod
    def forward(out: Tensor, rows: Tensor, offs: Tensor, phantom: Tensor) -> Tensor:
        return out.clone()  # gpt-oss adds its experts' biases in place (see SigmaTap)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[1], inputs[2])
        ctx.shape, ctx.dtype = inputs[3].shape, inputs[3].dtype

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, Tensor]:
        rows, offs = ctx.saved_tensors
        return grad, None, None, bank_second_moments(rows.to(ctx.dtype), offs, ctx.shape[0])


def bank_second_moments(z: Tensor, offs: Tensor, experts: int) -> Tensor:
    """``E x (d + 1) x (d + 1)``: for each expert ``e``, ``[z 1]^T [z 1]`` over its rows ``offs[e-1]:offs[e]``
    (so entry ``[e, d, d]`` is its row count)."""
    n, d = z.shape
    width = -(-(d + 1) // 4) * 4  # the CPU grouped GEMM wants 16-byte aligned rows
    aug = torch.zeros(n, width, dtype=z.dtype, device=z.device)
    aug[:, :d] = z
    aug[:, d] = 1
    grouped = getattr(torch, "_grouped_mm", None)
    kernel_dtypes = (torch.bfloat16,) if torch.compiler.is_compiling() else (torch.float32, torch.bfloat16)
    if grouped is not None and z.dtype in kernel_dtypes and offs.numel() == experts:
        return grouped(aug.t(), aug, offs=offs.to(torch.int32))[:, : d + 1, : d + 1]
    expert_of_row = torch.bucketize(torch.arange(n, device=z.device), offs.to(z.device), right=True)
    one_hot = torch.nn.functional.one_hot(expert_of_row.clamp(max=experts), experts + 1)[:, :experts].to(z.dtype)
    return torch.einsum("ne,ni,nj->eij", one_hot, aug[:, : d + 1], aug[:, : d + 1])


def phantom(size: int, dtype: torch.dtype, device: torch.device, diagonal: bool, groups: int = 1) -> Tensor:
    """A leaf whose gradient will hold one layer's statistics (``size``: ``d_in`` inputs, or ``V`` rows; with
    ``groups``, one ``(d_in + 1) x (d_in + 1)`` sum per group)."""
    shape = (size + 1,) if diagonal else (size + 1, size + 1) if groups == 1 else (groups, size + 1, size + 1)
    return torch.zeros((), dtype=dtype, device=device).expand(shape).requires_grad_()


def take(phantoms: list[Tensor], bias: list[bool]) -> list[tuple[Tensor, Tensor]]:
    """Each phantom's statistics, as ``(sum, rows)``, and its gradient cleared: the sum is Sigma's shape (the bias
    column kept only where the layer has a bias), ``rows`` a 0-d tensor (read on the host by the caller, once)."""
    out = []
    for p, with_bias in zip(phantoms, bias, strict=True):
        g, p.grad = p.grad, None
        if g.ndim == 1:
            out.append((g[:-1], g[-1]))
        elif g.ndim == 3:  # groups: every group read the same number of rows
            out.append((g if with_bias else g[:, :-1, :-1], g[0, -1, -1]))
        else:
            out.append((g if with_bias else g[:-1, :-1], g[-1, -1]))
    return out
