"""Demonstrations written as a local Minari dataset read back identically; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("minari")
gym = pytest.importorskip("gymnasium")

from dopr_bench.bc.data import Episode, expert_demos, read_minari, rollout, write_minari  # noqa: E402


def test_write_read_same_arrays(tmp_path: Path) -> None:
    env = gym.make("InvertedDoublePendulum-v5")
    rng = np.random.default_rng(0)
    eps = [rollout(env, lambda o: rng.uniform(-1, 1, size=1), seed=s, max_steps=30) for s in range(3)]
    env.close()
    path = write_minari(eps, "test/idp-random-v0", "InvertedDoublePendulum-v5", tmp_path)
    back, env_id = read_minari(path)
    assert env_id == "InvertedDoublePendulum-v5"
    assert len(back) == len(eps)
    for a, b in zip(eps, back, strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions.astype(np.float32), b.actions.astype(np.float32))
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert a.terminated == b.terminated
    # the same dataset read by its id, from the same root
    again, _ = read_minari("test/idp-random-v0", root=tmp_path)
    np.testing.assert_array_equal(again[0].observations, eps[0].observations)


def test_expert_demos_are_cached_and_deterministic(tmp_path: Path) -> None:
    calls = []

    def expert(obs: np.ndarray) -> np.ndarray:
        calls.append(1)
        return np.array([-0.1 * obs[0]])

    first = expert_demos("idp", "InvertedDoublePendulum-v5", expert, 2, 0, "toy", tmp_path, max_steps=25)
    n_calls = len(calls)
    second = expert_demos("idp", "InvertedDoublePendulum-v5", expert, 2, 0, "toy", tmp_path, max_steps=25)
    assert len(calls) == n_calls, "cached demonstrations must not be regenerated"
    for a, b in zip(first, second, strict=True):
        assert isinstance(b, Episode)
        np.testing.assert_array_equal(a.observations, b.observations)
    other = expert_demos("idp", "InvertedDoublePendulum-v5", expert, 2, 0, "toy", tmp_path / "fresh", max_steps=25)
    np.testing.assert_array_equal(other[1].observations, first[1].observations)


def test_truncated_minari_dataset_gives_a_clear_error(tmp_path: Path) -> None:
    env = gym.make("InvertedDoublePendulum-v5")
    eps = [rollout(env, lambda o: np.zeros(1), seed=s, max_steps=20) for s in range(2)]
    env.close()
    path = write_minari(eps, "test/idp-zero-v0", "InvertedDoublePendulum-v5", tmp_path)
    for h5 in Path(path).rglob("*.hdf5"):
        h5.write_bytes(h5.read_bytes()[:200])
    with pytest.raises(ValueError, match="could not be read.*truncated"):
        read_minari(path)


def test_dataset_by_public_id_uses_the_local_copy_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    """``--dataset mujoco/...`` resolves a Minari id under MINARI_DATASETS_PATH; nothing is downloaded."""
    import json

    import minari.storage.hosting as hosting

    from dopr_bench.bc.experts.lqr import lqr_expert
    from dopr_bench.cli import main

    env_id, dataset_id = "InvertedDoublePendulum-v5", "mujoco/inverteddoublependulum/expert-v0"
    env = gym.make(env_id)
    eps = [rollout(env, lqr_expert(env_id), seed, 40) for seed in range(3)]
    env.close()
    write_minari(eps, dataset_id, env_id, tmp_path / "minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the bench tried to download a dataset that exists locally")

    monkeypatch.setattr(hosting, "download_dataset", no_download)
    out = tmp_path / "out"
    main(["run", "idp", "--dataset", dataset_id, "--demos", "2", "--val-demos", "1", "--optimizers", "adamw,dopr-adamw",
          "--seeds", "1", "--steps", "5", "--batch", "32", "--width", "8", "--blocks", "1", "--episodes", "1",
          "--max-episode-steps", "10", "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"])
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["source"] == f"minari:{dataset_id}" and res["settings"]["env_id"] == env_id
    assert res["n_train_transitions"] == sum(e.length for e in eps[:2])
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.hdf5"))  # no expert demos made


def test_demos_made_by_a_concurrent_run_are_kept(tmp_path: Path, monkeypatch) -> None:
    """Runs started together all make the same cached dataset; the one that lands second must not fail."""
    import dopr_bench.bc.data as data

    real = data.write_minari
    env_id = "InvertedDoublePendulum-v5"

    def other_run_finishes_first(eps, dataset_id, env, root, **kw):
        real(eps, dataset_id, env, tmp_path / "cache", **kw)  # the other process's copy, already in place
        return real(eps, dataset_id, env, root, **kw)

    monkeypatch.setattr(data, "write_minari", other_run_finishes_first)
    eps = expert_demos("idp", env_id, lambda o: np.zeros(1), 2, 0, "t", tmp_path / "cache", max_steps=5)
    monkeypatch.setattr(data, "write_minari", real)
    again = expert_demos("idp", env_id, lambda o: np.ones(1), 2, 0, "t", tmp_path / "cache", max_steps=5)
    assert [e.actions.tolist() for e in again] == [e.actions.tolist() for e in eps]  # read from the cache
    assert not list((tmp_path / "cache").glob(".tmp-*"))  # no temporary copies left behind
