"""Expert loaders: the analytic IDP controller, and the committed PPO checkpoints (weights_only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("scipy")

from dopr_bench.bc.data import rollout  # noqa: E402
from dopr_bench.bc.experts import MLPExpert, expert_paths, load_expert  # noqa: E402


def test_lqr_expert_balances_idp() -> None:
    expert = load_expert("idp", "InvertedDoublePendulum-v5")
    env = gym.make("InvertedDoublePendulum-v5")
    ep = rollout(env, expert, seed=123, max_steps=200)
    env.close()
    assert ep.length == 200 and not ep.terminated
    assert ep.ret > 0.99 * 9.36 * 200  # alive bonus 10 per step minus tiny distance/velocity penalties


ENV_IDS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "humanoid": "Humanoid-v5"}


@pytest.mark.parametrize("task", sorted(ENV_IDS))
def test_committed_ppo_expert_loads_weights_only(task: str) -> None:
    pt, js = expert_paths(task)
    assert pt.exists() and js.exists(), f"the {task} expert {pt} and its {js.name} must be committed"
    state = torch.load(pt, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    expert = MLPExpert(state)
    env = gym.make(ENV_IDS[task])
    obs, _ = env.reset(seed=0)
    a = expert(obs)
    assert a.shape == env.action_space.shape and np.all(np.isfinite(a))
    assert np.all(a <= env.action_space.high + 1e-9) and np.all(a >= env.action_space.low - 1e-9)
    env.close()
    info = json.loads(js.read_text())
    assert info["command"].startswith("dopr-bench train-expert") and info["return_mean"] > 0


@pytest.mark.parametrize("damage", ["truncate", "missing-tensor"])
def test_damaged_expert_checkpoint_gives_a_clear_error(tmp_path, damage: str) -> None:
    pt, _ = expert_paths("hopper")
    target = tmp_path / "hopper.pt"
    if damage == "truncate":
        target.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    else:
        state = torch.load(pt, map_location="cpu", weights_only=True)
        state.pop(next(iter(state)))
        torch.save(state, target)
    with pytest.raises(ValueError, match="unreadable or incomplete.*train-expert hopper"):
        load_expert("hopper", "Hopper-v5", directory=tmp_path)
