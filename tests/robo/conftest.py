"""tests/robo runs in .venv-robo (scripts/setup-robo: robosuite 1.5.2 with mujoco 3.3.0); skipped elsewhere."""

import importlib.util

import pytest

MISSING = [m for m in ("robosuite", "h5py") if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="session", autouse=True)
def _robosuite():
    """Skip every test here without robosuite (session scope: before any module fixture builds an env)."""
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed: run tests/robo in .venv-robo (scripts/setup-robo)")
    from dopr_bench.robo.envs import prepare_robosuite

    prepare_robosuite()
