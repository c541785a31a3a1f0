"""Convolutions: ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d`` (``groups=1``, zero padding).

* A convolution is a linear map applied to every unfolded patch, so each patch (``C_in * prod(kernel)``,
  plus 1 for the bias) is a row of ``Z`` and Sigma is the full patch second moment. The update is then
  invariant to any invertible linear map of patches, including any 1x1 re-mixing of input channels.
* A transposed convolution is a convolution with stride 1 over the input with ``stride - 1`` zeros
  inserted between its entries, padded by ``dilation * (k - 1) - padding`` (plus ``output_padding`` at
  the end), with the kernel flipped. Each output position is again a linear function of one patch of
  that input, so its rows are those patches, with the kernel axes flipped back so that coordinate
  ``(c_in, k)`` multiplies the stored ``weight[c_in, c_out, k]``; ``G`` is the stored gradient with its
  first two axes swapped.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor, nn

from ..factors import Factor, Grouped
from ..unfold import patches
from .base import Adapter, DTensor, compute_local_shape_and_global_offset, gathered, write_rows_

__all__ = ["ConvAdapter", "ConvTransposeAdapter", "conv_unsupported_reason", "patches"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _positions(size: tuple[int, ...], kernel: tuple[int, ...], dilation: tuple[int, ...],
               pads: list[tuple[int, int]], stride: tuple[int, ...]) -> int:
    """Output positions of a convolution over an input of spatial ``size``."""
    return math.prod((n + a + b - d * (k - 1) - 1) // s + 1
                     for n, k, d, (a, b), s in zip(size, kernel, dilation, pads, stride))


def _explicit_padding(module: nn.Module) -> tuple[int, ...]:
    if module.padding == "valid":
        return (0,) * len(module.kernel_size)
    if module.padding == "same":
        pads = []
        for k, d in zip(module.kernel_size, module.dilation):
            total = d * (k - 1)
            if total % 2:
                raise ValueError("asymmetric 'same' padding is not supported")
            pads.append(total // 2)
        return tuple(pads)
    return tuple(module.padding)


def _batched(x: Tensor, spatial: int) -> Tensor:
    return x.unsqueeze(0) if x.ndim == spatial + 1 else x


def _ntuple(value: object, n: int) -> object:
    return value if isinstance(value, str) else tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


class ConvAdapter(Adapter):
    maskable = False  # rows are patches, not positions of the input
    reads = "conv"

    def reads_like_module(self, module: nn.Module, stride: object, padding: object, dilation: object,
                          groups: int) -> bool:
        """Whether ``F.convNd(x, W, b, stride, padding, dilation, groups)`` has the module's geometry: the rows
        DoPr forms are the patches of the module's kernel, stride, padding and dilation."""
        n = len(module.kernel_size)
        return (groups == module.groups and _ntuple(stride, n) == tuple(module.stride)
                and _ntuple(dilation, n) == tuple(module.dilation)
                and _ntuple(padding, n) == _ntuple(module.padding, n))

    def unfolding(self, module: nn.Module) -> tuple:
        """The arguments after the input of :func:`~dopr.unfold.patches` for this layer's rows."""
        return (*self._geometry(module), False, None, module.groups)

    def groups(self, module: nn.Module) -> int:
        return module.groups

    def sharing_key(self, module: nn.Module) -> tuple:
        # layers reading one tensor share Sigma only if they form the same rows of it: the same patches
        return (tuple(module.kernel_size), tuple(module.stride), _ntuple(module.padding, len(module.kernel_size)),
                tuple(module.dilation), module.groups)
    def in_features(self, module: nn.Module) -> int:
        return module.weight[0].numel()

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        # one copy out of the windows' view; F.unfold plus the transpose to rows copies twice and took 1.1-4.6x
        # as long on CPU (a 4x4/4 patchify stem of 128 84x84 images: 43 ms against 9 ms)
        # a grouped convolution's rows: groups x n x d (each group's own channels)
        return patches(_batched(x, len(module.kernel_size)), *self._geometry(module), groups=module.groups)

    @staticmethod
    def _geometry(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...], list[tuple[int, int]], tuple[int, ...]]:
        return module.kernel_size, module.dilation, [(p, p) for p in _explicit_padding(module)], module.stride

    def row_count(self, module: nn.Module, x: Tensor) -> int:
        x = _batched(x, len(module.kernel_size))
        return x.shape[0] * _positions(tuple(x.shape[2:]), *self._geometry(module))

    def selected_rows(self, module: nn.Module, x: Tensor, select: Tensor) -> Tensor:
        return patches(_batched(x, len(module.kernel_size)), *self._geometry(module), select=select,
                       groups=module.groups)

    def local_factor(self, module: nn.Module, factor: Factor) -> Factor:
        grad = module.weight.grad
        if module.groups == 1 or DTensor is None or not isinstance(grad, DTensor):
            return factor
        # FSDP2 shards the output channels: each local row multiplies the factor of its channel's group
        shape, offset = compute_local_shape_and_global_offset(grad.shape, grad.device_mesh, grad.placements)
        rows = torch.arange(offset[0], offset[0] + shape[0], device=factor.tensor.device)
        return Grouped(factor.tensor[rows // (module.out_channels // module.groups)], factor.inner)


class ConvTransposeAdapter(Adapter):
    """``nn.ConvTranspose{1,2,3}d``: weight ``C_in x C_out/groups x *kernel``; ``G`` is ``C_out x (C_in/groups *
    prod(kernel))``, group by group (as a grouped convolution: each group a layer of its own)."""

    maskable = False

    def in_features(self, module: nn.Module) -> int:
        return module.in_channels // module.groups * math.prod(module.kernel_size)

    def out_features(self, module: nn.Module) -> int:
        return module.out_channels

    def groups(self, module: nn.Module) -> int:
        return module.groups

    def sharing_key(self, module: nn.Module) -> tuple:
        return ("transposed", tuple(module.kernel_size), tuple(module.stride), tuple(module.padding),
                _output_padding(module), tuple(module.dilation), module.groups)

    def read(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> Tensor | None:
        x = super().read(module, args, kwargs, output)
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        if size is None or x is None:
            _CALL_OUTPUT_PADDING.pop(module, None)
        else:  # this call's output padding, as the module's forward derives it (the rows are formed right after)
            _CALL_OUTPUT_PADDING[module] = tuple(module._output_padding(
                x, list(size), module.stride, module.padding, module.kernel_size, len(module.kernel_size),
                module.dilation))
        return x

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        return patches(*self._dilated(module, x), flip=True, groups=module.groups)

    def _dilated(self, module: nn.Module, x: Tensor) -> tuple[Tensor, tuple[int, ...], tuple[int, ...],
                                                              list[tuple[int, int]], tuple[int, ...]]:
        """The stride-1 convolution this one is: its input (zeros inserted) and geometry, as :func:`patches` takes."""
        spatial = len(module.kernel_size)
        x = _batched(x, spatial)
        stride = module.stride
        if any(s > 1 for s in stride):  # insert stride - 1 zeros between the input's entries
            n, c, *size = x.shape
            up = x.new_zeros(n, c, *[(m - 1) * s + 1 for m, s in zip(size, stride)])
            up[(slice(None), slice(None), *[slice(None, None, s) for s in stride])] = x
            x = up
        pads = [(d * (k - 1) - p, d * (k - 1) - p + op) for k, d, p, op in
                zip(module.kernel_size, module.dilation, module.padding, _output_padding(module))]
        return x, module.kernel_size, module.dilation, pads, (1,) * spatial

    def row_count(self, module: nn.Module, x: Tensor) -> int:
        x = _batched(x, len(module.kernel_size))
        up, *geometry = self._dilated(module, x[:0])  # an empty batch: the geometry without the copy
        return x.shape[0] * _positions(tuple(up.shape[2:]), *geometry)

    def selected_rows(self, module: nn.Module, x: Tensor, select: Tensor) -> Tensor:
        return patches(*self._dilated(module, x), flip=True, select=select, groups=module.groups)

    def gradient(self, module: nn.Module) -> Tensor:
        # FSDP2 shards the stored weight along C_in, which AP mixes: each rank gathers the whole gradient (and keeps
        # its rows of M in write_gradient)
        w = gathered(module.weight.grad)
        g = module.groups
        w = w.view(g, w.shape[0] // g, *w.shape[1:]).transpose(1, 2)  # group, its C_out, its C_in, *kernel
        rows = w.reshape(w.shape[0] * w.shape[1], -1)
        if module.bias is not None:
            rows = torch.cat([rows, gathered(module.bias.grad).reshape(-1, 1)], dim=1)
        return rows

    def write_gradient(self, module: nn.Module, m: Tensor) -> None:
        k, g, shape = self.in_features(module), module.groups, module.weight.shape
        full = m[:, :k].reshape(g, shape[1], shape[0] // g, *shape[2:]).transpose(1, 2).reshape(shape)
        write_rows_(module.weight.grad, full)
        if module.bias is not None:
            write_rows_(module.bias.grad, m[:, k])


# a transposed convolution called with output_size: the output padding of its last call (read, then its rows)
_CALL_OUTPUT_PADDING: weakref.WeakKeyDictionary[nn.Module, tuple[int, ...]] = weakref.WeakKeyDictionary()


def _output_padding(module: nn.Module) -> tuple[int, ...]:
    return _CALL_OUTPUT_PADDING.get(module, tuple(module.output_padding))


def conv_unsupported_reason(module: nn.Module) -> str | None:
    """Why a convolution cannot be preconditioned, or None if it can."""
    if module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} (only zero padding is unfolded into patches)"
    if isinstance(module, _CONV) and module.padding == "same" and any(
            d * (k - 1) % 2 for k, d in zip(module.kernel_size, module.dilation)):
        return "asymmetric 'same' padding"
    return None


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, _CONV)


def is_conv_transpose(module: nn.Module) -> bool:
    return isinstance(module, _CONV_T)
