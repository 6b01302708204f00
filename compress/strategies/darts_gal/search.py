"""Stage 1 of DARTS-GAL: a DARTS search of the normal and reduction cells on the user's data
(paper §3.1, Eq. 1-3; DARTS Liu et al. 2019 §2; docs/algorithms/darts-space.md).

The training split is divided (seeded) into a *weight* part and an *architecture* part
(``train_portion``). Every step: an architecture step (first order: Adam on ``grad_alpha L_val``;
second order: the unrolled gradient of DARTS Eq. 7-8) on a batch of the architecture part, then an
SGD step (cosine learning rate per epoch, gradient clipping) on the weights with a batch of the
weight part. PC-DARTS partial channels / edge normalisation / alpha warm-up are options.

The loop, its checkpoints and its resume are the shared
:class:`~compress.strategies.darts.supernet_search.SupernetSearch`; the architecture updater is the
DARTS :class:`~compress.strategies.darts.architect.Architect`.

Issue 18 (as in ``eg-nas``' ``alpha_update="gradient"``):

* ``search.arch_reference_steps``: Adam moves each logit by about ``search.arch_lr`` per step at most, so alpha
  travels at most ``arch_lr x steps``; DARTS' CIFAR-10 search (§3.1.1: 50 epochs x 391 steps =
  19,550 steps of lr 3e-4) allows about 5.9 logit units, the ``cpu-small`` preset's 4 x 8 = 32 steps
  (until 2026-12-04) about 0.01. With ``arch_reference_steps=19_550`` (that preset's value then) the step becomes
  ``arch_lr x 19,550 / 32`` = 0.183, DARTS' total travel over this search. Measured on the digits
  demo task at ``cpu-small`` (seed 0, the preset's 4 epochs x 8 steps, batch 32): the mean per-edge
  entropy of softmax(alpha) after epochs 1-4 is 2.0794 nats at every epoch at lr 3e-4 (uniform over
  the 8 DARTS ops: ln 8 = 2.0794; the normal cell's derived genotype was then all pools and skips,
  an argmax over the initial noise), and 1.9247, 1.8040, 1.7416, 1.6942 with the reference steps
  (the normal cell then picks sep/dil convs on 5 of its 8 edges; supernet val accuracy after the
  last epoch 0.773 vs 0.914, 2 val batches). Alpha moves, but stays above issue 18's 1.5-nat goal
  at this step count. More steps at the same total travel do not help: with ``search.max_steps_per_epoch``
  16 instead of 8 (64 alpha steps of lr 0.092, same seed and task) the entropy after epochs 1-4 is
  1.9883, 1.9663, 1.9467, 1.9501 while the supernet's val accuracy reaches 0.938: the first-order
  alpha gradients change sign from batch to batch, so Adam's steps mostly cancel and what movement
  there is at 32 steps is largely noise (one seed; genotype_stability in report.json measures it).
  What else moves alpha was measured with ``benchmarks/bench_darts_entropy.py`` (results in
  ``benchmarks/results/darts_alpha_entropy*.md``, 3 seeds where a range is given): at
  ``bench_nas_random``'s CIFAR settings (66 alpha steps) the final entropy was 1.79-1.89 with DARTS'
  settings; one change at a time on seed 0: ``arch_weight_decay=0`` 1.65, ``arch_warmup_epochs=1``
  1.74, the second order 1.83, ``search.arch_batch_size=128`` 1.75; ``arch_batch_size=256`` with no
  alpha weight decay 1.48-1.53. The noise is the obstacle, so the ``cpu-small`` preset (since 2026-12-04)
  takes each alpha step on 256 images (``search.arch_batch_size``; the gradient's noise falls with
  the batch) without alpha weight decay, and scales the travel by Adam's square-root batch rule
  (Malladi et al., NeurIPS 2022: lr x sqrt(batch ratio); 256 images are 4x DARTS' batch of 64, so
  ``arch_reference_steps = 2 x 19,550 = 39,100``). On CIFAR that gives 1.14 / 1.05 / 1.15 nats
  (seeds 0-2) with the supernet's val accuracy unchanged (0.34 / 0.33 / 0.32 vs 0.32 / 0.34 / 0.28)
  and 0-3 of the normal cell's 8 edges parameter-free. On the digits demo it gives 1.17 / 1.13 / 1.08,
  but there the derived normal cells are mostly pools and skips (4, 8, 7 of 8 edges) and the
  supernet's val accuracy drops to 0.79 / 0.65 / 0.36 (0.77 / 0.91 / 0.73 before): DARTS' collapse to
  parameter-free ops (Zela et al., ICLR 2020) while the weights are barely trained. The preset
  therefore also doubles the weight steps (``search.max_steps_per_epoch`` 16; 64 alpha steps of lr
  0.183): 1.37 / 1.44 / 1.27 nats, supernet val accuracy 0.95 / 0.89 / 0.92, at about 4x the search
  time (255 s vs 64 s on one core). The normal cells still hold 5-7 parameter-free edges on digits
  (3, 4 and 6 with DARTS' settings); end to end (``benchmarks/bench_darts_gal_digits_presets.py``,
  seeds 0-2) the students do not differ measurably: 98.5% vs 98.7% test accuracy, McNemar p 0.80. ``arch_reference_steps=None``
  keeps the literal per-step lr; DARTS' settings stay the defaults of the ``"paper"`` preset.
* the expected-latency term (``latency_table``): the architecture loss adds
  ``arch_latency_weight x E[lat] / E_uniform[lat]`` from the target's per-layer table
  (:class:`~compress.strategies.darts.latency.LatencyTerm`; ProxylessNAS §3.3, FBNet §3.2).
* the expected-parameter term (``search.arch_params_weight`` > 0; off by default): the architecture
  loss adds ``arch_params_weight x E[params] / E_uniform[params]``, each candidate op's exact
  parameter count (:class:`~compress.strategies.darts.latency.ParamsTerm`): the same mechanism
  with a parameter budget's metric; not in DARTS. Measured once at the CIFAR params benchmark
  (``benchmarks/results/nas_random_darts_gal_params_term/``, weight 0.2): the search moved to pools
  and skips (E[params] 22% of uniform) and the student was no better than without the term (39.6%
  vs 42.1%, McNemar p 0.12), so it stays off.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from compress.strategies.darts.architect import Architect
from compress.strategies.darts.latency import (LatencyLookup, LatencyTerm, ParamsTerm, op_latency_matrix,
                                               op_params_matrix, sum_terms)
from compress.strategies.darts.supernet_search import SearchOutcome, SearchSchedule, SupernetSearch, build_supernet
from compress.strategies.darts_gal.config import DartsGalConfig
from compress.training.data import derive_seed, split_dataset
from compress.training.runtime import Runtime

__all__ = ["derive_seed", "DartsSearch", "SearchOutcome"]


class DartsSearch(SupernetSearch):
    """The DARTS search of ``darts-gal`` (8 DARTS ops, BN after pools) with per-epoch checkpoints.

    Args:
        cfg: the strategy config (its ``search`` sub-config).
        train_ds: training dataset of ``(x, y)`` (split inside).
        val_loader: loader for the per-epoch supernet accuracy (may be None).
        num_classes, input_shape: task sizes ``K`` and ``(C, H, W)``.
        seed: run seed.
        ckpt_dir: checkpoint folder (None: no checkpoints); config_hash: the checkpoint key.
        progress: ``progress(phase, done, total, info)``; log: ``log(**record)`` per epoch.
        runtime: device and precision (default: CPU fp32).
        latency_table: ``table.latency(layer_config) -> ms`` on the target (the strategy passes the
            target's :class:`~compress.profiling.latency_model.LayerLatencyTable` when the search is
            latency-aware): the architecture loss then adds ``cfg.search.arch_latency_weight * E[lat] /
            E_uniform[lat]``, the op latencies looked up once here. None: no latency term.

    Attributes:
        architect: the :class:`Architect` (``reference_steps=cfg.search.arch_reference_steps``).
        latency_term: the :class:`LatencyTerm` in use (None without a table).
        params_term: the :class:`ParamsTerm` in use (None at ``search.arch_params_weight`` 0).
        num_ops: candidate ops per edge (8 DARTS ops).

    Raises:
        DataError: fewer than 4 training samples.
        ProfilingError: the latency table cannot time a layer.
    """

    def __init__(self, cfg: DartsGalConfig, train_ds: Dataset, val_loader: DataLoader | None, num_classes: int,
                 input_shape: tuple[int, int, int], seed: int, *, ckpt_dir: Path | None = None,
                 config_hash: str = "", progress: Callable[[str, int, int | None, dict], None] | None = None,
                 log: Callable[..., None] | None = None, runtime: Runtime | None = None,
                 latency_table: LatencyLookup | None = None) -> None:
        self.cfg = cfg
        sc = cfg.search
        runtime = runtime or Runtime()
        w_part, a_part = split_dataset(train_ds, sc.train_portion, seed, who="darts-gal's search")
        model = build_supernet(seed, sc.C, num_classes, sc.layers, primitives="darts",
                               in_channels=input_shape[0], partial_channels=sc.partial_channels,
                               edge_norm=sc.edge_norm, pool_bn=True, stem_stride=sc.stem_stride)
        self.latency_term: LatencyTerm | None = None
        if latency_table is not None:
            lat_n, lat_r = op_latency_matrix(model, torch.zeros(1, *input_shape), latency_table)
            self.latency_term = LatencyTerm(lat_n, lat_r, sc.arch_latency_weight)
        self.params_term: ParamsTerm | None = None
        if sc.arch_params_weight > 0:
            self.params_term = ParamsTerm(*op_params_matrix(model), sc.arch_params_weight)
        self.num_ops = len(model.primitives)
        runtime.prepare(model)
        self.architect = Architect(model, lr=sc.arch_lr, weight_decay=sc.arch_weight_decay,
                                   second_order=sc.second_order, w_momentum=sc.momentum,
                                   w_weight_decay=sc.weight_decay, runtime=runtime,
                                   reference_steps=sc.arch_reference_steps,
                                   latency_term=sum_terms(self.latency_term, self.params_term))
        schedule = SearchSchedule(
            epochs=sc.epochs, warmup_epochs=sc.arch_warmup_epochs, batch_size=sc.batch_size,
            lr=sc.lr, lr_min=sc.lr_min, momentum=sc.momentum,
            weight_decay=sc.weight_decay, grad_clip=sc.grad_clip,
            max_steps_per_epoch=sc.max_steps_per_epoch, val_batches=sc.val_batches,
            arch_batch_size=sc.arch_batch_size)
        super().__init__(schedule, model, w_part, a_part, val_loader, seed, self.architect, runtime=runtime,
                         ckpt_dir=ckpt_dir, key=config_hash, progress=progress, log=log)
