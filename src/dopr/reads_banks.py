"""The readers of a bank of experts read whole (:mod:`dopr.reads` has the rest): ``bmm(x, W)`` of an
``E x in x out`` bank (Llama 4), and ``grouped_mm`` over tokens sorted by expert (transformers' default experts
implementation, and its own ``grouped_mm_fallback`` op, which it uses under torch.compile): each expert reads its
segment of the rows. Inside a compiled graph a bank's ``grouped_mm`` goes through
:class:`~dopr.sigma_tap.BankSigmaTap`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .capture import compiler_disabled
from .sigma_tap import BankSigmaTap
from .tap import (
    _DISABLED,
    _PARAMETER_READS,
    _TRACED,
    _VIEW_READS,
    TappedParameter,
    _arg,
    _is_input,
    _reads_of,
    _report,
)

__all__ = ["register_library_ops"]


def _read_bmm(args: tuple, kwargs: dict, out: Any) -> Any:
    x, bank = args[0] if args else kwargs.get("input"), _arg(args, kwargs, 1, "mat2")
    reads = _reads_of(bank)
    if reads is None or not reads.experts or not _is_input(x) or x.ndim != 3 or x.shape[0] != len(reads.experts):
        return out
    if any(e is not None and not e.adapter.transposed for e in reads.experts):
        return out
    _report(reads.owner, [(layer, x[e]) for e, layer in enumerate(reads.experts) if layer is not None], out)
    return out  # bmm(x, W) of an E x in x out bank (Llama 4): expert e reads x[e]


def _bank_read(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor, Any, list] | None:
    """``(x, offs, owner, the experts' layers)`` of a ``grouped_mm`` that reads a bank as its layers do (None: it
    does not)."""
    x, bank = _arg(args, kwargs, 0, "mat_a"), _arg(args, kwargs, 1, "mat_b")
    if x is None:
        x, bank = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
    if isinstance(bank, TappedParameter):  # an E x in x out bank, read as it is stored
        reads = _reads_of(bank)
        if reads is None or not reads.experts:
            return None
        owner, experts, transposed = reads.owner, reads.experts, True
    else:  # W.transpose(-2, -1) of an E x out x in bank
        read = getattr(bank, "_dopr_read", None)
        if read is None or read[1] != "bank":
            return None
        owner, experts, transposed = read[0], read[2], False
    first = next((e for e in experts if e is not None), None)
    if first is None or first.adapter.transposed != transposed or not _is_input(x) or x.ndim != 2 or offs is None:
        return None
    return x, offs, owner, experts


def _read_grouped(args: tuple, kwargs: dict, out: Any) -> Any:
    found = _bank_read(args, kwargs)
    if found is None:
        return out
    x, offs, owner, experts = found
    found, start = [], 0
    for layer, end in zip(experts, offs.tolist()):  # expert e reads rows offs[e-1]:offs[e] (one host read)
        if layer is not None and end > start:
            found.append((layer, x[start:end]))
        start = end
    _report(owner, found, out)
    return out


def _traced_grouped(args: tuple, kwargs: dict, out: Any) -> Any:
    """Inside a compiled graph: a bank's ``grouped_mm`` through :class:`~dopr.sigma_tap.BankSigmaTap` (each expert's
    statistics from its segment of the rows, no host read)."""
    found = _bank_read(args, kwargs)
    if found is None:
        return out
    x, offs, _, experts = found
    first = next(e for e in experts if e is not None)  # its weight is the bank
    leaf = getattr(_reads_of(first.adapter.weight(first.module)), "bank_phantom", None)
    if leaf is None:
        return None
    if not (torch.is_grad_enabled() and isinstance(out, Tensor) and out.requires_grad):
        return out
    return BankSigmaTap.apply(out, x, offs, leaf)


def register_library_ops() -> None:
    """Readers for ops that libraries register (imported by then): transformers' ``grouped_mm_fallback``, which it
    uses for a bank's product under torch.compile (float32) instead of ``grouped_mm``."""
    library = getattr(torch.ops, "transformers", None)
    try:
        op = getattr(library, "grouped_mm_fallback", None) if library is not None else None
    except (AttributeError, RuntimeError):
        op = None
    if op is None or op in _VIEW_READS:
        return
    for func in (op, op.default):
        _VIEW_READS[func] = _PARAMETER_READS[func] = _read_grouped
    if _DISABLED and _read_grouped not in _DISABLED:  # the table was made before (torch without grouped_mm)
        _DISABLED[_read_grouped] = compiler_disabled(_read_grouped)


_PARAMETER_READS.update({torch.bmm: _read_bmm, Tensor.bmm: _read_bmm})
for _name in ("_grouped_mm", "grouped_mm"):
    for _space in (torch, F):
        if hasattr(_space, _name):
            _VIEW_READS[getattr(_space, _name)] = _PARAMETER_READS[getattr(_space, _name)] = _read_grouped
_TRACED[_read_grouped] = _traced_grouped
