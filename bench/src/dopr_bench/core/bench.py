"""What a bench provides to the core, and the registry of the four benches.

A bench module ``dopr_bench.<name>.bench`` defines ``BENCH = Bench(...)``: its Spec type, how a task and
``--quick`` resolve to a Spec, how to prepare the data once per sweep (:class:`Prepared`), one training run, its
validation and test metrics, and its summary and plots. The sweep runner, results schema, statistics, report and
CLI are the core's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

BENCHES = ("bc", "lm", "flow", "robo")


@dataclass(frozen=True)
class Metric:
    """A number per run: its label, whether higher is better, and how it is read and printed."""

    label: str
    value: Callable[[dict[str, Any]], float]
    higher_is_better: bool
    fmt: Callable[[float], str] = lambda v: f"{v:.3g}"

    def of(self, run: dict[str, Any]) -> float:
        v = self.value(run)
        return float(v) if v is not None else float("nan")

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` (nan is never better)."""
        if not np.isfinite(a):
            return False
        return not np.isfinite(b) or (a > b if self.higher_is_better else a < b)


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...


class Prepared(Protocol):
    """The data of one sweep, loaded once; ``settings`` are those the data determine (source, sizes, ...)."""

    settings: dict[str, Any]
    spec: Any  # the Spec its runs are built from; the sweep sets each DoPr run's damping here (--dampings)

    def info(self, old: dict[str, Any]) -> dict[str, Any]:
        """Top-level fields of results.json besides the runs (``old``: those already saved, to keep)."""
        ...

    def run(self, arm: str, seed: int, lr: float, progress: Progress | None) -> dict[str, Any]:
        """One training run and its evaluation: the run's record (metrics, curves, ``train_s``, ``diverged``)."""
        ...

    def line(self, run: dict[str, Any]) -> str:
        """One line describing a finished run."""
        ...

    def close(self, results: dict[str, Any], out: Path) -> None:
        """After the sweep (release environments, write videos)."""
        ...


@dataclass(frozen=True)
class Bench:
    name: str
    help: str
    spec_type: type
    tasks: tuple[str, ...]  # the tasks it knows; a bench may accept others (e.g. with --dataset)
    default_task: str
    resolve: Callable[[str, bool, dict[str, Any]], Any]  # (task, quick, overrides) -> Spec
    planned: Callable[[Any, str], dict[str, Any]]  # settings known before any data is loaded
    data_keys: frozenset[str]  # settings only the data determine
    prepare: Callable[[Any, str, Path], Prepared]  # (spec, task, cache) -> Prepared
    val: Metric
    test: Metric
    summary: Callable[[dict[str, Any]], str]  # summary.md of results with one lr (lm: any number of lrs)
    plots: Callable[[dict[str, Any], Path], list[Path]]
    headline: Callable[[dict[str, Any]], str]  # a short description of a folder's setting (README index)
    sweeps_lrs: bool = False  # the summary itself lays out several lrs (else the core splits it by lr)
    out_name: Callable[[str, Any], str] = lambda task, spec: task  # default folder name under results/
    steps: Callable[[Any], int] = lambda spec: int(spec.steps)  # training steps of one run (progress bars)
    notes: Callable[[dict[str, Any], Path], list[str]] = field(default=lambda results, root: [])  # printed after
    #: other checkpoints a run is also judged at, as (name, validation metric, test metric), e.g. the weights with
    #: the lowest validation loss; reported where runs have them (older runs do not: their metric is nan)
    checkpoints: tuple[tuple[str, Metric, Metric], ...] = ()


def get_bench(name: str) -> Bench:
    if name not in BENCHES:
        raise SystemExit(f"unknown bench {name!r}; choose one of {list(BENCHES)}")
    return importlib.import_module(f"dopr_bench.{name}.bench").BENCH
