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
the module hook. :func:`tap` and :func:`untap` switch the class and back.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import compiler_disabled
from .sigma_tap import SigmaTap, phantom

__all__ = ["TapView", "TappedParameter", "owner_of", "read_projections", "tap", "tap_layers", "tappable", "unseen_op",
           "untap", "untapped"]


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
    unseen: str | None = None  # the first op that computed a tensor from the weight that is not a read DoPr follows


# id(parameter) -> (the parameter, what its reads mean); copies of a tapped parameter (an EMA deepcopy) have none.
# A plain dict: this lookup runs at every read, and a WeakIdKeyDictionary's costs microseconds
_READS: dict[int, tuple[weakref.ref, _Reads]] = {}
# id(parameter) -> the leaf its reads inside compiled graphs accumulate into (dopr.sigma_tap). Not an attribute of the
# parameter: a tensor with a __dict__ keeps its Python object alive from C++, which made gloo's teardown abort
_PHANTOMS: dict[int, Tensor] = {}


def _report(owner_ref: weakref.ref, reads: list[tuple[Layer, Tensor]], output: Any) -> None:
    owner = owner_ref()
    if owner is not None and reads:
        owner._on_reads(reads, output)


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
    entry = _READS.get(id(param))
    return entry[1].unseen if entry is not None and entry[0]() is param else None


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
        return torch._utils._rebuild_parameter, (self.data, self.requires_grad, OrderedDict())

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _dispatch(_PARAMETER_READS, func, args, kwargs or {})


class TapView(Tensor):
    """A plain view of a tapped weight (``W[e]``, ``W.T``) that reports the op that then reads it."""

    # (owner, "expert" | "transposed" | "bank" | "alias", the layer, the experts' layers, or (layer, weight shape))
    _dopr_read: tuple[weakref.ref, str, Any]

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _dispatch(_VIEW_READS, func, args, kwargs or {})


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


def _traced_read(weight: Any, rows: Any, out: Any, ndim: int, unfolding: tuple | None = None) -> Any:
    """``out`` through SigmaTap when ``weight`` has a phantom of this kind (None: no traced path for this read)."""
    leaf = _PHANTOMS.get(id(weight)) if isinstance(weight, TappedParameter) else None
    if leaf is None or leaf.ndim != ndim or not isinstance(rows, Tensor):
        return None
    if not (torch.is_grad_enabled() and isinstance(out, Tensor) and out.requires_grad):
        return out
    return SigmaTap.apply(out, rows, leaf, unfolding)


def _traced_linear(args: tuple, kwargs: dict, out: Any) -> Any:
    return _traced_read(_arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 0, "input"), out, 2)


def _traced_embedding(args: tuple, kwargs: dict, out: Any) -> Any:  # a diagonal Sigma: a 1-D phantom
    return _traced_read(_arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 0, "input"), out, 1)


def _traced_conv(args: tuple, kwargs: dict, out: Any) -> Any:
    weight = _arg(args, kwargs, 1, "weight")
    layer = getattr(_reads_of(weight), "conv", None)
    if layer is None or not _conv_like_module(layer, args, kwargs):
        return None  # the eager reader names it
    grouped = layer.adapter.groups(layer.module) > 1
    return _traced_read(weight, _arg(args, kwargs, 0, "input"), out, 3 if grouped else 2,
                        layer.adapter.unfolding(layer.module))


def _view(out: Tensor, owner: weakref.ref, kind: str, what: Any) -> TapView:
    view = out.as_subclass(TapView)
    view._dopr_read = (owner, kind, what)
    return view


def _reads_of(weight: Any) -> _Reads | None:
    entry = _READS.get(id(weight)) if isinstance(weight, TappedParameter) else None
    return entry[1] if entry is not None and entry[0]() is weight else None


def _direct_read(kind: str) -> Callable[[tuple, dict, Any], Any]:
    """The reader of ``F.linear(x, W)`` (``kind`` "linear") or ``F.embedding(ids, W)`` ("embedding"): the layer that
    reads ``W`` by that op, against the op's first input."""

    def read(args: tuple, kwargs: dict, out: Any) -> Any:
        reads = _reads_of(_arg(args, kwargs, 1, "weight"))
        layer, x = getattr(reads, kind, None), _arg(args, kwargs, 0, "input")
        if layer is not None and isinstance(x, Tensor):
            _report(reads.owner, [(layer, x)], out)
        return out

    return read


_read_linear, _read_embedding = _direct_read("linear"), _direct_read("embedding")


