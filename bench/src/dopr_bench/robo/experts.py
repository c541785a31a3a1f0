"""Scripted experts for robosuite Lift and Stack (OSC_POSE delta actions), and demonstration collection.

Both are waypoint state machines on the true object positions: a proportional controller on the end-effector
position (action = clip(gain * error / 1 m)), zero rotation, gripper -1 (open) / +1 (closed).

- ``lift``: above the cube, descend, close the gripper for a few steps, lift.
- ``stack``: the same grasp of cube A, lift it above cube B, move over B, lower A onto B, open, retreat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .envs import RoboEnv

Obs = dict[str, np.ndarray]


@dataclass
class Demo:
    """One episode in robomimic's layout: ``obs[key][t]`` is seen before ``actions[t]``."""

    obs: dict[str, np.ndarray]
    actions: np.ndarray  # (T, act_dim)
    rewards: np.ndarray  # (T,)
    dones: np.ndarray  # (T,)
    states: np.ndarray  # (T, state_dim), may be (T, 0) when unknown
    success: bool = True
    seed: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)


@dataclass
class Phase:
    """A waypoint: ``target(obs) -> (eef position, gripper)``, ``done(obs, position error) -> bool``; ``align``
    turns the gripper about the vertical to the grasped cube's yaw (modulo 90 degrees) while in this phase."""

    name: str
    target: Callable[[Obs], tuple[np.ndarray, float]]
    done: Callable[[Obs, float], bool]
    align: bool = False


def _yaw(quat_xyzw: np.ndarray) -> float:
    x, y, z, w = quat_xyzw
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


class ScriptedExpert:
    """Follows ``phases()`` in order; moves to the next phase when ``done`` (and, when aligning, the yaw is close)."""

    gain = 10.0  # action units per metre of position error (1.0 = 5 cm per control step)
    rot_gain = 3.0  # action units per radian of yaw error (1.0 = 0.5 rad per control step)
    yaw_tol = np.radians(3.0)
    grasp_steps = 8
    release_steps = 6
    cube_quat = "cube_quat"

    def __init__(self) -> None:
        self.phase, self.count, self.memory = 0, 0, {}

    def reset(self) -> None:
        self.phase, self.count, self.memory = 0, 0, {}

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def yaw_error(self, obs: Obs) -> float:
        """Yaw of the cube minus yaw of the gripper, wrapped to [-45, 45) degrees (a cube looks the same every 90)."""
        err = _yaw(obs[self.cube_quat]) - _yaw(obs["robot0_eef_quat"])
        return float((err + np.pi / 4) % (np.pi / 2) - np.pi / 4)

    def __call__(self, obs: Obs) -> np.ndarray:
        phases = self.phases()
        while True:
            ph = phases[self.phase]
            goal, grip = ph.target(obs)
            err = goal - obs["robot0_eef_pos"]
            yaw_err = self.yaw_error(obs) if ph.align else 0.0
            aligned = abs(yaw_err) < self.yaw_tol
            if self.phase < len(phases) - 1 and aligned and ph.done(obs, float(np.linalg.norm(err))):
                self.phase, self.count = self.phase + 1, 0
                continue
            break
        self.count += 1
        action = np.zeros(7)
        action[:3] = np.clip(self.gain * err, -1.0, 1.0)
        action[5] = np.clip(self.rot_gain * yaw_err, -1.0, 1.0)
        action[6] = grip
        return action

    # building blocks
    def _hold(self, key: str, obs: Obs) -> np.ndarray:
        if key not in self.memory:
            self.memory[key] = obs["robot0_eef_pos"].copy()
        return self.memory[key]

    def _near(self, tol: float) -> Callable[[Obs, float], bool]:
        return lambda obs, err: err < tol

    def _after(self, steps: int) -> Callable[[Obs, float], bool]:
        return lambda obs, err: self.count >= steps

    def _near_or_after(self, tol: float, steps: int) -> Callable[[Obs, float], bool]:
        return lambda obs, err: err < tol or self.count >= steps


class LiftExpert(ScriptedExpert):
    def __init__(self, lift_height: float = 0.2) -> None:
        super().__init__()
        self.lift_height = lift_height

    def phases(self) -> list[Phase]:
        up = np.array([0.0, 0.0, 0.06])
        return [
            Phase("above", lambda o: (o["cube_pos"] + up, -1.0), self._near(0.01), align=True),
            Phase("descend", lambda o: (o["cube_pos"], -1.0), self._near(0.008)),
            Phase("grasp", lambda o: (self._hold("grasp", o), 1.0), self._after(self.grasp_steps)),
            Phase("lift", lambda o: (self._hold("grasp", o) + [0, 0, self.lift_height], 1.0), self._near(0.0)),
        ]


