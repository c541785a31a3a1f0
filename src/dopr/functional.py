"""The paper's activation-wise preconditioning (AP) step as pure functions on tensors.

Symbols follow ``PAPER.md``: a layer's weight ``W`` is ``d_out x d_in``, its input activations are
rows ``z_i`` of ``Z`` (``n x d_in``), its minibatch gradient is ``G`` (``d_out x d_in``), and

    Sigma = (1/n) Z^T Z                         uncentered second moment of the inputs
    lambda = gamma * tr(Sigma) / d_in           damping relative to the mean eigenvalue
    M = G (Sigma + lambda I)^{-1}               the AP-gradient handed to the base optimizer

Damping convention: ``gamma`` is relative to the *mean* eigenvalue ``tr(Sigma)/d_in`` (as in
Newton-Muon). Transcriptions that write ``gamma' * tr(Sigma)`` use ``gamma' = gamma / d_in``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Factor",
    "apply_inverse",
    "damping_value",
    "factorize",
    "second_moment_sum",
    "statistics_dtype",
]


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are kept in: float32, or float64 for float64 parameters."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def second_moment_sum(z: Tensor, *, augment_bias: bool, out: Tensor | None = None) -> Tensor:
    """Sum of ``z_i z_i^T`` over the rows of ``z``, optionally augmented with a constant 1.

    Args:
        z: ``n x d`` activations, already in the statistics dtype.
        augment_bias: append a constant input 1 (the bias is the weight of that input), giving a
            ``(d+1) x (d+1)`` result whose last row/column hold ``sum z_i`` and ``n``.
        out: accumulate into this ``(d[+1]) x (d[+1])`` tensor instead of allocating one.

    Returns:
        The (unnormalised) sum; divide by the row count to get ``Sigma``.
    """
    n, d = z.shape
    size = d + 1 if augment_bias else d
    if out is None:
        out = torch.zeros(size, size, dtype=z.dtype, device=z.device)
    # Avoid materialising the [z, 1] concatenation: fill the blocks of the augmented matrix.
    block = out[:d, :d]
    block.addmm_(z.T, z)
    if augment_bias:
        col = z.sum(dim=0)
        out[:d, d] += col
        out[d, :d] += col
        out[d, d] += n
    return out


def damping_value(sigma: Tensor, gamma: float) -> Tensor:
    """``lambda = gamma * tr(Sigma) / d`` for a full ``d x d`` Sigma, or a diagonal given as a vector."""
    diag = sigma if sigma.ndim == 1 else sigma.diagonal()
    return gamma * diag.sum() / diag.numel()


@dataclass
class Factor:
    """A factorised preconditioner for one input group.

    ``inverse`` is ``(Sigma + lambda I)^{-1}`` (``d x d``) or, for diagonal Sigma, the vector of
    reciprocals. ``ok`` is False when the factorization failed and a fallback was used.
    """

    inverse: Tensor
    damping: float
    ok: bool
    used_float64: bool
    condition: float


def factorize(sigma: Tensor, gamma: float, *, eps: float = 0.0) -> Factor | None:
    """Invert ``Sigma + lambda I`` by Cholesky, retrying in float64; ``None`` if both fail.

    Args:
        sigma: symmetric ``d x d`` second moment, or a length-``d`` diagonal.
        gamma: relative damping (see module docstring).
        eps: absolute damping added to ``lambda`` (guards an all-zero Sigma).
    """
    lam = damping_value(sigma, gamma) + eps
    if sigma.ndim == 1:
        damped = sigma + lam
        if not bool(torch.all(damped > 0)):
            return None
        cond = (damped.max() / damped.min()).item()
        return Factor(damped.reciprocal(), float(lam), True, False, cond)
    d = sigma.shape[0]
    eye = torch.eye(d, dtype=sigma.dtype, device=sigma.device)
    for dtype in dict.fromkeys((sigma.dtype, torch.float64)):
        damped = sigma.to(dtype) + lam.to(dtype) * eye.to(dtype)
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            diag = chol.diagonal()
            cond = ((diag.max() / diag.min()) ** 2).item()
            inverse = torch.cholesky_inverse(chol).to(sigma.dtype)
            if bool(torch.isfinite(inverse).all()):
                return Factor(inverse, float(lam), True, dtype != sigma.dtype, cond)
    return None


def apply_inverse(grad: Tensor, inverse: Tensor) -> Tensor:
    """``M = G P`` for ``G`` of shape ``d_out x d_in`` and ``P`` (``d_in x d_in`` or diagonal ``d_in``)."""
    if inverse.ndim == 1:
        return grad * inverse
    return grad @ inverse
