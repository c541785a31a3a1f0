"""robosuite environments built from robomimic-style ``env_args``, with cheap offscreen rendering and seeded resets.

``env_args`` is robomimic's dict (``data.attrs["env_args"]`` of its HDF5 files): ``env_name``, ``env_version``,
``type`` (1 = robosuite) and ``env_kwargs`` (the keyword arguments of ``robosuite.make``). Files made by this
bench add ``dopr_render`` (``"fast"``: no multisampling, shadows or reflections) so that rollouts render the way the
demonstrations were rendered; files without it (real robomimic datasets) are rendered with robosuite's defaults.
"""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Any

import numpy as np

#: bench task name -> robosuite environment name.
TASKS = {"lift": "Lift", "stack": "Stack"}
#: default cameras (robomimic's image datasets use the same two) and the low-dim proprioception keys.
CAMERAS = ("agentview", "robot0_eye_in_hand")
PROPRIO_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")

_PREPARED = False


def prepare_robosuite() -> None:
    """Call before importing robosuite: offscreen rendering through EGL unless MUJOCO_GL says otherwise (robosuite
    reads it at import), and robosuite's console logger kept to errors (its import warns about optional packages:
    private macros, robosuite_models, mink; every ``make`` logs the controller file)."""
    global _PREPARED
    if not _PREPARED:
        import logging

        os.environ.setdefault("MUJOCO_GL", "egl")
        logging.getLogger("robosuite_logs").addFilter(lambda record: record.levelno >= logging.ERROR)
        _PREPARED = True


def default_env_args(env_name: str, cameras: tuple[str, ...] = CAMERAS, size: int = 84,
                     render: str = "fast") -> dict[str, Any]:
    """robomimic-style ``env_args`` for a Panda with robosuite's default OSC_POSE (delta) arm controller."""
    prepare_robosuite()
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    return {
        "env_name": env_name,
        "env_version": robosuite.__version__,
        "type": 1,
        "env_kwargs": {
            "robots": ["Panda"],
            "controller_configs": load_composite_controller_config(controller="BASIC", robot="Panda"),
            "control_freq": 20,
            "use_object_obs": True,
            "use_camera_obs": bool(cameras),
            "camera_names": list(cameras),
            "camera_heights": size,
            "camera_widths": size,
            "camera_depths": False,
            "reward_shaping": False,
            "has_renderer": False,
            "has_offscreen_renderer": bool(cameras),
            "ignore_done": True,
            "hard_reset": False,
            "lite_physics": True,
            "seed": 0,
        },
        "dopr_render": render,
    }


def _version(v: str | None) -> tuple[int, ...]:
    out = []
    for part in (v or "0").split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def make_kwargs(env_args: dict[str, Any], cameras: tuple[str, ...], size: int) -> dict[str, Any]:
    """``robosuite.make`` keyword arguments from ``env_args``: our cameras and size, offscreen only, no hard resets.

    Old-format (robosuite <= 1.4) controller configs are converted; datasets older than robosuite 1.5 get
    ``lite_physics=False`` (robosuite's switch for backward-compatible physics); keywords the environment does not
    take are dropped with a warning.
    """
    prepare_robosuite()
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config
    from robosuite.environments.base import REGISTERED_ENVS

    name = env_args["env_name"]
    if name not in REGISTERED_ENVS:
        raise SystemExit(f"robosuite has no environment {name!r} (env_args of the dataset)")
    kw = dict(env_args.get("env_kwargs", {}))
    robots = kw.get("robots", ["Panda"])
    robots = [robots] if isinstance(robots, str) else list(robots)
    if kw.get("controller_configs") is not None:
        kw["controller_configs"] = refactor_composite_controller_config(kw["controller_configs"], robots[0], ["right"])
    if "lite_physics" not in kw and _version(env_args.get("env_version")) < (1, 5):
        kw["lite_physics"] = False
    # robosuite draws some model properties once per model load (Lift's cube size) from the env's rng: seed it, or
    # every process would roll out in a slightly different environment
    kw.setdefault("seed", 0)
    kw.update(robots=robots, has_renderer=False, has_offscreen_renderer=bool(cameras), use_camera_obs=bool(cameras),
              camera_names=list(cameras) or ["agentview"], camera_heights=size, camera_widths=size, camera_depths=False,
              ignore_done=True, hard_reset=False, render_gpu_device_id=-1)
    accepted = set(inspect.signature(REGISTERED_ENVS[name].__init__).parameters)
    dropped = sorted(k for k in kw if k not in accepted)
    if dropped:
        warnings.warn(f"{name}: ignoring env_kwargs {dropped} that robosuite does not take", stacklevel=2)
    return {k: v for k, v in kw.items() if k in accepted}


