"""Discrete LQR for InvertedDoublePendulum-v5 on a finite-difference linearization of the MuJoCo step."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import scipy.linalg


class LQRExpert:
    """u = -K (x - x*) with x = (qpos, qvel) read from the observation; action clipped to the box."""

    def __init__(self, K: np.ndarray, x_eq: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
        self.K, self.x_eq, self.low, self.high = K, x_eq, low, high

    @staticmethod
    def state_from_obs(obs: np.ndarray) -> np.ndarray:
        """IDP-v5 obs = [x, sin t1, sin t2, cos t1, cos t2, xdot, t1dot, t2dot, constraint force]."""
        obs = np.atleast_2d(obs)
        t1 = np.arctan2(obs[:, 1], obs[:, 3])
        t2 = np.arctan2(obs[:, 2], obs[:, 4])
        return np.stack([obs[:, 0], t1, t2, obs[:, 5], obs[:, 6], obs[:, 7]], axis=1)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        single = np.ndim(obs) == 1
        x = self.state_from_obs(obs)
        u = -(x - self.x_eq) @ self.K.T
        u = np.clip(u, self.low, self.high)
        return u[0] if single else u


def _step(model: mujoco.MjModel, data: mujoco.MjData, x: np.ndarray, u: np.ndarray, frame_skip: int) -> np.ndarray:
    nq = model.nq
    data.qpos[:] = x[:nq]
    data.qvel[:] = x[nq:]
    data.ctrl[:] = u
    mujoco.mj_forward(model, data)
    for _ in range(frame_skip):
        mujoco.mj_step(model, data)
    return np.concatenate([data.qpos, data.qvel]).copy()


def lqr_expert(env_id: str = "InvertedDoublePendulum-v5", eps: float = 1e-5) -> LQRExpert:
    env = gym.make(env_id)
    uw = env.unwrapped
    model: mujoco.MjModel = uw.model
    data = mujoco.MjData(model)
    frame_skip = int(uw.frame_skip)
    n, m = model.nq + model.nv, model.nu
    x0, u0 = np.zeros(n), np.zeros(m)
    A, B = np.zeros((n, n)), np.zeros((n, m))
    def f(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        return _step(model, data, x, u, frame_skip)

    for i in range(n):
        dx = np.zeros(n)
        dx[i] = eps
        A[:, i] = (f(x0 + dx, u0) - f(x0 - dx, u0)) / (2 * eps)
    for j in range(m):
        du = np.zeros(m)
        du[j] = eps
        B[:, j] = (f(x0, u0 + du) - f(x0, u0 - du)) / (2 * eps)
    Q = np.diag([1.0, 10.0, 10.0, 0.1, 1.0, 1.0])
    R = np.eye(m) * 0.1
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    env.close()
    return LQRExpert(K, np.zeros(n), low, high)
