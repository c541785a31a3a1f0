"""Demonstrations in robomimic's HDF5 layout: writing ours, reading ours or robomimic's, and the demo cache.

Layout (robomimic's ``SequenceDataset`` reads the same files)::

    data.attrs["env_args"]   JSON: env_name, env_version, type (1 = robosuite), env_kwargs
    data.attrs["total"]      number of samples over all demos
    data/demo_i/obs/<key>    (T, ...) e.g. agentview_image (T, 84, 84, 3) uint8, robot0_eef_pos (T, 3)
    data/demo_i/actions      (T, act_dim)        demo_i.attrs["num_samples"] = T
    data/demo_i/rewards, dones (T,)  states (T, state_dim)
    mask/train, mask/valid   demo names (bytes) of the training and validation split

Cached expert demos are deterministic in the env seed: the train split is the first N successful episodes from
seed 0, the validation split from seed 5000, so a cached file of N demos serves any request for n <= N.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..core import CACHE, TRAIN_SEED, VAL_SEED
from .envs import CAMERAS, PROPRIO_KEYS, TASKS, RoboEnv, default_env_args, prepare_robosuite
from .experts import Demo, collect_demos

#: low-dim keys stored with generated demos besides the images ("object" is robomimic's name for object-state).
STORED_LOW_DIM = (*PROPRIO_KEYS, "robot0_joint_pos", "object")
_IMAGE_COMPRESSION = "lzf"


def _demo_index(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else 1 << 30


def write_hdf5(path: Path, demos: list[Demo], env_args: dict[str, Any], train: list[str] | None = None,
               valid: list[str] | None = None, attrs: dict[str, Any] | None = None) -> None:
    """Write ``demos`` as ``data/demo_0..`` (atomically: a temporary file renamed into place).

    ``train``/``valid`` name the demos of each split (default: all in train, none in valid).
    """
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"demo_{i}" for i in range(len(demos))]
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        for name, d in zip(names, demos):
            g = data.create_group(name)
            g.attrs["num_samples"] = len(d)
            if d.seed is not None:
                g.attrs["seed"] = int(d.seed)
            for k, v in d.attrs.items():
                g.attrs[k] = v
            og = g.create_group("obs")
            for k, v in d.obs.items():
                img = v.dtype == np.uint8 and v.ndim == 4
                og.create_dataset(k, data=v, compression=_IMAGE_COMPRESSION if img else None)
            g.create_dataset("actions", data=d.actions)
            g.create_dataset("rewards", data=d.rewards)
            g.create_dataset("dones", data=d.dones)
            g.create_dataset("states", data=d.states)
        data.attrs["total"] = int(sum(len(d) for d in demos))
        data.attrs["env_args"] = json.dumps(env_args)
        for k, v in (attrs or {}).items():
            data.attrs[k] = v
        f.create_dataset("mask/train", data=np.array(names if train is None else train, dtype="S"))
        f.create_dataset("mask/valid", data=np.array([] if valid is None else valid, dtype="S"))
    os.replace(tmp, path)


def read_hdf5(path: Path, obs_keys: tuple[str, ...] | None = None,
              names: list[str] | None = None) -> tuple[dict[str, Demo], dict[str, Any], dict[str, list[str]]]:
    """Demos (by name, in demo order), ``env_args`` and the split masks of a robomimic-layout HDF5 file.

    ``obs_keys`` (default all) are the observations to load; a missing one raises SystemExit naming what the file
    has. ``names`` restricts loading to those demos.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise SystemExit(f"dataset {path} does not exist")
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise SystemExit(f"{path} has no 'data' group: not a robomimic-layout HDF5 file")
        data = f["data"]
        env_args = json.loads(data.attrs["env_args"]) if "env_args" in data.attrs else {}
        masks = {k: sorted((x.decode() if isinstance(x, bytes) else str(x) for x in f["mask"][k][()]),
                           key=_demo_index) for k in f["mask"]} if "mask" in f else {}
        order = sorted(data.keys(), key=_demo_index)
        demos: dict[str, Demo] = {}
        for name in order if names is None else [n for n in order if n in set(names)]:
            g = data[name]
            have = list(g["obs"].keys()) if "obs" in g else []
            keys = tuple(have) if obs_keys is None else obs_keys
            missing = [k for k in keys if k not in have]
            if missing:
                hint = (" (no images: a robomimic low_dim file? use its image.hdf5)"
                        if any(k.endswith("_image") for k in missing) else "")
                raise SystemExit(f"{path}: {name} has no observation {missing}{hint}; it has {have}")
            actions = np.asarray(g["actions"][()], dtype=np.float64)
            n = len(actions)
            demos[name] = Demo(
                obs={k: g["obs"][k][()] for k in keys}, actions=actions,
                rewards=np.asarray(g["rewards"][()], dtype=np.float64) if "rewards" in g else np.zeros(n),
                dones=np.asarray(g["dones"][()]) if "dones" in g else np.zeros(n, dtype=np.int64),
                states=np.asarray(g["states"][()]) if "states" in g else np.zeros((n, 0)),
                seed=int(g.attrs["seed"]) if "seed" in g.attrs else None,
                attrs={k: g.attrs[k] for k in g.attrs if k not in ("num_samples", "seed")})
    return demos, env_args, masks


