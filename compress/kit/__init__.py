"""The plug-in kit: everything a strategy author imports, in one public place.

A strategy (built in or out of tree) should need nothing from slimforge but this package. The
names below are re-exported from the modules that own them, so ``compress.kit.X is
compress.<owner>.X``; :data:`__all__` is the public API and stays stable.

Add a strategy in three steps::

    # 1. A frozen config dataclass, validated in __post_init__ (raise ConfigError).
    from dataclasses import dataclass

    from compress.kit import (ConfigError, Strategy, StrategyContext, StrategyOutput,
                              apply_widths, check_fields, describe_widths, register_strategy)

    @dataclass(frozen=True)
    class HalfConfig:
        keep: float = 0.5  # fraction of every layer's channels

        def __post_init__(self) -> None:
            check_fields(self)  # types from the annotations, ranges from the field names
            if not 0 < self.keep <= 1:
                raise ConfigError(f"keep must be in (0, 1], got {self.keep}.")

    # 2. A Strategy subclass: config_cls and run(ctx) -> StrategyOutput. Measure candidates only
    #    through ctx.check(model) (the budget oracle); work in named phases.
    class Half(Strategy):
        config_cls = HalfConfig

        def run(self, ctx: StrategyContext) -> StrategyOutput:
            with ctx.phase("prune"):
                ...  # build the student from ctx.model (a private copy of the user's model)
            return StrategyOutput(student=student, info={"keep": self.config.keep})

    # 3. Register it: @register_strategy("half") on the class, or, out of tree, an entry point
    #    in your distribution's pyproject.toml:
    #        [project.entry-points."slimforge.strategies"]
    #        half = "my_package.half:Half"

Long work should commit a checkpoint at every boundary (:class:`CheckpointStore`, or
:class:`EpochCheckpoint` passed to :func:`finetune`), so that a killed run resumes; a step
that may hang runs under :func:`time_limit`. Training goes through the runtime
(:class:`Runtime`, :func:`fit`, :func:`finetune` with :func:`kd_loss`), which handles the
device, precision, seeds and determinism.

What each name is (the owner module in brackets):

* registration -- :func:`register_strategy`, :data:`ENTRY_POINT_GROUP` (``compress.registry``);
* the contract -- :class:`Strategy`, :class:`StrategyContext`, :class:`StrategyOutput`,
  :func:`config_to_dict`, :func:`config_from_dict` (``compress.strategies.base``);
* config checks -- :func:`check_fields` (``compress.strategies._parts.config_fields``);
* nested configs -- :class:`FinetuneConfig` (the shared fine-tune block), :func:`subconfig`,
  :func:`coerce_subconfigs`, :func:`key_config` (a phase's checkpoint key from its sub-configs),
  :func:`replace_config`, :class:`ConfigDeprecationWarning` (``compress.strategies.config_tree``);
* errors -- :class:`SlimforgeError`, :class:`ConfigError`, :class:`TimeLimitError`
  (``compress.errors``);
* checkpoints -- :class:`CheckpointStore`, :class:`EpochCheckpoint`, :class:`Restored`
  (``compress.training.checkpoint``);
* time limits -- :func:`time_limit` (``compress.strategies._parts.time_limit``);
* training -- :class:`Runtime`, :class:`RuntimeOptions`, :class:`FitPlan`, :func:`fit`,
  :class:`FinetuneSettings`, :func:`finetune`, :func:`evaluate`, :func:`kd_loss`,
  :func:`make_optimizer`, :func:`derive_seed` (``compress.training``);
* width surgery -- :func:`describe_widths`, :func:`apply_widths` (``compress.models.widths``):
  a student that is a resized copy of the user's model is saved and reloaded through them.
"""

from __future__ import annotations

from compress.errors import ConfigError, SlimforgeError, TimeLimitError
from compress.models.widths import apply_widths, describe_widths
from compress.registry import ENTRY_POINT_GROUP, register_strategy
from compress.strategies._parts.config_fields import check_fields
from compress.strategies._parts.time_limit import time_limit
from compress.strategies.base import Strategy, StrategyContext, StrategyOutput, config_from_dict, config_to_dict
from compress.strategies.config_tree import (ConfigDeprecationWarning, FinetuneConfig, coerce_subconfigs, key_config,
                                             replace_config, subconfig)
from compress.training import (
    FinetuneSettings,
    FitPlan,
    Runtime,
    RuntimeOptions,
    derive_seed,
    evaluate,
    finetune,
    fit,
    kd_loss,
    make_optimizer,
)
from compress.training.checkpoint import CheckpointStore, EpochCheckpoint, Restored

__all__ = [
    "ENTRY_POINT_GROUP",
    "CheckpointStore",
    "ConfigDeprecationWarning",
    "ConfigError",
    "EpochCheckpoint",
    "FinetuneConfig",
    "FinetuneSettings",
    "FitPlan",
    "Restored",
    "Runtime",
    "RuntimeOptions",
    "SlimforgeError",
    "Strategy",
    "StrategyContext",
    "StrategyOutput",
    "TimeLimitError",
    "apply_widths",
    "check_fields",
    "coerce_subconfigs",
    "config_from_dict",
    "config_to_dict",
    "derive_seed",
    "describe_widths",
    "evaluate",
    "finetune",
    "fit",
    "kd_loss",
    "key_config",
    "make_optimizer",
    "register_strategy",
    "replace_config",
    "subconfig",
    "time_limit",
]
