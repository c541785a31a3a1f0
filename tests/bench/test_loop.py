"""The one training loop of every bench: what a step is, when a run stops, what is logged and timed."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from dopr import DoPr
from dopr_bench.core.loop import fit


def _setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _loss(model: nn.Module, bad_at: int | None = None, bad: float = float("nan")):
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))

    def loss_at(step: int) -> torch.Tensor:
        loss = model(x).pow(2).mean()
        return loss * bad if step == bad_at else loss

    return loss_at


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_the_run_before_its_step(bad: float) -> None:
    model, opt = _setup()
    logged: list[tuple[int, float]] = []
    after: list[int] = []
    end = fit(opt, model.parameters(), 10, _loss(model, bad_at=4, bad=bad), log_every=1,
              log=lambda s, v: logged.append((s, v)), after_step=after.append)
    assert end.diverged and end.steps_done == 3 and "non-finite loss" in end.error and "step 4" in end.error
    assert after == [1, 2, 3] and [s for s, _ in logged] == [1, 2, 3]
    ref, ref_opt = _setup()  # the weights are those after step 3: the bad step was never applied
    fit(ref_opt, ref.parameters(), 3, _loss(ref), log_every=1, log=lambda s, v: None)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_dopr_non_finite_statistics_stop_the_run_as_diverged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = DoPr(model, base="adamw", lr=1e-3)
    x = torch.randn(32, 4)

    def loss_at(step: int) -> torch.Tensor:
        # a finite loss whose first layer saw an infinite input: DoPr's statistics are not finite
        inp = x.clone()
        if step == 2:
            inp[0, 0] = float("inf")
        out = model[0](inp)
        return torch.nan_to_num(model[2](model[1](out)), posinf=0.0, neginf=0.0).pow(2).mean()

    end = fit(opt, model.parameters(), 5, loss_at, log_every=1, log=lambda s, v: None)
    assert end.diverged and end.steps_done == 1 and end.error.startswith("DoPr at step 2")


def test_logs_the_running_mean_at_its_cadence_the_last_step_and_evaluations() -> None:
    model, opt = _setup()
    values: list[float] = []
    loss_at = _loss(model)

    def recording(step: int) -> torch.Tensor:
        loss = loss_at(step)
        values.append(float(loss.detach()))
        return loss

    logged: list[tuple[int, float]] = []
    evaluated: list[int] = []
    end = fit(opt, model.parameters(), 7, recording, log_every=3, log=lambda s, v: logged.append((s, v)),
              evaluate_at={5}, evaluate=evaluated.append)
    assert not end.diverged and end.error is None and end.steps_done == 7
    assert [s for s, _ in logged] == [3, 5, 6, 7] and evaluated == [5]
    means = [sum(values[0:3]) / 3, sum(values[3:5]) / 2, values[5], values[6]]
    assert [v for _, v in logged] == pytest.approx(means, rel=1e-12)


def test_evaluation_time_is_not_training_time_and_the_clip_is_applied() -> None:
    model, opt = _setup()
    end = fit(opt, model.parameters(), 2, _loss(model), log_every=1, log=lambda s, v: None, evaluate_at={1},
              evaluate=lambda s: time.sleep(0.3), grad_clip=1e-3)
    assert end.train_s < 0.3 <= end.eval_s
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert float(norm) == pytest.approx(1e-3, rel=1e-4)


def test_non_finite_weights_after_the_last_step_are_divergence() -> None:
    model, opt = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=1e38)
    end = fit(opt, model.parameters(), 1, lambda s: model(torch.full((2, 4), 1e3)).pow(2).mean() * 1e30,
              log_every=1, log=lambda s, v: None)
    assert end.diverged and end.error == "non-finite weights after step 1"
