"""Capture where a weight is read (docs/design-capture.md): the weight's class becomes :class:`TappedParameter`.

A module hook sees a *call*: it assumes that ``module(x)`` means ``F.linear(x, module.weight)``. Real models read
weights in other ways: a position embedding builds its positions itself and calls ``F.embedding`` with them, an
attention block calls ``F.linear(x, self.qkv.weight, qkv_bias)`` without calling ``self.qkv``, and a bank of
mixture-of-experts weights stored as one ``E x out x in`` tensor is read as ``F.linear(h[tokens], W[e])``. The
invariance principle is about the point of use: wherever ``W`` (or a slice of it) is read against ``x``, ``W``'s
Sigma is built from that ``x``.

So the parameter itself reports its reads. Its class is switched, in place (its identity, its optimizer state and
its ``state_dict`` entry stay as they are), to a ``Parameter`` subclass whose ``__torch_function__`` runs every op
as the plain parameter would (results are plain tensors: a ``state_dict`` or a ``deepcopy`` holds no DoPr type
beyond the copied parameter's class, which taps nothing) and, for the reads below, tells the preconditioner the
tensor that was read:

* ``F.linear(x, W, b)``: the rows of ``x``;
* ``F.embedding(ids, W)``: the ids actually looked up (whatever the module's forward was called with);
* ``W[e]`` of a 3-D bank: a view that reports ``F.linear(x, W[e])`` as a read of expert ``e``.

A parameter DoPr does not own the class of (an FSDP2 ``DTensor``, a user's subclass) is not tapped: its layer keeps
the module hook. :func:`tap` and :func:`untap` switch the class and back.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from .capture import compiler_disabled


class Layer(Protocol):
    """A preconditioned layer as the tap sees it (``dopr.groups.Layer``; not imported: groups imports the adapters,
    which ask this module what it can tap)."""

    module: nn.Module
    adapter: Any

__all__ = ["ExpertSlice", "TappedParameter", "owner_of", "tap", "tap_layers", "tappable", "untap"]


@dataclass
class _Reads:
    """What a tapped parameter's reads mean: which layer reads it by which op, for which preconditioner."""

    owner: weakref.ref
    linear: Layer | None = None
    embedding: Layer | None = None
    experts: list[Layer | None] = field(default_factory=list)  # a 3-D bank: the layer of each W[e] (None: excluded)


_READS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # parameter -> _Reads (copies of the parameter have none)


def _report(owner_ref: weakref.ref, layer: Layer, x: Any, output: Any) -> None:
    owner = owner_ref()
    if owner is not None and isinstance(x, Tensor):
        owner._on_read(layer, x, output)


class TappedParameter(nn.Parameter):
    """A parameter whose reads by ``F.linear``/``F.embedding``/``W[e]`` are reported to its preconditioner."""

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        reader = _READERS.get(func)
        return out if reader is None else reader(args, kwargs, out)


class ExpertSlice(Tensor):
    """``W[e]`` of a tapped bank: a plain view that reports ``F.linear(x, W[e])`` as expert ``e``'s read."""

    _dopr_read: tuple[weakref.ref, Layer]

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        return _read_expert(args, kwargs, out) if func is F.linear else out


@compiler_disabled
def _read_expert(args: tuple, kwargs: dict, out: Any) -> Any:
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    read = getattr(weight, "_dopr_read", None)
    if read is not None:
        _report(read[0], read[1], args[0] if args else kwargs.get("input"), out)
    return out


@compiler_disabled
def _read_linear(args: tuple, kwargs: dict, out: Any) -> Any:
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    reads = _READS.get(weight) if isinstance(weight, TappedParameter) else None
    if reads is not None and reads.linear is not None:
        _report(reads.owner, reads.linear, args[0] if args else kwargs.get("input"), out)
    return out


@compiler_disabled
def _read_embedding(args: tuple, kwargs: dict, out: Any) -> Any:
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    reads = _READS.get(weight) if isinstance(weight, TappedParameter) else None
    if reads is not None and reads.embedding is not None:
        _report(reads.owner, reads.embedding, args[0] if args else kwargs.get("input"), out)
    return out


@compiler_disabled
def _read_item(args: tuple, kwargs: dict, out: Any) -> Any:
    bank, index = args[0], args[1] if len(args) > 1 else None
    reads = _READS.get(bank) if isinstance(bank, TappedParameter) else None
    if reads is None or not reads.experts or not isinstance(out, Tensor) or out.ndim != bank.ndim - 1:
        return out
    if isinstance(index, Tensor) and index.numel() == 1 and not index.is_floating_point():
        index = int(index)  # W[expert_idx] with a 0-d index tensor (transformers' expert loop)
    if not isinstance(index, int):
        return out
    layer = reads.experts[index]
    if layer is None:  # an expert left to the base optimizer
        return out
    view = out.as_subclass(ExpertSlice)
    view._dopr_read = (reads.owner, layer)
    return view


_READERS: dict[Callable, Callable[[tuple, dict, Any], Any]] = {
    F.linear: _read_linear,
    F.embedding: _read_embedding,
    Tensor.__getitem__: _read_item,
}


def tappable(param: Tensor) -> bool:
    """Whether DoPr owns the class of ``param`` and may switch it (a plain ``nn.Parameter``, or already tapped)."""
    return type(param) in (nn.Parameter, TappedParameter)


def tap(param: nn.Parameter, owner: object, *, linear: Layer | None = None, embedding: Layer | None = None,
        experts: list[Layer | None] | None = None) -> None:
    """Make ``param`` report its reads to ``owner`` (held weakly) as the reads of these layers."""
    if not tappable(param):
        raise TypeError(f"cannot tap a parameter of class {type(param).__name__}")
    param.__class__ = TappedParameter
    _READS[param] = _Reads(weakref.ref(owner), linear, embedding, list(experts or []))


def tap_layers(owner: object, layers: list[Layer]) -> list[nn.Parameter]:
    """Tap the weight of each layer (experts of one bank together) for ``owner``; return the tapped weights."""
    reads: dict[int, tuple[nn.Parameter, dict[str, Any]]] = {}
    for layer in layers:
        weight = layer.adapter.weight(layer.module)
        kind = layer.adapter.reads
        _, how = reads.setdefault(id(weight), (weight, {"experts": []}))
        if kind == "expert":
            how["experts"].append(layer)
        else:
            how[kind] = layer
    for weight, how in reads.values():
        if how["experts"]:  # expert e's layer at index e (None where an expert is left out)
            by_index = {layer.adapter.index: layer for layer in how["experts"]}
            how["experts"] = [by_index.get(e) for e in range(weight.shape[0])]
        tap(weight, owner, **how)
    return [weight for weight, _ in reads.values()]


def owner_of(param: Tensor) -> object | None:
    """The live preconditioner ``param`` reports its reads to, if any."""
    reads = _READS.get(param)
    return None if reads is None else reads.owner()


def untap(param: nn.Parameter) -> None:
    """Switch ``param`` back to ``nn.Parameter``; idempotent."""
    _READS.pop(param, None)
    if type(param) is TappedParameter:
        param.__class__ = nn.Parameter


# A user's optimizer picks its foreach/fused kernels only for parameter types it lists; a tapped parameter computes
# as a plain one, so it keeps them (without this, torch.optim falls back to a per-parameter loop on GPU).
try:
    from torch.optim import optimizer as _optimizer

    if TappedParameter not in _optimizer._foreach_supported_types:
        _optimizer._foreach_supported_types.append(TappedParameter)
except (ImportError, AttributeError):  # pragma: no cover - a torch without the list
    pass
