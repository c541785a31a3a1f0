"""Step times of several arms measured side by side: each round runs every arm's step once, in turn, so the
machine's noise (these CPUs are shared) hits all arms alike; the medians after the warm-up rounds are compared."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable


def interleaved_medians(steps: dict[Hashable, Callable[[], None]], rounds: int, warmup: int,
                        sync: Callable[[], None] = lambda: None) -> dict[Hashable, tuple[float, float]]:
    """Each arm's median ``(wall, process CPU)`` seconds per call of its ``step``; ``sync`` (a device
    synchronization) runs before and after each timed call."""
    wall: dict[Hashable, list[float]] = {k: [] for k in steps}
    cpu: dict[Hashable, list[float]] = {k: [] for k in steps}
    for i in range(warmup + rounds):
        for key, step in steps.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync()
            if i >= warmup:
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in steps}


def training_step(opt: object, loss: Callable[[], object]) -> Callable[[], None]:
    """``zero_grad``, ``loss().backward()``, ``step``: one training step of ``opt`` as a timed call."""

    def step() -> None:
        opt.zero_grad()
        loss().backward()
        opt.step()

    return step
