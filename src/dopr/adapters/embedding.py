"""``nn.Embedding``: inputs are one-hot vectors, so Sigma is diagonal with the token frequencies on it.

``G`` is the transpose of the stored ``num_embeddings x dim`` weight gradient, and ``M`` scales each
token's gradient row by ``1 / (freq + lambda)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..factors import Factor
from .base import Adapter, DTensor, compute_local_shape_and_global_offset, local

__all__ = ["EmbeddingAdapter", "embedding_unsupported_reason"]


class EmbeddingAdapter(Adapter):
    diagonal = True
    reads = "embedding"

    def bias(self, module: nn.Module) -> None:
        return None

    def in_features(self, module: nn.Module) -> int:
        return module.num_embeddings

    def out_features(self, module: nn.Module) -> int:
        return module.embedding_dim

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        """Token ids, flattened (a one-hot row each, kept implicit)."""
        return x.reshape(-1)

    def gradient(self, module: nn.Module) -> Tensor:
        return local(module.weight.grad).T

    def local_factor(self, module: nn.Module, factor: Factor) -> Factor:
        grad = module.weight.grad
        if DTensor is None or not isinstance(grad, DTensor):
            return factor
        # FSDP2 shards the vocabulary rows: take this rank's slice of the token frequencies
        shape, offset = compute_local_shape_and_global_offset(grad.shape, grad.device_mesh, grad.placements)
        return factor.local(slice(offset[0], offset[0] + shape[0]))

    def write_gradient(self, module: nn.Module, m: Tensor) -> None:
        local(module.weight.grad).copy_(m.T)


def embedding_unsupported_reason(module: nn.Module) -> str | None:
    if module.sparse:
        return "sparse embedding gradients"
    if module.max_norm is not None:
        return "max_norm renormalises the weight in the forward pass"
    return None
