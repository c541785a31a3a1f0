"""One small adapter per supported layer type, and the discovery of a model's layers.

An adapter says how to read a layer's input ``z`` as rows of a matrix, and how to view the layer's
gradient as ``G`` (``d_out x d_in``) so that ``M = G (Sigma + lambda I)^{-1}`` is the paper's AP step.
Each choice is derived from the invariance principle (the update must not depend on an invertible
affine change of a layer's input coordinates); the module of each adapter says how.

Some modules hold several layers in the paper's sense: ``nn.MultiheadAttention`` (q, k and v rows of
``in_proj_weight``, each reading its own input) and the recurrent modules (``weight_ih`` reads
``x_t``, ``weight_hh`` reads ``h_{t-1}``). Each such layer gets its own entry, named
``module:part`` (``attn:q``, ``lstm:hh_l0``), with its own (or shared) Sigma.
"""

from .base import Adapter, LinearAdapter, local
from .discovery import Discovery, LayerSpec, discover
from .embedding import EmbeddingAdapter

__all__ = ["Adapter", "Discovery", "EmbeddingAdapter", "LayerSpec", "LinearAdapter", "discover", "local"]