def _conv_like_module(layer: Layer, args: tuple, kwargs: dict) -> bool:
    """Whether this ``F.convNd`` call has the geometry of ``layer``'s module (whose patches DoPr forms)."""
    stride, padding = _arg(args, kwargs, 3, "stride"), _arg(args, kwargs, 4, "padding")
    dilation, groups = _arg(args, kwargs, 5, "dilation"), _arg(args, kwargs, 6, "groups")
    return layer.adapter.reads_like_module(layer.module, 1 if stride is None else stride,
                                           0 if padding is None else padding, 1 if dilation is None else dilation,
                                           1 if groups is None else groups)


def _read_reshape(args: tuple, kwargs: dict, out: Any) -> Any:
    """``W.squeeze(1)``, ``.unsqueeze(1)``, ``.view(...)`` of a convolution's weight (Mamba's ``causal_conv1d``
    reads ``conv1d.weight.squeeze(1).unsqueeze(1)``): a view that a convolution reading it in the weight's own
    shape reads as the weight itself."""
    source = args[0] if args else None
    read = getattr(source, "_dopr_read", None)
    if read is not None:
        owner, kind, what = read
        layer = what[0] if kind == "alias" else None
    else:
        reads = _reads_of(source)
        owner, layer = (reads.owner, reads.conv) if reads is not None else (None, None)
        what = None if layer is None else (layer, tuple(source.shape))
    if layer is None or not isinstance(out, Tensor) or out.numel() != math.prod(what[1]):
        return out
    return _view(out, owner, "alias", what)


def _read_conv_view(args: tuple, kwargs: dict, out: Any) -> Any:
    weight = _arg(args, kwargs, 1, "weight")
    read = getattr(weight, "_dopr_read", None)
    if read is None or read[1] != "alias" or tuple(weight.shape) != read[2][1]:
        return out
    layer, x = read[2][0], _arg(args, kwargs, 0, "input")
    if isinstance(x, Tensor) and _conv_like_module(layer, args, kwargs):
        _report(read[0], [(layer, x)], out)
    return out


def _read_conv(args: tuple, kwargs: dict, out: Any) -> Any:
    """``F.conv2d(x, W, b, stride, padding, dilation, groups)`` (and 1-d, 3-d): the patches of ``x``, when the call
    has its module's geometry; otherwise the read is named (its rows would be other patches)."""
    reads = _reads_of(_arg(args, kwargs, 1, "weight"))
    layer, x = getattr(reads, "conv", None), _arg(args, kwargs, 0, "input")
    if layer is None or not isinstance(x, Tensor):
        return out
    if not _conv_like_module(layer, args, kwargs):
        if reads.unseen is None:
            reads.unseen = "a convolution with a stride, padding, dilation or groups other than its module's"
        return out
    _report(reads.owner, [(layer, x)], out)
    return out


def _read_item(args: tuple, kwargs: dict, out: Any) -> Any:
    weight, index = args[0], args[1] if len(args) > 1 else None
    reads = _reads_of(weight)
    if reads is None or not isinstance(out, Tensor):
        return out
    if reads.experts and out.ndim == weight.ndim - 1:
        if isinstance(index, Tensor) and index.numel() == 1 and not index.is_floating_point():
            index = int(index)  # W[expert_idx] with a 0-d index tensor (transformers' expert loop)
        layer = reads.experts[index] if isinstance(index, int) else None
        return out if layer is None else _view(out, reads.owner, "expert", layer)
    if reads.embedding is not None and (ids := _looked_up(index, weight.shape[0], weight.device)) is not None:
        _report(reads.owner, [(reads.embedding, ids)], out)  # a table read by the rows it needs (positions)
    return out


def _looked_up(index: Any, rows: int, device: torch.device) -> Tensor | None:
    """The rows of a table that ``table[index]`` reads, as ids (None: an index DoPr does not follow)."""
    if isinstance(index, Tensor) and not index.is_floating_point() and index.dtype != torch.bool:
        return index
    if isinstance(index, slice):
        return torch.arange(rows, device=device)[index]
    if isinstance(index, int):
        return torch.tensor([index % rows], device=device)
    return None


def _read_transpose(args: tuple, kwargs: dict, out: Any) -> Any:
    weight = args[0]
    reads = _reads_of(weight)
    if reads is None or not isinstance(out, Tensor) or out.ndim != weight.ndim:
        return out
    dims = tuple(d % weight.ndim for d in args[1:3]) if len(args) >= 3 else (0, 1)
    if reads.experts and weight.ndim == 3 and sorted(dims) == [1, 2]:
        return _view(out, reads.owner, "bank", reads.experts)
    if reads.linear is not None and weight.ndim == 2:
        return _view(out, reads.owner, "transposed", reads.linear)
    return out


