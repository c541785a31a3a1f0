"""The feature-learning diagnostics of the control bench (issue 15, item 7) measure what they claim."""

from __future__ import annotations

import numpy as np
import torch

from dopr_bench.bc.diagnostics import diagnostics, expert_first_features, input_log10_cond, linear_cka
from dopr_bench.bc.experts import MLPExpert
from dopr_bench.bc.policy import ResidualMLP


def test_linear_cka_is_one_up_to_rotation_and_scale_and_low_for_unrelated_features() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6)) @ np.diag([5, 3, 2, 1, 0.5, 0.1])
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert abs(linear_cka(x, 3.0 * x @ q + 7.0) - 1.0) < 1e-12  # rotation, scale and shift
    assert linear_cka(x, rng.standard_normal((500, 6))) < 0.1
    assert abs(linear_cka(x, x[:, :3]) - linear_cka(x[:, :3], x)) < 1e-12  # symmetric, widths may differ


def test_input_condition_is_that_of_each_layers_input_second_moment() -> None:
    torch.manual_seed(0)
    model = ResidualMLP(3, 2, width=8, blocks=1)
    obs = torch.randn(4000, 3) * torch.tensor([10.0, 1.0, 1.0])  # the normalizer is the identity until fitted
    cond = input_log10_cond(model, obs)
    assert set(cond) == {"inp", "blocks.0.fc1", "blocks.0.fc2", "head"}
    z = obs.double()
    eig = torch.linalg.eigvalsh(z.T @ z / len(z))
    assert abs(cond["inp"] - float(torch.log10(eig[-1] / eig[0]))) < 1e-9
    assert 1.9 < cond["inp"] < 2.1  # variances 100 : 1


def test_expert_features_and_cka_of_a_policy_that_copies_the_experts_first_layer() -> None:
    torch.manual_seed(0)
    w, b = torch.randn(8, 3), torch.randn(8)
    state = {"obs_mean": torch.zeros(3), "obs_var": torch.ones(3), "obs_eps": torch.tensor(0.0),
             "clip_obs": torch.tensor(10.0), "act_low": -torch.ones(2), "act_high": torch.ones(2),
             "n_hidden": torch.tensor(1), "hidden.0.weight": w, "hidden.0.bias": b,
             "action.weight": torch.randn(2, 8), "action.bias": torch.zeros(2)}
    expert = MLPExpert(state)
    obs = np.random.default_rng(1).standard_normal((300, 3))
    feats = expert_first_features(expert, obs)
    assert feats.shape == (300, 8) and np.allclose(feats, np.tanh(obs @ w.double().numpy().T + b.double().numpy()))
    policy = ResidualMLP(3, 2, width=8, blocks=1)
    with torch.no_grad():  # relu(2 (w s + b)) is not tanh(w s + b): close, but not 1
        policy.inp.weight.copy_(2 * w)
        policy.inp.bias.copy_(2 * b)
    same = diagnostics(policy, torch.as_tensor(obs, dtype=torch.float32), feats)["feature_cka_expert"]
    other = diagnostics(ResidualMLP(3, 2, width=8, blocks=1), torch.as_tensor(obs, dtype=torch.float32),
                        feats)["feature_cka_expert"]
    assert 0.5 < same < 1.0 and other < same
    assert expert_first_features(object(), obs) is None
