"""Checkpoints chosen as a user chooses them: the weights with the lowest validation loss, beside the final ones.

A user who logs a validation loss keeps the checkpoint where it was lowest; judging only the final weights penalizes
an arm that fits (and then overfits) sooner. Both benches that evaluate several checkpoints pick them here:

- the robosuite bench rolls out every checkpoint, so it picks among their records (:func:`at_lowest_val`);
- the control bench logs the validation loss every ``log_every`` steps but rolls out only at the end, so it keeps a
  copy of the EMA weights where the logged validation loss was lowest (:class:`LowestVal`) and rolls that copy out
  after training, on the same episodes as the final weights.

Ties keep the earliest checkpoint; a non-finite loss is never the lowest.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from torch import nn


def at_lowest_val(checkpoints: list[dict[str, Any]], key: str = "val_loss") -> dict[str, Any]:
    """The checkpoint record with the lowest finite ``key`` (the earliest among equals; the first if none is
    finite)."""
    finite = [c for c in checkpoints if math.isfinite(c[key])]
    return min(finite, key=lambda c: c[key]) if finite else checkpoints[0]


class LowestVal:
    """Keeps a copy of a model's weights (state dict) at the step with the lowest validation loss offered."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.val_loss = math.inf
        self.state: dict[str, Any] | None = None

    def offer(self, step: int, val_loss: float, model: nn.Module) -> None:
        """Keep ``model``'s weights if ``val_loss`` is lower than every one offered before."""
        if math.isfinite(val_loss) and val_loss < self.val_loss:
            self.step, self.val_loss = step, val_loss
            self.state = copy.deepcopy(model.state_dict())

    def model(self, like: nn.Module) -> nn.Module:
        """A copy of ``like`` holding the kept weights (``like`` itself is left as it is)."""
        if self.state is None:
            raise ValueError("no finite validation loss was offered")
        out = copy.deepcopy(like)
        out.load_state_dict(self.state)
        return out.eval()
