"""Weights that no module call reads: banks of mixture-of-experts weights, and their routers.

Both belong to a module that declares its number of experts ``E`` (``num_experts``, as transformers' experts and
router modules do), and both are captured only where the weight is read (:mod:`dopr.tap`), since no module call
takes their input:

* A 3-D parameter ``E x out x in`` (transformers' fused experts: ``gate_up_proj``, ``down_proj``) is a bank of
  ``E`` independent linear layers, expert ``e`` read as ``F.linear(x, W[e])`` on the tokens routed to it. Each
  expert is a layer of its own (``experts:gate_up_proj[3]``) with the Sigma of its own tokens, so the update of
  one expert does not depend on how the tokens of another are spread; the experts' equal-size Sigmas are
  factorized in one batched call (:func:`dopr.refresh.refresh_groups` buckets them).
  Banks that transformers marks ``is_transposed`` (gpt-oss), or whose gate/up bank has the hidden size first
  (Llama 4), are ``E x in x out``, read as ``x @ W[e]`` or ``bmm(x, W)`` (``x``: ``E x n x in``), and their
  ``<bank>_bias`` (``E x out``, where the module ``has_bias``) is each expert's bias.
* A 2-D ``E x in`` ``weight``, read as ``F.linear(x, W)`` (the router): the Linear layer it is.

Transformers' default experts implementation reads a whole bank in one ``grouped_mm`` over the tokens sorted by
expert; each expert's segment is its rows. A weight of either kind read another way (a cast, a concatenation, an op
DoPr does not tap) records no statistics, and DoPr names it at the step (``missing_statistics``) instead of
preconditioning it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Adapter, local

__all__ = ["ExpertAdapter", "MatrixAdapter", "raw_weight_layers"]


class MatrixAdapter(Adapter):
    """A raw ``out x in`` parameter ``attr`` read as ``F.linear(x, W)`` (no bias)."""

    reads = "linear"
    module_call = False

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def weight(self, module: nn.Module) -> nn.Parameter:
        return getattr(module, self.attr)

    def bias(self, module: nn.Module) -> None:
        return None

    def in_features(self, module: nn.Module) -> int:
        return self.weight(module).shape[-1]

    def rows(self, module: nn.Module, x: Tensor) -> Tensor:
        return x.reshape(-1, self.in_features(module))


class ExpertAdapter(MatrixAdapter):
    """Expert ``index`` of the bank ``attr``: ``E x out x in`` read as ``F.linear(x, W[index])``, or, ``transposed``,
    ``E x in x out`` read as ``x @ W[index]`` (gpt-oss); with its row of the bank's bias ``bias_attr`` (``E x out``)."""

    reads = "expert"

    def __init__(self, attr: str, index: int, transposed: bool = False, bias_attr: str | None = None) -> None:
        super().__init__(attr)
        self.index, self.transposed, self.bias_attr = index, transposed, bias_attr

    def bias(self, module: nn.Module) -> nn.Parameter | None:
        return None if self.bias_attr is None else getattr(module, self.bias_attr)

    def in_features(self, module: nn.Module) -> int:
        return self.weight(module).shape[1 if self.transposed else 2]

    def out_features(self, module: nn.Module) -> int:
        return self.weight(module).shape[2 if self.transposed else 1]

    def rows_of(self, module: nn.Module, param: nn.Parameter) -> tuple[int, int]:
        return self.index, self.index + 1

    def gradient(self, module: nn.Module) -> Tensor:
        g = local(self.weight(module).grad)[self.index]
        g = g.T if self.transposed else g
        bias = self.bias(module)
        return g if bias is None else torch.cat([g, local(bias.grad)[self.index].reshape(-1, 1)], dim=1)

    def write_gradient(self, module: nn.Module, m: Tensor) -> None:
        k = self.in_features(module)
        w = local(self.weight(module).grad)[self.index]
        w.copy_(m[:, :k].T if self.transposed else m[:, :k])
        bias = self.bias(module)
        if bias is not None:
            local(bias.grad)[self.index].copy_(m[:, k])


#: the attributes by which a module declares how many experts it holds (transformers' experts and routers)
EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts")


def expert_count(module: nn.Module) -> int | None:
    """How many experts ``module`` declares (None: it declares none)."""
    return next((c for a in EXPERT_COUNTS if isinstance(c := getattr(module, a, None), int)), None)


def expert_banks(model: nn.Module) -> dict[int, bool]:
    """ids of the expert banks of ``model`` (the 3-D parameters :func:`raw_weight_layers` reads as experts) ->
    whether the bank is stored transposed (``E x in x out``)."""
    banks: dict[int, bool] = {}
    for module in model.modules():
        for _, adapter in raw_weight_layers(module):
            if isinstance(adapter, ExpertAdapter):
                banks[id(adapter.weight(module))] = adapter.transposed
    return banks


def _transposed(module: nn.Module) -> bool:
    """Whether the module's banks are ``E x in x out``: transformers' ``is_transposed`` flag where its experts
    implementations set it; otherwise whether the bank that reads the hidden states (``gate_up_proj``, ``up_proj``)
    has the hidden size first (Llama 4's experts, read by ``bmm``)."""
    flag = getattr(module, "is_transposed", None)
    if isinstance(flag, bool):
        return flag
    hidden = next((h for a in ("hidden_size", "hidden_dim") if isinstance(h := getattr(module, a, None), int)), None)
    bank = next((p for a in ("gate_up_proj", "up_proj") if isinstance(p := getattr(module, a, None), Tensor)), None)
    return hidden is not None and bank is not None and bank.ndim == 3 and bank.shape[1] == hidden != bank.shape[2]


def raw_weight_layers(module: nn.Module) -> list[tuple[str, Adapter]]:
    """The layers of a module DoPr has no adapter for that declares ``E`` experts (``num_experts``): each expert of
    its ``E x out x in`` parameters, and its ``E x in`` router ``weight``. Raw parameters of any other module (a
    position table, a layer scale) are not layers: they are named as uncovered, as before."""
    count = expert_count(module)
    if count is None:
        return []
    parts: list[tuple[str, Adapter]] = []
    transposed = _transposed(module)
    for attr, p in module.named_parameters(recurse=False):
        if p.ndim == 3 and p.shape[0] == count and min(p.shape[1:]) > 1:
            bias = f"{attr}_bias" if getattr(module, "has_bias", False) and hasattr(module, f"{attr}_bias") else None
            parts += [(f":{attr}[{e}]", ExpertAdapter(attr, e, transposed, bias)) for e in range(count)]
        elif p.ndim == 2 and attr == "weight" and p.shape[0] == count and p.shape[1] > 1:
            parts.append(("", MatrixAdapter(attr)))
    return parts
