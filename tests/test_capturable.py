"""capturable=True: the same steps as the default mode, with failures handled on the device (no host read).

tests/test_syncs.py bounds its host syncs at 0 beyond the base; here its numbers: equal to the default mode where
both take the same path, and a failed factorization keeps the last good factor (or the identity) by a device-side
select, counted in stats() without a warning.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from dopr import DoPr


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _train(model: nn.Module, opt: DoPr, inputs: list[torch.Tensor]) -> None:
    for x in inputs:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("options", [{}, {"solve": "cholesky"}, {"max_block": 4}, {"sigma": "ema"}])
def test_capturable_takes_the_default_modes_steps(options):
    inputs = [torch.randn(32, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    runs = []
    for capturable in (False, True):
        model = _model()
        _train(model, DoPr(model, lr=1e-2, capturable=capturable, **options), inputs)
        runs.append(model)
    for p, q in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("fallback", ["last", "identity"])
def test_a_failed_factorization_keeps_the_last_factor_on_the_device(fallback):
    """Zero inputs and no damping: Sigma is singular, its Cholesky fails. The default mode warns, retries in float64
    and falls back on the host; capturable selects the same fallback on the device and counts it."""
    inputs = [torch.randn(32, 6, generator=torch.Generator().manual_seed(0)), torch.zeros(32, 6)]
    runs, stats = [], []
    for capturable in (False, True):
        model = _model()
        opt = DoPr(model, lr=1e-2, damping=0.0, fallback=fallback, capturable=capturable)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _train(model, opt, inputs)
        assert any("failed" in str(w.message) for w in caught) != capturable  # capturable: no warning (no read)
        runs.append(model)
        stats.append(opt.stats()["0"])
    assert stats[0]["fallbacks"] == stats[1]["fallbacks"] == 1
    for p, q in zip(runs[0].parameters(), runs[1].parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_capturable_needs_all_rows_and_one_process():
    with pytest.raises(ValueError, match="max_rows=None"):
        DoPr(_model(), lr=1e-2, capturable=True, max_rows=8)


def test_capturable_resumes_bit_exactly():
    inputs = [torch.randn(32, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    model = _model()
    opt = DoPr(model, lr=1e-2, capturable=True)
    _train(model, opt, inputs[:2])
    resumed_model = copy.deepcopy(model)
    resumed = DoPr(resumed_model, lr=1e-2, capturable=True)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(model, opt, inputs[2:])
    _train(resumed_model, resumed, inputs[2:])
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
