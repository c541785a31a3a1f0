"""The adapter interface, and the linear layers: ``nn.Linear`` and Hugging Face's ``Conv1D``.

* ``nn.Linear`` with bias: the bias is the weight of a constant input 1, so ``z`` is augmented with
  a 1 and the bias gradient is the last column of ``G``.
* ``transformers.pytorch_utils.Conv1D`` (GPT-2's projections) computes ``x @ W + b`` with ``W`` stored
  ``d_in x d_out``: the same linear map as an ``nn.Linear`` whose weight is ``W^T``, so it gets exactly
  that layer's update (``G`` is the transpose of the stored gradient).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..factors import Factor

try:  # FSDP2 shards parameters as DTensors; AP acts on each rank's rows
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None  # type: ignore[assignment,misc]

__all__ = ["Adapter", "LinearAdapter", "ReadTransposedAdapter", "TransposedLinearAdapter", "is_hf_conv1d", "local",
           "local_row_range"]


def local(t: Tensor) -> Tensor:
    """The rank-local part of a (possibly FSDP2-sharded) tensor; shards are blocks of rows."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t


def local_row_range(t: Tensor) -> tuple[int, int]:
    """``(first global row, row count)`` of this rank's part of ``t`` (all rows when not sharded)."""
    if DTensor is not None and isinstance(t, DTensor):
        shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        return int(offset[0]), int(shape[0])
    return 0, int(t.shape[0])


def gathered(t: Tensor) -> Tensor:
    """The whole of a (possibly FSDP2-sharded) tensor: an all-gather of its shards (a collective: every rank calls
    it for the same tensors, in the same order)."""
    return t.full_tensor() if DTensor is not None and isinstance(t, DTensor) else t


def write_rows_(t: Tensor, full: Tensor) -> None:
    """Copy this rank's rows of ``full`` (shaped like the whole of ``t``) into ``t``, sharded or not."""
    first, count = local_row_range(t)
    local(t).copy_(full[first : first + count])


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2, GPT-J's ancestors): a linear layer with a ``d_in x d_out`` weight."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers") and hasattr(module, "nf")


