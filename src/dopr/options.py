"""The options of activation-wise preconditioning, written once.

:class:`APOptions` holds every AP option with its default, its meaning and its check. ``DoPr`` and
``ActivationPreconditioner`` take them as keywords (or as one ``options=APOptions(...)``), and their signatures
are built from the dataclass (:func:`with_options`), so ``help(DoPr)``, notebooks and ``inspect.signature`` list
them without a second copy.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

SIGMA_MODES = ("batch", "ema")
FALLBACKS = ("last", "identity")
NONFINITE = ("raise", "skip")
SOLVES = ("auto", "inverse", "cholesky")


@dataclass(frozen=True)
class APOptions:
    """The options of activation-wise preconditioning (every one has a default: the paper's choice).

    Invalid values raise at construction, naming the option and the values it allows.
    """

    damping: float = 0.1
    """gamma, relative to the mean eigenvalue: ``lambda = damping * tr(Sigma) / d``, ``d`` the size of Sigma
    (``d_in``, plus 1 for a bias). The ``gamma' tr(Sigma)`` convention is ``damping = gamma' * d``. Large damping
    makes AP a rescaling of the gradient by ``1/lambda`` (docs/options.md, "Damping")."""

    sigma: Literal["batch", "ema"] = "batch"
    """``"batch"`` (the paper: this step's second moment) or ``"ema"`` (an exponential moving average across
    refreshes with ``ema_decay``)."""

    ema_decay: float = 0.95
    """Decay of the EMA when ``sigma="ema"``."""

    refresh_every: int = 1
    """Recompute Sigma and its factorization every k steps, reusing the factor in between (activations are
    recorded on refresh steps only)."""

    max_rows: int | Literal["auto"] | None = None
    """Estimate Sigma from at most this many randomly chosen rows per forward (``None``: all rows, exact).
    ``"auto"``: at most ``max(4 d_in, 1024)`` rows per forward (``auto_row_cap``), which caps Sigma's cost at
    ``8 d_in^3`` per forward however many tokens a wide layer sees and leaves forwards of up to 1024 rows (or 4 per
    input dimension) exact: the paper's behavior-cloning batches and most fine-tuning micro-batches."""

    share_inputs: bool = True
    """Layers that read the same input tensor (q/k/v, gate/up) share one Sigma and one factorization."""

    exclude: tuple[str, ...] = ()
    """fnmatch patterns of module names (or ``module:part`` layer names) left to the base optimizer, without AP
    and without a warning. A single string or a list is accepted."""

    fallback: Literal["last", "identity"] = "last"
    """When Cholesky fails in float32 and again in float64: ``"last"`` keeps the last good factor (identity if
    none), ``"identity"`` uses the plain gradient. Counted in ``stats()``."""

    nonfinite: Literal["raise", "skip"] = "raise"
    """A NaN/inf gradient or activation: ``"raise"`` raises :class:`~dopr.NonFiniteError` naming the layer before
    anything is modified; ``"skip"`` leaves every gradient untouched, warns and skips the step."""

    absolute_damping: float = 0.0
    """An absolute term added to lambda (lambda itself is relative to tr(Sigma), so it follows the scale of the
    activations). Not called ``eps``: in ``DoPr(..., eps=...)`` that keyword is the base optimizer's."""

    seed: int = 0
    """Seed of the row-subsampling generator (``max_rows``), saved in the state dict."""

    process_group: Any = None
    """All-reduce Sigma over this group when torch.distributed is initialized (``None``: the default group)."""

    split_factorization: bool = False
    """Under torch.distributed, each rank factorizes a cost-balanced share of the input groups and the factors
    are all-reduced into place (worth it when factorization, ``~d^3``, outweighs one more all-reduce of Sigma's
    size)."""

    solve: Literal["auto", "inverse", "cholesky"] = "auto"
    """How ``(Sigma + lambda I)^{-1}`` is applied. ``"inverse"``: form it (``~d^3`` flops) and multiply;
    ``"cholesky"``: keep the Cholesky factor (``d^3/3``) and do two triangular solves. ``"auto"`` picks
    ``"cholesky"`` for a group when Sigma is refreshed every step and the group's layers have at most ``d/2``
    outputs in all (there the solves cost less than forming the inverse would; from about ``0.6 d`` outputs on,
    triangular solves run so far below the matrix-product rate that the inverse is faster,
    ``benchmarks/solve_crossover.py``). Also with ``"auto"``, a step with at most ``d/2`` rows keeps the rows
    instead of forming Sigma and applies the inverse in its Woodbury form (``sigma="batch"``, one process). All
    forms agree to rounding."""

    max_block: int | None = None
    """``None``: the paper's full Sigma. A width: a layer with more inputs than this gets a block-diagonal Sigma of
    ``ceil(d_in / max_block)`` equal contiguous blocks, each damped with the whole Sigma's lambda (Newton-Muon's
    choice for wide MLP inputs). Cuts the cost of Sigma and its factorization for wide layers by about
    ``d_in / max_block``, at the price of the invariance to maps that mix inputs across blocks."""

    strict: bool = False
    """Raise instead of warning when a trainable weight matrix gets no AP (an unsupported layer type or
    configuration), naming each with its reason."""

    capturable: bool = False
    """No host synchronization in a steady-state step (CUDA graphs, ``torch.compile(mode="reduce-overhead")``):
    non-finite values are not looked for (``nonfinite`` does not apply; ``torch.amp.GradScaler`` still skips
    steps with them); a factorization that fails keeps the last good factor (``fallback="identity"``: the plain
    gradient) by a device-side select and is counted in ``stats()["fallbacks"]`` without a warning or a float64
    retry; few rows are never kept for the Woodbury form; rows counted inside a compiled graph stay on the device.
    Needs ``max_rows=None`` and one process."""

    def __post_init__(self) -> None:
        exclude = self.exclude
        object.__setattr__(self, "exclude", (exclude,) if isinstance(exclude, str) else tuple(exclude))
        object.__setattr__(self, "split_factorization", bool(self.split_factorization))
        _check(self)


def _check(o: APOptions) -> None:
    """Raise TypeError / ValueError naming the first option that is not allowed, and what is."""
    if isinstance(o.damping, bool) or not (isinstance(o.damping, (int, float)) and o.damping >= 0):
        raise ValueError(f"damping must be a number >= 0 (relative to the mean eigenvalue of Sigma), got {o.damping!r}")
    if o.sigma not in SIGMA_MODES:
        raise ValueError(f"sigma must be one of {SIGMA_MODES}, got {o.sigma!r}")
    if not (isinstance(o.ema_decay, (int, float)) and 0.0 <= o.ema_decay < 1.0):
        raise ValueError(f"ema_decay must be in [0, 1), got {o.ema_decay!r}")
    if isinstance(o.refresh_every, bool) or not (isinstance(o.refresh_every, int) and o.refresh_every >= 1):
        raise ValueError(f"refresh_every must be an int >= 1, got {o.refresh_every!r}")
    rows = o.max_rows
    if rows is not None and rows != "auto" and (isinstance(rows, bool) or not (isinstance(rows, int) and rows >= 1)):
        raise ValueError(f"max_rows must be None (all rows), 'auto' (max(4 d_in, 1024)) or an int >= 1, got {rows!r}")
    if o.max_block is not None and not (isinstance(o.max_block, int) and o.max_block >= 1):
        raise ValueError(f"max_block must be None (full Sigma) or an int >= 1, got {o.max_block!r}")
    if not all(isinstance(p, str) for p in o.exclude):
        raise TypeError(f"exclude must be fnmatch patterns (strings) of module names, got {o.exclude!r}")
    if o.solve not in SOLVES:
        raise ValueError(f"solve must be one of {SOLVES}, got {o.solve!r}")
    if o.fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {o.fallback!r}")
    if o.nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}, got {o.nonfinite!r}")
    if not (isinstance(o.absolute_damping, (int, float)) and o.absolute_damping >= 0):
        raise ValueError(f"absolute_damping must be a number >= 0 (added to lambda), got {o.absolute_damping!r}")
    if not isinstance(o.capturable, bool):
        raise TypeError(f"capturable must be True or False, got {o.capturable!r}")
    if o.capturable and rows is not None:
        raise ValueError(f"capturable=True needs max_rows=None (got {rows!r}): drawing a subset of rows reads "
                         "their number on the host; cap the rows with a smaller batch instead")


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(APOptions))
_RENAMED = {"eps": "absolute_damping"}  # ActivationPreconditioner's keyword before dopr 0.3


