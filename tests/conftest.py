"""Shared fixtures: seeded digits data (ships with scikit-learn), quiet and fast settings."""

from __future__ import annotations

import pytest

from compress.testing.fixtures import digits_task, seed_torch  # noqa: F401  (shared with benchmarks/)

FAST_GP = {"epochs": 0, "bisection_steps": 4, "calib_samples": 64}


@pytest.fixture()
def fast_gp_config():
    return dict(FAST_GP)
