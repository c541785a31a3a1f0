"""A resumed run follows the uninterrupted trajectory exactly, in every statistics mode."""

import copy
import io
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dopr import DoPr
from helpers import QKV

CONFIGS = {
    "adamw-batch": dict(base="adamw", lr=1e-2),
    "adamw-ema-refresh3": dict(base="adamw", lr=1e-2, sigma="ema", ema_decay=0.9, refresh_every=3),
    "sgd-subsampled-rows": dict(base="sgd", lr=1e-2, momentum=0.9, max_rows=7),
    "muon": dict(base="muon", lr=2e-2, aux_lr=1e-2),
    "adamuon": dict(base="adamuon", lr=1e-2),
    "signum": dict(base="signum", lr=1e-3),
    "adamw-cholesky-refresh3": dict(base="adamw", lr=1e-2, solve="cholesky", refresh_every=3),
    "adamw-blocks-ema": dict(base="adamw", lr=1e-2, max_block=2, sigma="ema", ema_decay=0.9),
}


def _make():
    torch.manual_seed(3)
    return QKV()


def _data():
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)) for _ in range(12)]


def _train(model, opt, batches, sched=None):
    for x, y in batches:
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resume_is_exact(name):
    cfg = CONFIGS[name]
    data = _data()
    m = _make()
    o = DoPr(m, damping=1e-2, **cfg)
    s = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12)
    _train(m, o, data, s)

    m1 = _make()
    o1 = DoPr(m1, damping=1e-2, **cfg)
    s1 = torch.optim.lr_scheduler.CosineAnnealingLR(o1, T_max=12)
    _train(m1, o1, data[:5], s1)
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict(), "sched": s1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # loading must not need pickled code

    m2 = _make()
    o2 = DoPr(m2, damping=1e-2, **cfg)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(o2, T_max=12)
    m2.load_state_dict(ckpt["model"])
    o2.load_state_dict(ckpt["opt"])
    s2.load_state_dict(ckpt["sched"])
    _train(m2, o2, data[5:], s2)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert o2.stats() == o.stats()


def test_state_dict_is_keyed_by_module_name_and_keeps_fp32_statistics_in_bf16_models():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    o = DoPr(m, lr=1e-3, sigma="ema")
    _train(m, o, [(torch.randn(8, 4), torch.randn(8, 2))])
    state = o.state_dict()
    assert set(state["dopr"]["groups"]) == {"0", "2"}
    m_bf16 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).to(torch.bfloat16)
    o_bf16 = DoPr(m_bf16, lr=1e-3, sigma="ema")
    o_bf16.load_state_dict(state)
    group = o_bf16.preconditioner.groups["0"]
    assert group.ema.dtype == torch.float32 and group.factor.dtype == torch.float32
    # base optimizer state follows the parameter dtype, as torch.optim does
    assert all(v["exp_avg"].dtype == torch.bfloat16 for v in o_bf16.state.values())


def test_loading_a_plain_optimizer_state_is_refused_with_advice():
    m = nn.Linear(3, 2)
    o = DoPr(m, lr=1e-3)
    plain = torch.optim.AdamW(m.parameters(), lr=1e-3).state_dict()
    with pytest.raises(KeyError, match="not saved by DoPr"):
        o.load_state_dict(plain)


def test_loading_state_of_a_different_model_names_the_layers():
    o = DoPr(nn.Sequential(nn.Linear(3, 2)), lr=1e-3)
    other = DoPr(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), lr=1e-3)
    state = other.state_dict()
    state["param_groups"] = o.state_dict()["param_groups"]
    with pytest.raises(KeyError, match=r"\['1'\]"):
        o.load_state_dict(state)


@pytest.mark.parametrize("corrupt,match", [
    (lambda s: s["dopr"].pop("groups"), r"missing \['groups'\]"),
    (lambda s: s["dopr"]["groups"]["0"].pop("factor"), "group '0' is malformed"),
    (lambda s: s["dopr"]["groups"]["0"].update(members=[]), "no valid member names"),
    (lambda s: s["dopr"]["groups"]["0"].update(inverse=torch.eye(3)), "differently shaped model"),
])
def test_malformed_state_is_refused_before_anything_changes(corrupt, match):
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    m = make()
    o = DoPr(m, lr=1e-3)
    _train(m, o, [(torch.randn(8, 4), torch.randn(8, 2))])
    state = o.state_dict()
    corrupt(state)
    m2 = make()
    o2 = DoPr(m2, lr=1e-3)
    _train(m2, o2, [(torch.randn(8, 4) * 3, torch.randn(8, 2))])  # different data: different state
    before = copy.deepcopy(o2.state_dict())
    with pytest.raises(ValueError, match=match):
        o2.load_state_dict(state)
    after = o2.state_dict()
    assert not all(torch.equal(a["exp_avg"], b["exp_avg"]) for a, b in zip(state["state"].values(),
                                                                              before["state"].values()))
    assert after["dopr"]["step_count"] == before["dopr"]["step_count"]
    assert all(torch.equal(a["exp_avg"], b["exp_avg"]) for a, b in zip(after["state"].values(),
                                                                          before["state"].values()))


def test_a_state_dict_of_dopr_0_1_with_inverse_still_loads() -> None:
    data = _data()
    m = _make()
    o = DoPr(m, damping=1e-2, base="adamw", lr=1e-2)
    _train(m, o, data[:3])
    state = copy.deepcopy(o.state_dict())  # as a checkpoint file would hold it: no aliasing of live tensors
    for g in state["dopr"]["groups"].values():  # the layout before factors could be Cholesky factors
        g["inverse"] = g.pop("factor")
        del g["kind"]
    m2 = _make()
    m2.load_state_dict(m.state_dict())
    o2 = DoPr(m2, damping=1e-2, base="adamw", lr=1e-2)
    o2.load_state_dict(state)
    _train(m, o, data[3:])
    _train(m2, o2, data[3:])
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)



def test_a_checkpoint_from_before_typed_factors_loads_and_steps_as_it_did():
    """tests/fixtures/state-before-typed-factors.pt was saved by dopr at ea2a0ed, when a group's factor was a tensor
    and a string (issue 22): every solve form (diagonal, low-rank, blocked, inverse, Cholesky) loads into its class
    and the next step gives the parameters that dopr gave (bitwise where the CPU kernels are the same)."""
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from make_state_fixture import Net, batches, make, step

    saved = torch.load(Path(__file__).parent / "fixtures" / "state-before-typed-factors.pt", weights_only=False)
    model = Net()
    model.load_state_dict(saved["model"])
    opt = make(model)
    opt.load_state_dict(saved["optimizer"])
    kinds = {name: (g.factor.kind, g.blocks) for name, g in opt.preconditioner.groups.items()}
    assert kinds == saved["kinds"]
    step(model, opt, batches()[2])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved["after"][name], rtol=1e-6, atol=1e-7, msg=name)
