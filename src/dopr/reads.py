"""What each op means when it reads a tapped weight (:mod:`dopr.tap`): the readers, filled into the tap's tables.

A reader gets the op's arguments and its output (computed as on plain tensors) and reports the layer's input:

* ``F.linear(x, W)``, ``x @ W.T``, ``W @ X``: the rows of ``x`` (the columns of ``X``);
* ``F.embedding(ids, W)``, ``W[ids]``, ``F.layer_norm(W)`` of a table: the ids read (every row, for the last);
* ``F.conv1d/2d/3d`` with the module's geometry (also of a ``squeeze``/``view`` of the weight in its own shape): the
  patches of the input;
* an expert bank's ``W[e]`` (here), ``bmm`` and ``grouped_mm`` (:mod:`dopr.reads_banks`): each expert's rows;
* ``F.multi_head_attention_forward`` given Linear weights: run by the tap itself, so that its inner reads are seen.

Under torch.compile the Linear, Embedding and convolution reads go through :class:`~dopr.sigma_tap.SigmaTap` (the
``_traced_*`` paths); the others run eagerly (a graph break).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .sigma_tap import SigmaTap
from .tap import (
    _PARAMETER_READS,
    _RUNNERS,
    _TRACED,
    _VIEW_READS,
    Layer,
    TappedParameter,
    TapView,
    _arg,
    _is_input,
    _reads_of,
    _report,
    _view,
    note_unseen,
)

__all__: list[str] = []  # importing this module fills the tap's tables (the expert banks' readers too)


def _traced_read(kind: str, weight: Any, rows: Any, out: Any, ndim: int, unfolding: tuple | None = None) -> Any:
    """``out`` through SigmaTap when ``weight`` has a phantom of this kind (None: no traced path for this read)."""
    reads = _reads_of(weight)
    if reads is not None and getattr(reads, kind) is None:
        return out  # read by an op of another layer kind (a tied weight's embedding read, which a module hook records)
    leaf = getattr(reads, "phantom", None)
    if leaf is None or leaf.ndim != ndim or not isinstance(rows, Tensor):
        return None
    if not (torch.is_grad_enabled() and isinstance(out, Tensor) and out.requires_grad):
        return out
    return SigmaTap.apply(out, rows, leaf, unfolding)


def _traced_linear(args: tuple, kwargs: dict, out: Any) -> Any:
    return _traced_read("linear", _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 0, "input"), out, 2)


def _traced_embedding(args: tuple, kwargs: dict, out: Any) -> Any:  # a diagonal Sigma: a 1-D phantom
    return _traced_read("embedding", _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 0, "input"), out, 1)


def _traced_conv(args: tuple, kwargs: dict, out: Any) -> Any:
    weight = _arg(args, kwargs, 1, "weight")
    layer = getattr(_reads_of(weight), "conv", None)
    if layer is None or not _conv_like_module(layer, args, kwargs):
        return None  # the eager reader names it
    grouped = layer.adapter.groups(layer.module) > 1
    return _traced_read("conv", weight, _arg(args, kwargs, 0, "input"), out, 3 if grouped else 2,
                        layer.adapter.unfolding(layer.module))


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


def _traced_conv_view(args: tuple, kwargs: dict, out: Any) -> Any:
    """Inside a compiled graph: a convolution of a view of a conv weight in its own shape (Mamba's squeezed
    ``conv1d.weight``) through SigmaTap, as :func:`_traced_conv` for the weight itself."""
    weight = _arg(args, kwargs, 1, "weight")
    read = getattr(weight, "_dopr_read", None)
    if read is None or read[1] != "alias" or tuple(weight.shape) != read[2][1]:
        return out
    layer = read[2][0]
    if not _conv_like_module(layer, args, kwargs):
        return None
    grouped = layer.adapter.groups(layer.module) > 1
    return _traced_read("conv", layer.adapter.weight(layer.module), _arg(args, kwargs, 0, "input"), out,
                        3 if grouped else 2, layer.adapter.unfolding(layer.module))


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


def _read_view_linear(args: tuple, kwargs: dict, out: Any) -> Any:
    read = getattr(_arg(args, kwargs, 1, "weight"), "_dopr_read", None)
    x = _arg(args, kwargs, 0, "input")
    if read is None or not _is_input(x):
        return out
    if read[1] == "expert" and not read[2].adapter.transposed:
        _report(read[0], [(read[2], x)], out)  # F.linear(x, W[e]) of an E x out x in bank
    elif read[1] == "concat":
        _report_concat(read, x, 1, out)  # F.linear(x, cat([Wq, Wk, Wv])): the concatenation is out x in
    elif read[1] == "cast":
        _report(read[0], [(read[2], x)], out)  # F.linear(x, W.float())
    return out


def _right_operand(args: tuple, kwargs: dict) -> Any:
    return next((v for v in (_arg(args, kwargs, 1, "other"), kwargs.get("mat2")) if v is not None), None)


def _read_matmul(args: tuple, kwargs: dict, out: Any) -> Any:
    x, read = args[0] if args else kwargs.get("input"), getattr(_right_operand(args, kwargs), "_dopr_read", None)
    if read is None or not _is_input(x):
        return out
    if read[1] == "transposed" or (read[1] == "expert" and read[2].adapter.transposed):
        _report(read[0], [(read[2], x)], out)  # x @ W.T, or x @ W[e] of an E x in x out bank: the rows of x
    elif read[1] == "concat":
        _report_concat(read, x, 0, out)  # x @ cat(...): the concatenation is in x out
    return out


def _read_weight_matmul(args: tuple, kwargs: dict, out: Any) -> Any:
    """``W @ X`` (Mamba's dt_proj): the columns of ``X``. A bare ``x @ W`` is named, not followed: under
    torch.compile a graph break can receive ``W`` where the user wrote a view of it, and following it would switch
    the layer wrongly; ``x @ cat([..., W])`` is followed (:func:`_read_cat`)."""
    left, right = args[0] if args else kwargs.get("input"), _right_operand(args, kwargs)
    reads = _reads_of(left)
    if reads is not None and reads.linear is not None and _is_input(right) and right.ndim >= 2:
        _report(reads.owner, [(reads.linear, right.transpose(-1, -2))], out)
        return out
    if isinstance(right, TappedParameter):  # Dynamo can hand a graph break W for a view of it (W.T): not followed
        note_unseen(right, "x @ W (its first dimension as the input) outside a torch.cat (DoPr follows that read "
                           "only as part of a product of concatenated weights)")
    return out


def _read_cast(args: tuple, kwargs: dict, out: Any) -> Any:
    """``W.to(torch.float32)``, ``W.type(...)``, ``W.float()`` of a Linear weight (DeepSeek-V3's router reads
    ``F.linear(h.float(), W.float())``): a cast changes the precision of a read, not what it reads, so ``F.linear`` of
    the cast is the layer's read."""
    source = args[0] if args else None
    reads = _reads_of(source)
    # eagerly a cast to the weight's own dtype is the weight itself (read as it is); Dynamo models it so too, but
    # F.linear of it then does not reach the tap inside the graph: a view that remembers the layer does
    if (reads is None or reads.linear is None or (out is source and not torch.compiler.is_compiling())
            or not isinstance(out, Tensor) or not out.is_floating_point() or out.shape != source.shape):
        return out
    return _view(out, reads.owner, "cast", reads.linear)


def _linear_part(t: Any) -> tuple[Layer | None, bool, Any]:
    """What a tensor joined by ``torch.cat`` is: ``(layer, flipped, owner)`` for a Linear weight (``flipped``: its
    transpose ``W.T``), ``(None, False, None)`` for a tensor that is no weight; ``owner`` "unseen" for a tapped
    weight DoPr does not follow into a concatenation (an expert, a convolution's weight)."""
    read = getattr(t, "_dopr_read", None)
    if read is not None:
        return (read[2], True, read[0]) if read[1] == "transposed" else (None, False, "unseen")
    if isinstance(t, TappedParameter):
        reads = _reads_of(t)
        if reads is not None and reads.linear is not None and t.ndim == 2:
            return reads.linear, False, reads.owner
        return None, False, "unseen"
    return None, False, None


def _read_cat(args: tuple, kwargs: dict, out: Any) -> Any:
    """``torch.cat`` of 2-D Linear weights and their transposes (MobileBERT's head, ``cat([decoder.weight.t(),
    dense.weight])``; fused projections, ``cat([q.weight, k.weight, v.weight])``): a view that remembers which rows
    or columns are which layer's weight, for the product that reads it (:func:`_report_concat`)."""
    tensors, dim = _arg(args, kwargs, 0, "tensors"), _arg(args, kwargs, 1, "dim") or 0
    if not isinstance(tensors, (list, tuple)):
        return out
    parts = [_linear_part(t) for t in tensors]
    owners = {id(owner): owner for _, _, owner in parts if owner is not None}
    followed = isinstance(out, Tensor) and out.ndim == 2 and len(owners) == 1 and "unseen" not in owners.values()
    if not followed:
        for t, (_, _, owner) in zip(tensors, parts):
            if owner is not None:
                note_unseen(t if isinstance(t, TappedParameter) else None, "torch.cat")
        return out
    dim, segments, start = dim % 2, [], 0
    for t, (layer, flipped, _) in zip(tensors, parts):
        stop = start + t.shape[dim]
        if layer is not None:
            segments.append((start, stop, layer, flipped))
        start = stop
    return _view(out, next(iter(owners.values())), "concat", (dim, segments))


def _read_concat_transpose(args: tuple, kwargs: dict, out: Any) -> Any:
    """``cat(...).T``: the same weights, their roles of rows and columns swapped."""
    read = getattr(args[0] if args else None, "_dopr_read", None)
    if read is None or read[1] != "concat" or not isinstance(out, Tensor) or out.ndim != 2:
        return out
    dim, segments = read[2]
    return _view(out, read[0], "concat", (1 - dim, [(a, b, layer, not flipped) for a, b, layer, flipped in segments]))


def _concat_reads(read: tuple, x: Tensor, input_axis: int) -> tuple[list[tuple[Layer, Tensor]], set[int]]:
    """The reads of a product of a concatenation (:func:`_read_cat`), and the ids of those read as ``x @ W``."""
    _, _, (dim, segments) = read
    found, transposed = [], set()
    for start, stop, layer, flipped in segments:
        found.append((layer, x[..., start:stop] if dim == input_axis else x))
        if (input_axis == 1) == flipped:
            transposed.add(id(layer))
    return found, transposed


def _report_concat(read: tuple, x: Tensor, input_axis: int, out: Any) -> None:
    """A product reading a concatenation of weights (:func:`_read_cat`) whose axis ``input_axis`` meets ``x``'s last
    axis: each weight reads the columns of ``x`` its segment meets (all of them, if the weights were joined along
    the other axis); a weight whose own first axis meets ``x`` is read as ``x @ W``."""
    found, transposed = _concat_reads(read, x, input_axis)
    _report(read[0], found, out, frozenset(transposed))


def _traced_product(read: Any, x: Any, input_axis: int, out: Any) -> Any:
    """Inside a compiled graph: a product of ``W.T`` or of a concatenation of weights through one
    :class:`~dopr.sigma_tap.SigmaTap` per weight, into its phantom for reads as ``F.linear`` or as ``x @ W`` (the step
    switches a layer read the latter way); None (the eager reader, a graph break) for an expert's view or a weight
    without such a phantom."""
    if read is None or not _is_input(x):
        return out
    if (read[1] == "transposed" and input_axis == 0) or (read[1] == "cast" and input_axis == 1):
        found, transposed = [(read[2], x)], set()
    elif read[1] == "concat":
        found, transposed = _concat_reads(read, x, input_axis)
    else:
        return None
    leaves = [_leaf(layer, id(layer) in transposed) for layer, _ in found]
    if any(leaf is None for leaf in leaves):
        return None
    if not (torch.is_grad_enabled() and isinstance(out, Tensor) and out.requires_grad):
        return out
    for (_, rows), leaf in zip(found, leaves):
        out = SigmaTap.apply(out, rows, leaf, None)
    return out


def _leaf(layer: Layer, transposed: bool) -> Tensor | None:
    """The phantom a Linear layer's reads accumulate into inside a compiled graph: as ``F.linear`` reads it, or
    (``transposed``) as ``x @ W`` (None: none, or not of that width)."""
    reads = _reads_of(layer.adapter.weight(layer.module))
    if transposed:
        return getattr(reads, "transposed_phantom", None)
    leaf = getattr(reads, "phantom", None)
    return leaf if leaf is not None and leaf.shape == (layer.adapter.in_features(layer.module) + 1,) * 2 else None


def _traced_view_linear(args: tuple, kwargs: dict, out: Any) -> Any:
    read = getattr(_arg(args, kwargs, 1, "weight"), "_dopr_read", None)
    return _traced_product(read, _arg(args, kwargs, 0, "input"), 1, out)


def _traced_matmul(args: tuple, kwargs: dict, out: Any) -> Any:
    read = getattr(_right_operand(args, kwargs), "_dopr_read", None)
    return _traced_product(read, args[0] if args else kwargs.get("input"), 0, out)


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


_RUNNERS[F.multi_head_attention_forward] = _run_attention

_PARAMETER_READS.update({
    F.linear: _read_linear,
    F.embedding: _read_embedding,
    Tensor.__getitem__: _read_item,
    Tensor.t: _read_transpose,
    Tensor.T.__get__: _read_transpose,
    Tensor.transpose: _read_transpose,
    torch.transpose: _read_transpose,
    **dict.fromkeys((torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.mm, Tensor.mm), _read_weight_matmul),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), _read_cat),
    **dict.fromkeys((Tensor.to, Tensor.type, Tensor.float, Tensor.double, Tensor.bfloat16, Tensor.half), _read_cast),
    F.layer_norm: _read_whole_table,
    F.rms_norm: _read_whole_table,
    F.conv1d: _read_conv,
    F.conv2d: _read_conv,
    F.conv3d: _read_conv,
    **dict.fromkeys((Tensor.squeeze, Tensor.unsqueeze, Tensor.view, Tensor.reshape), _read_reshape),
})
_VIEW_READS.update({
    F.linear: _read_view_linear,
    **dict.fromkeys((Tensor.t, Tensor.T.__get__, Tensor.transpose, torch.transpose), _read_concat_transpose),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), _read_cat),
    torch.matmul: _read_matmul,
    Tensor.matmul: _read_matmul,
    Tensor.__matmul__: _read_matmul,
    torch.mm: _read_matmul,
    Tensor.mm: _read_matmul,
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d), _read_conv_view),
    **dict.fromkeys((Tensor.squeeze, Tensor.unsqueeze, Tensor.view, Tensor.reshape), _read_reshape),
})
_TRACED.update({_read_linear: _traced_linear, _read_embedding: _traced_embedding, _read_conv: _traced_conv,
                _read_view_linear: _traced_view_linear, _read_matmul: _traced_matmul,
                _read_conv_view: _traced_conv_view})
# readers that only make a view remembering what it holds: the same code runs inside a compiled graph
_TRACED.update({r: r for r in (_read_transpose, _read_cat, _read_concat_transpose, _read_reshape, _read_cast)})

from . import reads_banks as _reads_banks  # noqa: E402,F401  (fills the tap's tables with the banks' readers)
