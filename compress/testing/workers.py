"""Picklable functions for exercising :mod:`compress.executors` (tests, benchmarks).

They live in the package, not in a test module, so that process-pool and Ray workers can import
them by reference (a Ray worker does not see the test runner's ``sys.path``).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

__all__ = ["KillOnce", "fail_on_three", "seeded_draw", "slow_square", "square_and_pid"]


def slow_square(x: int, total: int = 6, step_s: float = 0.03) -> int:
    """``x * x`` after sleeping ``(total - x) * step_s`` seconds: early items finish last."""
    time.sleep(max(0, total - x) * step_s)
    return x * x


def square_and_pid(x: int) -> tuple[int, int]:
    """``(x * x, pid of the process that computed it)``."""
    return x * x, os.getpid()


def seeded_draw(item: tuple[int, int]) -> list[float]:
    """Four normal draws from a generator seeded by the item's own seed: ``item = (seed, k)``;
    the value depends on the item only, never on where or in which order it runs."""
    seed, k = item
    return [float(v) for v in np.random.default_rng([seed, k]).standard_normal(4)]


def fail_on_three(x: int) -> int:
    """``x + 1``, but raises ``ValueError`` for 3 (an error of the evaluated function itself)."""
    if x == 3:
        raise ValueError("candidate 3 is invalid")
    return x + 1


class KillOnce:
    """``fn(x) = x * x``, except that the first process to evaluate ``target`` SIGKILLs itself.

    "First" is recorded by creating ``marker`` (a file) just before the kill, so a retried task
    (or every task with ``always=True``) behaves differently from the first attempt.
    """

    def __init__(self, marker: str | Path, target: int = 2, always: bool = False) -> None:
        self.marker = str(marker)
        self.target = target
        self.always = always

    def __call__(self, x: int) -> int:
        if x == self.target and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return x * x
