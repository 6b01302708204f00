"""Fixtures shared by the project's two pytest suites (``tests/`` and ``benchmarks/``).

Both ``conftest.py`` files import them by name; they are not part of the ``slimforge_budget``
plugin that users load, so users' sessions never get the autouse seeding below.
"""

from __future__ import annotations

import pytest
import torch

from compress.data import load_digits_task

__all__ = ["digits_task", "seed_torch"]


@pytest.fixture(scope="session")
def digits_task():
    """scikit-learn's digits as ``(B, 3, 32, 32)`` float batches of 64, seeded split (the CLI's
    default task; :func:`compress.data.load_digits_task`)."""
    return load_digits_task(seed=0, batch_size=64)


@pytest.fixture(autouse=True)
def seed_torch():
    """Every test starts from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    yield
