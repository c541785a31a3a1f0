"""The ActivationPreconditioner's options: their allowed values, checked once with errors that say how to fix them."""

from __future__ import annotations

from typing import Any

from torch import nn

SIGMA_MODES = ("batch", "ema")
FALLBACKS = ("last", "identity")
NONFINITE = ("raise", "skip")
SOLVES = ("auto", "inverse", "cholesky")


def check_options(*, model: Any, damping: Any, sigma: Any, ema_decay: Any, refresh_every: Any, max_rows: Any,
                  max_block: Any, solve: Any, fallback: Any, nonfinite: Any, capturable: Any = False) -> None:
    """Raise TypeError / ValueError naming the first option that is not allowed."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module, got {type(model).__name__}; pass the model, not its parameters"
        )
    if not (isinstance(damping, (int, float)) and damping >= 0):
        raise ValueError(
            f"damping must be a number >= 0 (relative to the mean eigenvalue of Sigma), got {damping!r}"
        )
    if sigma not in SIGMA_MODES:
        raise ValueError(f"sigma must be one of {SIGMA_MODES}, got {sigma!r}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    if not (isinstance(refresh_every, int) and refresh_every >= 1):
        raise ValueError(f"refresh_every must be an int >= 1, got {refresh_every!r}")
    if max_rows is not None and max_rows != "auto" and not (isinstance(max_rows, int) and max_rows >= 1):
        raise ValueError(f"max_rows must be None (all rows), 'auto' (max(4 d_in, 1024)) or an int >= 1, "
                         f"got {max_rows!r}")
    if max_block is not None and not (isinstance(max_block, int) and max_block >= 1):
        raise ValueError(f"max_block must be None (full Sigma) or an int >= 1, got {max_block!r}")
    if solve not in SOLVES:
        raise ValueError(f"solve must be one of {SOLVES}, got {solve!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
    if not isinstance(capturable, bool):
        raise TypeError(f"capturable must be True or False, got {capturable!r}")
    if capturable and max_rows is not None:
        raise ValueError(f"capturable=True needs max_rows=None (got {max_rows!r}): drawing a subset of rows reads "
                         "their number on the host; cap the rows with a smaller batch instead")
