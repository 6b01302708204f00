"""Shared fixtures: seeded digits data (ships with scikit-learn), quiet and fast settings."""

from __future__ import annotations

import os

import pytest
import torch

from compress.testing.fixtures import digits_task, seed_torch  # noqa: F401  (shared with benchmarks/)

FAST_GP = {"epochs": 0, "bisection_steps": 4, "calib_samples": 64}


@pytest.fixture()
def fast_gp_config():
    return dict(FAST_GP)


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs 2 workers), each worker gets its share of the cores as
    torch / OpenMP threads, and so do the processes the tests start (CLI subprocesses, DDP ranks):
    2 workers with 2 OpenMP threads each on 2 cores spin against each other and run several times
    slower than 1 thread each."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // int(workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