def _is_input(x: Any) -> bool:
    """A tensor a weight can be read against (not the weight itself or a view of it: ``W @ W.T`` is no read)."""
    return isinstance(x, Tensor) and not isinstance(x, (TapView, TappedParameter))


def _read_expert_linear(args: tuple, kwargs: dict, out: Any) -> Any:
    read = getattr(_arg(args, kwargs, 1, "weight"), "_dopr_read", None)
    x = _arg(args, kwargs, 0, "input")
    if read is not None and read[1] == "expert" and not read[2].adapter.transposed and _is_input(x):
        _report(read[0], [(read[2], x)], out)  # F.linear(x, W[e]) of an E x out x in bank
    return out


def _read_matmul(args: tuple, kwargs: dict, out: Any) -> Any:
    x, read = args[0] if args else kwargs.get("input"), getattr(_arg(args, kwargs, 1, "other"), "_dopr_read", None)
    if read is None:
        read = getattr(_arg(args, kwargs, 1, "mat2"), "_dopr_read", None)
    if read is None or not _is_input(x):
        return out
    if read[1] == "transposed" or (read[1] == "expert" and read[2].adapter.transposed):
        _report(read[0], [(read[2], x)], out)  # x @ W.T, or x @ W[e] of an E x in x out bank: the rows of x
    return out


def _read_left_matmul(args: tuple, kwargs: dict, out: Any) -> Any:
    reads, x = _reads_of(args[0] if args else kwargs.get("input")), _arg(args, kwargs, 1, "other")
    if reads is not None and reads.linear is not None and _is_input(x) and x.ndim >= 2:
        _report(reads.owner, [(reads.linear, x.transpose(-1, -2))], out)  # W @ X (Mamba's dt_proj): X's columns
    return out


def _read_bmm(args: tuple, kwargs: dict, out: Any) -> Any:
    x, bank = args[0] if args else kwargs.get("input"), _arg(args, kwargs, 1, "mat2")
    reads = _reads_of(bank)
    if reads is None or not reads.experts or not _is_input(x) or x.ndim != 3 or x.shape[0] != len(reads.experts):
        return out
    if any(e is not None and not e.adapter.transposed for e in reads.experts):
        return out
    _report(reads.owner, [(layer, x[e]) for e, layer in enumerate(reads.experts) if layer is not None], out)
    return out  # bmm(x, W) of an E x in x out bank (Llama 4): expert e reads x[e]


def _read_grouped(args: tuple, kwargs: dict, out: Any) -> Any:
    x, bank = _arg(args, kwargs, 0, "mat_a"), _arg(args, kwargs, 1, "mat_b")
    if x is None:
        x, bank = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
    if isinstance(bank, TappedParameter):  # an E x in x out bank, read as it is stored
        reads = _reads_of(bank)
        experts = reads.experts if reads is not None and reads.experts else []
        owner, transposed = (reads.owner if reads is not None else None), True
    else:  # W.transpose(-2, -1) of an E x out x in bank
        read = getattr(bank, "_dopr_read", None)
        experts = read[2] if read is not None and read[1] == "bank" else []
        owner, transposed = (read[0] if read is not None else None), False
    layers = [e for e in experts if e is not None]
    if not layers or layers[0].adapter.transposed != transposed or not _is_input(x) or x.ndim != 2 or offs is None:
        return out
    found, start = [], 0
    for layer, end in zip(experts, offs.tolist()):  # expert e reads rows offs[e-1]:offs[e] (one host read)
        if layer is not None and end > start:
            found.append((layer, x[start:end]))
        start = end
    _report(owner, found, out)
    return out


def _read_whole_table(args: tuple, kwargs: dict, out: Any) -> Any:
    """``F.layer_norm(table)``: an embedding table normalized as a whole (SEW-D's relative positions) is the
    rows of ``I @ table``, so each row is read once, by its one-hot."""
    table = _arg(args, kwargs, 0, "input")
    reads = _reads_of(table)
    if reads is not None and reads.embedding is not None and table.ndim == 2:
        _report(reads.owner, [(reads.embedding, torch.arange(table.shape[0], device=table.device))], out)
    return out


_ATTENTION_NAMES = tuple(inspect.signature(F.multi_head_attention_forward).parameters)
# the arguments whose class makes F.multi_head_attention_forward dispatch (its ``tens_ops``; not q/k/v_proj_weight)
_ATTENTION_DISPATCHES_ON = ("query", "key", "value", "in_proj_weight", "in_proj_bias", "bias_k", "bias_v",
                            "out_proj_weight", "out_proj_bias")


