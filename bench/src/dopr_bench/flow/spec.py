"""The flow bench's options (:class:`FlowSpec`) and ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..core.spec import Common, opt


@dataclass(frozen=True)
class FlowSpec(Common):
    seeds: int = opt(5, "number of seeds", setting=False)
    steps: int = opt(2000, "training steps")
    batch: int = opt(256, "minibatch size")
    width: int = opt(256, "hidden width of the velocity field")
    blocks: int = opt(3, "residual blocks")
    ema: float = opt(0.005, "EMA rate of the evaluated weights")
    samples: int = opt(1000, "generated samples per evaluation")
    integration_steps: tuple[int, ...] = opt((1, 2, 4, 8, 16, 32), "Euler steps at which samples are judged")
    val_draws: int = opt(4, "noise/time draws per validation image")
    log_every: int = opt(100, "steps between logged losses")


QUICK: dict[str, Any] = dict(steps=300, samples=300, integration_steps=(1, 4, 16), log_every=50)


def resolve(task: str, quick: bool, overrides: dict[str, Any]) -> FlowSpec:
    if task != "digits":
        raise SystemExit(f"unknown flow task {task!r}; the flow bench has one task: digits")
    return replace(FlowSpec(**(QUICK if quick else {})), **overrides)


def planned(spec: FlowSpec, task: str) -> dict[str, Any]:
    return spec.settings() | {"task": "flow-digits"}
