"""robomimic HDF5 layout: our files round-trip exactly, and a file laid out like robomimic's own is readable."""

import json

import numpy as np
import pytest

from dopr_bench.robo.data import read_hdf5, split, write_hdf5
from dopr_bench.robo.envs import PROPRIO_KEYS, RoboEnv, make_kwargs
from dopr_bench.robo.experts import Demo

IMAGE_KEYS = ("agentview_image", "robot0_eye_in_hand_image")


def _demo(rng, t, seed=None):
    obs = {k: rng.integers(0, 256, (t, 84, 84, 3), dtype=np.uint8) for k in IMAGE_KEYS}
    obs |= {"robot0_eef_pos": rng.normal(size=(t, 3)), "robot0_eef_quat": rng.normal(size=(t, 4)),
            "robot0_gripper_qpos": rng.normal(size=(t, 2)), "object": rng.normal(size=(t, 10))}
    return Demo(obs=obs, actions=rng.uniform(-1, 1, (t, 7)), rewards=rng.uniform(size=t),
                dones=(np.arange(t) == t - 1).astype(np.int64), states=rng.normal(size=(t, 32)), seed=seed)


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    demos = [_demo(rng, t, seed=s) for t, s in ((5, 0), (3, 1), (4, 7))]
    env_args = {"env_name": "Lift", "env_version": "1.5.2", "type": 1, "env_kwargs": {"robots": ["Panda"]}}
    path = tmp_path / "demos.hdf5"
    write_hdf5(path, demos, env_args, train=["demo_0", "demo_1"], valid=["demo_2"])
    back, env_back, masks = read_hdf5(path)
    assert env_back == env_args
    assert masks == {"train": ["demo_0", "demo_1"], "valid": ["demo_2"]}
    assert list(back) == ["demo_0", "demo_1", "demo_2"]
    for d, b in zip(demos, back.values()):
        assert b.seed == d.seed and set(b.obs) == set(d.obs)
        for k in d.obs:
            assert b.obs[k].dtype == d.obs[k].dtype
            np.testing.assert_array_equal(b.obs[k], d.obs[k])
        for name in ("actions", "rewards", "dones", "states"):
            np.testing.assert_array_equal(getattr(b, name), getattr(d, name))
    import h5py

    with h5py.File(path, "r") as f:  # the attributes robomimic's SequenceDataset reads
        assert f["data"].attrs["total"] == 12
        assert [f[f"data/demo_{i}"].attrs["num_samples"] for i in range(3)] == [5, 3, 4]


# env_args as robomimic v0.1 wrote them (robosuite 1.2, old-style OSC_POSE controller config)
ROBOMIMIC_ENV_ARGS = {
    "env_name": "Lift", "type": 1,
    "env_kwargs": {
        "has_renderer": False, "has_offscreen_renderer": True, "ignore_done": True, "use_object_obs": True,
        "use_camera_obs": True, "control_freq": 20, "robots": ["Panda"], "camera_depths": False,
        "camera_heights": 84, "camera_widths": 84, "reward_shaping": False,
        "camera_names": ["agentview", "robot0_eye_in_hand"], "render_gpu_device_id": 0,
        "controller_configs": {
            "type": "OSC_POSE", "input_max": 1, "input_min": -1, "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
            "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5], "kp": 150, "damping": 1,
            "impedance_mode": "fixed", "kp_limits": [0, 300], "damping_limits": [0, 10], "position_limits": None,
            "orientation_limits": None, "uncouple_pos_ori": True, "control_delta": True, "interpolation": None,
            "ramp_ratio": 0.2,
        },
    },
}


@pytest.fixture()
def robomimic_file(tmp_path):
    """A file laid out like robomimic's image.hdf5 (written with h5py directly, not with our writer)."""
    import h5py

    rng = np.random.default_rng(1)
    path = tmp_path / "image.hdf5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(ROBOMIMIC_ENV_ARGS)
        total = 0
        for i, t in ((0, 4), (2, 3), (10, 5)):  # robomimic sorts demo_10 after demo_2
            d = _demo(rng, t)
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = t
            g.attrs["model_file"] = "<mujoco model='base'/>"
            for k, v in d.obs.items():
                g.create_dataset(f"obs/{k}", data=v)
                g.create_dataset(f"next_obs/{k}", data=v)
            for name in ("actions", "rewards", "dones", "states"):
                g.create_dataset(name, data=getattr(d, name))
            total += t
        data.attrs["total"] = total
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_10"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_2"]))
        f.create_dataset("mask/20_percent", data=np.array([b"demo_2"]))
    return path


def test_reads_robomimic_layout(robomimic_file):
    demos, env_args, masks = read_hdf5(robomimic_file, IMAGE_KEYS + PROPRIO_KEYS)
    assert list(demos) == ["demo_0", "demo_2", "demo_10"]
    assert demos["demo_10"].obs["agentview_image"].shape == (5, 84, 84, 3)
    assert demos["demo_10"].attrs["model_file"].startswith("<mujoco")
    assert split(list(demos), masks, 2, 1) == (["demo_0", "demo_10"], ["demo_2"])
    assert split(list(demos), {}, 2, 1) == (["demo_0", "demo_2"], ["demo_10"])
    with pytest.raises(SystemExit, match="3 training demos"):
        split(list(demos), masks, 3, 1)
    kw = make_kwargs(env_args, ("agentview", "robot0_eye_in_hand"), 84)
    assert kw["controller_configs"]["body_parts"]["right"]["type"] == "OSC_POSE"  # converted to robosuite 1.5
    assert kw["lite_physics"] is False  # a pre-1.5 dataset keeps the old physics
    env = RoboEnv(env_args, ("agentview", "robot0_eye_in_hand"), 84)
    assert env.render == "default"  # rendered like the dataset, not with the bench's cheap settings
    obs = env.reset(0)
    obs, _ = env.step(demos["demo_0"].actions[0])
    assert obs["agentview_image"].shape == (84, 84, 3) and obs["robot0_eef_pos"].shape == (3,)
    env.close()


def test_low_dim_file_says_what_is_missing(robomimic_file, tmp_path):
    import h5py

    with h5py.File(robomimic_file, "a") as f:
        for g in f["data"].values():
            del g["obs/agentview_image"]
    with pytest.raises(SystemExit, match="low_dim"):
        read_hdf5(robomimic_file, IMAGE_KEYS)
