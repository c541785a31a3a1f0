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


def _gpt_oss(impl: str) -> nn.Module:
    """gpt-oss stores its banks transposed (E x in x out), read as x @ W[e] + b[e], with a bias per expert."""
    torch.manual_seed(0)
    config = transformers.GptOssConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K,
        experts_implementation=impl, layer_types=["full_attention"])
    return transformers.GptOssForCausalLM(config)


def _sigma_sum(group) -> torch.Tensor:
    """The group's sum of z z^T: its running sum, or the few rows it kept (the Woodbury form; no bias column)."""
    if group.total is not None:
        return group.total.double()
    z = torch.cat(group.kept).double()
    if group.bias:
        z = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], dim=1)
    return z.T @ z


@pytest.mark.parametrize("impl", ["eager", "grouped_mm"])
@pytest.mark.parametrize("build", [_mixtral, _gpt_oss], ids=["mixtral", "gpt_oss"])
def test_each_expert_gets_the_float64_sigma_of_its_routed_tokens_and_its_own_update(build, impl):
    model = build(impl)
    assert model.config._experts_implementation == impl
    experts = model.model.layers[0].mlp.experts
    transposed, bias = getattr(experts, "is_transposed", False), getattr(experts, "has_bias", False)
    ap = ActivationPreconditioner(model, damping=DAMPING, strict=True)
    assert ap.coverage()["share"] == 1.0
    seen = {}
    experts.register_forward_hook(lambda mod, args, out: seen.update(args=[a.detach() for a in args]))
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(ids, labels=ids).loss.backward()
    hidden, routed = seen["args"][0].double(), seen["args"][1]
    banks = ("gate_up_proj", "down_proj")
    weights = {b: getattr(experts, b).detach().double() for b in banks}
    grads = {b: getattr(experts, b).grad.double().clone() for b in banks}
    biases = {b: getattr(experts, f"{b}_bias").grad.double().clone() for b in banks} if bias else {}
    reads = {}
    for e in range(EXPERTS):
        z = hidden[(routed == e).any(-1)]
        w = weights["gate_up_proj"][e]
        gate_up = z @ w if transposed else z @ w.T
        if bias:
            gate_up = gate_up + experts.gate_up_proj_bias.detach().double()[e]
        reads[e] = {"gate_up_proj": z, "down_proj": experts._apply_gate(gate_up)}
        for bank, rows in reads[e].items():
            if bias:  # the bias is the weight of a constant input 1
                rows = reads[e][bank] = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], dim=1)
            group = ap.groups[ap.layers[f"model.layers.0.mlp.experts:{bank}[{e}]"].group]
            assert group.rows == rows.shape[0] > 0
            torch.testing.assert_close(_sigma_sum(group), rows.T @ rows, rtol=1e-5, atol=1e-5)
    router = ap.groups[ap.layers["model.layers.0.mlp.router" if bias else "model.layers.0.mlp.gate"].group]
    assert router.rows == ids.numel()  # the router is the Linear it is, reading every token
    assert ap.precondition_()
    for e in range(EXPERTS):
        for bank, rows in reads[e].items():
            g = grads[bank][e].T if transposed else grads[bank][e]
            if bias:
                g = torch.cat([g, biases[bank][e].reshape(-1, 1)], dim=1)
            sigma = rows.T @ rows / rows.shape[0]
            lam = DAMPING * sigma.trace() / sigma.shape[0]
            want = g @ torch.linalg.inv(sigma + lam * torch.eye(sigma.shape[0], dtype=torch.float64))
            got = getattr(experts, bank).grad[e].double()
            got = got.T if transposed else got
            if bias:
                got = torch.cat([got, getattr(experts, f"{bank}_bias").grad[e].double().reshape(-1, 1)], dim=1)
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


