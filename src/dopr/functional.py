"""The paper's activation-wise preconditioning (AP) step as pure functions on tensors.

Symbols follow ``PAPER.md``: a layer's weight ``W`` is ``d_out x d_in``, its input activations are
rows ``z_i`` of ``Z`` (``n x d_in``), its minibatch gradient is ``G`` (``d_out x d_in``), and

    Sigma = (1/n) Z^T Z                         uncentered second moment of the inputs
    lambda = gamma * tr(Sigma) / d_in           damping relative to the mean eigenvalue
    M = G (Sigma + lambda I)^{-1}               the AP-gradient handed to the base optimizer

Damping convention: ``gamma`` is relative to the *mean* eigenvalue ``tr(Sigma)/d_in`` (as in
Newton-Muon). Transcriptions that write ``gamma' * tr(Sigma)`` use ``gamma' = gamma / d_in``.

Block-diagonal option (not the paper's exact update; Newton-Muon's choice for wide MLP inputs): the
``d`` input coordinates are cut into ``k`` contiguous blocks of ``b = ceil(d / k)`` (the last one
padded), Sigma is replaced by its diagonal blocks ``Sigma_j`` and the damping stays the full one,

    M[:, block j] = G[:, block j] (Sigma_j + lambda I)^{-1}     lambda = gamma * tr(Sigma) / d

so ``k = 1`` is the exact update. It costs ``2 n d b`` flops for Sigma instead of ``2 n d^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Factors",
    "LowRankFactor",
    "apply_cholesky",
    "apply_factor",
    "apply_inverse",
    "apply_blocks",
    "apply_low_rank",
    "block_size",
    "block_second_moment_sum",
    "factorize_low_rank",
    "factorize",
    "factorize_",
    "retry_in_float64",
    "retry_low_rank_in_float64",
    "finite_rows",
    "pad_blocks_",
    "second_moment_sum",
    "statistics_dtype",
]


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are kept in: float32, or float64 for float64 parameters."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def finite_rows(x: Tensor, exact: bool = False) -> Tensor:
    """``B`` booleans: whether row ``b`` of ``x`` (``B x ...``) holds only finite values, without a device sync.

    A finite row sum proves the row finite (an inf or NaN entry makes the sum inf or NaN), and a sum is one
    cheap pass, several times faster than ``isfinite(x).all()`` on CPU. A row of finite entries whose sum
    overflows reads as not finite; callers that act on a False re-check it with ``exact=True`` (the row's
    extremes), which only happens after the one host read of the step.
    """
    if x.numel() == 0:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    dims = tuple(range(1, x.ndim))  # reducing over them, unlike flatten(1), copies no non-contiguous input
    if x.ndim == 1:
        x, dims = x[:, None], (1,)
    if exact:
        return torch.isfinite(x.amax(dim=dims)) & torch.isfinite(x.amin(dim=dims))
    wide = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None  # fp16 sums overflow at 6.5e4
    return torch.isfinite(x.sum(dim=dims, dtype=wide))


def second_moment_sum(z: Tensor, *, augment_bias: bool, out: Tensor | None = None) -> Tensor:
    """Sum of ``z_i z_i^T`` over the rows of ``z``, optionally augmented with a constant 1.

    Args:
        z: ``n x d`` activations, already in the statistics dtype.
        augment_bias: append a constant input 1 (the bias is the weight of that input), giving a
            ``(d+1) x (d+1)`` result whose last row/column hold ``sum z_i`` and ``n``.
        out: accumulate into this ``(d[+1]) x (d[+1])`` symmetric tensor instead of allocating one.

    Returns:
        The (unnormalised) sum; divide by the row count to get ``Sigma``.
    """
    n, d = z.shape
    size = d + 1 if augment_bias else d
    if out is None:
        out = torch.zeros(size, size, dtype=z.dtype, device=z.device)
    # Avoid materialising the [z, 1] concatenation: fill the blocks of the augmented matrix.
    symmetric_product_(out[:d, :d], z)
    if augment_bias:
        col = z.sum(dim=0)
        out[:d, d] += col
        out[d, :d] += col
        out[d, d] += n
    return out


def grouped_second_moment_sum(z: Tensor, *, augment_bias: bool) -> Tensor:
    """:func:`second_moment_sum` of each group of ``z`` (``groups x n x d``), as one batched product:
    ``groups x (d[+1]) x (d[+1])``, the statistics of independent layers (a grouped convolution's groups)."""
    per_group = z
    gram = per_group.mT @ per_group
    if not augment_bias:
        return gram
    groups, n, d = per_group.shape
    out = z.new_zeros(groups, d + 1, d + 1)
    out[:, :d, :d] = gram
    col = per_group.sum(dim=1)
    out[:, :d, d] = col
    out[:, d, :d] = col
    out[:, d, d] = n
    return out


def block_size(dim: int, blocks: int) -> int:
    """Size ``b`` of each of the ``blocks`` diagonal blocks of a ``dim``-wide Sigma (the last one is padded)."""
    return -(-dim // blocks)


def block_second_moment_sum(z: Tensor, *, augment_bias: bool, blocks: int, out: Tensor | None = None) -> Tensor:
    """The ``blocks`` diagonal blocks of :func:`second_moment_sum` (``blocks x b x b``, zero-padded).

    Block ``j`` covers coordinates ``j*b ... (j+1)*b - 1`` of the (bias-augmented) input, so the
    constant-1 column, the last coordinate, falls into the last block. Entries past the input's width
    in the last block stay 0 (see :func:`pad_blocks_`).
    """
    n, d = z.shape
    dim = d + int(augment_bias)
    b = block_size(dim, blocks)
    if out is None:
        out = torch.zeros(blocks, b, b, dtype=z.dtype, device=z.device)
    for j in range(blocks):
        lo, hi = j * b, min((j + 1) * b, d)
        if hi > lo:
            symmetric_product_(out[j, : hi - lo, : hi - lo], z[:, lo:hi])
        if augment_bias and lo <= d < (j + 1) * b:  # this block holds the bias coordinate, at index d - lo
            c = d - lo
            col = z[:, lo:d].sum(dim=0)
            out[j, :c, c] += col
            out[j, c, :c] += col
            out[j, c, c] += n
    return out


def pad_blocks_(sigma: Tensor, dim: int) -> Tensor:
    """Put the mean eigenvalue ``tr(Sigma)/dim`` on the padded diagonal of ``blocks x b x b`` Sigma blocks.

    The padded coordinates are decoupled from the real ones (zero off-diagonal entries) and their
    gradient columns are zero, so any positive value there leaves ``M`` exact; the mean eigenvalue
    keeps the blocks' scale (and condition estimates) unchanged. The padded diagonal must be 0 on entry
    (as :func:`block_second_moment_sum` leaves it), so the returned trace is ``tr(Sigma)`` of the real part.
    """
    blocks, b = sigma.shape[0], sigma.shape[-1]
    trace = sigma.diagonal(dim1=-2, dim2=-1).sum()
    pad = blocks * b - dim
    if pad:
        sigma[-1].diagonal()[b - pad :] = trace / dim
    return trace


def symmetric_blocks(d: int) -> int:
    """How many column blocks :func:`symmetric_product_` splits ``d`` into (1: one plain product).

    Below 256 columns the saved flops do not pay for the extra kernel calls; above, blocks of at least
    128 columns keep each product efficient, and 8 blocks already save 44% of the flops.
    """
    return 1 if d < 256 else min(8, d // 128)


def symmetric_product_(acc: Tensor, z: Tensor) -> Tensor:
    """``acc += z^T z`` for a symmetric ``d x d`` ``acc``, computing only the block-lower triangle.

    With ``k`` column blocks the products cost ``(k+1)/(2k)`` of the full ``2 n d^2`` flops (the
    symmetric rank-k update BLAS calls syrk, which torch does not expose); the strictly-upper blocks
    are then copied from the lower ones, so ``acc`` stays symmetric (to rounding within the diagonal
    blocks, like a full product).
    """
    d = z.shape[1]
    k = symmetric_blocks(d)
    if k == 1:
        return acc.addmm_(z.T, z)
    edges = [round(i * d / k) for i in range(k + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        acc[lo:hi, :hi].addmm_(z[:, lo:hi].T, z[:, :hi])
    for lo, hi in zip(edges[:-1], edges[1:-1]):
        acc[lo:hi, hi:].copy_(acc[hi:, lo:hi].T)
    return acc


def symmetric_gram(z: Tensor) -> Tensor:
    """``z^T z``, out of place, computing only the block-lower triangle as :func:`symmetric_product_` does.

    For compiled graphs (``dopr.sigma_tap``): the in-place block updates of :func:`symmetric_product_` are
    functionalized there into generated loops, while these out-of-place products stay library GEMMs.
    """
    d = z.shape[1]
    k = symmetric_blocks(d)
    if k == 1:
        return z.T @ z
    edges = [round(i * d / k) for i in range(k + 1)]
    spans = list(zip(edges[:-1], edges[1:]))
    lower = [z[:, lo:hi].T @ z[:, :hi] for lo, hi in spans]  # block row i, columns 0 .. hi_i
    rows = [torch.cat([lower[i]] + [lower[j][:, lo:hi].T for j in range(i + 1, k)], dim=1)
            for i, (lo, hi) in enumerate(spans)]
    return torch.cat(rows, dim=0)


@dataclass
class Factors:
    """Factorised preconditioners for a batch of ``B`` input groups of one size.

    ``factor`` depends on ``kind``: ``"inverse"``: ``(Sigma + lambda I)^{-1}`` (``B x d x d``);
    ``"cholesky"``: its lower Cholesky factor ``L`` (``L L^T = Sigma + lambda I``); ``"diagonal"``:
    the reciprocals of a diagonal Sigma (``B x d``). Apply any of them with :func:`apply_factor`.
    ``ok[b]`` is False where both float32 and float64 Cholesky failed (that entry of ``factor`` is
    then undefined and must not be used); ``used_float64[b]`` marks retries.
    ``damping`` and ``condition`` (``B``) are the lambda used and ``cond(Sigma + lambda I)``, exact
    for diagonal Sigma and estimated from the Cholesky diagonal otherwise.
    """

    factor: Tensor
    damping: Tensor
    condition: Tensor
    ok: Tensor
    used_float64: Tensor
    kind: str = "inverse"

    @property
    def inverse(self) -> Tensor:
        """``(Sigma + lambda I)^{-1}`` (or the diagonal reciprocals); not available for ``kind="cholesky"``."""
        if self.kind == "cholesky":
            raise AttributeError("these factors hold Cholesky factors, not inverses; use .factor with apply_factor")
        return self.factor


def factorize(sigma: Tensor, gamma: float, *, eps: float = 0.0, diagonal: bool = False,
              cholesky: bool = False, damping: Tensor | None = None, retry: bool = True) -> Factors:
    """Factorize ``Sigma_b + lambda_b I`` for a batch by Cholesky in ``sigma``'s dtype, retrying failures in float64.

    Args:
        sigma: ``B x d x d`` symmetric second moments, or ``B x d`` diagonals with ``diagonal=True``.
        gamma: relative damping: ``lambda_b = gamma * tr(Sigma_b) / d`` (see the module docstring).
        eps: absolute damping added to ``lambda`` (0 by default: an absolute floor would swamp the
            Sigma of small-scale activations; an all-zero Sigma fails and the caller falls back).
        cholesky: return the Cholesky factors (``kind="cholesky"``) instead of the explicit inverses.
            The inverse costs another ``~2/3 d^3`` but makes applying it one matrix product, which is
            cheaper when the factor is reused over steps or ``d_out`` is large next to ``d``.
        damping: ``B`` values of lambda to use instead (``gamma`` and ``eps`` are then ignored): the
            blocks of one block-diagonal Sigma share the damping of the whole Sigma.
        retry: retry the entries whose float32 Cholesky failed in float64 (this reads ``ok`` on the host, a
            device sync); ``False`` leaves that to the caller (:func:`retry_in_float64`), so that many
            factorizations can share one sync.

    ``sigma`` is left as it is; :func:`factorize_` does the same work in ``sigma``'s own memory.
    """
    if diagonal:
        return _factorize_diagonal(sigma, gamma, eps, damping)
    factors = factorize_(sigma.clone(memory_format=torch.contiguous_format), gamma, eps=eps, cholesky=cholesky,
                         damping=damping)
    if retry and sigma.dtype != torch.float64 and not bool(factors.ok.all()):
        retry_in_float64(factors, sigma, (~factors.ok).nonzero().flatten().tolist())
    return factors


def factorize_(sigma: Tensor, gamma: float, *, eps: float = 0.0, cholesky: bool = False,
               damping: Tensor | None = None) -> Factors:
    """:func:`factorize` of ``B x d x d`` symmetric ``sigma`` in place, without the float64 retry.

    ``sigma`` (contiguous) is damped, factorized and, unless ``cholesky``, inverted in its own memory (LAPACK
    works in place on the column-major view of a symmetric matrix), so a refresh allocates nothing of Sigma's
    size; the returned factor is a view of ``sigma``. To retry failures, keep the undamped Sigma elsewhere.
    """
    if not sigma.is_contiguous():
        raise ValueError("factorize_ needs a contiguous sigma (it factorizes in place); use factorize()")
    diag = sigma.diagonal(dim1=-2, dim2=-1)
    lam = gamma * diag.mean(dim=-1) + eps if damping is None else damping
    diag.add_(lam[:, None])
    factor, cond, ok = _cholesky_(sigma, cholesky)
    return Factors(factor, lam, cond, ok, torch.zeros_like(ok), "cholesky" if cholesky else "inverse")


def _factorize_diagonal(sigma: Tensor, gamma: float, eps: float, damping: Tensor | None) -> Factors:
    lam = gamma * sigma.mean(dim=-1) + eps if damping is None else damping
    damped = sigma + lam[:, None]
    # a token never seen (frequency 0, no damping) has a zero gradient row: any finite factor will do
    seen = damped > 0
    inverse = torch.where(seen, damped.reciprocal(), torch.ones_like(damped))
    ok = finite_rows(inverse) & (damped >= 0).all(dim=-1)
    cond = damped.amax(dim=-1) / torch.where(seen, damped, damped.amax(dim=-1, keepdim=True)).amin(dim=-1)
    return Factors(inverse, lam, cond, ok, torch.zeros_like(ok), "diagonal")


def retry_in_float64(factors: Factors, sigma: Tensor, failed: list[int]) -> None:
    """Redo the entries ``failed`` of ``factors`` (of ``sigma``, not float64) in float64, in place."""
    if not failed or sigma.dtype == torch.float64:
        return
    retry = torch.tensor(failed, device=sigma.device)
    lam = factors.damping[retry]
    eye = torch.eye(sigma.shape[-1], dtype=torch.float64, device=sigma.device)
    f64, cond64, ok64 = _cholesky_(sigma[retry].double() + lam.double()[:, None, None] * eye,
                                   factors.kind == "cholesky")
    f64, fits = _narrowed(f64, sigma.dtype, triangular=factors.kind == "cholesky")
    ok64 &= fits
    factors.factor[retry], factors.condition[retry] = f64, cond64.to(sigma.dtype)
    factors.ok[retry], factors.used_float64[retry] = ok64, ok64


def _narrowed(factors64: Tensor, dtype: torch.dtype, *, triangular: bool) -> tuple[Tensor, Tensor]:
    """``B`` float64 factors cast back to the statistics dtype, and whether each still fits it: finite, and
    for a triangular factor a diagonal that did not underflow to 0 (it could not be solved with)."""
    narrow = factors64.to(dtype)
    fits = finite_rows(narrow, exact=True)  # the rare path: exact
    if triangular:
        fits &= narrow.diagonal(dim1=-2, dim2=-1).abs().amin(dim=-1) > 0
    return narrow, fits


def _cholesky_(damped: Tensor, keep_factor: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Cholesky factor (lower, as a column-major view) or inverse of contiguous symmetric ``damped``, in place."""
    view = damped.mT  # the same symmetric matrices, column-major as LAPACK wants them: no copy in or out
    compiling = torch.compiler.is_compiling()  # Dynamo cannot trace out= into a strided view: a graph break each
    if compiling:
        lower, info = torch.linalg.cholesky_ex(view)
        view.copy_(lower)
    else:
        _, info = torch.linalg.cholesky_ex(view, out=(view, torch.empty(damped.shape[0], dtype=torch.int32,
                                                                        device=damped.device)))
    factored = info == 0
    # failed entries hold a partial factor that cholesky_inverse would reject: a unit diagonal makes any of them
    # invertible (no sync to find out whether any failed; the select is one cheap pass)
    diagonal = view.diagonal(dim1=-2, dim2=-1)
    diagonal.copy_(torch.where(factored[:, None], diagonal, torch.ones_like(diagonal)))
    d = diagonal.abs()
    cond = (d.amax(dim=-1) / d.amin(dim=-1)) ** 2
    if keep_factor:
        factor = view
    else:
        if compiling:
            view.copy_(torch.cholesky_inverse(view))
        else:
            torch.cholesky_inverse(view, out=view)
        factor = damped  # symmetric: the row-major view is the same matrix
    ok = factored & finite_rows(factor)
    return factor, cond, ok


def apply_inverse(grad: Tensor, inverse: Tensor) -> Tensor:
    """``M = G P`` for ``G`` of shape ``d_out x d_in`` and ``P`` (``d_in x d_in`` or diagonal ``d_in``)."""
    if inverse.ndim == 1:
        return grad * inverse
    return grad @ inverse


def apply_cholesky(grad: Tensor, chol: Tensor) -> Tensor:
    """``M = G (L L^T)^{-1}`` for ``G`` (``d_out x d_in``) by two triangular solves with lower ``L`` (``d_in x d_in``).

    Same ``2 d_out d_in^2`` flops as multiplying by an explicit inverse, without forming it.
    """
    # solved as M^T = L^-T L^-1 G^T: G^T is a column-major view of the row-major G, the layout LAPACK works in, so
    # neither solve copies its right-hand side and M comes back row-major (right-sided solves transposed both)
    x = torch.linalg.solve_triangular(chol, grad.mT, upper=False, left=True)  # L x = G^T
    return torch.linalg.solve_triangular(chol.mT, x, upper=True, left=True).mT  # L^T M^T = x


def apply_factor(grad: Tensor, factor: Tensor, kind: str) -> Tensor:
    """``M = G (Sigma + lambda I)^{-1}`` from a factor of the given kind (see :class:`Factors`)."""
    if kind == "cholesky":
        return apply_cholesky(grad, factor)
    return apply_inverse(grad, factor)


def apply_blocks(grad: Tensor, factor: Tensor, kind: str) -> Tensor:
    """``M = G (blockdiag(Sigma_j) + lambda I)^{-1}`` for ``G`` (``d_out x dim``) and ``blocks x b x b`` factors.

    ``G``'s columns are zero-padded to ``blocks * b`` and viewed as ``blocks`` matrices ``d_out x b``,
    each multiplied (or solved) by its block's factor in one batched call.
    """
    blocks, b = factor.shape[0], factor.shape[-1]
    d_out, dim = grad.shape
    padded = torch.nn.functional.pad(grad, (0, blocks * b - dim))
    m = apply_factor(padded.view(d_out, blocks, b).transpose(0, 1), factor, kind)
    return m.transpose(0, 1).reshape(d_out, blocks * b)[:, :dim]


@dataclass
class LowRankFactor:
    """``(Sigma + lambda I)^{-1}`` for ``Sigma = Z^T Z / n`` with fewer rows than columns (``n < d``).

    Kept as ``Z`` (``n x d``) and the lower Cholesky factor ``L`` of ``K = n lambda I + Z Z^T``
    (``n x n``); by the Woodbury identity ``(Sigma + lambda I)^{-1} = (I - Z^T K^{-1} Z) / lambda``.
    ``condition`` estimates ``cond(Sigma + lambda I) = lambda_max(K) / (n lambda)`` from ``L``'s diagonal.
    """

    rows: Tensor
    chol: Tensor
    damping: Tensor
    condition: Tensor
    ok: Tensor  # boolean scalars (on the device: reading them is a sync)
    used_float64: Tensor


def factorize_low_rank(z: Tensor, gamma: float, *, eps: float = 0.0, retry: bool = True) -> LowRankFactor:
    """The Woodbury form of ``(Sigma + lambda I)^{-1}`` from the rows ``z`` (``n x d``) themselves.

    Costs ``2 n^2 d + n^3/3`` instead of the ``2 n d^2 + d^3/3`` of forming and factorizing Sigma,
    so it pays when ``n < d`` (small batches into wide layers). ``lambda = gamma tr(Sigma)/d + eps``
    as in :func:`factorize`; ``lambda = 0`` with ``n < d`` is singular and reported as not ok.
    ``ok`` is a boolean tensor; with ``retry`` a float32 failure is read on the host (a device sync) and
    retried in float64, else that is left to the caller (:func:`retry_low_rank_in_float64`).
    """
    n, d = z.shape
    lam = gamma * z.square().sum() / (n * d) + eps
    chol, ok = _cholesky_rows(z, lam)
    f = LowRankFactor(z, chol, lam, torch.zeros_like(lam), ok, torch.zeros_like(ok))
    if retry and not bool(ok):
        retry_low_rank_in_float64(f)
    _set_low_rank_condition(f)
    return f


def retry_low_rank_in_float64(f: LowRankFactor) -> None:
    """Redo a failed float32 :func:`factorize_low_rank` in float64, in place."""
    if f.rows.dtype == torch.float64:
        return
    chol64, ok64 = _cholesky_rows(f.rows.double(), f.damping.double())
    narrow, fits = _narrowed(chol64[None], f.rows.dtype, triangular=True)
    if bool(ok64 & fits[0]):
        f.chol, f.ok, f.used_float64 = narrow[0], torch.ones_like(f.ok), torch.ones_like(f.ok)
    _set_low_rank_condition(f)


def _set_low_rank_condition(f: LowRankFactor) -> None:
    n = f.rows.shape[0]
    cond = f.chol.diagonal().square().amax() / (n * f.damping)
    f.condition = torch.where(f.ok, cond, torch.full_like(cond, float("inf")))


def _cholesky_rows(z: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    k = z @ z.T
    k.diagonal().add_(z.shape[0] * lam)
    chol, info = torch.linalg.cholesky_ex(k)
    return chol, (info == 0) & (lam > 0) & finite_rows(chol.reshape(1, -1))[0]


def apply_low_rank(grad: Tensor, rows: Tensor, chol: Tensor, damping: Tensor) -> Tensor:
    """``M = G (Z^T Z / n + lambda I)^{-1} = (G - (G Z^T) K^{-1} Z) / lambda`` (see :class:`LowRankFactor`).

    The subtraction cancels most of ``G`` when ``lambda`` is small, so one step of iterative
    refinement follows (``M += R P`` with the residual ``R = G - M (Sigma + lambda I)``): in float32
    that makes it as accurate as the explicit inverse or better, for ``~4 d_out n d`` more flops.
    """
    n = rows.shape[0]
    m = _woodbury(grad, rows, chol, damping)
    residual = grad - (m @ rows.T) @ rows / n - damping * m
    return m + _woodbury(residual, rows, chol, damping)


def _woodbury(grad: Tensor, rows: Tensor, chol: Tensor, damping: Tensor) -> Tensor:
    gz = grad @ rows.T
    return (grad - torch.cholesky_solve(gz.T, chol).T @ rows) / damping
