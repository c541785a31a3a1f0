"""Conformance with torch.optim conventions, including torch's own optimizer kwargs sweep."""

import copy
import pickle

import pytest
import torch
from torch import nn

from dopr import DoPr
from dopr.reference import ReferenceAP
from helpers import max_rel_diff, mlp


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def _optim_db_inputs():
    common = pytest.importorskip("torch.testing._internal.common_optimizers")
    cases = []
    for info in common.optim_db:
        if info.optim_cls not in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD):
            continue
        for oi in info.optim_inputs_func(device="cpu"):
            kw = dict(oi.kwargs)
            if kw.get("capturable") or kw.get("fused") or kw.get("differentiable"):
                continue  # capturable/fused need an accelerator; differentiable needs a graph through step
            cases.append(pytest.param(info.optim_cls, kw, id=f"{info.optim_cls.__name__}-{oi.desc}"))
    return cases


@pytest.mark.parametrize("cls,kwargs", _optim_db_inputs())
def test_torch_optim_db_kwargs_through_dopr_match_the_reference(cls, kwargs):
    torch.manual_seed(0)
    m1 = mlp().double()
    m2 = copy.deepcopy(m1)
    opt = DoPr(m1, base=cls, damping=1e-2, **kwargs)
    ref = ReferenceAP(m2, 1e-2)
    base = cls(m2.parameters(), **kwargs)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g,
                                                                                dtype=torch.float64)
        opt.zero_grad()
        _loss(m1, x, y).backward()
        opt.step()
        base.zero_grad()
        _loss(m2, x, y).backward()
        ref.precondition_()
        base.step()
    assert max_rel_diff(m1, m2) < 1e-9


def test_step_hooks_fire():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    _loss(model, torch.randn(4, 5), torch.randn(4, 3)).backward()
    opt.step()
    assert calls == ["pre", "post"]


@pytest.mark.parametrize("base", ["adamw", "muon"])
def test_global_step_hooks_fire_once_per_step(base):
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    model = mlp()
    opt = DoPr(model, base=base, lr=1e-2)
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("pre", type(o).__name__))),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append(("post", type(o).__name__)))]
    try:
        before = [p.detach().clone() for p in model.parameters()]
        _loss(model, torch.randn(4, 5), torch.randn(4, 3)).backward()
        opt.step()
    finally:
        for h in handles:
            h.remove()
    assert calls == [("pre", "DoPr"), ("post", "DoPr")]
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))  # every base stepped


def test_add_param_group_after_construction():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    extra = nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    assert opt.param_groups[-1]["lr"] == 0.5 and opt.bases[0][1].param_groups[-1] is opt.param_groups[-1]
    (_loss(model, torch.randn(4, 5), torch.randn(4, 3)) + extra.sum()).backward()
    opt.step()
    assert extra.abs().sum() > 0
    opt2 = DoPr(mlp(), lr=1e-2)
    opt2.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "lr": 0.5})
    opt2.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("base", ["muon", "adamuon"])
def test_add_param_group_with_a_matrix_base_goes_to_the_auxiliary_adamw(base):
    # Muon takes only the hidden Linear weights it was built with: a new bias or scale would break its step
    model = mlp()
    opt = DoPr(model, base=base, lr=1e-2)
    extra = nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    aux = dict(opt.bases)["adamw"]
    assert aux.param_groups[-1] is opt.param_groups[-1] and aux.param_groups[-1]["params"] == [extra]
    (_loss(model, torch.randn(4, 5), torch.randn(4, 3)) + extra.square().sum()).backward()
    opt.step()
    assert not torch.equal(extra, torch.ones(3))
    assert opt.routes[-1].base == "adamw" and "add_param_group" in opt.routes[-1].reason


def test_add_param_group_with_every_parameter_in_muon_makes_an_auxiliary_adamw():
    # bias-free hidden Linear layers only (the last one is not named like a head): Muon holds everything
    model = nn.Sequential(nn.Linear(5, 8, bias=False), nn.Tanh(), nn.Linear(8, 3, bias=False))
    opt = DoPr(model, base="muon", lr=1e-2)
    assert [name for name, _ in opt.bases] == ["muon"]
    extra = nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": (p for p in [extra]), "lr": 0.5})  # a generator, as model.parameters() is
    assert [name for name, _ in opt.bases] == ["muon", "adamw"]
    assert opt.param_groups[-1]["params"] == [extra] and opt.param_groups[-1]["lr"] == 0.5
    (_loss(model, torch.randn(4, 5), torch.randn(4, 3)) + extra.square().sum()).backward()
    opt.step()
    assert not torch.equal(extra, torch.ones(3))
    opt.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("base", ["adamw", "muon"])
def test_add_param_group_refuses_a_parameter_it_already_optimizes(base):
    model = mlp()
    opt = DoPr(model, base=base, lr=1e-2)
    groups = len(opt.param_groups)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [model[0].bias]})
    assert len(opt.param_groups) == groups


def _trained(base="adamw"):
    torch.manual_seed(0)
    model = mlp()
    opt = DoPr(model, base=base, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        _loss(model, torch.randn(4, 5), torch.randn(4, 3)).backward()
        opt.step()
    return model, opt


def _continue(model, opt, steps=2):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        _loss(model, torch.randn(4, 5, generator=g), torch.randn(4, 3, generator=g)).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_a_state_dict_of_an_older_torch_loads_as_into_the_base():
    # group keys later torch versions added, and step counts as numbers: each base's __setstate__ fills them in
    model, opt = _trained()
    saved = copy.deepcopy(opt.state_dict())
    old = copy.deepcopy(saved)
    for group in old["param_groups"]:
        for key in ("maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"):
            group.pop(key, None)
    for state in old["state"].values():
        state["step"] = float(state["step"])
    runs = []
    for state_dict in (saved, old):
        fresh = mlp()
        fresh.load_state_dict(model.state_dict())
        again = DoPr(fresh, lr=1e-2)
        again.load_state_dict(state_dict)
        runs.append(_continue(fresh, again))
        again.remove()
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_state_dict_hooks_see_the_preconditioners_entry():
    model, opt = _trained()
    seen = []
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(sorted(sd)), prepend=True)
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append(sorted(sd)))
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert seen == [["dopr", "param_groups", "state"]] * 2 and "dopr" in state
    with pytest.raises(KeyError, match="'dopr' entry"):
        opt.load_state_dict({k: v for k, v in state.items() if k != "dopr"})


def test_a_base_whose_step_needs_a_closure_is_refused_with_the_reason():
    with pytest.raises(TypeError, match="closure"):
        DoPr(mlp(), base=torch.optim.LBFGS, lr=1.0)


def test_zero_grad_set_to_none_false_keeps_zero_tensors():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    _loss(model, torch.randn(4, 5), torch.randn(4, 3)).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_deepcopy_and_pickle_explain_what_to_do_instead():
    opt = DoPr(mlp(), lr=1e-2)
    with pytest.raises(TypeError, match="load_state_dict"):
        copy.deepcopy(opt)
    with pytest.raises(TypeError, match="state_dict"):
        pickle.dumps(opt)


def test_lr_defaults_to_the_base_optimizers_default():
    opt = DoPr(mlp(), base="adamw")
    assert opt.param_groups[0]["lr"] == torch.optim.AdamW([nn.Parameter(torch.zeros(1))]).defaults["lr"]


def test_tensor_lr_is_passed_through():
    model = mlp()
    opt = DoPr(model, lr=torch.tensor(1e-2))
    _loss(model, torch.randn(4, 5), torch.randn(4, 3)).backward()
    opt.step()
