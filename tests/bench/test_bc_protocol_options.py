"""The control bench's protocol options (issue 15): ZCA-whitened observations, which layers DoPr preconditions
(``--ap-layers``), and a weaker demonstrator (``--demo-noise``); each is recorded in the results."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("matplotlib")

from dopr_bench.bc import bench as bc_bench  # noqa: E402
from dopr_bench.bc.policy import ActPolicy, zca_matrix  # noqa: E402
from dopr_bench.bc.train import BCData, train_bc  # noqa: E402
from dopr_bench.cli import main  # noqa: E402

TINY = ["--demos", "1", "--val-demos", "1", "--steps", "6", "--batch", "32", "--width", "8", "--blocks", "1",
        "--episodes", "1", "--max-episode-steps", "10", "--no-progress"]
SPEC = bc_bench.BCSpec(width=8, blocks=1, steps=5, batch=32, ema=0.1, std_floor=1e-6, log_every=5)


def _anisotropic(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Correlated observations with scales 1e-2 .. 1e2 and a nonzero mean."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) * np.logspace(-2, 2, d)) @ q.T + rng.standard_normal(d) * 5


def _data(obs: np.ndarray) -> BCData:
    g = torch.Generator().manual_seed(1)
    x = torch.as_tensor(obs, dtype=torch.float32)
    return BCData(x, torch.randn(len(x), 2, generator=g), x[:50], torch.randn(50, 2, generator=g))


def test_zca_whitens_to_identity_covariance() -> None:
    obs = _anisotropic(4000, 6)
    z = (obs - obs.mean(0)) @ zca_matrix(obs, 1e-8).T
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(6), atol=1e-5)
    # ZCA is the symmetric whitening map (the one closest to the identity), and with a diagonal covariance it is the
    # standardization with the same floor
    w = zca_matrix(obs, 1e-8)
    np.testing.assert_allclose(w, w.T, atol=1e-8)
    diag = np.random.default_rng(1).standard_normal((4000, 3)) * [0.1, 1.0, 10.0]
    w = zca_matrix(diag, 1e-2)
    np.testing.assert_allclose(w, np.diag(1 / (diag.std(0) + 1e-2)), rtol=0.05, atol=0.05 * np.abs(w).max())


def test_zca_option_whitens_the_demos_in_the_model_so_rollouts_see_it_too() -> None:
    obs = _anisotropic(3000, 5)
    data = _data(obs)
    model, _ = train_bc("adamw", 0, 1e-3, data, replace(SPEC, zca=True, clip=1e9), None)
    with torch.no_grad():
        z = model.norm(data.obs).double().numpy()
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(5), atol=1e-3)  # float32 rounding
    assert "norm.proj" in model.state_dict()  # part of the policy: saved with it and applied at rollout
    act = ActPolicy(model, np.full(2, -np.inf), np.full(2, np.inf))
    with torch.no_grad():
        np.testing.assert_allclose(act(obs[7]), model(data.obs[7:8])[0].numpy(), rtol=1e-6)
    plain, _ = train_bc("adamw", 0, 1e-3, data, SPEC, None)
    assert plain.norm.proj is None  # without --zca the normalizer is what it was


@pytest.mark.parametrize(("layers", "expected"), [
    ("all", ["inp", "blocks.0.fc1", "blocks.0.fc2", "head"]),
    ("first", ["inp"]),
    ("hidden", ["blocks.0.fc1", "blocks.0.fc2", "head"]),
])
def test_ap_layers_precondition_exactly_those_layers(layers: str, expected: list[str]) -> None:
    data = _data(_anisotropic(400, 5))
    model, rec = train_bc("dopr-adamw", 0, 1e-3, data, replace(SPEC, ap_layers=layers), None)
    assert rec["preconditioned"] == expected
    assert sorted(rec["dopr_stats"]) == sorted(expected)  # one Sigma per preconditioned layer, none for the others
    init, _ = train_bc("adamw", 0, 1e-3, data, replace(SPEC, steps=0), None)
    for name, p in model.named_parameters():  # the layers without AP are still trained (by the base optimizer)
        assert not torch.equal(p, dict(init.named_parameters())[name]), name
    _, plain = train_bc("adamw", 0, 1e-3, data, replace(SPEC, ap_layers=layers), None)
    assert "preconditioned" not in plain


def test_options_are_recorded_in_results_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    main(["run", "idp", "--optimizers", "adamw,dopr-adamw", "--seeds", "1", "--zca", "--ap-layers", "first",
          "--demo-noise", "0.3", "--out", str(out), "--cache", str(tmp_path / "cache")] + TINY)
    res = json.loads((out / "results.json").read_text())
    s = res["settings"]
    assert s["zca"] is True and s["standardize"] is False and s["ap_layers"] == "first" and s["demo_noise"] == 0.3
    assert s["source"].endswith("+noise0.3")
    assert [r.get("preconditioned") for r in res["runs"]] == [None, ["inp"]]
    md = (out / "summary.md").read_text()
    assert "observations ZCA-whitened" in md and "DoPr arms precondition the input layer only" in md
    assert "action noise of std 0.3" in md
    assert "AP on first layers" in bc_bench.BENCH.headline(res) and "ZCA obs." in bc_bench.BENCH.headline(res)
    with pytest.raises(SystemExit, match="other settings"):  # a folder of one ablation never takes another's runs
        main(["run", "idp", "--optimizers", "adamw,dopr-adamw", "--seeds", "1", "--zca", "--ap-layers", "hidden",
              "--demo-noise", "0.3", "--out", str(out), "--cache", str(tmp_path / "cache")] + TINY)
    with pytest.raises(SystemExit, match="give one"):
        main(["run", "idp", "--zca", "--standardize", "--out", str(tmp_path / "x")] + TINY)


def test_demo_noise_gives_a_seeded_weaker_demonstrator(tmp_path: Path) -> None:
    from dopr_bench.bc.data import expert_demos
    from dopr_bench.bc.experts import expert_tag, load_expert

    spec = bc_bench.TASKS["idp"]
    expert, tag = load_expert("idp", spec.env_id), expert_tag("idp")
    clean = expert_demos("idp", spec.env_id, expert, 1, 0, tag, tmp_path / "a", max_steps=30)[0]
    noisy = expert_demos("idp", spec.env_id, expert, 1, 0, tag, tmp_path / "a", max_steps=30, noise=0.3)[0]
    again = expert_demos("idp", spec.env_id, expert, 1, 0, tag, tmp_path / "b", max_steps=30, noise=0.3)[0]
    np.testing.assert_array_equal(noisy.actions, again.actions)  # seeded by the episode: reproducible
    labels = np.stack([np.asarray(expert(o)).reshape(-1) for o in noisy.observations[:-1]])
    gap = np.abs(noisy.actions - labels)
    assert gap.mean() > 0.05 and np.all(np.abs(noisy.actions) <= 1.0 + 1e-6)  # the noisy action, in the box
    assert not np.allclose(clean.actions[:5], noisy.actions[:5])  # its own cache entry, not the clean demos'