def _linear_reader(weight: Any) -> bool:
    return getattr(_reads_of(weight), "linear", None) is not None


def _run_attention(args: tuple, kwargs: dict) -> Any:
    """``F.multi_head_attention_forward`` given the weights of Linear layers (WavLM passes its q/k/v/out Linear
    weights): run with the subclass's torch functions on, so its in-projections' ``F.linear`` reads of the tapped
    ``q/k/v_proj_weight`` reach their readers; the out-projection, inside it a ``linear`` of the weight it was
    given, runs as an identity there and as ``F.linear`` of the tapped weight after it (``x @ I`` is exact). Any
    other call (DoPr's own attention forward, which reports its projections itself) runs as on plain tensors."""
    call = dict(zip(_ATTENTION_NAMES, args))
    call.update(kwargs)
    out_weight, out_bias = call["out_proj_weight"], call.get("out_proj_bias")
    follow_out = _linear_reader(out_weight)
    if not follow_out and not any(_linear_reader(call.get(f"{p}_proj_weight")) for p in "qkv"):
        with torch._C.DisableTorchFunctionSubclass():
            return F.multi_head_attention_forward(**call)
    for name in _ATTENTION_DISPATCHES_ON:  # plain, so that the call below runs the function rather than dispatching
        if isinstance(call.get(name), (TappedParameter, TapView)):
            call[name] = call[name].as_subclass(Tensor)
    if follow_out:
        size = out_weight.shape[1]
        call["out_proj_weight"] = torch.eye(size, dtype=out_weight.dtype, device=out_weight.device)
        call["out_proj_bias"] = None
    result = F.multi_head_attention_forward(**call)
    if not follow_out:
        return result
    return (F.linear(result[0], out_weight, out_bias), *result[1:])


_RUNNERS: dict[Callable, Callable[[tuple, dict], Any]] = {F.multi_head_attention_forward: _run_attention}

_PARAMETER_READS: dict[Callable, Callable[[tuple, dict, Any], Any]] = {
    F.linear: _read_linear,
    F.embedding: _read_embedding,
    Tensor.__getitem__: _read_item,
    Tensor.t: _read_transpose,
    Tensor.T.__get__: _read_transpose,
    Tensor.transpose: _read_transpose,
    torch.transpose: _read_transpose,
    torch.matmul: _read_left_matmul,
    Tensor.matmul: _read_left_matmul,
    Tensor.__matmul__: _read_left_matmul,
    torch.bmm: _read_bmm,
    Tensor.bmm: _read_bmm,
    F.layer_norm: _read_whole_table,
    F.rms_norm: _read_whole_table,
    F.conv1d: _read_conv,
    F.conv2d: _read_conv,
    F.conv3d: _read_conv,
    **dict.fromkeys((Tensor.squeeze, Tensor.unsqueeze, Tensor.view, Tensor.reshape), _read_reshape),
}
_VIEW_READS: dict[Callable, Callable[[tuple, dict, Any], Any]] = {
    F.linear: _read_expert_linear,
    torch.matmul: _read_matmul,
    Tensor.matmul: _read_matmul,
    Tensor.__matmul__: _read_matmul,
    torch.mm: _read_matmul,
    Tensor.mm: _read_matmul,
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d), _read_conv_view),
    **dict.fromkeys((Tensor.squeeze, Tensor.unsqueeze, Tensor.view, Tensor.reshape), _read_reshape),
}
for _name in ("_grouped_mm", "grouped_mm"):
    for _space in (torch, F):
        if hasattr(_space, _name):
            _VIEW_READS[getattr(_space, _name)] = _PARAMETER_READS[getattr(_space, _name)] = _read_grouped
# the readers as torch.compile sees them, made when the first weights are tapped: making them imports torch._dynamo,
# and importing it when dopr is imported (before a script's dist.init_process_group) made gloo's teardown hang
_DISABLED: dict[Callable, Callable] = {}
_TRACED = {_read_linear: _traced_linear, _read_embedding: _traced_embedding, _read_conv: _traced_conv}

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
    if experts or len(readers) != 1:
        return found
    layer = readers[0]
    size = layer.adapter.in_features(layer.module)
    found[id(layer)] = _PHANTOMS[id(param)] = phantom(size, statistics_dtype, param.device,
                                                      diagonal=embedding is not None,
                                                      groups=layer.adapter.groups(layer.module))
    return found


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
        _PHANTOMS.pop(id(param), None)
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