class Adapter:
    """How DoPr reads one layer. Instances are immutable; one module may hold several layers.

    The default implementation covers layers whose weight gradient, viewed as ``d_out x -1``, is ``G``
    (Linear, convolutions, recurrent weights), optionally restricted to the global rows ``rows_of()``.
    """

    diagonal = False
    maskable = True  # rows follow the leading dims of the input, so row_mask applies
    #: the op that reads the weight where it is read (dopr.tap): "linear" (``F.linear(x, W)``), "embedding"
    #: (``F.embedding(ids, W)``), "expert" (``F.linear(x, W[e])``), or None: only a module hook can read the layer
    reads: str | None = None
    #: whether a module hook can read the layer (its input is the module call's, see :meth:`read`)
    module_call = True

    def weight(self, module: nn.Module) -> nn.Parameter:
        return module.weight

    def bias(self, module: nn.Module) -> nn.Parameter | None:
        return getattr(module, "bias", None)

    def has_bias(self, module: nn.Module) -> bool:
        return self.bias(module) is not None

    def in_features(self, module: nn.Module) -> int:
        raise NotImplementedError

    def out_features(self, module: nn.Module) -> int:
        """Rows of ``G`` (over all ranks)."""
        weight = self.weight(module)
        span = self.rows_of(module, weight)
        return weight.shape[0] if span is None else span[1] - span[0]

    def dim(self, module: nn.Module) -> int:
        """Size of Sigma: ``d_in`` plus one for a bias."""
        return self.in_features(module) + int(self.has_bias(module))

    def groups(self, module: nn.Module) -> int:
        """How many independent layers of equal size the module holds, each with its own Sigma (a grouped
        convolution's groups: :meth:`rows` is then ``groups x n x d_in``); 1 for one layer."""
        return 1

    def sharing_key(self, module: nn.Module) -> Any:
        """Beyond their size, what must agree for layers that read one tensor to share its Sigma (None: nothing)."""
        return None

    def rows_of(self, module: nn.Module, param: nn.Parameter) -> tuple[int, int] | None:
        """The global rows ``[start, stop)`` of ``param`` (its weight or bias) this layer owns (None: all)."""
        return None

    def read(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Tensor | None:
        """The tensor this layer reads in a forward call (the module's first positional input by default)."""
        x = args[0] if args else None
        return x if isinstance(x, Tensor) else None

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        """The layer input as an ``n x d_in`` matrix (no bias column)."""
        raise NotImplementedError

    def row_count(self, module: nn.Module, x: Tensor) -> int | None:
        """How many rows :meth:`rows` would give, where that is known without forming them (adapters whose rows
        cost more than the input, like a convolution's patches); None otherwise."""
        return None

    def selected_rows(self, module: nn.Module, x: Tensor, select: Tensor) -> Tensor:
        """``rows(module, x)[select]``; adapters with :meth:`row_count` form only the selected rows."""
        return self.rows(module, x)[select]

    def params(self, module: nn.Module) -> list[nn.Parameter]:
        bias = self.bias(module)
        return [self.weight(module)] + ([bias] if bias is not None else [])

    def _local_slice(self, module: nn.Module, param: nn.Parameter) -> slice:
        """This rank's rows of ``param.grad`` (local indices) that belong to this layer."""
        grad = param.grad
        span = self.rows_of(module, param)
        if span is None:
            return slice(None)
        first, count = local_row_range(grad)
        lo, hi = max(span[0], first), min(span[1], first + count)
        return slice(max(lo - first, 0), max(hi - first, 0))

    def _rows_view(self, module: nn.Module, param: nn.Parameter) -> Tensor:
        """This layer's rows of this rank's part of ``param.grad`` (a view: writes go into ``.grad``)."""
        return local(param.grad)[self._local_slice(module, param)]

    def gradient(self, module: nn.Module) -> Tensor:
        """``G`` as ``d_out x dim`` (bias gradient as the last column); this rank's rows under FSDP2."""
        w = self._rows_view(module, self.weight(module))
        g = w.flatten(1)  # not reshape(rows, -1): a rank can hold none of the rows (FSDP2), a layer no outputs
        bias = self.bias(module)
        if bias is not None:
            g = torch.cat([g, self._rows_view(module, bias).reshape(-1, 1)], dim=1)
        return g

    def local_factor(self, module: nn.Module, factor: Factor) -> Factor:
        """The part of ``(Sigma + lambda I)^{-1}`` that multiplies this rank's gradient (all of it, except for a
        diagonal factor whose entries follow sharded gradient rows)."""
        return factor

    def write_gradient(self, module: nn.Module, m: Tensor) -> None:
        """Write ``M`` (``d_out x dim``) back into the ``.grad`` of the layer's parameters."""
        k = self.in_features(module)
        w = self._rows_view(module, self.weight(module))
        w.copy_(m[:, :k].reshape(w.shape))
        bias = self.bias(module)
        if bias is not None:
            self._rows_view(module, bias).copy_(m[:, k])


class LinearAdapter(Adapter):
    reads = "linear"

    def in_features(self, module: nn.Module) -> int:
        return module.in_features

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        return x.reshape(-1, module.in_features)


class TransposedLinearAdapter(Adapter):
    """Hugging Face ``Conv1D``: weight stored ``d_in x d_out``, so ``G`` is the stored gradient transposed. FSDP2
    shards that weight along ``d_in``, the dimension AP mixes: each rank gathers the layer's whole gradient, applies
    AP to it (the same on every rank) and keeps its rows."""

    def in_features(self, module: nn.Module) -> int:
        return module.weight.shape[0]

    def out_features(self, module: nn.Module) -> int:
        return module.nf

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        return x.reshape(-1, self.in_features(module))

    def gradient(self, module: nn.Module) -> Tensor:
        g = gathered(module.weight.grad).T
        if module.bias is not None:
            g = torch.cat([g, gathered(module.bias.grad).reshape(-1, 1)], dim=1)
        return g

    def write_gradient(self, module: nn.Module, m: Tensor) -> None:
        k = self.in_features(module)
        write_rows_(module.weight.grad, m[:, :k].T)
        if module.bias is not None:
            write_rows_(module.bias.grad, m[:, k])


class ReadTransposedAdapter(Adapter):
    """A Linear layer's weight (or a raw ``out x in`` matrix) read as ``x @ W``: its *first* dimension is the input
    (MobileBERT's head multiplies by ``torch.cat([decoder.weight.t(), dense.weight])``, so ``dense.weight``,
    ``vocab``-wide as a module, is read against the last ``hidden - embedding`` columns of ``x``). By the invariance
    principle Sigma is that input's, ``W.shape[0]`` wide, and ``G`` is the stored gradient transposed, as for
    ``Conv1D``. A layer is switched to it by its first read of that kind (before it has statistics); the switch is
    part of the preconditioner's state dict. Only a layer without a bias: the read does not use it."""

    reads = "linear"
    module_call = False

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner  # the layer's adapter as a module call reads it

    def weight(self, module: nn.Module) -> nn.Parameter:
        return self.inner.weight(module)

    def bias(self, module: nn.Module) -> None:
        return None

    def in_features(self, module: nn.Module) -> int:
        return self.weight(module).shape[0]

    def out_features(self, module: nn.Module) -> int:
        return self.weight(module).shape[1]

    def sharing_key(self, module: nn.Module) -> Any:
        return self.inner.sharing_key(module)

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        return x.reshape(-1, self.in_features(module))

    def gradient(self, module: nn.Module) -> Tensor:
        return gathered(self.weight(module).grad).T

    def write_gradient(self, module: nn.Module, m: Tensor) -> None:
        write_rows_(self.weight(module).grad, m.T)


def can_read_transposed(adapter: Adapter, module: nn.Module) -> bool:
    """Whether a layer may be read as ``x @ W`` (:class:`ReadTransposedAdapter`): a bias-free 2-D linear weight."""
    return (adapter.reads == "linear" and not adapter.has_bias(module) and adapter.weight(module).ndim == 2
            and adapter.rows_of(module, adapter.weight(module)) is None)
