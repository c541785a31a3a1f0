"""Mixture-of-experts: each expert gets the Sigma of the tokens routed to it, read where its weight is read.

transformers stores experts as 3-D banks (``gate_up_proj``: E x 2F x H, ``down_proj``: E x H x F) and reads expert
``e`` either as ``F.linear(h[tokens], W[e])`` (the "eager" loop) or in one ``grouped_mm`` over tokens sorted by
expert (the default). Both must give each expert the float64 hand count of its own routed rows, and the step must
be the float64 ``G_e (Sigma_e + lambda_e I)^-1`` expert by expert.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dopr import ActivationPreconditioner, DoPr

transformers = pytest.importorskip("transformers")

EXPERTS, TOP_K, DAMPING = 4, 2, 0.1


def _mixtral(impl: str) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K, experts_implementation=impl)
    return transformers.MixtralForCausalLM(config)


def _sigma_sum(group) -> torch.Tensor:
    if group.total is not None:
        return group.total.double()
    return sum(z.double().T @ z.double() for z in group.kept)


@pytest.mark.parametrize("impl", ["eager", "grouped_mm"])
def test_each_expert_gets_the_float64_sigma_of_its_routed_tokens_and_its_own_update(impl):
    model = _mixtral(impl)
    assert model.config._experts_implementation == impl
    experts = model.model.layers[0].mlp.experts
    ap = ActivationPreconditioner(model, damping=DAMPING, strict=True)
    assert ap.coverage()["share"] == 1.0
    seen = {}
    experts.register_forward_hook(lambda mod, args, out: seen.update(args=[a.detach() for a in args]))
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(ids, labels=ids).loss.backward()
    hidden, routed = seen["args"][0].double(), seen["args"][1]
    gate_up = experts.gate_up_proj.detach().double()
    grads = {b: getattr(experts, b).grad.double().clone() for b in ("gate_up_proj", "down_proj")}
    reads = {}
    for e in range(EXPERTS):
        z = hidden[(routed == e).any(-1)]
        gate, up = (z @ gate_up[e].T).chunk(2, dim=-1)
        reads[e] = {"gate_up_proj": z, "down_proj": experts.act_fn(gate) * up}
        for bank, rows in reads[e].items():
            group = ap.groups[ap.layers[f"model.layers.0.mlp.experts:{bank}[{e}]"].group]
            assert group.rows == rows.shape[0] > 0
            torch.testing.assert_close(_sigma_sum(group), rows.T @ rows, rtol=1e-5, atol=1e-5)
    router = ap.groups[ap.layers["model.layers.0.mlp.gate"].group]
    assert router.rows == ids.numel()  # the router is the Linear it is, reading every token
    assert ap.precondition_()
    for e in range(EXPERTS):
        for bank, rows in reads[e].items():
            sigma = rows.T @ rows / rows.shape[0]
            lam = DAMPING * sigma.trace() / sigma.shape[0]
            want = grads[bank][e] @ torch.linalg.inv(sigma + lam * torch.eye(sigma.shape[0], dtype=torch.float64))
            got = getattr(experts, bank).grad[e].double()
            # norm-wise: experts with fewer routed rows than inputs have a badly conditioned Sigma + lambda I
            assert (got - want).norm() <= 1e-4 * want.norm(), (bank, e, ((got - want).norm() / want.norm()).item())
    ap.remove()


def test_a_module_list_of_expert_mlps_gets_each_experts_routed_rows():
    class MoE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.router = nn.Linear(6, EXPERTS, bias=False)
            self.experts = nn.ModuleList(nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 6))
                                         for _ in range(EXPERTS))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            top = self.router(x).topk(TOP_K, dim=-1).indices
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                rows = (top == e).any(-1)
                out[rows] += expert(x[rows])
            return out

    torch.manual_seed(0)
    model = MoE()
    opt = DoPr(model, lr=1e-2)
    x = torch.randn(20, 6)
    top = model.router(x).topk(TOP_K, dim=-1).indices
    model(x).pow(2).mean().backward()
    ap = opt.preconditioner
    for e in range(EXPERTS):
        z = x[(top == e).any(-1)].double()
        group = ap.groups[ap.layers[f"experts.{e}.0"].group]
        assert group.rows == z.shape[0]
        ones = torch.ones(z.shape[0], 1, dtype=torch.float64)
        zb = torch.cat([z, ones], dim=1)
        torch.testing.assert_close(_sigma_sum(group), zb.T @ zb, rtol=1e-5, atol=1e-5)
    opt.step()


def test_moe_trains_with_dopr_and_muon():
    model = _mixtral("grouped_mm")
    opt = DoPr(model, base="muon", lr=1e-2)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(g["missing_statistics"] == 0 for g in opt.stats().values())