def closest_option(name: str) -> str | None:
    """The option a misspelled keyword most likely meant, if any."""
    match = difflib.get_close_matches(name, OPTION_NAMES, 1)
    return match[0] if match else None


def resolve_options(options: APOptions | None, overrides: dict[str, Any], *, owner: str) -> APOptions:
    """``options`` (or the defaults) with the keyword ``overrides`` applied; a misspelled name is a TypeError."""
    if options is not None and not isinstance(options, APOptions):
        raise TypeError(f"{owner}'s options must be a dopr.APOptions, got {type(options).__name__} {options!r}; "
                        "pass single options by keyword instead (damping=0.1, max_rows='auto', ...)")
    unknown = [name for name in overrides if name not in OPTION_NAMES]
    if unknown:
        close = {n: _RENAMED.get(n) or closest_option(n) for n in unknown}
        hints = [f"{n!r} (did you mean {m!r}?)" if m else repr(n) for n, m in close.items()]
        raise TypeError(f"{owner} got unknown option(s) {', '.join(hints)}; the options are {', '.join(OPTION_NAMES)}")
    return dataclasses.replace(options or APOptions(), **overrides)


def with_options(init: Callable[..., None], *, before: str | None = None) -> Callable[..., None]:
    """Give ``init`` the signature it accepts: each option as a keyword with its default, inserted before the
    parameter ``before`` (else before the ``**`` parameter), which is kept only if it collects more than options."""
    signature = inspect.signature(init)
    params = list(signature.parameters.values())
    variadic = [p for p in params if p.kind is p.VAR_KEYWORD]
    if variadic and before is None:
        params.remove(variadic[0])
    at = next((i for i, p in enumerate(params) if p.name == before or p.kind is p.VAR_KEYWORD), len(params))
    options = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                 annotation=f.type) for f in dataclasses.fields(APOptions)]
    init.__signature__ = signature.replace(parameters=params[:at] + options + params[at:])  # type: ignore[attr-defined]
    return init


__all__ = ["APOptions", "OPTION_NAMES", "closest_option", "resolve_options", "with_options"]
