"""The training loop every bench runs: one skeleton, so that all four agree on what a step is and when a run stops.

A bench gives the loss of step ``s`` (its minibatch, noise and forward) and what happens after a step (the EMA);
:func:`fit` owns the rest: ``zero_grad``, the one divergence rule, the optional grad-norm clip, the logged running
mean of the training loss, evaluations whose time is not training time, and the progress bar.

The divergence rule: a step is applied only on a finite loss. A non-finite loss, DoPr's
:class:`~dopr.NonFiniteError` (a non-finite gradient or layer input; DoPr modifies nothing before raising it), or
non-finite weights after the last step stop the run as diverged, with the reason recorded. The weights and EMA are
then those of the last good step; the benches score a diverged run as failed without evaluating it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from dopr import NonFiniteError


@dataclass(frozen=True)
class Outcome:
    """How a run's training ended."""

    steps_done: int
    diverged: bool
    error: str | None
    train_s: float  # wall time of the steps and logging, without the evaluations
    eval_s: float = 0.0  # wall time of the evaluations (``evaluate``)

    def record(self) -> dict[str, Any]:
        return {"diverged": self.diverged, "error": self.error, "steps_done": self.steps_done,
                "train_s": self.train_s}


def fit(opt: torch.optim.Optimizer, params: Iterable[torch.Tensor], steps: int,
        loss_at: Callable[[int], torch.Tensor], *, log_every: int, log: Callable[[int, float], None],
        after_step: Callable[[int], None] | None = None, grad_clip: float = 0.0,
        evaluate_at: Collection[int] = (), evaluate: Callable[[int], None] | None = None,
        progress: Any = None) -> Outcome:
    """Steps ``1..steps``: ``loss_at(step)``, backward, clip, ``opt.step()``, ``after_step(step)``.

    ``log(step, mean training loss since the last log)`` runs every ``log_every`` steps, at the last step and at
    each step of ``evaluate_at``, where ``evaluate(step)`` runs next (its time is left out of ``train_s``).
    """
    params = [p for p in params if p.requires_grad]
    log_every = max(1, log_every)
    running, count, eval_s = 0.0, 0, 0.0
    start = time.perf_counter()

    def outcome(steps_done: int, error: str | None) -> Outcome:
        train_s = time.perf_counter() - start - eval_s
        return Outcome(steps_done, error is not None, None if error is None else error[:300], train_s, eval_s)

    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = loss_at(step)
        value = float(loss.detach())
        if not math.isfinite(value):
            return outcome(step - 1, f"non-finite loss ({value}) at step {step}")
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        try:
            opt.step()
        except NonFiniteError as err:
            return outcome(step - 1, f"DoPr at step {step}: {err}")
        if after_step is not None:
            after_step(step)
        running, count = running + value, count + 1
        if step % log_every == 0 or step == steps or step in evaluate_at:
            log(step, running / count)
            running, count = 0.0, 0
        if step in evaluate_at and evaluate is not None:
            t0 = time.perf_counter()
            evaluate(step)
            eval_s += time.perf_counter() - t0
        if progress is not None:
            progress.update(1)
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    return outcome(steps, None if finite else f"non-finite weights after step {steps}")
