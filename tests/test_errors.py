"""Bad input gets a clear error that says what was wrong and how to fix it, and loses nothing."""

import copy
import warnings

import pytest
import torch
from torch import nn

from dopr import ActivationPreconditioner, DoPr, NonFiniteError
from helpers import mlp


def _snapshot(model):
    return copy.deepcopy(model.state_dict())


def _unchanged(model, snap):
    return all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_non_finite_gradient_names_the_layer_and_changes_nothing():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    model(torch.randn(4, 5)).sum().backward()
    model[2].weight.grad[0, 0] = float("nan")
    grads = [p.grad.clone() for p in model.parameters()]
    snap = _snapshot(model)
    with pytest.raises(NonFiniteError, match=r"gradient of layer '2'.*GradScaler"):
        opt.step()
    assert _unchanged(model, snap)
    assert all(torch.allclose(g, p.grad, rtol=0, atol=0, equal_nan=True) for g, p in zip(grads, model.parameters()))
    assert opt.state == {} or all(not s for s in opt.state.values())


def test_non_finite_activation_names_the_layer():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    x = torch.randn(4, 5)
    x[1, 2] = float("inf")
    snap = _snapshot(model)
    model(x).nan_to_num().sum().backward()
    for p in model.parameters():  # make the gradients finite so the activation check is what fires
        p.grad.nan_to_num_(0.0, 0.0, 0.0)
    with pytest.raises(NonFiniteError, match=r"input activations of layer\(s\) \['0'\]"):
        opt.step()
    assert _unchanged(model, snap)


def test_non_finite_activation_kept_as_rows_names_the_layer():
    model = nn.Sequential(nn.Linear(20, 3))  # 4 rows into 21 columns: the rows are kept (Woodbury form)
    opt = DoPr(model, lr=1e-2)
    x = torch.randn(4, 20)
    x[1, 2] = float("nan")
    snap = _snapshot(model)
    model(x).nan_to_num().sum().backward()
    for p in model.parameters():
        p.grad.nan_to_num_(0.0, 0.0, 0.0)
    assert opt.preconditioner.groups["0"].kept and opt.preconditioner.groups["0"].total is None
    with pytest.raises(NonFiniteError, match=r"input activations of layer\(s\) \['0'\]"):
        opt.step()
    assert _unchanged(model, snap)


def test_singular_low_rank_form_falls_back_and_is_counted():
    model = nn.Linear(10, 2, bias=False)
    ap = ActivationPreconditioner(model, damping=0.0, fallback="identity")
    model(torch.randn(3, 10)).sum().backward()  # 3 rows of 10 columns, no damping: singular
    g = model.weight.grad.clone()
    with pytest.warns(RuntimeWarning, match="using the plain gradient"):
        ap.precondition_()
    assert torch.equal(model.weight.grad, g)
    assert ap.stats()[""]["fallbacks"] == 1


def test_nonfinite_skip_skips_the_step_with_a_warning():
    model = mlp()
    opt = DoPr(model, lr=1e-2, nonfinite="skip")
    model(torch.randn(4, 5)).sum().backward()
    model[0].bias.grad[0] = float("inf")
    snap = _snapshot(model)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    assert _unchanged(model, snap) and opt.preconditioner.skipped_steps == 1
    opt.zero_grad()
    model(torch.randn(4, 5)).sum().backward()
    opt.step()
    assert not _unchanged(model, snap)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=-1.0), ValueError, "lr must be"),
    (dict(lr=1e-3, damping=-0.1), ValueError, "damping must be"),
    (dict(lr=1e-3, sigma="running"), ValueError, "sigma must be one of"),
    (dict(lr=1e-3, refresh_every=0), ValueError, "refresh_every"),
    (dict(lr=1e-3, solve="qr"), ValueError, "solve must be one of"),
    (dict(lr=1e-3, max_rows=0), ValueError, "max_rows"),
    (dict(lr=1e-3, ema_decay=1.0), ValueError, "ema_decay"),
    (dict(lr=1e-3, fallback="zero"), ValueError, "fallback"),
    (dict(lr=1e-3, nonfinite="ignore"), ValueError, "nonfinite"),
    (dict(lr=1e-3, base="lamb"), ValueError, "unknown base optimizer 'lamb'"),
    (dict(lr=1e-3, base=42), TypeError, "base must be"),
    (dict(lr=1e-3, betaz=(0.9, 0.99)), TypeError, r"adamw rejected the keyword arguments \['betaz'\]"),
])
def test_wrong_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DoPr(mlp(), **kwargs)


def test_passing_parameters_instead_of_the_model_explains_why():
    with pytest.raises(TypeError, match=r"DoPr\(model, lr=...\)"):
        DoPr(mlp().parameters(), lr=1e-3)


def test_a_model_with_nothing_to_train():
    model = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        DoPr(model, lr=1e-3)


def test_singular_sigma_falls_back_and_is_counted():
    model = nn.Linear(3, 2, bias=False)
    ap = ActivationPreconditioner(model, damping=0.0, absolute_damping=0.0, fallback="identity")
    model(torch.zeros(4, 3)).sum().backward()  # Sigma = 0: no Cholesky in float32 or float64
    g = model.weight.grad.clone()
    ap.precondition_()
    assert torch.equal(model.weight.grad, g)  # identity fallback: the plain gradient
    assert ap.stats()[""]["fallbacks"] == 1


def test_fallback_last_keeps_the_last_good_factor():
    model = nn.Linear(3, 2, bias=False)
    ap = ActivationPreconditioner(model, damping=0.0, absolute_damping=0.0)
    model(torch.randn(8, 3)).sum().backward()
    ap.precondition_()
    good = ap.groups[""].factor.tensor.clone()
    model.zero_grad()
    model(torch.zeros(4, 3)).sum().backward()
    ap.precondition_()
    assert torch.equal(ap.groups[""].factor.tensor, good)
    assert ap.stats()[""]["fallbacks"] == 1 and ap.stats()[""]["refreshes"] == 2


def test_a_layer_with_a_gradient_but_no_recorded_input_warns_once():
    class Bypass(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 4)
            self.proj = nn.Linear(4, 2)

        def forward(self, x):  # reads proj's weight only through a tensor computed from it, which no tap can see
            return nn.functional.linear(self.inp(x), self.proj.weight * 1.0, self.proj.bias)

    model = Bypass()
    opt = DoPr(model, lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(5, 3)).sum().backward()
            opt.step()
    messages = [str(w.message) for w in caught if "recorded no input" in str(w.message)]
    assert len(messages) == 1 and "'proj'" in messages[0] and "computed from it" in messages[0]
    assert opt.stats()["proj"]["missing_statistics"] == 2 and opt.stats()["inp"]["refreshes"] == 2
