"""The optimizer as a torch.optim citizen: routing summary, telemetry, dtypes, schedulers, AP alone."""

import copy

import pytest
import torch
from torch import nn

from dopr import ActivationPreconditioner, DoPr
from helpers import QKV, mlp


def _step(model, opt, x, y):
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return loss


def test_muon_routing_is_visible_in_the_summary():
    model = QKV()
    opt = DoPr(model, base="muon", lr=0.02, aux_lr=1e-3)
    routes = {r.name: r.base for r in opt.routes}
    assert routes["q.weight"] == "muon" and routes["inp.weight"] == "muon"
    assert routes["head.weight"] == "adamw" and routes["q.bias"] == "adamw"
    assert [name for name, _ in opt.bases] == ["muon", "adamw"]
    assert opt.bases[1][1].param_groups[0]["lr"] == 1e-3
    _step(model, opt, torch.randn(4, 5), torch.randn(4, 2))  # input sharing is discovered on the first step
    text = opt.summary()
    assert "head.weight" in text and "output head" in text and "AP   q, k, v  (Sigma 7x7 full, bias)" in text
    # every trainable tensor is listed exactly once
    assert sorted(routes) == sorted(n for n, _ in model.named_parameters())


def test_summary_lists_layers_left_to_the_base_and_why():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.norm = nn.LayerNorm(4)
            self.frozen = nn.Linear(4, 4).requires_grad_(False)
            self.skip_me = nn.Linear(4, 4)
            self.grouped = nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect")
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight  # tied

        def forward(self, ids):
            h = self.norm(self.emb(ids))
            h = self.skip_me(self.frozen(h))
            h = self.grouped(h.transpose(1, 2)).transpose(1, 2)
            return self.out(h)

    model = Net()
    with pytest.warns(UserWarning, match="grouped.weight: unsupported: padding_mode='reflect'"):
        opt = DoPr(model, lr=1e-3, exclude=["skip_*"])
    skipped = opt.preconditioner.skipped
    assert skipped["frozen"].startswith("frozen")
    assert skipped["skip_me"] == "excluded by name pattern"
    assert "padding_mode='reflect'" in skipped["grouped"]
    assert opt.preconditioner.tied == [(["emb"], "out")]  # tied embeddings: each layer gets its own AP share
    assert "grouped.weight" in opt.preconditioner.discovery.unexpected()
    ids = torch.randint(0, 10, (3, 5))
    opt.zero_grad()
    model(ids).logsumexp(-1).mean().backward()
    opt.step()
    assert "norm.weight" in opt.summary()


def test_telemetry_reports_trace_damping_and_condition():
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    opt = DoPr(model, lr=1e-3, damping=0.5)
    x = torch.randn(32, 3) * torch.tensor([1.0, 10.0, 0.1])
    _step(model, opt, x, torch.randn(32, 2))
    s = opt.stats()["0"]
    sigma = x.T @ x / 32
    assert s["trace_sigma"] == pytest.approx(sigma.trace().item(), rel=1e-5)
    assert s["damping_used"] == pytest.approx(0.5 * sigma.trace().item() / 3, rel=1e-5)
    eig = torch.linalg.eigvalsh(sigma + s["damping_used"] * torch.eye(3))
    true_cond = (eig.max() / eig.min()).item()
    assert 1.0 <= s["condition_estimate"] <= true_cond * 1.0001
    assert s["refreshes"] == 1 and s["fallbacks"] == 0


@pytest.mark.parametrize("dtype,stat_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float32),
                                              (torch.float64, torch.float64)])
def test_dtypes(dtype, stat_dtype):
    model = mlp().to(dtype)
    opt = DoPr(model, lr=1e-2)
    x, y = torch.randn(16, 5, dtype=dtype), torch.randn(16, 3, dtype=dtype)
    losses = [_step(model, opt, x, y).item() for _ in range(20)]
    assert losses[-1] < losses[0]
    assert all(g.factor.dtype == stat_dtype for g in opt.preconditioner.groups.values())
    assert all(p.dtype == dtype for p in model.parameters())


def test_bf16_autocast_keeps_statistics_in_fp32():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(16, 5)).float().pow(2).mean()
    loss.backward()
    opt.step()
    ref = copy.deepcopy(opt.preconditioner.groups["0"].factor.tensor)
    assert ref.dtype == torch.float32


def test_param_groups_are_the_base_optimizers_groups_so_schedulers_work():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)  # cycles betas too
    base = opt.bases[0][1]
    for _ in range(3):
        _step(model, opt, torch.randn(8, 5), torch.randn(8, 3))
        sched.step()
    assert base.param_groups[0] is opt.param_groups[0]
    assert base.param_groups[0]["lr"] == sched.get_last_lr()[0]
    assert base.param_groups[0]["betas"][0] != 0.9


def test_closure_is_called_and_its_loss_returned():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    x, y = torch.randn(8, 5), torch.randn(8, 3)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = opt.step(closure)
    assert first.item() > opt.step(closure).item()


def test_custom_optimizer_class_as_base():
    model = mlp()
    opt = DoPr(model, base=torch.optim.RMSprop, lr=1e-3, alpha=0.9)
    assert isinstance(opt.bases[0][1], torch.optim.RMSprop)
    _step(model, opt, torch.randn(8, 5), torch.randn(8, 3))


def test_activation_preconditioner_with_a_users_own_optimizer_equals_dopr():
    m1 = mlp()
    m2 = copy.deepcopy(m1)
    dopr = DoPr(m1, lr=1e-2, damping=0.05, weight_decay=0.01)
    ap = ActivationPreconditioner(m2, damping=0.05)
    adamw = torch.optim.AdamW(m2.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(4):
        x, y = torch.randn(8, 5), torch.randn(8, 3)
        _step(m1, dopr, x, y)
        adamw.zero_grad()
        ((m2(x) - y) ** 2).mean().backward()
        ap.precondition_()
        adamw.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_fp16_with_grad_scaler_skips_inf_steps():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = ((model(x).float() - y) ** 2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_remove_detaches_the_hooks():
    model = mlp()
    ap = ActivationPreconditioner(model)
    ap.remove()
    model(torch.randn(2, 5)).sum().backward()
    assert all(g.rows == 0 for g in ap.groups.values())
