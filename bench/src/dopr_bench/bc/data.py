"""Expert demonstrations: generated deterministically from an expert, cached on disk as Minari datasets.

A dataset is read back into a list of :class:`Episode` (observations T+1, actions T, rewards T). ``--dataset``
may name a public Minari dataset id (downloaded by Minari if needed) or a local dataset directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from ..core import CACHE


@dataclass
class Episode:
    observations: np.ndarray  # (T+1, obs_dim)
    actions: np.ndarray  # (T, act_dim)
    rewards: np.ndarray  # (T,)
    terminated: bool
    seed: int | None = None

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())


def rollout(env: gym.Env, act: Callable[[np.ndarray], np.ndarray], seed: int, max_steps: int | None = None) -> Episode:
    """One closed-loop episode from ``env.reset(seed=seed)``; stops at termination, truncation or ``max_steps``."""
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards = [obs], [], []
    terminated = False
    while True:
        a = np.asarray(act(obs), dtype=env.action_space.dtype).reshape(env.action_space.shape)
        obs, r, term, trunc, _ = env.step(a)
        observations.append(obs)
        actions.append(a)
        rewards.append(float(r))
        if term or trunc or (max_steps is not None and len(actions) >= max_steps):
            terminated = bool(term)
            break
    return Episode(np.asarray(observations, dtype=np.float64), np.asarray(actions, dtype=np.float64),
                   np.asarray(rewards, dtype=np.float64), terminated, seed)


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_minari(episodes: list[Episode], dataset_id: str, env_id: str, root: Path, algorithm: str = "expert",
                 description: str = "") -> Path:
    """Write ``episodes`` as a local Minari dataset ``root/<dataset_id>``; returns its directory."""
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [
        EpisodeBuffer(id=i, seed=ep.seed, observations=list(ep.observations.astype(np.float64)),
                      actions=list(ep.actions.astype(np.float32)), rewards=list(ep.rewards),
                      terminations=[False] * (ep.length - 1) + [ep.terminated],
                      truncations=[False] * (ep.length - 1) + [not ep.terminated])
        for i, ep in enumerate(episodes)
    ]
    root.mkdir(parents=True, exist_ok=True)
    with _minari_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):
            minari.delete_dataset(dataset_id)
        minari.create_dataset_from_buffers(dataset_id=dataset_id, buffer=buffers, env=env_id, algorithm_name=algorithm,
                                           author="dopr_bench", author_email="dopr_bench@localhost",
                                           code_permalink="https://github.com/dopr/dopr",
                                           description=description or None, data_format="hdf5")
    return root / dataset_id


def _episodes_from_dataset(ds: object) -> list[Episode]:
    out = []
    for ep in ds.iterate_episodes():  # type: ignore[attr-defined]
        obs = np.asarray(ep.observations, dtype=np.float64)
        act = np.asarray(ep.actions, dtype=np.float64)
        if act.ndim == 1:
            act = act[:, None]
        out.append(Episode(obs, act, np.asarray(ep.rewards, dtype=np.float64), bool(np.asarray(ep.terminations)[-1]),
                           None))
    return out


def read_minari(id_or_path: str | Path, root: Path | None = None, download: bool = False) -> tuple[list[Episode], str]:
    """Episodes and env id of a Minari dataset given as a local directory or a dataset id."""
    import minari
    from minari import MinariDataset

    p = Path(id_or_path)
    if not p.exists() and root is not None and (root / str(id_or_path)).exists():
        return read_minari(root / str(id_or_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if p.exists():
                ds = MinariDataset(p / "data" if (p / "data").is_dir() else p)
            else:
                ds = minari.load_dataset(str(id_or_path), download=download)
            env_id = ds.spec.env_spec.id if ds.spec.env_spec is not None else ""
            return _episodes_from_dataset(ds), env_id
        except Exception as err:  # truncated HDF5, missing fields, unknown id
            raise ValueError(
                f"Minari dataset {id_or_path} could not be read ({type(err).__name__}: {err}); if it is a local "
                "copy it may be truncated: delete it to have the demonstrations regenerated, or download it again"
            ) from err


def noisy(expert: Callable[[np.ndarray], np.ndarray], env: gym.Env, noise: float,
          seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """The expert with Gaussian action noise of std ``noise`` times half the action range, clipped to the action box
    (a weaker demonstrator: the noisy action is the one executed and recorded); seeded by the episode's seed."""
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    scale, rng = noise * (high - low) / 2, np.random.default_rng([seed, 15])

    def act(obs: np.ndarray) -> np.ndarray:
        a = np.asarray(expert(obs), dtype=np.float64).reshape(low.shape)
        return np.clip(a + scale * rng.standard_normal(low.shape), low, high)

    return act


def expert_demos(task: str, env_id: str, expert: Callable[[np.ndarray], np.ndarray], n: int, first_seed: int,
                 tag: str, cache: Path = CACHE, max_steps: int | None = None,
                 progress: bool = False, noise: float = 0.0) -> list[Episode]:
    """``n`` expert episodes with env seeds ``first_seed..first_seed+n-1``, cached as a Minari dataset; ``noise``:
    action noise of the demonstrator (see :func:`noisy`)."""
    noise_key = f"|noise{noise:g}" if noise else ""
    key = hashlib.sha1(f"{task}|{env_id}|{tag}|{n}|{first_seed}|{max_steps}{noise_key}".encode()).hexdigest()[:10]
    dataset_id = f"dopr_bench/{task}-{key}-v0"
    path = cache / dataset_id
    if (path / "data" / "metadata.json").exists():
        try:
            eps, _ = read_minari(path)
            if len(eps) == n:
                return eps
        except Exception as err:  # a broken cache entry is regenerated
            warnings.warn(f"regenerating the unreadable cached dataset {path}: {err}", stacklevel=2)
    env = gym.make(env_id)
    seeds = range(first_seed, first_seed + n)
    if progress:
        from tqdm import tqdm

        seeds = tqdm(seeds, desc=f"{task} expert demos", leave=False)
    eps = [rollout(env, noisy(expert, env, noise, s) if noise else expert, s, max_steps) for s in seeds]
    env.close()
    desc = f"{task} expert demonstrations ({tag}), seeds {first_seed}+" + (f", action noise {noise:g}" if noise else "")
    # written aside and renamed into place: runs started together (e.g. one per seed) may all be making it
    cache.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        write_minari(eps, dataset_id, env_id, tmp_root, description=desc)
        if not (path / "data" / "metadata.json").exists():
            shutil.rmtree(path, ignore_errors=True)  # a broken entry
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # another process renamed its copy first: keep that one
                os.rename(tmp_root / dataset_id, path)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return eps


def second_moment(obs: np.ndarray) -> np.ndarray:
    return obs.T @ obs / max(len(obs), 1)


def drift(expert_obs: np.ndarray, policy_obs: np.ndarray, mean: np.ndarray | None = None,
          std: np.ndarray | None = None) -> float:
    """||E_pol[s s^T] - E_exp[s s^T]||_F / ||E_exp[s s^T]||_F, optionally in standardized coordinates.

    In standardized coordinates (mean/std of the training demos, no floor) constant dimensions are dropped.
    """
    if mean is not None and std is not None:
        keep = std > 1e-6  # dimensions constant in the demonstrations have no scale: left out
        m, s = mean[keep], std[keep]
        expert_obs, policy_obs = (expert_obs[:, keep] - m) / s, (policy_obs[:, keep] - m) / s
    se, sp = second_moment(expert_obs), second_moment(policy_obs)
    return float(np.linalg.norm(sp - se) / max(np.linalg.norm(se), 1e-12))
