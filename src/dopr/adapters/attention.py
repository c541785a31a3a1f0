"""``nn.MultiheadAttention``: the q, k and v projections, and the output projection.

* q, k and v are three linear layers stored as row blocks of ``in_proj_weight`` (``3E x E``) and
  ``in_proj_bias`` (or as ``q/k/v_proj_weight`` when ``kdim``/``vdim`` differ). Each reads its own
  input (query, key, value), so each gets the Sigma of that input; in self-attention the three inputs
  are one tensor and share one Sigma (and one factorization), in cross-attention with ``key is value``
  k and v share one.
* ``out_proj`` reads the attention output, which ``F.multi_head_attention_forward`` computes and feeds
  to ``F.linear`` internally, so no hook can see it. DoPr therefore switches each plain
  ``nn.MultiheadAttention`` to :class:`CapturedMultiheadAttention`, a subclass with the same parameters,
  buffers and state-dict keys whose training forward asks the fused function for the attention output
  (by passing an identity output projection, exact in floating point) and then calls ``self.out_proj``
  as a module, so its input is seen like any Linear's. Outputs are identical; the price is one extra
  ``E x E`` product per call. Outside training (eval, no_grad) it is torch's forward, fast path
  included (except where torch's fast path refuses any weight with ``__torch_function__``, which tapped weights
  have: there it runs torch's general path, equal to the fast path to rounding, and, with a padding mask in a
  ``TransformerEncoder``, not zero at padded positions as the nested-tensor path is). ``remove()`` switches the
  modules back. A forward hook a user puts on ``out_proj`` runs in training while DoPr is attached (plain
  ``nn.MultiheadAttention`` never calls ``out_proj`` as a module, so it never runs there).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tap import read_projections
from .base import Adapter
from .switch import PlainWhenCopied, hold, let_go

__all__ = ["CapturedMultiheadAttention", "InProjAdapter", "capture_attention", "release_attention"]

_PARTS = ("q", "k", "v")


class InProjAdapter(Adapter):
    """One of the q, k, v projections of an ``nn.MultiheadAttention``."""

    #: read by :class:`CapturedMultiheadAttention`'s forward, which reports it (dopr.tap.read_projections)
    reads = "packed"

    def __init__(self, part: str) -> None:
        self.part = part
        self.index = _PARTS.index(part)

    def weight(self, module: nn.Module) -> nn.Parameter:
        if module._qkv_same_embed_dim:
            return module.in_proj_weight
        return getattr(module, f"{self.part}_proj_weight")

    def bias(self, module: nn.Module) -> nn.Parameter | None:
        return module.in_proj_bias

    def in_features(self, module: nn.Module) -> int:
        return {"q": module.embed_dim, "k": module.kdim, "v": module.vdim}[self.part]

    def rows_of(self, module: nn.Module, param: nn.Parameter) -> tuple[int, int] | None:
        if param is module.in_proj_weight or param is module.in_proj_bias:
            e = module.embed_dim
            return self.index * e, (self.index + 1) * e
        return None

    def read(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Tensor | None:
        name = ("query", "key", "value")[self.index]
        x = args[self.index] if len(args) > self.index else kwargs.get(name)
        return x if isinstance(x, Tensor) else None

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        return x.reshape(-1, self.in_features(module))


class CapturedMultiheadAttention(PlainWhenCopied, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose training forward calls ``out_proj`` as a module (see the module docstring).

    A drop-in: same constructor, parameters, state dict and outputs. DoPr switches plain
    ``nn.MultiheadAttention`` modules to it in place; build models with it directly to avoid the switch.
    """

    _dopr_plain = nn.MultiheadAttention

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if not (self.training and torch.is_grad_enabled()) or query.is_nested:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        is_batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        if self.batch_first and is_batched:  # keep the "is" relations, as torch's forward does
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        # the identity makes the fused function return the attention output itself (x * 1 + 0 is exact)
        eye = torch.eye(self.embed_dim, dtype=self.out_proj.weight.dtype, device=self.out_proj.weight.device)
        separate = {} if self._qkv_same_embed_dim else dict(
            use_separate_proj_weight=True, q_proj_weight=self.q_proj_weight, k_proj_weight=self.k_proj_weight,
            v_proj_weight=self.v_proj_weight)
        attended, attention_weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias, self.bias_k,
            self.bias_v, self.add_zero_attn, self.dropout, eye, None, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal, **separate)
        projections = (self.in_proj_weight,) if self._qkv_same_embed_dim else (
            self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        attended = read_projections(projections, {"q": query, "k": key, "v": value}, attended)
        out = self.out_proj(attended)
        if self.batch_first and is_batched:
            out = out.transpose(1, 0)
        return out, attention_weights


def capture_attention(module: nn.Module) -> bool:
    """Switch a plain ``nn.MultiheadAttention`` to :class:`CapturedMultiheadAttention` in place (held once per
    preconditioner, :mod:`dopr.adapters.switch`); False if it is a subclass with a forward of its own (left as is)."""
    return hold(module, nn.MultiheadAttention, CapturedMultiheadAttention)


def release_attention(module: nn.Module) -> None:
    let_go(module, nn.MultiheadAttention, CapturedMultiheadAttention)