class StackExpert(ScriptedExpert):
    """Pick cube A (half-size 2 cm) and put it on cube B (half-size 2.5 cm)."""

    cube_quat = "cubeA_quat"

    def yaw_error(self, obs: Obs) -> float:
        """Of the two grasps of A (90 degrees apart), take the one whose fingers (the gripper's y axis) open
        perpendicular to the line from A to B, so that no finger comes down on B; chosen once per episode."""
        if "yaw" not in self.memory:
            a_to_b = obs["cubeB_pos"][:2] - obs["cubeA_pos"][:2]
            phi = float(np.arctan2(a_to_b[1], a_to_b[0]))
            cube = _yaw(obs[self.cube_quat])
            self.memory["yaw"] = min((cube, cube + np.pi / 2), key=lambda c: abs(np.sin(c - phi)))
        err = self.memory["yaw"] - _yaw(obs["robot0_eef_quat"])
        return float((err + np.pi / 2) % np.pi - np.pi / 2)

    def phases(self) -> list[Phase]:
        up = np.array([0.0, 0.0, 0.06])
        clearance = np.array([0.0, 0.0, 0.025 + 0.02 + 0.06])  # A's centre well above B's top

        def over_b(o: Obs) -> np.ndarray:
            return o["cubeB_pos"] + clearance

        def on_b(o: Obs) -> np.ndarray:
            return o["cubeB_pos"] + [0.0, 0.0, 0.025 + 0.02 + 0.008] + (o["robot0_eef_pos"] - o["cubeA_pos"])

        def lift(o: Obs) -> tuple[np.ndarray, float]:
            return self._hold("grasp", o) * [1, 1, 0] + [0, 0, over_b(o)[2]], 1.0

        return [
            Phase("above A", lambda o: (o["cubeA_pos"] + up, -1.0), self._near(0.01), align=True),
            Phase("descend", lambda o: (o["cubeA_pos"], -1.0), self._near_or_after(0.008, 20)),
            Phase("grasp", lambda o: (self._hold("grasp", o), 1.0), self._after(self.grasp_steps)),
            Phase("lift", lift, self._near(0.02)),
            Phase("over B", lambda o: (over_b(o), 1.0), self._near(0.01)),
            Phase("lower", lambda o: (on_b(o), 1.0), self._near(0.006)),
            Phase("release", lambda o: (self._hold("release", o), -1.0), self._after(self.release_steps)),
            Phase("retreat", lambda o: (self._hold("release", o) + [0, 0, 0.08], -1.0), self._near(0.0)),
        ]


EXPERTS: dict[str, type[ScriptedExpert]] = {"lift": LiftExpert, "stack": StackExpert}


def run_episode(env: RoboEnv, policy: Callable[[Obs], np.ndarray], seed: int, horizon: int,
                obs_keys: tuple[str, ...], settle: int = 0, record: bool = True,
                obs_map: dict[str, str] | None = None) -> Demo:
    """Roll ``policy`` out from the start state of ``seed`` until success (plus ``settle`` steps) or ``horizon``.

    With ``record``, observations (``obs_keys``; ``obs_map`` renames a stored key to the env's key), simulator
    states, rewards and actions are kept for every step.
    """
    src = {k: (obs_map or {}).get(k, k) for k in obs_keys}
    obs = env.reset(seed)
    keep: dict[str, list[np.ndarray]] = {k: [] for k in obs_keys}
    actions, rewards, states = [], [], []
    success, after = False, 0
    for _ in range(horizon):
        if record:
            for k in obs_keys:
                keep[k].append(np.asarray(obs[src[k]]))
            states.append(env.state())
        action = np.asarray(policy(obs), dtype=np.float64)
        obs, reward = env.step(action)
        actions.append(action)
        rewards.append(reward)
        if success or env.success():
            success = True
            after += 1
            if after > settle:
                break
    n = len(actions)
    dones = np.zeros(n, dtype=np.int64)
    if success:
        dones[-1] = 1
    return Demo(obs={k: np.stack(v) for k, v in keep.items()} if record else {},
                actions=np.asarray(actions, dtype=np.float64), rewards=np.asarray(rewards, dtype=np.float64),
                dones=dones, states=np.stack(states) if record else np.zeros((n, 0)), success=success, seed=seed)


def collect_demos(env: RoboEnv, task: str, n: int, first_seed: int, horizon: int, obs_keys: tuple[str, ...],
                  max_tries: int | None = None, progress: Any = None,
                  obs_map: dict[str, str] | None = None) -> tuple[list[Demo], list[int]]:
    """The first ``n`` successful expert episodes from seeds ``first_seed, first_seed + 1, ...``.

    Returns the demos and the seeds whose episode failed (skipped, as robomimic keeps only successes).
    """
    expert = EXPERTS[task]()
    demos: list[Demo] = []
    failed: list[int] = []
    seed = first_seed
    limit = max_tries if max_tries is not None else 3 * n + 10
    while len(demos) < n:
        if seed - first_seed >= limit:
            raise RuntimeError(f"{task} expert: only {len(demos)} successes in {limit} episodes from seed {first_seed}")
        expert.reset()
        demo = run_episode(env, expert, seed, horizon, obs_keys, obs_map=obs_map)
        if demo.success:
            demos.append(demo)
            if progress is not None:
                progress.update(1)
        else:
            failed.append(seed)
        seed += 1
    return demos, failed


def expert_success(env: RoboEnv, task: str, seeds: list[int], horizon: int) -> tuple[float, list[int]]:
    """Success rate of the scripted expert on ``seeds`` (no observations recorded) and its episode lengths."""
    expert = EXPERTS[task]()
    wins, lengths = 0, []
    for seed in seeds:
        expert.reset()
        demo = run_episode(env, expert, seed, horizon, (), record=False)
        wins += demo.success
        lengths.append(len(demo))
    return wins / max(1, len(seeds)), lengths
