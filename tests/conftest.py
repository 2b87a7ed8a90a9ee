"""Shared fixtures: the project's params.yaml sections and a small simulated dataset."""
from pathlib import Path

import pytest

from physics_helpers import fitted_physics

from pipeline.config import load_params
from pipeline.methods import PhysicsOperator
from pipeline.sensor import Sensor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def params() -> dict:
    """params.yaml of the repository (the laptop profile)."""
    return load_params(ROOT / "params.yaml")


@pytest.fixture()
def small_simulate(params) -> dict:
    """The simulate section shrunk to 12 trajectories (a fresh copy per test)."""
    return {**params["simulate"], "trajectories": 12}


@pytest.fixture()
def sensor(params) -> Sensor:
    """The sensor of params.yaml (8-bit, saturating, noise-free by default)."""
    return Sensor.from_section(params["sensor"])


@pytest.fixture(scope="module", params=[3, 5], ids=["c3", "c5"])
def physics(request) -> PhysicsOperator:
    """Phi at c = 3 and c = 5 with a fitted Q_init (modules may define their own ``physics``)."""
    return fitted_physics(request.param, maps=500, seed=request.param)


@pytest.fixture(scope="module")
def physics3() -> PhysicsOperator:
    """Phi at c = 3 with a fitted Q_init."""
    return fitted_physics(3, maps=500, seed=3)
