"""``DartsGalConfig``: every setting of the ``darts-gal`` strategy (one frozen dataclass).

Defaults are the paper's where it gives them (Zhang et al., Information Sciences 2021, §4: lr 0.01
in every stage, search batch 32, pruning batch 100, 5 discriminator steps per generator step) and
the GAL reference code's where the paper is silent (docs/algorithms/darts-gal.md, choices: discriminator, loss wiring,
FISTA every 200 iterations, SGD momentum 0.9 / wd 2e-4, StepLR(30, 0.1), 100 pruning epochs). They
are GPU scale; ``DartsGalConfig.preset("cpu-small")`` is the CPU profile of docs/algorithms/darts-gal.md, CPU profile.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields
from compress.strategies._parts.training import AUGMENTATIONS
from compress.strategies.base import config_to_dict
from compress.strategies.darts.genotype import GENOTYPES, Genotype
from compress.strategies.darts.sizing import DEFAULT_C, DEFAULT_LAYERS

__all__ = ["DartsGalConfig", "PRESETS", "STRATEGY", "resolve_genotype", "phase_fields", "phase_config",
           "SEARCH_ADDED_DEFAULTS"]

#: the registered name; it also names the checkpoint and latency-cache folders
STRATEGY = "darts-gal"


@dataclass(frozen=True)
class DartsGalConfig:
    """Settings of ``darts-gal``; every field lands in ``report.json`` under ``config``.

    Stage 1 -- genotype (paper §3.1; docs/algorithms/darts-space.md):
        genotype: ``"search"`` (DARTS search on the user's data), a published cell name
            (``"DARTS_V2"`` = the paper's Fig. 5 cells, ``"DARTS_V1"``, ``"PC_DARTS_CIFAR"``,
            ``"EG_NAS_CIFAR10"``), or a Genotype JSON object (``Genotype.to_json()``).
        search_C, search_layers: supernet width and cells (16, 8).
        search_epochs: 50. search_batch_size: 32 (paper).
        search_lr, search_lr_min: weight SGD, cosine per epoch (0.01 paper -> 0.001 DARTS).
        search_momentum, search_weight_decay, grad_clip: 0.9, 3e-4, 5 (DARTS).
        train_portion: fraction of the training split that trains the weights; the rest trains
            the architecture (0.5, DARTS).
        second_order: unrolled architecture gradient (DARTS Eq. 7-8); default first order.
        arch_lr, arch_weight_decay: Adam on alpha (3e-4, 1e-3; betas (0.5, 0.999)).
        arch_reference_steps: the number of alpha steps ``arch_lr`` is meant for (issue 18): Adam's
            step becomes ``arch_lr * arch_reference_steps / (alpha steps of this search)``, so a short
            search keeps DARTS' total alpha travel (DARTS §3.1.1 CIFAR-10: 50 epochs x 391 steps =
            19,550 steps of lr 3e-4; :class:`~compress.strategies.darts.architect.Architect`). None
            (default): ``arch_lr`` per step, the paper's behaviour.
        arch_latency_weight: lambda_lat >= 0 of the expected-latency term that the architecture
            objective adds when the search is latency-aware (see ``objective``): ``L_val +
            arch_latency_weight * E[lat] / E_uniform[lat]`` (ProxylessNAS §3.3, FBNet §3.2;
            :mod:`compress.strategies.darts.latency`; 0.2 as eg-nas' ``latency_weight``, a choice).
        arch_warmup_epochs: epochs without alpha updates (0 DARTS; PC-DARTS uses 15).
        partial_channels: PC-DARTS K (1 = off); edge_norm: PC-DARTS edge normalisation.
        search_stem_stride: 1, or 2 to search at half resolution (CPU).
        search_max_steps_per_epoch: cap on weight steps per search epoch (None: the whole half).
        search_val_batches: task val batches for the per-epoch supernet accuracy (None: all).

    Sizing (budget; no formula, every candidate measured by ``ctx.check``):
        candidates_C, candidates_layers, stem_strides, capacity: the (C, cells) grid of
            :func:`~compress.strategies.darts.sizing.size_to_budget`.
        size_margin: the baseline is sized to ``size_margin`` x every budget limit (>= 1);
            above 1 the GAL pruning (and the closing loop) must bring it into the budget.

    Stage 2 -- baseline (stacked network, KD from the teacher; paper: 50 epochs, lr 0.01):
        baseline_epochs, baseline_lr, baseline_momentum, baseline_weight_decay,
        baseline_max_steps_per_epoch; drop_path (drop-path probability ramped over the baseline
        and the retrain; 0 = off).

    Stage 3 -- GAL (Eq. 4-7; docs/algorithms/darts-gal.md, choices):
        gal_epochs: 100 (GAL reference). gal_batch_size: 100 (paper).
        gal_lr, gal_momentum, gal_weight_decay: SGD on the generator weights (wd = R(W_G)).
        gal_lr_step_epochs, gal_lr_gamma: StepLR of every GAL learning rate (30, 0.1).
        gal_max_g_steps_per_epoch: cap on generator steps per GAL epoch (None: one generator pass
            over the data; the critic reads ``n_critic`` further batches per generator step).
        n_critic: discriminator steps per generator step (5, paper §3.4), each on a fresh batch.
        gan: ``"log"`` (Eq. 5 log-loss, GAL wiring) or ``"wgan"`` (critic D(f_g) - D(f_b),
            generator -D(f_g), weight clipping ``wgan_clip``).
        gal_bn: ``"train"`` (GAL code: the generator trains with batch statistics) or ``"eval"``
            (its BatchNorms keep the baseline's running statistics; on DARTS cells this makes the
            masked network hypersensitive to mask scale -- a 5 % shrink of every mask changes
            19 % of the digits predictions -- and the masks diverge).
        gal_grad_clip: gradient-norm clip of the generator weights (5, the DARTS value; None = off
            as in GAL). Without it, SGD at lr 0.01 on the logit data loss diverges on DARTS stacks.
        d_input: what D sees: ``"softmax"`` (paper: softmax outputs are the true/false labels) or
            ``"logits"`` (GAL code).
        data_input: what the data loss compares: ``"logits"`` (GAL code; Eq. 6 compares with the
            generator's output ``G(x)``) or ``"softmax"`` (saturates: with it the masks shrink
            uniformly and no node is singled out).
        data_scale: ``"baseline"`` divides Eq. 6 by the baseline's mean ``(1/2) ||f_b||^2`` over the
            training set (a relative error, so lambda does not depend on the logit scale, which KD
            with a confident teacher inflates); ``"none"`` is Eq. 6 as written.
        d_hidden, d_activation, d_init_std: discriminator ``K -> 128 -> 256 -> 128 -> 1`` with no
            hidden activations (GAL code, issue #4) or ``"relu"``; weights N(0, 0.01) (GAL code)
            or None for PyTorch's default init.
        d_lr, d_momentum, d_weight_decay: SGD on the discriminator.
        mu: weight of the data loss (Eq. 6, ``(1/2n) sum ||f_b - f_g||^2``).
        sparse_lambda: lambda of ``R_lambda(s) = lambda ||s||_1`` (GAL Eq. 7; not given by the
            paper; GAL's 0.6 for ResNet block masks refers to its unnormalised loss). None (default):
            the strategy searches lambda toward the budget (``lambda_search_*``, issue 18); a number
            fixes it (no search).
        mask_scale: ``"cell"`` (default): every cell's masks are divided by their max after each
            proximal step, so the L1 term removes nodes that are weak *relative to their cell*
            (see :meth:`~compress.strategies.darts_gal.gal.GALTrainer.fix_mask_scale`: without it
            the BatchNorm after every cell makes the masks of a cell fall to 0 together, and the
            removed-node count jumped 0 -> 15 of 20 between lambda 0.05 and 0.1 on digits; with it,
            0, 3, 4, 9, 15 of 20 at lambda 1, 1.4, 1.7, 2, 3 on the same stack; the lambda scales of
            the two modes differ); ``"free"``: the paper's absolute ``||m||_1``.
        lambda_search_probes: at most this many GAL probes of the lambda search (>= 1, default 6).
        lambda_search_start: the first lambda probed (> 0); the bracket grows or shrinks by
            ``lambda_growth`` until the budget is bracketed, then bisects geometrically.
        lambda_search_tolerance: a probe is accepted when its binding budget ratio
            (cost / limit, the largest over the budget's limits) lies in ``[1 - tol, 1]`` (0.1).
        lambda_probe_epochs: GAL epochs of one probe (None: ``gal_epochs``, and the accepted probe
            is the GAL result; fewer: the chosen lambda is then run for ``gal_epochs``).
        objective: ``"auto"`` (default): latency-aware when the budget names latency, plain
            otherwise; ``"latency"``: always latency-aware; ``"size"``: never. Latency-aware means
            both (issue 18, part 4): (1) the DARTS search (``genotype="search"``) adds the expected
            latency of the mixed ops under softmax(alpha) to its architecture loss, weighted by
            ``arch_latency_weight``, from the target's per-layer latency table; (2) GAL's L1 is
            latency-weighted: node j's weight is its predicted latency (the same table, summed over
            the convs of its in-edges) divided by the mean over nodes, floored at
            ``latency_weight_floor``. The budget check at the end stays a real measurement.
        latency_weight_floor: the smallest weight, as a fraction of the mean (0.05): a node of only
            skips and pools costs no conv time but still some.
        lambda_sweep: optional lambdas tried from the same baseline (docs/algorithms/darts-gal.md, CPU profile); the one
            whose removed-node fraction is closest to ``target_prune_fraction`` (within the
            budget) wins; empty = ``sparse_lambda`` only.
        target_prune_fraction: 0.5 (the paper removes 40-65 % of the intermediate nodes).
        mask_lr: FISTA step size (0.01); mask_step: generator steps between FISTA updates (200).
        mask_init: ``"ones"`` (G == B at step 0) or ``"normal"`` (GAL code: N(0, 1)).
        l1_in_gradient: the mask gradient includes ``lambda * sign(m)`` before soft-thresholding
            (GAL code) -- off gives the textbook proximal step.
        mask_threshold: a node whose mask is <= this value is removed (0).
        keep_nonempty: a cell whose masks are all zero keeps its strongest node (the paper's
            Tables 3/5 show empty cells; see the strategy docstring).

    Closing loop (budget):
        max_prune_rounds: extra GAL rounds with lambda x ``lambda_growth`` while the pruned
            network is over budget; then the smallest masks are zeroed one by one.
        prune_round_epochs: GAL epochs per extra round (None: ``gal_epochs``).

    Stage 4 -- retrain (KD from the teacher):
        retrain: ``"scratch"`` (paper §3.4) or ``"finetune"`` (GAL: keep the pruned weights).
        final_epochs, final_lr, final_momentum, final_weight_decay, final_max_steps_per_epoch:
            paper: same hyper-parameters as the baseline (50 epochs, lr 0.01).
        kd_alpha, kd_temperature: KD in the baseline and the retrain.
        augment: ``"none"`` or ``"flip-crop"`` (baseline and retrain).

    Raises:
        ConfigError: any value out of range (the message names the field).
    """

    # stage 1: genotype / search
    genotype: str = "search"
    search_C: int = 16
    search_layers: int = 8
    search_epochs: int = 50
    search_batch_size: int = 32
    search_lr: float = 0.01
    search_lr_min: float = 0.001
    search_momentum: float = 0.9
    search_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    train_portion: float = 0.5
    second_order: bool = False
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    arch_warmup_epochs: int = 0
    arch_reference_steps: int | None = None
    arch_latency_weight: float = 0.2
    partial_channels: int = 1
    edge_norm: bool = False
    search_stem_stride: int = 1
    search_max_steps_per_epoch: int | None = None
    search_val_batches: int | None = None
    # sizing
    candidates_C: tuple[int, ...] = DEFAULT_C
    candidates_layers: tuple[int, ...] = DEFAULT_LAYERS
    stem_strides: tuple[int, ...] = (1, 2)
    capacity: str = "params"
    size_margin: float = 1.0
    # stage 2: baseline
    baseline_epochs: int = 50
    baseline_lr: float = 0.01
    baseline_momentum: float = 0.9
    baseline_weight_decay: float = 3e-4
    baseline_max_steps_per_epoch: int | None = None
    drop_path: float = 0.0
    # stage 3: GAL
    gal_epochs: int = 100
    gal_batch_size: int = 100
    gal_lr: float = 0.01
    gal_momentum: float = 0.9
    gal_weight_decay: float = 2e-4
    gal_lr_step_epochs: int = 30
    gal_lr_gamma: float = 0.1
    gal_max_g_steps_per_epoch: int | None = None
    n_critic: int = 5
    gan: str = "log"
    wgan_clip: float = 0.01
    gal_bn: str = "train"
    gal_grad_clip: float | None = 5.0
    d_input: str = "softmax"
    data_input: str = "logits"
    data_scale: str = "baseline"
    d_hidden: tuple[int, ...] = (128, 256, 128)
    d_activation: str = "none"
    d_init_std: float | None = 0.01
    d_lr: float = 0.01
    d_momentum: float = 0.9
    d_weight_decay: float = 2e-4
    mu: float = 1.0
    sparse_lambda: float | None = None
    mask_scale: str = "cell"
    lambda_search_probes: int = 6
    lambda_search_start: float = 1.0
    lambda_search_tolerance: float = 0.1
    lambda_probe_epochs: int | None = None
    objective: str = "auto"
    latency_weight_floor: float = 0.05
    lambda_sweep: tuple[float, ...] = ()
    target_prune_fraction: float = 0.5
    mask_lr: float = 0.01
    mask_step: int = 200
    mask_init: str = "ones"
    l1_in_gradient: bool = True
    mask_threshold: float = 0.0
    keep_nonempty: bool = True
    # closing loop
    max_prune_rounds: int = 3
    lambda_growth: float = 4.0
    prune_round_epochs: int | None = None
    # stage 4: retrain
    retrain: str = "scratch"
    final_epochs: int = 50
    final_lr: float = 0.01
    final_momentum: float = 0.9
    final_weight_decay: float = 3e-4
    final_max_steps_per_epoch: int | None = None
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    augment: str = "none"

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        for name in ("candidates_C", "candidates_layers", "stem_strides", "d_hidden"):
            try:
                object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"DartsGalConfig: {name} must be a sequence of ints: {exc}") from exc
        try:
            object.__setattr__(self, "lambda_sweep", tuple(float(v) for v in self.lambda_sweep))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"DartsGalConfig: lambda_sweep must be a sequence of numbers: {exc}") from exc

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"DartsGalConfig: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        resolve_genotype(self.genotype)  # raises ConfigError with the known names
        for name in ("search_C", "search_layers", "search_epochs", "search_batch_size", "partial_channels",
                     "gal_batch_size", "n_critic", "mask_step", "gal_lr_step_epochs"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, f"{name} must be an int >= 1.")
        for name in ("baseline_epochs", "gal_epochs", "final_epochs", "arch_warmup_epochs", "max_prune_rounds"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, f"{name} must be an int >= 0.")
        for name in ("search_max_steps_per_epoch", "search_val_batches", "baseline_max_steps_per_epoch",
                     "gal_max_g_steps_per_epoch", "final_max_steps_per_epoch", "prune_round_epochs"):
            v = getattr(self, name)
            need(v is None or (is_int(v) and v >= 1), f"{name} must be None or an int >= 1, got {v!r}.")
        ref = self.arch_reference_steps
        need(ref is None or (is_int(ref) and ref >= 1),
             f"arch_reference_steps must be None or an int >= 1, got {self.arch_reference_steps!r}.")
        need(self.arch_latency_weight >= 0, f"arch_latency_weight must be >= 0, got {self.arch_latency_weight}.")
        need(self.search_C % 2 == 0, f"search_C must be even (FactorizedReduce halves it), got {self.search_C}.")
        need(self.search_C % self.partial_channels == 0,
             f"partial_channels={self.partial_channels} must divide search_C={self.search_C}.")
        need(self.search_stem_stride in (1, 2), f"search_stem_stride must be 1 or 2, got {self.search_stem_stride}.")
        need(self.arch_warmup_epochs <= self.search_epochs,
             f"arch_warmup_epochs must be <= search_epochs={self.search_epochs}, got {self.arch_warmup_epochs}.")
        need(0.0 < self.train_portion < 1.0, f"train_portion must be in (0, 1), got {self.train_portion}.")
        need(self.search_lr > 0 and 0 <= self.search_lr_min <= self.search_lr,
             "need search_lr > 0 and 0 <= search_lr_min <= search_lr.")
        for name in ("search_momentum", "baseline_momentum", "gal_momentum", "d_momentum", "final_momentum"):
            need(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1), got {getattr(self, name)}.")
        for name in ("search_weight_decay", "baseline_weight_decay", "gal_weight_decay", "d_weight_decay",
                     "final_weight_decay", "arch_weight_decay", "mu", "mask_threshold"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("search_lr", "arch_lr", "baseline_lr", "gal_lr", "d_lr", "mask_lr", "final_lr", "grad_clip",
                     "wgan_clip", "kd_temperature"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}.")
        need(0.0 < self.gal_lr_gamma <= 1.0, f"gal_lr_gamma must be in (0, 1], got {self.gal_lr_gamma}.")
        need(bool(self.candidates_C) and all(c >= 2 and c % 2 == 0 for c in self.candidates_C),
             f"candidates_C must be even ints >= 2, got {self.candidates_C}.")
        need(bool(self.candidates_layers) and all(v >= 1 for v in self.candidates_layers),
             f"candidates_layers must be ints >= 1, got {self.candidates_layers}.")
        need(bool(self.stem_strides) and all(s in (1, 2) for s in self.stem_strides),
             f"stem_strides must be 1 and/or 2, got {self.stem_strides}.")
        need(self.capacity in ("params", "macs"), f"capacity must be 'params' or 'macs', got {self.capacity!r}.")
        need(self.size_margin >= 1.0, f"size_margin must be >= 1 (the baseline may exceed the budget, never "
             f"undershoot it), got {self.size_margin}.")
        need(0.0 <= self.drop_path < 1.0, f"drop_path must be in [0, 1), got {self.drop_path}.")
        need(self.gan in ("log", "wgan"), f"gan must be 'log' or 'wgan', got {self.gan!r}.")
        need(self.d_input in ("softmax", "logits"), f"d_input must be 'softmax' or 'logits', got {self.d_input!r}.")
        need(self.data_input in ("softmax", "logits"),
             f"data_input must be 'softmax' or 'logits', got {self.data_input!r}.")
        need(self.data_scale in ("baseline", "none"),
             f"data_scale must be 'baseline' or 'none', got {self.data_scale!r}.")
        need(self.gal_bn in ("train", "eval"), f"gal_bn must be 'train' or 'eval', got {self.gal_bn!r}.")
        need(self.gal_grad_clip is None or self.gal_grad_clip > 0,
             f"gal_grad_clip must be None or > 0, got {self.gal_grad_clip}.")
        need(self.d_init_std is None or self.d_init_std > 0, f"d_init_std must be None or > 0, got {self.d_init_std}.")
        need(self.d_activation in ("none", "relu"),
             f"d_activation must be 'none' or 'relu', got {self.d_activation!r}.")
        need(all(h >= 1 for h in self.d_hidden), f"d_hidden sizes must be >= 1, got {self.d_hidden}.")
        need(self.sparse_lambda is None or self.sparse_lambda >= 0,
             f"sparse_lambda must be None (searched) or >= 0, got {self.sparse_lambda}.")
        need(self.mask_scale in ("cell", "free"), f"mask_scale must be 'cell' or 'free', got {self.mask_scale!r}.")
        need(is_int(self.lambda_search_probes) and self.lambda_search_probes >= 1,
             f"lambda_search_probes must be an int >= 1, got {self.lambda_search_probes!r}.")
        need(self.lambda_search_start > 0, f"lambda_search_start must be > 0, got {self.lambda_search_start}.")
        need(0.0 < self.lambda_search_tolerance < 1.0,
             f"lambda_search_tolerance must be in (0, 1), got {self.lambda_search_tolerance}.")
        need(self.lambda_probe_epochs is None or (is_int(self.lambda_probe_epochs) and self.lambda_probe_epochs >= 1),
             f"lambda_probe_epochs must be None or an int >= 1, got {self.lambda_probe_epochs!r}.")
        need(self.objective in ("auto", "latency", "size"),
             f"objective must be 'auto', 'latency' or 'size', got {self.objective!r}.")
        need(0.0 <= self.latency_weight_floor <= 1.0,
             f"latency_weight_floor must be in [0, 1], got {self.latency_weight_floor}.")
        need(all(v >= 0 for v in self.lambda_sweep), f"lambda_sweep values must be >= 0, got {self.lambda_sweep}.")
        need(0.0 <= self.target_prune_fraction <= 1.0,
             f"target_prune_fraction must be in [0, 1], got {self.target_prune_fraction}.")
        need(self.mask_init in ("ones", "normal"), f"mask_init must be 'ones' or 'normal', got {self.mask_init!r}.")
        need(self.lambda_growth > 1.0, f"lambda_growth must be > 1, got {self.lambda_growth}.")
        need(self.retrain in ("scratch", "finetune"), f"retrain must be 'scratch' or 'finetune', got {self.retrain!r}.")
        need(0.0 <= self.kd_alpha <= 1.0, f"kd_alpha must be in [0, 1], got {self.kd_alpha}.")
        need(self.augment in AUGMENTATIONS, f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}.")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DartsGalConfig":
        """A named setting plus overrides.

        * ``"paper"``: the defaults (GPU scale).
        * ``"cpu-small"``: docs/algorithms/darts-gal.md, CPU profile -- a tiny first-order search (C 8, 5 cells, at half
          resolution, 4 epochs of 8 steps), a small sizing grid, 6 baseline epochs, 3 GAL epochs
          of 10 generator steps (batch 32, 5 critic steps each, a FISTA step after every generator
          step), lambda searched in at most 5 GAL probes toward the budget from a baseline sized to
          1.5 x the budget, 8 retrain epochs; ``arch_reference_steps=19_550`` (issue 18: at lr 3e-4
          alpha stays uniform over the 32 search steps; :mod:`.search`). Minutes on 2 CPU cores for
          the digits demo.

        Raises:
            ConfigError: unknown preset name.
        """
        if name not in PRESETS:
            raise ConfigError(f"Unknown DartsGalConfig preset {name!r}; known: {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu-small": dict(
        search_C=8, search_layers=5, search_stem_stride=2, search_epochs=4, search_batch_size=32,
        search_lr=0.025, search_max_steps_per_epoch=8, search_val_batches=2,
        candidates_C=(4, 6, 8, 10, 12, 16, 20, 24), candidates_layers=(5, 8),
        baseline_epochs=6, baseline_lr=0.01,
        gal_epochs=3, gal_batch_size=32, gal_max_g_steps_per_epoch=10, mask_step=1, mask_lr=0.05,
        size_margin=1.5, lambda_search_probes=5, max_prune_rounds=2, prune_round_epochs=2,
        final_epochs=8, final_lr=0.025,
        # issue 18: DARTS' total Adam travel (§3.1.1: 19,550 steps of lr 3e-4) over this search's 4 x 8 = 32 alpha
        # steps (lr 0.183), as eg-nas' cpu-small. Measured on the digits demo task (seed 0, the preset's own 32
        # steps): mean per-edge entropy after epochs 1-4 = 2.0794 at every epoch with lr 3e-4 (ln 8 = 2.0794),
        # 1.9247, 1.8040, 1.7416, 1.6942 with this setting (see compress/strategies/darts_gal/search.py).
        arch_reference_steps=19_550,
    ),
}


def resolve_genotype(value: str) -> Genotype | None:
    """``None`` for ``"search"``, else the published genotype of that name or the parsed JSON.

    Raises:
        ConfigError: neither ``"search"``, a known name, nor valid Genotype JSON.
    """
    if not isinstance(value, str):
        raise ConfigError(f"DartsGalConfig: genotype must be a string, got {type(value).__name__}.")
    if value == "search":
        return None
    if value in GENOTYPES:
        return GENOTYPES[value]
    if value.lstrip().startswith("{"):
        try:
            return Genotype.from_json(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"DartsGalConfig: genotype is not valid JSON: {exc}") from exc
    raise ConfigError(
        f"DartsGalConfig: genotype {value!r} is unknown; use 'search', one of {sorted(GENOTYPES)}, "
        "or a Genotype JSON object (Genotype.to_json())."
    )


_SEARCH = {"genotype", "search_C", "search_layers", "search_epochs", "search_batch_size", "search_lr",
           "search_lr_min", "search_momentum", "search_weight_decay", "grad_clip", "train_portion", "second_order",
           "arch_lr", "arch_weight_decay", "arch_warmup_epochs", "partial_channels", "edge_norm",
           "search_stem_stride", "search_max_steps_per_epoch", "search_val_batches", "arch_reference_steps",
           "arch_latency_weight"}
_BASELINE = {"candidates_C", "candidates_layers", "stem_strides", "capacity", "size_margin", "baseline_epochs",
             "baseline_lr", "baseline_momentum", "baseline_weight_decay", "baseline_max_steps_per_epoch",
             "drop_path", "kd_alpha", "kd_temperature", "augment"}
_FINAL = {"retrain", "final_epochs", "final_lr", "final_momentum", "final_weight_decay",
          "final_max_steps_per_epoch"}


#: Search fields added after search checkpoints existed (issue 18), each with the value that reproduces
#: the earlier search (its default): at that value the field is left out of the phase key
#: (:func:`phase_config`), so a search saved before it -- and every phase after, whose keys chain on the
#: search's -- still resumes (as gp-prune's ``_RECIPE_DEFAULTS``). ``arch_latency_weight`` is left out
#: whenever the search has no latency term (it then changes nothing); with one, the latency table's
#: target enters the search key (the strategy's ``latency_target``), so a latency-aware search always
#: gets a new key. A new value in a preset (``cpu-small``'s ``arch_reference_steps``) is a new search.
#: Not here, on purpose: the GAL fields of issue 18 (``mask_scale``, ``lambda_search_*``, ``objective``,
#: ``latency_weight_floor``) and ``sparse_lambda``'s new default None. Their defaults changed what GAL
#: does (``mask_scale="cell"`` rescales the masks after every proximal step; None searches lambda instead
#: of using 0.1), so a GAL checkpoint from before them holds another result and a new ``gal`` key is right;
#: the search and baseline checkpoints before it still resume.
SEARCH_ADDED_DEFAULTS: dict[str, Any] = {"arch_reference_steps": None}


def phase_config(cfg: DartsGalConfig, phase: str, *, latency_search: bool = False) -> dict[str, Any]:
    """The config entries that key a phase's checkpoint: :func:`phase_fields`, less the
    ``SEARCH_ADDED_DEFAULTS`` at their default and, without a latency term in the search
    (``latency_search=False``), ``arch_latency_weight``."""
    fields = phase_fields(phase)
    d = {}
    for k, v in config_to_dict(cfg).items():
        if k not in fields or (k in SEARCH_ADDED_DEFAULTS and v == SEARCH_ADDED_DEFAULTS[k]):
            continue
        if k == "arch_latency_weight" and not latency_search:
            continue
        d[k] = v
    return d


def phase_fields(phase: str) -> set[str]:
    """Config fields that change a phase's result (their hash guards its checkpoint): ``"search"``,
    ``"baseline"`` (sizing + baseline training), ``"gal"`` (pruning + closing loop), ``"retrain"``."""
    names = {f.name for f in dataclasses.fields(DartsGalConfig)}
    if phase == "search":
        return set(_SEARCH)
    if phase == "baseline":
        return set(_BASELINE)
    if phase == "retrain":
        return set(_FINAL)
    if phase == "gal":
        return names - _SEARCH - _BASELINE - _FINAL
    raise ConfigError(f"unknown phase {phase!r}")
