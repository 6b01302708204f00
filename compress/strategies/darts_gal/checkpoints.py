"""Phase checkpoints of ``darts-gal``: the key of each phase and the store that commits it.

Every phase boundary (search, baseline, GAL and its lambda probes, retrain) is one entry of the shared
:class:`~compress.training.CheckpointStore` under ``<out_dir>/checkpoints/darts-gal/``, guarded by
:func:`phase_key`: a hash of the sub-configs the phase reads (:func:`~compress.strategies.config_tree.key_config`)
and of the keys of the phases before it, so a changed setting recomputes only what it affects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import ConfigError
from compress.strategies.base import StrategyContext
from compress.strategies.config_tree import key_config
from compress.strategies.darts_gal.config import DartsGalConfig
from compress.training import CheckpointStore
from compress.training.checkpoint import stable_hash

__all__ = ["PhaseStore", "phase_key"]


def phase_key(cfg: DartsGalConfig, phase: str, extra: dict[str, Any], *, latency_search: bool = False) -> str:
    """A phase's checkpoint key: the leaves of the sub-configs it reads, under their flat names
    (:func:`~compress.strategies.config_tree.key_config`), and ``extra``.

    * ``"search"``: ``search`` (``search.arch_latency_weight`` only with a latency term in the
      search, ``latency_search``; ``search.arch_reference_steps`` left out at None: issue 18's
      ``KEY_OMIT``, so earlier searches still resume);
    * ``"baseline"``: ``sizing`` and ``baseline``;
    * ``"gal"``: ``gal`` and ``objective`` (the latency-weighted penalty);
    * ``"retrain"``: ``final`` and ``retrain``.

    Raises:
        ConfigError: an unknown phase.
    """
    if phase == "search":
        d = key_config(cfg, "search", skip=frozenset() if latency_search else frozenset({"arch_latency_weight"}))
    elif phase == "baseline":
        d = key_config(cfg, "sizing", "baseline")
    elif phase == "gal":
        d = {**key_config(cfg, "gal"), "objective": cfg.objective}
    elif phase == "retrain":
        d = {**key_config(cfg, "final"), "retrain": cfg.retrain}
    else:
        raise ConfigError(f"darts-gal has no phase {phase!r}; known: search, baseline, gal, retrain.")
    return stable_hash({"phase": phase, "config": d, **extra})


class PhaseStore:
    """Phase checkpoints ``<phase>.json`` + ``<phase>.0.pt`` in the shared :class:`CheckpointStore`
    (atomic pair, RNG states); each also keeps the run history up to its boundary."""

    def __init__(self, directory: Path | None) -> None:
        self.store = CheckpointStore(directory)
        self.dir = self.store.dir

    def load(self, phase: str, config_hash: str, ctx: StrategyContext) -> tuple[dict[str, Any], Any] | None:
        """(state, tensors) of a phase written with ``config_hash``, or None; sets ``ctx.history``
        and the RNGs to the boundary's. Raises CheckpointError when corrupt."""
        restored = self.store.load(phase, key=config_hash)
        if restored is None:
            return None
        ctx.history[:] = restored.state["run_history"]
        restored.restore_rng()
        return restored.state["data"], restored.tensors

    def save(self, phase: str, config_hash: str, state: dict[str, Any], tensors: Any, ctx: StrategyContext) -> None:
        self.store.commit(phase, {"data": state, "run_history": ctx.history}, tensors, key=config_hash)
