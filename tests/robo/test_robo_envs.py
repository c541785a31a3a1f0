"""RoboEnv: images rendered on demand equal robosuite's camera observables; seeded resets; fast rendering."""

import numpy as np

from dopr_bench.robo.envs import RoboEnv, default_env_args


def test_on_demand_images_equal_robosuite_observables():
    env = RoboEnv(default_env_args("Lift"))
    assert env.render == "fast"
    obs = env.reset(5)
    action = np.array([0.8, 0.3, -0.2, 0.0, 0.0, 0.3, -1.0])
    for _ in range(3):
        obs, _ = env.step(action)
    for cam in env.cameras:
        env.env.modify_observable(f"{cam}_image", "enabled", True)
    ref = env.env._get_observations(force_update=True)
    for cam in env.cameras:
        assert obs[f"{cam}_image"].shape == (84, 84, 3) and obs[f"{cam}_image"].dtype == np.uint8
        np.testing.assert_array_equal(obs[f"{cam}_image"], ref[f"{cam}_image"])
        env.env.modify_observable(f"{cam}_image", "enabled", False)
    obs, _ = env.step(action, images=False)
    assert not any(k.endswith("_image") for k in obs) and "robot0_eef_pos" in obs
    first = env.reset(5)
    again = env.reset(5)
    np.testing.assert_array_equal(first["agentview_image"], again["agentview_image"])
    assert env.env.sim.model._model.vis.quality.offsamples == 0
    env.close()
