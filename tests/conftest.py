"""Shared fixtures: the project's params.yaml sections and a small simulated dataset."""
from pathlib import Path

import pytest

from pipeline.config import load_params
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
