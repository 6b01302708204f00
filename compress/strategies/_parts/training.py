"""Moved to :mod:`compress.training` (the public training runtime); kept as an alias so existing
imports keep working."""

from compress.training.data import AUGMENTATIONS, augment_batch  # noqa: F401
from compress.training.loop import (FinetuneSettings, all_finite, diverged_error, evaluate, finetune,  # noqa: F401
                                    kd_loss)

__all__ = ["kd_loss", "evaluate", "FinetuneSettings", "finetune", "augment_batch", "AUGMENTATIONS",
           "all_finite", "diverged_error"]
