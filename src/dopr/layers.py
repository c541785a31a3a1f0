"""One small adapter per supported layer type.

An adapter says how to read a layer's input ``z`` as rows of a matrix, and how to view the layer's
gradient as ``G`` (``d_out x d_in``) so that ``M = G (Sigma + lambda I)^{-1}`` is the paper's AP step.

Choices, each derived from the invariance principle (the update must not depend on an invertible
affine change of a layer's input coordinates):

* ``nn.Linear`` with bias: the bias is the weight of a constant input 1, so ``z`` is augmented with
  a 1 and the bias gradient is the last column of ``G``.
* ``nn.Conv1d`` / ``nn.Conv2d`` (``groups=1``): a convolution is a linear map applied to every
  unfolded patch, so each patch (``C_in * prod(kernel)``, plus 1 for the bias) is a row of ``Z`` and
  Sigma is the full patch second moment. This makes the update invariant to any invertible linear
  map of patches, including any 1x1 re-mixing of input channels.
* ``nn.Embedding``: inputs are one-hot vectors, so Sigma is diagonal with the token frequencies on
  it; ``G`` is the transpose of the stored ``num_embeddings x dim`` weight gradient, and ``M`` scales
  each token's gradient row by ``1 / (freq + lambda)``.
"""

from __future__ import annotations

import fnmatch

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # FSDP2 shards parameters as DTensors; AP acts on each rank's rows
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None  # type: ignore[assignment,misc]


def local(t: Tensor) -> Tensor:
    """The rank-local part of a (possibly FSDP2-sharded) tensor; shards are blocks of rows."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t

__all__ = ["Adapter", "adapter_for", "supported_layers", "unsupported_reason"]


class Adapter:
    """How DoPr reads one layer type. Subclasses are stateless."""

    diagonal = False

    def has_bias(self, module: nn.Module) -> bool:
        return getattr(module, "bias", None) is not None

    def in_features(self, module: nn.Module) -> int:
        raise NotImplementedError

    def dim(self, module: nn.Module) -> int:
        """Size of Sigma: ``d_in`` plus one for a bias."""
        return self.in_features(module) + int(self.has_bias(module))

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        """The layer input as an ``n x d_in`` matrix (no bias column)."""
        raise NotImplementedError

    def params(self, module: nn.Module) -> list[nn.Parameter]:
        ps = [module.weight]
        if self.has_bias(module):
            ps.append(module.bias)
        return ps

    def gradient(self, module: nn.Module) -> Tensor:
        """``G`` as ``d_out x dim`` (bias gradient as the last column); this rank's rows under FSDP2."""
        w_grad = local(module.weight.grad)
        g = w_grad.reshape(w_grad.shape[0], -1)
        if self.has_bias(module):
            g = torch.cat([g, local(module.bias.grad).reshape(-1, 1)], dim=1)
        return g

    def local_inverse(self, module: nn.Module, inverse: Tensor) -> Tensor:
        """The part of the factor of ``(Sigma + lambda I)^{-1}`` that multiplies this rank's gradient (all of it,
        except for a diagonal factor whose entries follow sharded gradient rows)."""
        return inverse

    def write_gradient(self, module: nn.Module, m: Tensor) -> None:
        """Write ``M`` (``d_out x dim``) back into the ``.grad`` of the layer's parameters."""
        w_grad = local(module.weight.grad)
        k = self.in_features(module)
        w_grad.copy_(m[:, :k].reshape(w_grad.shape))
        if self.has_bias(module):
            local(module.bias.grad).copy_(m[:, k])


class LinearAdapter(Adapter):
    def in_features(self, module: nn.Module) -> int:
        return module.in_features

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        return x.reshape(-1, module.in_features)


class ConvAdapter(Adapter):
    def in_features(self, module: nn.Module) -> int:
        return module.weight[0].numel()

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        spatial = len(module.kernel_size)
        if spatial == 1:
            x = x.unsqueeze(-2)
            kernel, dilation = (1, *module.kernel_size), (1, *module.dilation)
            padding, stride = (0, *_explicit_padding(module)), (1, *module.stride)
        else:
            kernel, dilation = module.kernel_size, module.dilation
            padding, stride = _explicit_padding(module), module.stride
        if x.ndim == 3:  # unbatched input
            x = x.unsqueeze(0)
        patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])


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


class EmbeddingAdapter(Adapter):
    diagonal = True

    def has_bias(self, module: nn.Module) -> bool:
        return False

    def in_features(self, module: nn.Module) -> int:
        return module.num_embeddings

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        """Token ids, flattened (a one-hot row each, kept implicit)."""
        return x.reshape(-1)

    def gradient(self, module: nn.Module) -> Tensor:
        return local(module.weight.grad).T

    def local_inverse(self, module: nn.Module, inverse: Tensor) -> Tensor:
        grad = module.weight.grad
        if DTensor is None or not isinstance(grad, DTensor):
            return inverse
        # FSDP2 shards the vocabulary rows: take this rank's slice of the token frequencies
        shape, offset = compute_local_shape_and_global_offset(grad.shape, grad.device_mesh, grad.placements)
        return inverse[offset[0] : offset[0] + shape[0]]

    def write_gradient(self, module: nn.Module, m: Tensor) -> None:
        local(module.weight.grad).copy_(m.T)


_LINEAR, _CONV, _EMBEDDING = LinearAdapter(), ConvAdapter(), EmbeddingAdapter()


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a module of a supported type cannot be preconditioned, or None if it can."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups})"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
        if module.padding == "same" and any(d * (k - 1) % 2 for k, d in zip(module.kernel_size, module.dilation)):
            return "asymmetric 'same' padding"
    if isinstance(module, nn.Embedding):
        if module.sparse:
            return "sparse embedding gradients"
        if module.max_norm is not None:
            return "max_norm renormalises the weight in the forward pass"
    return None


def adapter_for(module: nn.Module) -> Adapter | None:
    """The adapter for a module whose own parameters DoPr can precondition, else None."""
    if isinstance(module, nn.Linear):
        return _LINEAR
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return _CONV
    if isinstance(module, nn.Embedding):
        return _EMBEDDING
    return None


def supported_layers(model: nn.Module, exclude: tuple[str, ...]) -> tuple[dict[str, tuple[nn.Module, Adapter]],
                                                                        dict[str, str]]:
    """The layers of ``model`` DoPr preconditions (name -> module, adapter), and why each other candidate is not.

    Left to the base optimizer: frozen or partly frozen layers, names matching an ``exclude`` fnmatch
    pattern, unsupported configurations, and layers that share a parameter with another (tied weights).
    """
    owners: dict[int, list[str]] = {}
    candidates: dict[str, tuple[nn.Module, Adapter]] = {}
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        adapter = adapter_for(module)
        if adapter is None:
            continue
        params = adapter.params(module)
        if not any(p.requires_grad for p in params):
            skipped[name] = "frozen (no parameter requires grad)"
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            skipped[name] = "excluded by name pattern"
            continue
        reason = unsupported_reason(module)
        if reason is not None:
            skipped[name] = f"unsupported: {reason}"
            continue
        if not all(p.requires_grad for p in params):
            skipped[name] = "partly frozen (weight or bias does not require grad)"
            continue
        candidates[name] = (module, adapter)
        for p in params:
            owners.setdefault(id(p), []).append(name)
    shared = {n for names in owners.values() if len(names) > 1 for n in names}
    for name in (n for n in candidates if n in shared):
        skipped[name] = "parameter shared with another layer (e.g. tied embeddings)"
    return {n: c for n, c in candidates.items() if n not in shared}, skipped
