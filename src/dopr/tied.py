"""Tied input/output embeddings: one weight read by an Embedding (one-hot token inputs) and a Linear output head.

The weight's gradient is the sum of its two layers' gradients, ``G = G_head + G_emb``, and the paper's AP applies
to each layer with its own input:

    M = G_head (Sigma_h + lambda_h I)^{-1} + diag(freq + lambda_e)^{-1} G_emb

DoPr separates the sum: a hook on the embedding's output keeps its output gradients with the token ids, from
which ``G_emb`` is the scatter-add onto the token rows (the sum the embedding's own backward computes), and
``G_head = G - G_emb``. The head's ``M`` is written first, the embedding's is added to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import distributed
from .adapters.base import local, local_row_range
from .groups import Layer

__all__ = ["embedding_gradient", "separate_tied_gradients"]


def embedding_gradient(layer: Layer, like: Tensor, process_group: object = None) -> Tensor:
    """``G_emb`` (``vocab x d``, all of it) from the output gradients the embedding ``layer`` kept this step (summed
    over data-parallel ranks and divided by their number, as DDP and FSDP2 average ``.grad``)."""
    g = torch.zeros(like.shape, dtype=like.dtype, device=local(like).device)
    for ids, out_grad in layer.output_grads:
        g.index_add_(0, ids, out_grad.reshape(-1, g.shape[1]).to(g.dtype))
    if distributed.is_distributed(process_group):
        distributed.all_reduce_sum_([g], process_group)
        g /= torch.distributed.get_world_size(process_group)
    return g


def separate_tied_gradients(tied: list[tuple[list[str], str | None]], layers: dict[str, Layer],
                            grads: dict[str, Tensor], process_group: object = None) -> None:
    """Replace the summed gradient of each tied weight in ``grads`` by each layer's own share (see the module doc)."""
    for embeddings, head in tied:
        present = [e for e in embeddings if e in grads]
        if not present:
            continue
        weight_grad = layers[present[0]].module.weight.grad
        first, count = local_row_range(weight_grad)  # FSDP2: this rank's vocabulary rows (the layers' gradients too)
        total = None
        for name in present:
            g_emb = embedding_gradient(layers[name], weight_grad, process_group)[first : first + count]
            grads[name] = g_emb.T
            total = g_emb if total is None else total + g_emb
        if head is not None and head in grads:
            g = grads[head]
            d = total.shape[1]
            grads[head] = torch.cat([g[:, :d] - total, g[:, d:]], dim=1) if g.shape[1] > d else g - total
