"""grow's checkpoints: the growth loop's boundaries (structure JSON, tensors, RNG states and the
run history) under ``<out_dir>/checkpoints/grow`` through the shared :class:`CheckpointStore`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from compress.strategies.base import config_to_dict
from compress.training import CheckpointStore

__all__ = ["CHECKPOINT_FORMAT", "run_key"]

CHECKPOINT_FORMAT = "slimforge-grow-checkpoint/1"


class _Checkpoints:
    """``<out_dir>/checkpoints/grow/state.json`` + ``state.<iteration>-<phase>.pt`` (tensors only)
    through the shared :class:`CheckpointStore` (atomic pair, RNG states); ``final.*`` holds the
    per-epoch checkpoints of the final retrain."""

    def __init__(self, root: Path | None, key: str) -> None:
        self.store = CheckpointStore.for_strategy(root, "grow")
        self.dir = self.store.dir
        self.key = key

    def load(self):
        """The last committed boundary (``Restored``) or None; raises CheckpointError when corrupt."""
        return self.store.load("state", key=f"{CHECKPOINT_FORMAT}:{self.key}")

    def save(self, state: dict, tensors: dict) -> None:
        self.store.commit("state", state, tensors, key=f"{CHECKPOINT_FORMAT}:{self.key}",
                          tag=f"{state['iteration']:04d}-{state['phase']}")


def run_key(cfg: Any, *, seed: int, teacher: Any, budget: str, sizes: list[int], classes: int) -> str:
    """The key a resumed run must match: the config (but ``checkpoint``), the seed, the teacher
    partition's signature, the budget, the sizes of ``D_train`` and ``D_val`` and the class count."""
    key_blob = json.dumps({"config": {k: v for k, v in config_to_dict(cfg).items() if k != "checkpoint"},
                           "seed": seed, "teacher": teacher, "budget": budget, "sizes": sizes, "classes": classes},
                          sort_keys=True, default=str)
    return hashlib.sha256(key_blob.encode()).hexdigest()[:20]
