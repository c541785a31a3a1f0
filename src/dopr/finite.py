"""Non-finite gradients and statistics: found with one host read per step, reported before anything is modified."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .functional import finite_rows

__all__ = ["NonFiniteError", "all_finite"]


class NonFiniteError(FloatingPointError):
    """A gradient or a layer input was NaN or infinite; nothing was modified."""


def all_finite(checks: list[tuple[str, Tensor]], *, step: int, nonfinite: str) -> bool:
    """Whether every tensor of ``checks`` (what it is, the tensor) is finite. If not: raise :class:`NonFiniteError`
    naming the first bad one (``nonfinite="raise"``), or warn and return False (``"skip"``)."""
    if not checks:
        return True
    flags = torch.cat([finite_rows(t.reshape(1, -1)) for _, t in checks])
    if bool(flags.all()):  # the step's one host read for finiteness
        return True
    bad = [i for i, good in enumerate(flags.tolist()) if not good
           and not bool(finite_rows(checks[i][1].reshape(1, -1), exact=True)[0])]  # a sum may just overflow
    if not bad:
        return True
    message = (
        f"non-finite values (NaN or inf) in the {checks[bad[0]][0]} at step {step}; no gradient or weight "
        "was modified. Check the loss and the inputs for NaN/inf, lower the learning rate, or, with fp16, "
        "use torch.amp.GradScaler (which skips such steps). Pass nonfinite='skip' to skip such steps."
    )
    if nonfinite == "raise":
        raise NonFiniteError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)
    return False