def split(names: list[str], masks: dict[str, list[str]], n_train: int | None,
          n_val: int | None) -> tuple[list[str], list[str]]:
    """Training and validation demo names: robomimic's ``mask/train`` and ``mask/valid`` when the file has both
    (first n of each), otherwise the first ``n_train`` demos and the next ``n_val``."""
    if masks.get("train") and masks.get("valid"):
        train, valid = masks["train"], masks["valid"]
    else:
        cut = len(names) - (n_val or 0) if n_train is None else n_train
        train, valid = names[:cut], names[cut:]
    train, valid = train[:n_train] if n_train else train, valid[:n_val] if n_val is not None else valid
    if n_train and len(train) < n_train:
        raise SystemExit(f"{n_train} training demos requested, the dataset has {len(train)}")
    if n_val and len(valid) < n_val:
        raise SystemExit(f"{n_val} validation demos requested, the dataset has {len(valid)}")
    return train, valid


def expert_tag() -> str:
    """Hash of what determines a generated demo: the expert and environment code and the simulator versions."""
    prepare_robosuite()
    import mujoco
    import robosuite

    here = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{robosuite.__version__} {mujoco.__version__}".encode())
    for name in ("experts.py", "envs.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:10]


def cached_expert_demos(task: str, split_name: str, n: int, horizon: int, cameras: tuple[str, ...] = CAMERAS,
                        size: int = 84, cache: Path = CACHE / "robo", progress: bool = False) -> Path:
    """Path of a cached HDF5 file with at least ``n`` successful expert demos of ``split_name`` ("train"/"valid")."""
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    first_seed = TRAIN_SEED if split_name == "train" else VAL_SEED
    prefix = f"{task}-{split_name}-{'+'.join(cameras) or 'nocam'}-{size}px-h{horizon}-{expert_tag()}-n"
    have = sorted((int(p.name[len(prefix):-5]), p) for p in cache.glob(prefix + "*.hdf5")
                  if p.name[len(prefix):-5].isdigit())
    for count, p in have:
        if count >= n:
            return p
    env_args = default_env_args(TASKS[task], cameras, size)
    env = RoboEnv(env_args, cameras, size)
    keys = tuple(f"{c}_image" for c in cameras) + STORED_LOW_DIM
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"{task} {split_name} demos", leave=False)
    demos, failed = collect_demos(env, task, n, first_seed, horizon, keys, progress=bar,
                                  obs_map={"object": "object-state"})
    if bar is not None:
        bar.close()
    env.close()
    names = [f"demo_{i}" for i in range(n)]
    path = cache / f"{prefix}{n}.hdf5"
    write_hdf5(path, demos, env_args, train=names if split_name == "train" else [],
               valid=names if split_name == "valid" else [],
               attrs={"dopr_expert": f"scripted {task} {expert_tag()}", "dopr_failed_seeds": json.dumps(failed)})
    return path
