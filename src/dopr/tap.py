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

* ``F.linear(x, W, b)``, and ``x @ W.T`` (``W.T``, ``W.t()``, ``W.transpose(0, 1)`` are views that report a
  matmul with them): the rows of ``x``;
* ``F.embedding(ids, W)`` and ``W[ids]`` (a position table sliced by the positions it needs): the ids actually
  looked up, whatever the module's forward was called with;
* a 3-D bank of experts: ``F.linear(x, W[e])`` is expert ``e``'s read of ``x``, and ``grouped_mm(x, W.transpose(-2,
  -1), offs)`` (transformers' default experts implementation) is each expert's read of its segment of ``x``.

A parameter DoPr does not own the class of (an FSDP2 ``DTensor``, a user's subclass) is not tapped: its layer keeps
the module hook. :func:`tap` and :func:`untap` switch the class and back. This module holds the mechanism (the
classes, the dispatch, the registry); what each op means, its reader, lives in :mod:`dopr.reads`.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .capture import compiler_disabled
from .sigma_tap import SigmaTap, phantom

__all__ = ["TapView", "TappedParameter", "bank_phantoms", "drop_phantom", "note_unseen", "owner_of",
           "read_projections", "tap", "tap_layers", "tappable", "transposed_phantom", "unseen_op", "untap", "untapped"]


class Layer(Protocol):
    """A preconditioned layer as the tap sees it (``dopr.groups.Layer``; not imported: groups imports the adapters,
    which ask this module what it can tap)."""

    module: nn.Module
    adapter: Any


@dataclass
class _Reads:
    """What a tapped parameter's reads mean: which layer reads it by which op, for which preconditioner."""

    owner: weakref.ref
    linear: Layer | None = None
    embedding: Layer | None = None
    conv: Layer | None = None
    experts: list[Layer | None] = field(default_factory=list)  # a 3-D bank: the layer of each W[e] (None: excluded)
    # projections read by the module that owns them (nn.MultiheadAttention's q, k, v: one weight holds three), and
    # the phantom of each (under torch.compile; None without)
    packed: list[Layer] = field(default_factory=list)
    packed_phantoms: list[Tensor | None] = field(default_factory=list)
    # the leaf the reads of a weight read by one Linear, Embedding or convolution accumulate into inside compiled
    # graphs (dopr.sigma_tap). Kept here, not as an attribute of the parameter: a tensor with a __dict__ keeps its
    # Python object alive from C++, which made gloo's teardown abort
    phantom: Tensor | None = None
    # the leaf of its reads as x @ W (its first dimension the input), for a bias-free Linear weight (see
    # ReadTransposedAdapter): such a read switches the layer at the step that takes this leaf's gradient
    transposed_phantom: Tensor | None = None
    # a bank of experts: the leaf of its grouped_mm reads inside compiled graphs, E x (d_in + 1) x (d_in + 1)
    bank_phantom: Tensor | None = None
    unseen: str | None = None  # the first op that computed a tensor from the weight that is not a read DoPr follows


# id(parameter) -> (the parameter, what its reads mean); copies of a tapped parameter (an EMA deepcopy) have none.
# A plain dict: this lookup runs at every read, and a WeakIdKeyDictionary's costs microseconds
_READS: dict[int, tuple[weakref.ref, _Reads]] = {}


def _report(owner_ref: weakref.ref, reads: list[tuple[Layer, Tensor]], output: Any,
            transposed: frozenset[int] = frozenset()) -> None:
    """Tell the owner that these layers read these tensors; the layers whose id is in ``transposed`` read their
    weight as ``x @ W`` (its first dimension the input, :class:`~dopr.adapters.base.ReadTransposedAdapter`)."""
    owner = owner_ref()
    if owner is not None and reads:
        owner._on_reads(reads, output, transposed)


def note_unseen(weight: Tensor, what: str) -> None:
    """Name ``what`` as the first read of tapped ``weight`` that DoPr does not follow (if none is named yet)."""
    reads = _entry(weight)
    if reads is not None and reads.unseen is None:
        reads.unseen = what


def drop_phantom(weight: Tensor) -> None:
    """Compiled graphs stop accumulating ``weight``'s reads into its phantom (its layer changed shape): they then
    run the eager reader, a graph break."""
    reads = _entry(weight)
    if reads is not None:
        reads.phantom = None


def _dispatch(readers: dict[Callable, Callable], func: Callable, args: tuple, kwargs: dict) -> Any:
    """Run ``func`` as on plain tensors (its results are plain), then the reader of ``func``, if it is a read."""
    runner = _RUNNERS.get(func)
    if runner is not None:
        return runner(args, kwargs)
    with torch._C.DisableTorchFunctionSubclass():
        out = func(*args, **kwargs)
    reader = readers.get(func)
    if reader is None:
        if isinstance(out, Tensor) and out.requires_grad and not torch.compiler.is_compiling():
            _note_unseen(func, args)
        return out
    return _call(reader, args, kwargs, out)


def _note_unseen(func: Callable, args: tuple) -> None:
    """Remember the first op that computed a differentiable tensor from a tapped weight without being a read DoPr
    follows (a cast, ``torch.cat`` of weights): named if that weight's layer then has no statistics."""
    for arg in (args[0] if args and isinstance(args[0], (list, tuple)) else args):
        reads = _reads_of(arg)
        if reads is not None and reads.unseen is None:
            reads.unseen = _op_name(func)


def _op_name(func: Callable) -> str:
    """``torch.cat``, ``Tensor.to``, ``F.softmax``: the name a user writes for ``func``."""
    name = getattr(func, "__name__", None) or repr(func)
    owner = getattr(func, "__qualname__", name).rpartition(".")[0]
    if owner in ("_VariableFunctionsClass", "") and getattr(func, "__module__", None) in (None, "torch"):
        return f"torch.{name}"
    if owner in ("TensorBase", "Tensor", "_TensorBase"):
        return f"Tensor.{name}"
    module = getattr(func, "__module__", None) or ""
    return f"F.{name}" if module in ("torch.nn.functional", "torch._C._nn") else f"{module}.{name}".lstrip(".")


def unseen_op(param: Tensor) -> str | None:
    """The first op that computed a tensor from tapped ``param`` without being a read DoPr follows, if any (also
    while ``param`` is switched back to plain by :func:`untapped`)."""
    return getattr(_entry(param), "unseen", None)


def _arg(args: tuple, kwargs: dict, i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


class TappedParameter(nn.Parameter):
    """A parameter whose reads (see the module docstring) are reported to its preconditioner. Copies and pickles
    of it (an EMA ``deepcopy``, ``torch.save(model)``) are plain parameters: the taps are not part of the model."""

    def __deepcopy__(self, memo: dict) -> nn.Parameter:
        result = nn.Parameter(self.data.clone(memory_format=torch.preserve_format), self.requires_grad)
        memo[id(self)] = result
        return result

    def __reduce_ex__(self, proto: Any) -> tuple:
        # as nn.Parameter's, with this class left out: its attributes (the user's; DoPr keeps none on it) go along
        state = torch._utils._get_obj_state(self)
        if not state:
            return torch._utils._rebuild_parameter, (self.data, self.requires_grad, OrderedDict())
        return torch._utils._rebuild_parameter_with_state, (self.data, self.requires_grad, OrderedDict(), state)

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _dispatch(_PARAMETER_READS, func, args, kwargs or {})


class TapView(Tensor):
    """A plain view of a tapped weight (``W[e]``, ``W.T``) that reports the op that then reads it."""

    # (owner, "expert" | "transposed" | "bank" | "alias" | "concat" | "cast", the layer, the experts' layers, (layer,
    # weight shape), or (the axis joined, [(start, stop, layer, whether W.T)]) of a torch.cat of weights)
    _dopr_read: tuple[weakref.ref, str, Any]

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _dispatch(_VIEW_READS, func, args, kwargs or {})

    def __reduce_ex__(self, proto: Any) -> Any:
        # saved (torch.save, pickle) as the plain tensor it is: what it reports to is DoPr's, not the tensor's
        with torch._C.DisableTorchFunctionSubclass():
            plain = self.as_subclass(Tensor)
        return plain.__reduce_ex__(proto)


def _is_input(x: Any) -> bool:
    """A tensor a weight can be read against (not the weight itself or a view of it: ``W @ W.T`` is no read)."""
    return isinstance(x, Tensor) and not isinstance(x, (TapView, TappedParameter))


def _call(reader: Callable, args: tuple, kwargs: dict, out: Any) -> Any:
    """Run a reader: directly when eager (a compiler-disabled call costs microseconds). Under torch.compile, a
    read that has a phantom goes through :class:`~dopr.sigma_tap.SigmaTap`, inside the graph; any other read runs
    its eager bookkeeping, which Dynamo cannot trace (a graph break, see COMPILE_REASON)."""
    if torch.compiler.is_compiling():
        traced = _TRACED.get(reader)
        if traced is not None and (done := traced(args, kwargs, out)) is not None:
            return done
        return _DISABLED[reader](args, kwargs, out)
    return reader(args, kwargs, out)


def _view(out: Tensor, owner: weakref.ref, kind: str, what: Any) -> Tensor:
    if not torch.is_grad_enabled():  # no gradient will reach the weight through it: nothing to follow
        return out
    if torch.compiler.is_compiling():
        out = out.view_as(out)  # a new tensor: Dynamo refuses to set an attribute on the result of W.T (a property)
    view = out.as_subclass(TapView)
    view._dopr_read = (owner, kind, what)
    return view


def _reads_of(weight: Any) -> _Reads | None:
    """What tapped ``weight``'s reads mean (None for anything else, a plain or switched-back parameter included)."""
    return _entry(weight) if isinstance(weight, TappedParameter) else None


# the readers as torch.compile sees them, made when the first weights are tapped: making them imports torch._dynamo,
# and importing it when dopr is imported (before a script's dist.init_process_group) made gloo's teardown hang
_DISABLED: dict[Callable, Callable] = {}
# what each op means when it reads a tapped weight (a TapView): filled by dopr.reads, which the preconditioner imports
_PARAMETER_READS: dict[Callable, Callable[[tuple, dict, Any], Any]] = {}
_VIEW_READS: dict[Callable, Callable[[tuple, dict, Any], Any]] = {}
_RUNNERS: dict[Callable, Callable[[tuple, dict], Any]] = {}  # ops the tap runs itself (F.multi_head_attention_forward)
_TRACED: dict[Callable, Callable[[tuple, dict, Any], Any]] = {}  # a reader's path inside a compiled graph


def read_projections(weights: tuple[Tensor, ...], inputs: dict[str, Tensor], out: Tensor) -> Tensor:
    """The reads of projection weights that a module makes inside a fused function and reports itself
    (:class:`~dopr.adapters.attention.CapturedMultiheadAttention`: ``in_proj_weight`` holds q, k and v, read against
    ``inputs["q"]``, ``["k"]``, ``["v"]``); ``out`` is the function's output that backward reaches them through.
    Returns ``out`` (under torch.compile, through one :class:`~dopr.sigma_tap.SigmaTap` per projection)."""
    found = []
    for weight in weights:
        entry = _READS.get(id(weight)) if isinstance(weight, TappedParameter) else None
        if entry is not None and entry[0]() is weight:
            found += [(entry[1], layer, leaf) for layer, leaf in zip(entry[1].packed, entry[1].packed_phantoms
                                                                     or [None] * len(entry[1].packed))]
    if not found:
        return out
    if not torch.compiler.is_compiling():
        _report_projections(found, inputs, out)
        return out
    if any(leaf is None for _, _, leaf in found):
        _DISABLED[_report_projections](found, inputs, out)
        return out
    if torch.is_grad_enabled() and out.requires_grad:
        for _, layer, leaf in found:
            out = SigmaTap.apply(out, inputs[layer.adapter.part], leaf)
    return out


def _report_projections(found: list[tuple[_Reads, Layer, Tensor | None]], inputs: dict[str, Tensor],
                        out: Tensor) -> None:
    _report(found[0][0].owner, [(layer, inputs[layer.adapter.part]) for _, layer, _ in found], out)


def tappable(param: Tensor) -> bool:
    """Whether DoPr owns the class of ``param`` and may switch it (a plain ``nn.Parameter``, or already tapped)."""
    return type(param) in (nn.Parameter, TappedParameter)


def tap(param: nn.Parameter, owner: object, *, linear: Layer | None = None, embedding: Layer | None = None,
        conv: Layer | None = None, experts: list[Layer | None] | None = None, packed: list[Layer] | None = None,
        statistics_dtype: torch.dtype | None = None) -> dict[int, Tensor]:
    """Make ``param`` report its reads to ``owner`` (held weakly) as the reads of these layers. With
    ``statistics_dtype``, a weight read by one Linear, Embedding or convolution, and each projection of a packed
    weight, also gets the phantom its reads inside a compiled graph accumulate into (returned by id of the layer;
    see :mod:`dopr.sigma_tap`)."""
    if not tappable(param):
        raise TypeError(f"cannot tap a parameter of class {type(param).__name__}")
    param.__class__ = TappedParameter
    reads = _Reads(weakref.ref(owner), linear, embedding, conv, list(experts or []), list(packed or []))
    _READS[id(param)] = (weakref.ref(param), reads)
    if statistics_dtype is None:
        return {}
    reads.packed_phantoms = [phantom(layer.adapter.in_features(layer.module), statistics_dtype, param.device,
                                     diagonal=False) for layer in reads.packed]
    readers = [layer for layer in (linear, embedding, conv) if layer is not None]
    found = {id(layer): leaf for layer, leaf in zip(reads.packed, reads.packed_phantoms)}
    bank = [e for e in reads.experts if e is not None]
    if len(reads.experts) > 1 and bank:
        reads.bank_phantom = phantom(bank[0].adapter.in_features(bank[0].module), statistics_dtype, param.device,
                                     diagonal=False, groups=len(reads.experts))
    if experts or len(readers) != 1:
        return found
    layer = readers[0]
    size = layer.adapter.in_features(layer.module)
    found[id(layer)] = reads.phantom = phantom(size, statistics_dtype, param.device,
                                                      diagonal=embedding is not None,
                                                      groups=layer.adapter.groups(layer.module))
    if linear is not None and param.ndim == 2 and not linear.adapter.has_bias(linear.module):
        reads.transposed_phantom = phantom(param.shape[0], statistics_dtype, param.device, diagonal=False)
    return found


def transposed_phantom(param: Tensor) -> Tensor | None:
    """The leaf that compiled graphs accumulate ``param``'s reads as ``x @ W`` into (None: none)."""
    return getattr(_entry(param), "transposed_phantom", None)


def bank_phantoms(params: list[nn.Parameter]) -> list[tuple[Tensor, list[Layer | None]]]:
    """The expert banks among ``params`` that have a phantom: ``(phantom, the layer of each expert)``."""
    found = []
    for param in params:
        reads = _entry(param)
        if reads is not None and reads.bank_phantom is not None:
            found.append((reads.bank_phantom, reads.experts))
    return found


def _entry(param: Tensor) -> _Reads | None:
    """What ``param``'s reads mean, also while it is switched back to plain by :func:`untapped` (a step)."""
    entry = _READS.get(id(param))
    return entry[1] if entry is not None and entry[0]() is param else None


def tap_layers(owner: object, layers: list[Layer], statistics_dtype: Callable[[torch.dtype], torch.dtype] | None
               ) -> tuple[list[nn.Parameter], dict[int, Tensor]]:
    """Tap the weight of each layer (experts of one bank together) for ``owner``; return the tapped weights and the
    phantoms by id of their layer (with ``statistics_dtype``, the dtype of a weight's statistics: see :func:`tap`)."""
    reads: dict[int, tuple[nn.Parameter, dict[str, Any]]] = {}
    for layer in layers:
        weight = layer.adapter.weight(layer.module)
        kind = layer.adapter.reads
        _, how = reads.setdefault(id(weight), (weight, {"experts": [], "packed": []}))
        if kind in ("expert", "packed"):
            how[f"{kind}s" if kind == "expert" else kind].append(layer)
        else:
            how[kind] = layer
    if layers and not _DISABLED:
        _DISABLED.update({r: compiler_disabled(r) for r in {*_PARAMETER_READS.values(), *_VIEW_READS.values(),
                                                                 _report_projections}})
    phantoms: dict[int, Tensor] = {}
    for weight, how in reads.values():
        if how["experts"]:  # expert e's layer at index e (None where an expert is left out)
            by_index = {layer.adapter.index: layer for layer in how["experts"]}
            how["experts"] = [by_index.get(e) for e in range(weight.shape[0])]
        dtype = None if statistics_dtype is None else statistics_dtype(weight.dtype)
        phantoms.update(tap(weight, owner, **how, statistics_dtype=dtype))
    return [weight for weight, _ in reads.values()], phantoms


@contextmanager
def untapped(params: list[nn.Parameter]) -> Iterator[None]:
    """Inside this block ``params`` are plain parameters: an optimizer step's many ops on them (reading ``.grad``,
    the base optimizer's arithmetic) run without a Python ``__torch_function__`` call each. Nested blocks are fine:
    only what was tapped on entry is tapped again on exit."""
    switched = [p for p in params if type(p) is TappedParameter]
    for p in switched:
        p.__class__ = nn.Parameter
    try:
        yield
    finally:
        for p in switched:
            p.__class__ = TappedParameter


def owner_of(param: Tensor) -> object | None:
    """The live preconditioner ``param`` reports its reads to, if any."""
    reads = _reads_of(param)
    return None if reads is None else reads.owner()


def untap(param: nn.Parameter) -> None:
    """Switch ``param`` back to ``nn.Parameter``; idempotent."""
    entry = _READS.get(id(param))
    if entry is not None and entry[0]() is param:
        del _READS[id(param)]
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
