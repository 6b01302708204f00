"""Shared fixtures: seeded digits data (ships with scikit-learn), quiet and fast settings."""

from __future__ import annotations

import pytest
import torch

FAST_GP = {"epochs": 0, "bisection_steps": 4, "calib_samples": 64}


@pytest.fixture(scope="session")
def digits_task():
    from compress.data import load_digits_task

    return load_digits_task(seed=0, batch_size=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture()
def fast_gp_config():
    return dict(FAST_GP)
