"""A group's ``(Sigma + lambda I)^{-1}``, one class per solve form: how ``M = G (Sigma + lambda I)^{-1}`` is computed.

* :class:`Inverse`: the explicit inverse, ``M = G P``;
* :class:`Cholesky`: the lower factor ``L`` of ``Sigma + lambda I``, two triangular solves;
* :class:`Diagonal`: the reciprocals of a diagonal Sigma (embeddings: one-hot inputs);
* :class:`LowRank`: fewer rows than inputs, kept as the rows ``Z`` and ``chol(n lambda I + Z Z^T)`` (Woodbury);
* :class:`Blocked`: a block-diagonal Sigma (``max_block``), one inverse or Cholesky factor per block, applied to
  the matching columns of ``G``;
* :class:`Grouped`: independent layers in one module (a grouped or depthwise convolution), one factor per group,
  applied to that group's rows and columns of ``G``.

Each owns its apply (the kernels of :mod:`dopr.functional`), its tensors in the state dict (the keys and layout of
dopr's earlier state dicts: ``factor``, ``kind``, ``low_rank_chol``, ``low_rank_damping``), its identity (the
``fallback="identity"`` factor: the plain gradient), a device-side select (capturable refreshes) and its share of
a gradient sharded by rows (FSDP2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from .functional import apply_blocks, apply_cholesky, apply_factor, apply_inverse, apply_low_rank

__all__ = ["Blocked", "Cholesky", "Diagonal", "Factor", "Grouped", "Inverse", "LowRank", "factor_from_state",
           "new_factor"]


class Factor:
    """``(Sigma + lambda I)^{-1}`` of one input group in one solve form (see the module docstring)."""

    kind: ClassVar[str]  # its name in state dicts
    tensor: Tensor  # its main tensor (the inverse, ``L``, the reciprocals, the kept rows)

    def apply(self, grad: Tensor) -> Tensor:
        """``M = G (Sigma + lambda I)^{-1}`` for this group's ``G`` (``d_out x dim``)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """The entries of its group's state dict (copies: the tensor may be a view of memory a refresh reuses)."""
        return {"factor": self.tensor.clone(), "kind": self.kind, "low_rank_chol": None, "low_rank_damping": None}

    def clone(self) -> Factor:
        return replace(self, tensor=self.tensor.clone())

    def identity(self) -> Factor:
        """The factor of the plain gradient (``M = G``), shaped like this one."""
        eye = torch.eye(self.tensor.shape[-1], dtype=self.tensor.dtype, device=self.tensor.device)
        return replace(self, tensor=eye.expand_as(self.tensor).clone())  # its own inverse and Cholesky factor

    def where(self, ok: Tensor, other: Factor) -> Factor:
        """This factor where ``ok`` (one flag, or one per block/group), ``other`` elsewhere, chosen on the device."""
        flags = ok.reshape(ok.shape + (1,) * (self.tensor.ndim - ok.ndim))
        return replace(self, tensor=torch.where(flags, self.tensor, other.tensor))

    def local(self, rows: slice) -> Factor:
        """The factor for this rank's ``rows`` of a gradient sharded by rows (the same one, except per row)."""
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype


@dataclass
class Inverse(Factor):
    tensor: Tensor  # (Sigma + lambda I)^-1, d x d
    kind: ClassVar[str] = "inverse"

    def apply(self, grad: Tensor) -> Tensor:
        return apply_inverse(grad, self.tensor)


@dataclass
class Cholesky(Factor):
    tensor: Tensor  # L, lower, L L^T = Sigma + lambda I
    kind: ClassVar[str] = "cholesky"

    def apply(self, grad: Tensor) -> Tensor:
        return apply_cholesky(grad, self.tensor)


@dataclass
class Diagonal(Factor):
    tensor: Tensor  # 1 / (Sigma_ii + lambda), one per input (an embedding's rows)
    kind: ClassVar[str] = "diagonal"

    def apply(self, grad: Tensor) -> Tensor:
        return apply_inverse(grad, self.tensor)

    def identity(self) -> Factor:
        return Diagonal(torch.ones_like(self.tensor))

    def local(self, rows: slice) -> Factor:
        return Diagonal(self.tensor[rows])


@dataclass
class LowRank(Factor):
    tensor: Tensor  # the rows Z (n x dim)
    chol: Tensor  # chol(n lambda I + Z Z^T)
    damping: Tensor  # lambda
    kind: ClassVar[str] = "low_rank"

    def apply(self, grad: Tensor) -> Tensor:
        return apply_low_rank(grad.to(self.dtype), self.tensor, self.chol, self.damping)

    def state(self) -> dict[str, Any]:
        return {"factor": self.tensor, "kind": self.kind, "low_rank_chol": self.chol,
                "low_rank_damping": self.damping}

    def clone(self) -> Factor:
        return LowRank(self.tensor.clone(), self.chol.clone(), self.damping.clone())

    def identity(self) -> Factor:
        raise TypeError("a low-rank factor has no identity of its shape; use Inverse.identity")

    def where(self, ok: Tensor, other: Factor) -> Factor:
        raise TypeError("low-rank factors are not formed in capturable refreshes")


@dataclass
class _Stacked(Factor):
    """A stack of inverse or Cholesky factors (``inner`` says which), one per block or group."""

    tensor: Tensor
    inner: str  # "inverse" or "cholesky"

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.inner


class Blocked(_Stacked):
    """``blocks x b x b``: the factors of the diagonal blocks of a block-diagonal Sigma."""

    def apply(self, grad: Tensor) -> Tensor:
        return apply_blocks(grad, self.tensor, self.inner)


class Grouped(_Stacked):
    """``groups x d x d``: one factor per group of a grouped convolution (each group is a layer of its own: its
    output channels read its input channels' patches only). ``G``'s rows are the groups' output channels in order
    (under FSDP2, one factor per local row: that row's group's)."""

    def apply(self, grad: Tensor) -> Tensor:
        groups = self.tensor.shape[0]
        if groups == 0:  # an FSDP2 rank holding none of the layer's rows
            return grad.clone()
        per_group = grad.reshape(groups, grad.shape[0] // groups, grad.shape[1])
        return apply_factor(per_group, self.tensor, self.inner).reshape(grad.shape)


def new_factor(kind: str, tensor: Tensor, *, blocks: int = 1, groups: int = 1) -> Factor:
    """The factor a factorization of ``kind`` (:class:`~dopr.functional.Factors`) gave for one group."""
    if groups > 1:
        return Grouped(tensor, kind)
    if blocks > 1:
        return Blocked(tensor, kind)
    return {"inverse": Inverse, "cholesky": Cholesky, "diagonal": Diagonal}[kind](tensor)


def factor_from_state(saved: dict[str, Any], *, diagonal: bool, blocks: int, groups: int,
                      to: Any) -> Factor | None:
    """The factor a group's state dict entry holds (``to`` moves a tensor to the device; dopr 0.1 saved
    ``inverse`` and no ``kind``)."""
    tensor = to(saved.get("factor", saved.get("inverse")))
    if tensor is None:
        return None
    kind = saved.get("kind", "diagonal" if diagonal else "inverse")
    if kind == "low_rank":
        return LowRank(tensor, to(saved["low_rank_chol"]), to(saved["low_rank_damping"]))
    return new_factor(kind, tensor, blocks=blocks, groups=groups)
