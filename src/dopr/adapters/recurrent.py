"""Recurrent layers: ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``, any number of layers, uni- or bidirectional.

Per direction, ``weight_ih`` (all gates stacked, ``gates*H x I``) is a linear layer reading ``x_t`` at
every step, and ``weight_hh`` (``gates*H x H``) one reading ``h_{t-1}``; each bias is the weight of a
constant input 1 of its own layer. So ``weight_ih`` gets the Sigma of the inputs over all steps and
sequences, ``weight_hh`` that of the previous hidden states: ``h_0`` (the given initial state, or
zeros) then the module's outputs ``h_1 .. h_{T-1}`` (the reverse direction reads ``h_{t+1}``, from
``h_0`` at the last step backwards). With one layer the module's output is exactly those hidden states.

A stack (``num_layers > 1``) hides the inner layers' inputs in the fused kernel: layer ``l`` reads layer
``l - 1``'s output after the inter-layer dropout. DoPr switches each plain stack to its layer-by-layer drop-in
(:class:`CapturedLSTM`, :class:`CapturedGRU`, :class:`CapturedRNN`: same parameters, state-dict keys and
outputs, bitwise on CPU) whose training forward runs the fused kernel one layer at a time, with the same dropout
between layers, and keeps each layer's input, output and initial state for the layers' reads; ``remove()``
switches it back. Outside training it is torch's forward.

Not supported (named at construction): LSTM ``proj_size > 0``, a stack that is a subclass with a forward of
its own, and PackedSequence inputs (these raise at the forward, with the fix).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .base import Adapter
from .switch import PlainWhenCopied, hold, let_go

__all__ = ["CapturedGRU", "CapturedLSTM", "CapturedRNN", "RecurrentAdapter", "capture_recurrent",
           "recurrent_unsupported_reason", "release_recurrent"]

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)
# a captured stack -> each layer's (input, output, initial hidden state) in its last training forward; weak, so a
# deepcopy of the model (an EMA copy) copies none of it and nothing outlives the module
_LAYER_IO: weakref.WeakKeyDictionary[nn.Module, list[tuple[Tensor, Tensor, Tensor]]] = weakref.WeakKeyDictionary()


class RecurrentAdapter(Adapter):
    """``part`` ``"ih"`` or ``"hh"`` of direction ``direction`` (0 forward, 1 reverse) of layer ``layer``."""

    def __init__(self, part: str, direction: int, layer: int = 0) -> None:
        self.part, self.direction, self.layer = part, direction, layer
        self.suffix = f"{part}_l{layer}{'_reverse' if direction else ''}"

    def weight(self, module: nn.Module) -> nn.Parameter:
        return getattr(module, f"weight_{self.suffix}")

    def bias(self, module: nn.Module) -> nn.Parameter | None:
        return getattr(module, f"bias_{self.suffix}", None) if module.bias else None

    def in_features(self, module: nn.Module) -> int:
        if self.part == "hh":
            return module.hidden_size
        return module.input_size if self.layer == 0 else module.hidden_size * (2 if module.bidirectional else 1)

    def read(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Tensor | None:
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, PackedSequence):
            raise NotImplementedError(
                f"DoPr cannot yet read the steps of a PackedSequence fed to {type(module).__name__}: pad the batch "
                "(the padded steps then enter Sigma; use row_mask to leave them out), or exclude this module")
        if module.num_layers > 1:  # the layer's own input, output and initial state, kept by the drop-in
            layers = _LAYER_IO.get(module)
            if layers is None:
                return None
            x, out, hx = layers[self.layer]
        else:
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            out = output[0]
        if self.part == "ih":
            return x
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
    if getattr(module, "proj_size", 0):
        return "LSTM with proj_size > 0 (the projection reads o_t * tanh(c_t), which no output shows)"
    if module.num_layers > 1 and type(module) not in (*RECURRENT, *_CAPTURED.values()):
        return (f"num_layers={module.num_layers} in a {type(module).__name__}, a subclass with a forward of its own: "
                "DoPr runs plain stacks layer by layer to see the inner layers' inputs, not subclasses")
    return None


class _LayerByLayer(PlainWhenCopied):
    """The training forward of a stack, one layer at a time (see the module docstring)."""

    def forward(self, input: Any, hx: Any = None) -> Any:
        if (not (self.training and torch.is_grad_enabled()) or isinstance(input, PackedSequence)
                or self.num_layers == 1):
            return super().forward(input, hx)
        lstm = isinstance(self, nn.LSTM)
        batched, batch_dim = input.dim() == 3, 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
            hx = None if hx is None else tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
        dirs = 2 if self.bidirectional else 1
        if hx is None:
            zeros = input.new_zeros(self.num_layers * dirs, input.shape[batch_dim], self.hidden_size)
            hx = (zeros, zeros) if lstm else zeros
        per_layer = len(self._flat_weights) // self.num_layers
        x, finals, layers = input, [], []
        for layer in range(self.num_layers):
            rows = slice(layer * dirs, (layer + 1) * dirs)
            h = (hx[0][rows], hx[1][rows]) if lstm else hx[rows]
            out, *final = self._one_layer(x, h, self._flat_weights[layer * per_layer:(layer + 1) * per_layer])
            layers.append((x, out, h[0] if lstm else h))
            finals.append(final)
            last = layer == self.num_layers - 1
            x = out if last or not self.dropout else F.dropout(out, self.dropout, self.training)  # as the kernel does
        _LAYER_IO[self] = layers
        h_n = torch.cat([f[0] for f in finals])
        state = (h_n, torch.cat([f[1] for f in finals])) if lstm else h_n
        if not batched:
            x = x.squeeze(batch_dim)
            state = tuple(s.squeeze(1) for s in state) if lstm else state.squeeze(1)
        return x, state

    def _one_layer(self, x: Tensor, h: Any, weights: list[Tensor]) -> tuple:
        args = (weights, self.bias, 1, 0.0, self.training, self.bidirectional, self.batch_first)
        if isinstance(self, nn.LSTM):
            return _VF.lstm(x, h, *args)
        if isinstance(self, nn.GRU):
            return _VF.gru(x, h, *args)
        run = _VF.rnn_tanh if self.nonlinearity == "tanh" else _VF.rnn_relu
        return run(x, h, *args)


class CapturedLSTM(_LayerByLayer, nn.LSTM):
    """``nn.LSTM`` whose training forward runs its layers one at a time (a drop-in: same parameters and outputs)."""

    _dopr_plain = nn.LSTM


class CapturedGRU(_LayerByLayer, nn.GRU):
    """``nn.GRU`` whose training forward runs its layers one at a time (a drop-in: same parameters and outputs)."""

    _dopr_plain = nn.GRU


class CapturedRNN(_LayerByLayer, nn.RNN):
    """``nn.RNN`` whose training forward runs its layers one at a time (a drop-in: same parameters and outputs)."""

    _dopr_plain = nn.RNN


_CAPTURED = {nn.LSTM: CapturedLSTM, nn.GRU: CapturedGRU, nn.RNN: CapturedRNN}


def capture_recurrent(module: nn.Module) -> bool:
    """Switch a plain multi-layer RNN/LSTM/GRU to its layer-by-layer drop-in in place, held once per preconditioner
    (:mod:`dopr.adapters.switch`); False if it is not one."""
    for plain, captured in _CAPTURED.items():
        if type(module) in (plain, captured):
            return module.num_layers > 1 and hold(module, plain, captured)
    return False


def release_recurrent(module: nn.Module) -> None:
    for plain, captured in _CAPTURED.items():
        if type(module) is captured and let_go(module, plain, captured):
            _LAYER_IO.pop(module, None)
