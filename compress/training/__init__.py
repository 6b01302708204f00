"""The training runtime every strategy trains with (public: strategy authors use it).

* :class:`RuntimeOptions` / :class:`Runtime`: device, precision (fp32 / bf16 / fp16) and data
  parallelism, on Lightning Fabric (:mod:`compress.training.runtime`).
* :func:`fit` / :class:`FitPlan`: the one training loop (schedule, clipping, divergence guard,
  keep-best, progress, per-epoch checkpoints with bit-identical resume).
* :func:`finetune` / :class:`FinetuneSettings`: the KD fine-tune on :func:`fit`.
* :mod:`compress.training.data`: augmentation in the loader, seeded splits and cycling loaders.
* :mod:`compress.training.checkpoint`: atomic checkpoints, RNG capture, the run manifest.
"""

from compress.training.checkpoint import CheckpointStore, EpochCheckpoint
from compress.training.data import AUGMENTATIONS, Cycle, augment_batch, derive_seed, split_dataset, training_loader
from compress.training.loop import (FinetuneSettings, FitPlan, all_finite, cosine_factor,
                                    diverged_error, evaluate, finetune, fit, kd_loss, main_logits, make_optimizer,
                                    weights_checksum)
from compress.training.runtime import PRECISIONS, Runtime, RuntimeOptions, resolve_device

__all__ = ["AUGMENTATIONS", "CheckpointStore", "Cycle", "EpochCheckpoint", "FinetuneSettings", "FitPlan", "PRECISIONS",
           "Runtime", "RuntimeOptions", "all_finite", "augment_batch", "cosine_factor",
           "derive_seed", "diverged_error", "evaluate", "finetune", "fit", "kd_loss", "main_logits", "make_optimizer",
           "resolve_device", "split_dataset", "training_loader", "weights_checksum"]