def test_muon_orthogonalizes_each_expert_of_a_bank_on_its_own():
    from dopr.bases.muon import zeropower_via_newton_schulz

    g = torch.randn(EXPERTS, 6, 9, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 10.0, 0.1, 3.0])[
        :, None, None]
    args = ((3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)
    batched = zeropower_via_newton_schulz(g, *args)
    for e in range(EXPERTS):  # the scale of one expert does not reach another
        torch.testing.assert_close(batched[e], zeropower_via_newton_schulz(g[e], *args), rtol=1e-5, atol=1e-5)
    model = _gpt_oss("grouped_mm")
    opt = DoPr(model, base="muon", lr=1e-2)
    routes = {r.name: r for r in opt.routes}
    for bank in ("gate_up_proj", "down_proj"):
        route = routes[f"model.layers.0.mlp.experts.{bank}"]
        assert route.base == "muon" and "bank" in route.reason and "d_in x d_out" in route.reason


def test_an_expert_no_token_is_routed_to_is_left_as_is_without_a_warning():
    model = _mixtral("eager")
    experts = model.model.layers[0].mlp.experts
    opt = DoPr(model, lr=1e-2)
    def never_three(module, args):  # the tokens routed to expert 3 go to expert 0
        hidden, index, weights = args
        return hidden, torch.where(index == 3, torch.zeros_like(index), index), weights

    experts.register_forward_pre_hook(never_three)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model(ids, labels=ids).loss.backward()
        assert experts.gate_up_proj.grad[3].abs().max() == 0
        opt.step()
    assert opt.preconditioner.layer_status("model.layers.0.mlp.experts:gate_up_proj[3]").startswith("unused")
    assert all(g["missing_statistics"] == 0 for g in opt.stats().values())


def test_a_bank_read_by_bmm_gives_each_expert_its_rows():
    """Llama 4's experts: the bank is stored E x in x out (no is_transposed flag) and read by one bmm over the
    experts' pre-routed rows; expert e's Sigma is the float64 count of x[e] (its gate_up) and of its activations."""
    torch.manual_seed(0)
    config = transformers.Llama4TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, intermediate_size_mlp=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=EXPERTS, num_experts_per_tok=1,
        moe_layers=[0])
    model = transformers.Llama4ForCausalLM(config)
    experts = model.model.layers[0].feed_forward.experts
    ap = ActivationPreconditioner(model, damping=DAMPING, strict=True)
    seen = {}
    experts.register_forward_hook(lambda mod, args, out: seen.update(x=args[0].detach()))
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(ids, labels=ids).loss.backward()
    x = seen["x"].double().view(EXPERTS, -1, 32)
    for e in range(EXPERTS):
        gate, up = (x[e] @ experts.gate_up_proj.detach().double()[e]).chunk(2, dim=-1)
        for bank, rows in (("gate_up_proj", x[e]), ("down_proj", up * experts.act_fn(gate))):
            group = ap.groups[ap.layers[f"model.layers.0.feed_forward.experts:{bank}[{e}]"].group]
            torch.testing.assert_close(_sigma_sum(group), rows.T @ rows, rtol=1e-5, atol=1e-5)
    assert ap.precondition_()
    ap.remove()


@pytest.mark.parametrize("build", [_mixtral, _gpt_oss], ids=["mixtral", "gpt_oss"])
def test_a_compiled_bank_gets_each_experts_statistics_and_steps_as_eager(build):
    """Under torch.compile transformers reads a float32 bank by its own grouped_mm_fallback op; each expert's Sigma
    comes from BankSigmaTap inside the one graph (before, Mixtral crashed in that op's dispatch and gpt-oss's experts
    were warned as missing statistics)."""
    eager, compiled = build("grouped_mm"), build("grouped_mm")
    compiled.load_state_dict(eager.state_dict())
    # plain SGD: Adam's first steps are lr * sign(M), which turns rounding in an M near zero into an lr-sized step
    opts = [DoPr(m, base="sgd", lr=0.1, damping=DAMPING) for m in (eager, compiled)]
    forward = torch.compile(compiled, fullgraph=True)  # one graph, DoPr's statistics inside it
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(3):
            for run, opt in zip((eager, forward), opts):
                opt.zero_grad()
                run(input_ids=ids, labels=ids).loss.backward()
                opt.step()
    torch.compiler.reset()
    ap = opts[1].preconditioner
    experts = [e for e in ap.layers.values() if e.adapter.reads == "expert"]
    assert experts and all(ap.groups[e.group].refreshes > 0 for e in experts)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        # float32 with few rows per expert: M agrees to ~1e-5 relative per step (updates are ~0.1-3 in size here)
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
