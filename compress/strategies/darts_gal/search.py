"""Stage 1 of DARTS-GAL: a DARTS search of the normal and reduction cells on the user's data
(paper §3.1, Eq. 1-3; DARTS Liu et al. 2019 §2; ALGORITHMS.md §0.3-0.4).

The training split is divided (seeded) into a *weight* part and an *architecture* part
(``train_portion``). Every step: an architecture step (first order: Adam on ``grad_alpha L_val``;
second order: the unrolled gradient of DARTS Eq. 7-8) on a batch of the architecture part, then an
SGD step (cosine learning rate per epoch, gradient clipping) on the weights with a batch of the
weight part. PC-DARTS partial channels / edge normalisation / alpha warm-up are options.

The loop, its checkpoints and its resume are the shared
:class:`~compress.strategies.darts.supernet_search.SupernetSearch`; the architecture updater is the
DARTS :class:`~compress.strategies.darts.architect.Architect`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from compress.strategies.darts.architect import Architect
from compress.strategies.darts.supernet_search import SearchOutcome, SearchSchedule, SupernetSearch, build_supernet
from compress.strategies.darts_gal.config import DartsGalConfig
from compress.training.data import derive_seed, split_dataset
from compress.training.runtime import Runtime

__all__ = ["derive_seed", "DartsSearch", "SearchOutcome"]


class DartsSearch(SupernetSearch):
    """The DARTS search of ``darts-gal`` (8 DARTS ops, BN after pools) with per-epoch checkpoints.

    Args:
        cfg: the strategy config (search fields).
        train_ds: training dataset of ``(x, y)`` (split inside).
        val_loader: loader for the per-epoch supernet accuracy (may be None).
        num_classes, input_shape: task sizes ``K`` and ``(C, H, W)``.
        seed: run seed.
        ckpt_dir: checkpoint folder (None: no checkpoints); config_hash: the checkpoint key.
        progress: ``progress(phase, done, total, info)``; log: ``log(**record)`` per epoch.
        runtime: device and precision (default: CPU fp32).

    Raises:
        DataError: fewer than 4 training samples.
    """

    def __init__(self, cfg: DartsGalConfig, train_ds: Dataset, val_loader: DataLoader | None, num_classes: int,
                 input_shape: tuple[int, int, int], seed: int, *, ckpt_dir: Path | None = None,
                 config_hash: str = "", progress: Callable[[str, int, int | None, dict], None] | None = None,
                 log: Callable[..., None] | None = None, runtime: Runtime | None = None) -> None:
        self.cfg = cfg
        runtime = runtime or Runtime()
        w_part, a_part = split_dataset(train_ds, cfg.train_portion, seed, who="darts-gal's search")
        model = build_supernet(seed, cfg.search_C, num_classes, cfg.search_layers, primitives="darts",
                               in_channels=input_shape[0], partial_channels=cfg.partial_channels,
                               edge_norm=cfg.edge_norm, pool_bn=True, stem_stride=cfg.search_stem_stride)
        runtime.prepare(model)
        self.architect = Architect(model, lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay,
                                   second_order=cfg.second_order, w_momentum=cfg.search_momentum,
                                   w_weight_decay=cfg.search_weight_decay, runtime=runtime)
        schedule = SearchSchedule(
            epochs=cfg.search_epochs, warmup_epochs=cfg.arch_warmup_epochs, batch_size=cfg.search_batch_size,
            lr=cfg.search_lr, lr_min=cfg.search_lr_min, momentum=cfg.search_momentum,
            weight_decay=cfg.search_weight_decay, grad_clip=cfg.grad_clip,
            max_steps_per_epoch=cfg.search_max_steps_per_epoch, val_batches=cfg.search_val_batches)
        super().__init__(schedule, model, w_part, a_part, val_loader, seed, self.architect, runtime=runtime,
                         ckpt_dir=ckpt_dir, key=config_hash, progress=progress, log=log)
