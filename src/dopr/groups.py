"""Per-layer and per-input-group records of the ActivationPreconditioner, and its state-dict checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .layers import Adapter

__all__ = ["TELEMETRY", "Group", "Layer", "validate_state"]


@dataclass
class Layer:
    name: str
    module: nn.Module
    adapter: Adapter
    group: str
    fires: int = 0  # captured forwards this step
    fires_outside_backward: int = 0


@dataclass
class Group:
    """Statistics and factorization shared by the layers that read one input."""

    members: list[str]  # members[0] names the group
    dim: int
    diagonal: bool
    bias: bool
    total: Tensor | None = None  # running sum of z z^T (or of one-hot counts) this step
    rows: int = 0
    accumulations: int = 0
    ema: Tensor | None = None
    factor: Tensor | None = None  # (Sigma + lambda I)^{-1}, its Cholesky factor, or diagonal reciprocals
    kind: str = "inverse"  # how ``factor`` is applied: "inverse", "cholesky" or "diagonal"
    # telemetry
    refreshes: int = 0
    fallbacks: int = 0
    float64_retries: int = 0
    missing_statistics: int = 0
    trace: float | Tensor = float("nan")  # tensors until read, so a refresh needs no device sync
    condition: float | Tensor = float("nan")
    damping: float | Tensor = float("nan")
    seen: dict[int, Any] = field(default_factory=dict)  # id(input) -> weakref, this step

    def telemetry(self) -> dict[str, float | int | list[str]]:
        return {"layers": list(self.members), "dim": self.dim, "trace_sigma": float(self.trace),
                "condition_estimate": float(self.condition), "damping_used": float(self.damping),
                "refreshes": self.refreshes, "fallbacks": self.fallbacks, "float64_retries": self.float64_retries,
                "missing_statistics": self.missing_statistics}


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