class RoboEnv:
    """A robosuite environment reset by seed (``reset(seed)`` gives the same start state every time).

    ``render="fast"`` turns off multisampling, shadows and reflections of the offscreen renderer (several times
    cheaper on a CPU renderer); ``"default"`` keeps robosuite's settings.
    """

    def __init__(self, env_args: dict[str, Any], cameras: tuple[str, ...] = CAMERAS, size: int = 84,
                 render: str | None = None) -> None:
        prepare_robosuite()
        import robosuite

        self.env_args = env_args
        self.cameras, self.size = tuple(cameras), size
        self.render = render or env_args.get("dopr_render", "default")
        if self.render not in ("fast", "default"):
            raise ValueError(f"render must be 'fast' or 'default', not {self.render!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.env = robosuite.make(env_args["env_name"], **make_kwargs(env_args, self.cameras, size))
        if self.cameras and self.render == "fast":
            self._fast_rendering()
        # Cameras are rendered here, only for the steps that need images (a policy re-plans every few steps),
        # with the same call and image convention as robosuite's camera observables (tested to give equal images).
        from robosuite import macros
        from robosuite.utils.mjcf_utils import IMAGE_CONVENTION_MAPPING

        self._flip = IMAGE_CONVENTION_MAPPING[macros.IMAGE_CONVENTION]
        for cam in self.cameras:
            self.env.modify_observable(f"{cam}_image", "enabled", False)

    def _fast_rendering(self) -> None:
        import gc

        import mujoco

        sim = self.env.sim
        sim.model._model.vis.quality.offsamples = 0  # no multisampling: read at context creation, so recreate it
        old = sim._render_context_offscreen
        sim._render_context_offscreen = None
        del old
        gc.collect()  # free the old GL context before the new one is made current
        self.env.reset()  # creates the new render context
        scn = sim._render_context_offscreen.scn
        scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def _with_images(self, obs: dict[str, np.ndarray], images: bool) -> dict[str, np.ndarray]:
        if images and self.cameras:
            self.env.sim._render_context_offscreen.gl_ctx.make_current()  # safe with several envs in one process
            for cam in self.cameras:
                img = self.env.sim.render(camera_name=cam, width=self.size, height=self.size, depth=False)
                obs[f"{cam}_image"] = img[::self._flip]
        return obs

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Reset to the start state of ``seed`` (object placement and robot initialization noise)."""
        self.env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        return self._with_images(self.env.reset(), True)

    def step(self, action: np.ndarray, images: bool = True) -> tuple[dict[str, np.ndarray], float]:
        """One control step; the camera images (``CAM_image``) are rendered only if ``images``."""
        obs, reward, _, _ = self.env.step(np.asarray(action, dtype=np.float64))
        return self._with_images(obs, images), float(reward)

    def success(self) -> bool:
        return bool(self.env._check_success())

    def state(self) -> np.ndarray:
        """The flattened simulator state (robomimic's ``states``)."""
        return np.asarray(self.env.sim.get_state().flatten(), dtype=np.float64)

    @property
    def action_dim(self) -> int:
        return int(self.env.action_dim)

    def close(self) -> None:
        self.env.close()
