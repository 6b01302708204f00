"""grow's checkpoints: the growth loop's boundaries (structure JSON, tensors, RNG states and the
run history) under ``<out_dir>/checkpoints/grow`` through the shared :class:`CheckpointStore`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from compress.strategies.config_tree import key_config, subconfig_names
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
    """The key a resumed run must match: the config (every sub-config, the run reads them all; not
    ``checkpoint``) under its flat names (:func:`~compress.strategies.config_tree.key_config`), the
    seed, the teacher partition's signature, the budget, the sizes of ``D_train`` and ``D_val`` and
    the class count."""
    config = key_config(cfg, *subconfig_names(type(cfg)), top_level=True, skip=frozenset({"checkpoint"}))
    key_blob = json.dumps({"config": config, "seed": seed, "teacher": teacher, "budget": budget, "sizes": sizes,
                           "classes": classes}, sort_keys=True, default=str)
    return hashlib.sha256(key_blob.encode()).hexdigest()[:20]
