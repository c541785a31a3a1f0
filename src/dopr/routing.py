"""Which base optimizer gets which parameter.

Matrix optimizers (Muon, AdaMuon) take the 2D weights of hidden ``nn.Linear`` layers (Muon also the 3-D banks of
mixture-of-experts weights, each matrix orthogonalized on its own); everything
else (biases, norms, embeddings, conv kernels, output heads, raw parameters) goes to an auxiliary
AdamW, as Muon's authors recommend. Element-wise optimizers take all parameters.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .adapters.base import is_hf_conv1d
from .adapters.experts import expert_banks
from .bases import AdaMuon, Muon, Signum
from .options import closest_option

__all__ = ["BASES", "DEFAULT_AUX_PATTERNS", "MATRIX_BASES", "Route", "build_bases"]

BASES: dict[str, type[Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "signum": Signum,
    "muon": Muon,  # torch.optim.Muon's update; ns_dtype=torch.float32 for CPUs without fast bfloat16
    "adamuon": AdaMuon,
}
MATRIX_BASES = {"muon", "adamuon"}
_BANK_BASES = {"muon"}  # matrix bases that also take 3-D banks of expert weights (AdaMuon takes 2-D only)

#: Module-name patterns whose Linear weights a matrix optimizer leaves to AdamW (output heads).
DEFAULT_AUX_PATTERNS: tuple[str, ...] = ("*lm_head", "*head", "*output", "*classifier", "*embed*")


@dataclass(frozen=True)
class Route:
    name: str
    shape: tuple[int, ...]
    base: str
    reason: str


def _linear_weights(model: nn.Module, aux_patterns: tuple[str, ...]) -> dict[int, bool]:
    """ids of hidden Linear weights (the matrix optimizer's share) -> whether stored transposed (``d_in x d_out``,
    Hugging Face's ``Conv1D``)."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out: dict[int, bool] = {}
    for name, module in model.named_modules():
        transposed = is_hf_conv1d(module)
        if (isinstance(module, nn.Linear) or transposed) and id(module.weight) not in embedding_weights:
            if not any(fnmatch.fnmatchcase(name, pat) for pat in aux_patterns):
                out[id(module.weight)] = transposed
    return out


def _option_hint(base_kwargs: dict[str, Any]) -> str:
    """A misspelled AP option reaches the base optimizer; say which option it resembles."""
    close = {name: closest_option(name) for name in base_kwargs}
    hints = [f"{name!r} looks like the DoPr option {match!r}" for name, match in close.items() if match]
    return f" ({'; '.join(hints)})" if hints else ""


def build_bases(
    model: nn.Module,
    base: str | type[Optimizer],
    lr: float | None,
    base_kwargs: dict[str, Any],
    aux_lr: float | None,
    aux_kwargs: dict[str, Any] | None,
    aux_patterns: tuple[str, ...],
) -> tuple[list[tuple[str, Optimizer]], list[Route]]:
    """Construct the base optimizer(s) for the trainable parameters of ``model``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameter with requires_grad=True; nothing to optimize")
    if isinstance(base, str):
        key = base.lower()
        if key not in BASES:
            raise ValueError(
                f"unknown base optimizer {base!r}; choose one of {sorted(BASES)} or pass an Optimizer class"
            )
        cls, label = BASES[key], key
    elif isinstance(base, type) and issubclass(base, Optimizer):
        cls, label = base, base.__name__
        closure = inspect.signature(cls.step).parameters.get("closure")
        if closure is not None and closure.default is inspect.Parameter.empty:
            raise TypeError(f"{label}.step needs a closure, which it calls again inside its step (a line search); "
                            "DoPr preconditions the gradient of one evaluation per step, so it cannot be its base. "
                            "Use a base whose step takes the closure as optional (Adam, SGD, ...)")
    else:
        raise TypeError(f"base must be a name or a torch.optim.Optimizer subclass, got {base!r}")

    kwargs = dict(base_kwargs) if lr is None else {"lr": lr, **base_kwargs}
    if label not in MATRIX_BASES:
        try:
            opt = cls([p for _, p in named], **kwargs)
        except TypeError as err:
            raise TypeError(f"{label} rejected the keyword arguments {sorted(base_kwargs)}: {err}"
                            f"{_option_hint(base_kwargs)}") from err
        return [(label, opt)], [Route(n, tuple(p.shape), label, "all parameters") for n, p in named]

    hidden = _linear_weights(model, aux_patterns)
    banks = expert_banks(model) if label in _BANK_BASES else {}
    hidden.update(banks)
    matrix = [(n, p) for n, p in named if p.ndim in (2, 3) and id(p) in hidden]
    aux = [(n, p) for n, p in named if not (p.ndim in (2, 3) and id(p) in hidden)]
    routes = [Route(n, tuple(p.shape), label, (
        "3D bank of expert weights, each orthogonalized on its own" if id(p) in banks else
        "2D weight of a hidden Linear layer") + (
        " (stored d_in x d_out" + ("" if id(p) in banks else ": Hugging Face Conv1D") + ")" if hidden[id(p)] else ""))
        for n, p in matrix]
    routes += [Route(n, tuple(p.shape), "adamw", _aux_reason(p)) for n, p in aux]
    order = {n: i for i, (n, _) in enumerate(named)}
    routes.sort(key=lambda r: order[r.name])
    bases: list[tuple[str, Optimizer]] = []
    if matrix:
        # Conv1D weights are stored transposed: Muon's update is transpose-equivariant except for its shape-based
        # lr scaling, which reads the logical d_out x d_in from the group's "transposed" flag
        plain = [p for _, p in matrix if not hidden[id(p)]]
        flipped = [p for _, p in matrix if hidden[id(p)]]
        groups = ([{"params": plain}] if plain else []) + ([{"params": flipped, "transposed": True}] if flipped else [])
        bases.append((label, cls(groups, **kwargs)))
    if aux:
        aux_kw = dict(aux_kwargs or {})
        if aux_lr is not None or lr is not None:
            aux_kw["lr"] = lr if aux_lr is None else aux_lr
        bases.append(("adamw", torch.optim.AdamW([p for _, p in aux], **aux_kw)))
    return bases, routes


def _aux_reason(p: nn.Parameter) -> str:
    if p.ndim != 2:
        return f"{p.ndim}D parameter"
    return "2D but not a hidden Linear weight (output head, embedding or raw parameter; see aux_patterns)"
