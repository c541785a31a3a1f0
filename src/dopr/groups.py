"""Per-layer and per-input-group records of the ActivationPreconditioner, and its state-dict checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .adapters import Adapter
from .factors import Factor, factor_from_state
from .functional import block_size

__all__ = ["TELEMETRY", "Group", "Layer", "check_group_shapes", "group_from_state", "group_state", "validate_state"]


@dataclass
class Layer:
    name: str
    module: nn.Module
    adapter: Adapter
    group: str
    module_name: str = ""  # the module whose forward this layer is part of ("" : the layer's own name)
    fires: int = 0  # captured forwards this step
    fires_outside_backward: int = 0
    output_grads: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # tied embeddings: (ids, d out)
    grad_marker: Any = None  # for output_grads, as Group.grad_marker for rows
    reads: list[int] = field(default_factory=list)  # the tensors it read this step, numbered (grouping, first step)

    def __post_init__(self) -> None:
        self.module_name = self.module_name or self.name


@dataclass
class Group:
    """Statistics and factorization shared by the layers that read one input."""

    members: list[str]  # members[0] names the group
    dim: int
    diagonal: bool
    bias: bool
    blocks: int = 1  # > 1: Sigma is kept as this many diagonal blocks (blocks x b x b), see functional.py
    groups: int = 1  # > 1: that many independent layers (a grouped convolution), Sigma groups x dim x dim
    total: Tensor | None = None  # running sum of z z^T (or of one-hot counts) this step
    kept: list[Tensor] = field(default_factory=list)  # or the rows themselves, while fewer than dim/2
    rows: int | Tensor = 0  # a 0-d tensor where counted inside a compiled graph with capturable=True
    accumulations: int = 0
    ema: Tensor | None = None
    factor: Factor | None = None  # (Sigma + lambda I)^{-1} in one solve form (dopr.factors)
    # telemetry
    refreshes: int = 0
    fallbacks: int = 0
    float64_retries: int = 0
    missing_statistics: int = 0
    trace: float | Tensor = float("nan")  # tensors until read, so a refresh needs no device sync
    condition: float | Tensor = float("nan")
    damping: float | Tensor = float("nan")
    seen: dict[int, Any] = field(default_factory=dict)  # id(input) -> weakref, this step
    grad_marker: Any = None  # weakref to the weight's .grad when rows were last committed (see the preconditioner)

    @property
    def has_rows(self) -> bool:
        """Whether rows were committed this step (without reading a count kept on the device)."""
        return self.rows > 0 if isinstance(self.rows, int) else self.total is not None or bool(self.kept)

    def sigma_shape(self) -> tuple[int, ...]:
        """Shape of this group's Sigma (and of its accumulator, EMA and factor)."""
        if self.diagonal:
            return (self.dim,)
        if self.groups > 1:
            return (self.groups, self.dim, self.dim)
        if self.blocks > 1:
            b = block_size(self.dim, self.blocks)
            return (self.blocks, b, b)
        return (self.dim, self.dim)

    def telemetry(self) -> dict[str, float | int | list[str]]:
        return {"layers": list(self.members), "dim": self.dim, "blocks": self.blocks, "groups": self.groups,
                "trace_sigma": float(self.trace),
                "condition_estimate": float(self.condition), "damping_used": float(self.damping),
                "refreshes": self.refreshes, "fallbacks": int(self.fallbacks),
                "float64_retries": int(self.float64_retries), "missing_statistics": self.missing_statistics}


def validate_state(state: Any) -> None:
    required = ("step_count", "skipped_steps", "grouping_frozen", "generator", "groups")
    per_group = ("members", "ema", *TELEMETRY)
    problem = None
    if not isinstance(state, dict):
        problem = f"expected a dict, got {type(state).__name__}"
    elif missing := [k for k in required if k not in state]:
        problem = f"missing {missing}"
    elif not isinstance(state["groups"], dict):
        problem = "'groups' is not a dict"
    else:
        for key, g in state["groups"].items():
            if not isinstance(g, dict) or (missing := [k for k in per_group if k not in g]):
                problem = f"group {key!r} is malformed (missing {missing if isinstance(g, dict) else 'everything'})"
                break
            if "factor" not in g and "inverse" not in g:  # "inverse": state dicts of dopr <= 0.1
                problem = f"group {key!r} is malformed (missing ['factor'])"
                break
            if not g["members"] or not all(isinstance(m, str) for m in g["members"]):
                problem = f"group {key!r} has no valid member names"
                break
    if problem:
        raise ValueError(
            f"malformed DoPr preconditioner state ({problem}); pass the 'dopr' entry of a DoPr.state_dict() "
            "(or the dict from ActivationPreconditioner.state_dict()) saved by this version of dopr"
        )


TELEMETRY = ("refreshes", "fallbacks", "float64_retries", "missing_statistics", "trace", "condition", "damping")


def group_state(g: Group) -> dict[str, Any]:
    """A group's entry in the preconditioner's state dict (telemetry as floats)."""
    return {
        "members": list(g.members),
        "ema": g.ema,
        # statistics of a step in progress, so a checkpoint taken mid-accumulation resumes exactly
        "total": g.total,
        "kept": torch.cat(g.kept) if g.kept else None,
        "rows": g.rows,
        "accumulations": g.accumulations,
        # a copy: the factor is a view of memory the next refresh overwrites (and saving a view saves its base);
        # the clone keeps the layout: a resume is bitwise exact
        **(g.factor.state() if g.factor is not None else
           {"factor": None, "kind": "diagonal" if g.diagonal else "inverse", "low_rank_chol": None,
            "low_rank_damping": None}),
        **{k: float(v) if torch.is_tensor(v := getattr(g, k)) else v for k in TELEMETRY},
    }


def check_group_shapes(saved: dict[str, Any], group: Group) -> None:
    """Raise if the tensors of a saved group do not fit ``group`` (a fresh group of this model)."""
    want = group.sigma_shape()
    for name in ("ema", "factor", "inverse", "total", "kept"):
        t = saved.get(name)
        if t is None:
            continue
        if group.blocks > 1 or group.groups > 1:
            fits = name != "kept" and tuple(t.shape) == want
        else:  # a low-rank factor and the kept rows are n x dim (kept rows lack the bias column)
            fits = t.shape[-1] == group.dim - (group.bias and name == "kept")
        if not fits:
            raise ValueError(
                f"the saved {name} of layer(s) {saved['members']} is {tuple(t.shape)}, but this model's "
                f"Sigma is {' x '.join(map(str, want))}: the state dict belongs to a differently shaped model "
                "or was saved with another max_block"
            )


def group_from_state(saved: dict[str, Any], fresh: Group, device: torch.device) -> Group:
    """The group :func:`group_state` saved (shaped like ``fresh``), without the statistics of a step in progress."""
    g = Group(list(saved["members"]), fresh.dim, fresh.diagonal, fresh.bias, fresh.blocks, fresh.groups)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    g.ema = to(saved["ema"])
    g.factor = factor_from_state(saved, diagonal=fresh.diagonal, blocks=fresh.blocks, groups=fresh.groups, to=to)
    for k in TELEMETRY:
        setattr(g, k, saved[k])
    return g
