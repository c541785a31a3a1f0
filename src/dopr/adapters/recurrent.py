"""Recurrent layers: ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` with one layer (uni- or bidirectional).

Per direction, ``weight_ih`` (all gates stacked, ``gates*H x I``) is a linear layer reading ``x_t`` at
every step, and ``weight_hh`` (``gates*H x H``) one reading ``h_{t-1}``; each bias is the weight of a
constant input 1 of its own layer. So ``weight_ih`` gets the Sigma of the inputs over all steps and
sequences, ``weight_hh`` that of the previous hidden states: ``h_0`` (the given initial state, or
zeros) then the module's outputs ``h_1 .. h_{T-1}`` (the reverse direction reads ``h_{t+1}``, from
``h_0`` at the last step backwards). With one layer the module's output is exactly those hidden states.

Not supported (named at construction): more than one layer (the inner layers' inputs, after the
inter-layer dropout, are not observable), LSTM ``proj_size > 0`` and PackedSequence inputs (the latter
raise at the forward, with the fix).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .base import Adapter

__all__ = ["RecurrentAdapter", "recurrent_unsupported_reason"]

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


class RecurrentAdapter(Adapter):
    """``part`` ``"ih"`` or ``"hh"`` of direction ``direction`` (0 forward, 1 reverse) of a one-layer RNN."""

    def __init__(self, part: str, direction: int) -> None:
        self.part, self.direction = part, direction
        self.suffix = f"{part}_l0{'_reverse' if direction else ''}"

    def weight(self, module: nn.Module) -> nn.Parameter:
        return getattr(module, f"weight_{self.suffix}")

    def bias(self, module: nn.Module) -> nn.Parameter | None:
        return getattr(module, f"bias_{self.suffix}", None) if module.bias else None

    def in_features(self, module: nn.Module) -> int:
        return module.input_size if self.part == "ih" else module.hidden_size

    def read(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Tensor | None:
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, PackedSequence):
            raise NotImplementedError(
                f"DoPr cannot yet read the steps of a PackedSequence fed to {type(module).__name__}: pad the batch "
                "(the padded steps then enter Sigma; use row_mask to leave them out), or exclude this module")
        if self.part == "ih":
            return x
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        out = output[0]
        return _previous_states(module, x, out, hx, self.direction)

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        return x.reshape(-1, self.in_features(module))


def _previous_states(module: nn.Module, x: Tensor, out: Tensor, hx: Any, direction: int) -> Tensor:
    """The hidden state each step of ``direction`` reads, ``time x batch x H`` (or ``time x H`` unbatched)."""
    h = module.hidden_size
    batched = x.ndim == 3
    if isinstance(hx, tuple):  # LSTM: (h_0, c_0)
        hx = hx[0]
    if batched and module.batch_first:
        out = out.transpose(0, 1)
    steps = out[..., direction * h : (direction + 1) * h]  # time x [batch x] H
    h0 = torch.zeros_like(steps[0]) if hx is None else hx[direction].to(steps.dtype)
    h0 = h0.detach()[None]
    steps = steps.detach()
    previous = torch.cat([h0, steps[:-1]]) if direction == 0 else torch.cat([steps[1:], h0])
    return previous.transpose(0, 1) if batched and module.batch_first else previous  # the input's layout


def recurrent_unsupported_reason(module: nn.Module) -> str | None:
    if module.num_layers != 1:
        return (f"num_layers={module.num_layers}: the inputs of the inner layers (after the inter-layer dropout) "
                "are not observable; stack one-layer modules to get AP on every layer")
    if getattr(module, "proj_size", 0):
        return "LSTM with proj_size > 0"
    return None
