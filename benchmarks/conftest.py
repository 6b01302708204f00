"""Fixtures of the pytest-benchmark suite (``benchmarks/test_bench_suite.py``).

Kept apart from ``tests/conftest.py``: ``testpaths = ["tests"]`` keeps this directory out of the
default suite, so the suite brings its own data and model fixtures.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from compress.testing.fixtures import digits_task, seed_torch  # noqa: F401  (shared with tests/)

_PIPELINE_TESTS = Path(__file__).resolve().parents[1] / "tests" / "integration" / "test_pipeline.py"


def load_contract_configs() -> dict[str, dict[str, Any]]:
    """The per-strategy fast configs of the contract test (``CONTRACT_CONFIGS`` in
    ``tests/integration/test_pipeline.py``), loaded from that file so both suites stay in step.

    Raises:
        RuntimeError: the file is missing or defines no ``CONTRACT_CONFIGS`` dict.
    """
    if not _PIPELINE_TESTS.is_file():
        raise RuntimeError(f"{_PIPELINE_TESTS} not found; the benchmark suite takes its strategy configs from it")
    spec = importlib.util.spec_from_file_location("_slimforge_contract_configs", _PIPELINE_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    configs = getattr(module, "CONTRACT_CONFIGS", None)
    if not isinstance(configs, dict):
        raise RuntimeError(f"{_PIPELINE_TESTS} defines no CONTRACT_CONFIGS dict")
    return configs


@pytest.fixture(scope="session")
def contract_configs() -> dict[str, dict[str, Any]]:
    return load_contract_configs()
