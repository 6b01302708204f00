"""``DartsGalConfig``: every setting of the ``darts-gal`` strategy, one sub-config per phase.

Defaults are the paper's where it gives them (Zhang et al., Information Sciences 2021, §4: lr 0.01
in every stage, search batch 32, pruning batch 100, 5 discriminator steps per generator step) and
the GAL reference code's where the paper is silent (docs/algorithms/darts-gal.md, choices: discriminator, loss wiring,
FISTA every 200 iterations, SGD momentum 0.9 / wd 2e-4, StepLR(30, 0.1), 100 pruning epochs). They
are GPU scale; ``DartsGalConfig.preset("cpu-small")`` is the CPU profile of docs/algorithms/darts-gal.md, CPU profile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields, raise_problems
from compress.strategies.config_tree import coerce_subconfigs, config_from_dict, replace_config, subconfig
from compress.strategies.darts.configs import DARTSTrainConfig, SizingConfig
from compress.strategies.darts.genotype import GENOTYPES, Genotype

__all__ = ["DartsGalConfig", "DartsSearchConfig", "DartsGalSizingConfig", "GALConfig", "PRESETS", "STRATEGY",
           "resolve_genotype"]

#: the registered name; it also names the checkpoint and latency-cache folders
STRATEGY = "darts-gal"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class DartsSearchConfig:
    """Stage 1 of ``darts-gal`` -- the genotype (paper §3.1; docs/algorithms/darts-space.md): a DARTS
    search of the normal and reduction cells on the user's data, or a published genotype.

    Attributes:
        genotype: ``"search"`` (DARTS search on the user's data), a published cell name
            (``"DARTS_V2"`` = the paper's Fig. 5 cells, ``"DARTS_V1"``, ``"PC_DARTS_CIFAR"``,
            ``"EG_NAS_CIFAR10"``), or a Genotype JSON object (``Genotype.to_json()``).
        C, layers: supernet width and cells (16, 8).
        epochs: 50. batch_size: 32 (paper).
        lr, lr_min: weight SGD, cosine per epoch (0.01 paper -> 0.001 DARTS).
        momentum, weight_decay, grad_clip: 0.9, 3e-4, 5 (DARTS).
        train_portion: fraction of the training split that trains the weights; the rest trains
            the architecture (0.5, DARTS).
        second_order: unrolled architecture gradient (DARTS Eq. 7-8); default first order.
        arch_lr, arch_weight_decay: Adam on alpha (3e-4, 1e-3; betas (0.5, 0.999)).
        arch_warmup_epochs: epochs without alpha updates (0 DARTS; PC-DARTS uses 15).
        arch_batch_size: minibatch of the architecture part for each alpha step (None: ``batch_size``,
            DARTS). A larger one averages the first-order alpha gradient over more images; not in the
            paper (measured at the CIFAR benchmark settings in :mod:`.search`).
        arch_reference_steps: the number of alpha steps ``arch_lr`` is meant for (issue 18): Adam's
            step becomes ``arch_lr * arch_reference_steps / (alpha steps of this search)``, so a short
            search keeps DARTS' total alpha travel (DARTS §3.1.1 CIFAR-10: 50 epochs x 391 steps =
            19,550 steps of lr 3e-4; :class:`~compress.strategies.darts.architect.Architect`). None
            (default): ``arch_lr`` per step, the paper's behaviour.
        arch_latency_weight: lambda_lat >= 0 of the expected-latency term that the architecture
            objective adds when the search is latency-aware (see ``DartsGalConfig.objective``):
            ``L_val + arch_latency_weight * E[lat] / E_uniform[lat]`` (ProxylessNAS §3.3, FBNet §3.2;
            :mod:`compress.strategies.darts.latency`; 0.2 as eg-nas' ``latency_weight``, a choice).
        arch_params_weight: lambda_params >= 0 of an expected-parameter term (0, the default: off,
            DARTS as published): ``+ arch_params_weight * E[params] / E_uniform[params]``, the same
            expectation over softmax(alpha) with each candidate op's exact parameter count
            (:class:`~compress.strategies.darts.latency.ParamsTerm`). Not in DARTS: the
            ProxylessNAS/FBNet mechanism with a parameter budget's own metric, so that the search
            weighs an op's accuracy against the width the budget leaves after sizing. Applies
            whenever > 0, whatever the budget names; adds to the latency term of a latency-aware search.
        partial_channels: PC-DARTS K (1 = off); edge_norm: PC-DARTS edge normalisation.
        stem_stride: 1, or 2 to search at half resolution (CPU).
        max_steps_per_epoch: cap on weight steps per search epoch (None: the whole half).
        val_batches: task val batches for the per-epoch supernet accuracy (None: all).

    Raises:
        ConfigError: a value out of range (the message names the field).
    """

    #: fields added after search checkpoints existed (issue 18), at the value that reproduces the
    #: earlier search: left out of the search key there, so a search saved before them still resumes.
    #: ``arch_latency_weight`` is left out (``phase_key``'s ``skip``) whenever the search has no
    #: latency term; with one, the latency table's target enters the key, so a latency-aware search is
    #: always a new one. A new value (``cpu-small``'s ``arch_reference_steps``) is a new search.
    KEY_OMIT: ClassVar[dict[str, Any]] = {"arch_reference_steps": None, "arch_batch_size": None,
                                          "arch_params_weight": 0.0}

    genotype: str = "search"
    C: int = 16
    layers: int = 8
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.01
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    train_portion: float = 0.5
    second_order: bool = False
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    arch_warmup_epochs: int = 0
    arch_reference_steps: int | None = None
    arch_batch_size: int | None = None
    arch_latency_weight: float = 0.2
    arch_params_weight: float = 0.0
    partial_channels: int = 1
    edge_norm: bool = False
    stem_stride: int = 1
    max_steps_per_epoch: int | None = None
    val_batches: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        resolve_genotype(self.genotype)  # raises ConfigError with the known names
        p = []
        for name in ("C", "layers", "epochs", "batch_size", "partial_channels"):
            if getattr(self, name) < 1:
                p.append(f"search.{name} must be an int >= 1, got {getattr(self, name)}")
        ref = self.arch_reference_steps
        if not (ref is None or (_is_int(ref) and ref >= 1)):
            p.append(f"search.arch_reference_steps must be None or an int >= 1, got {ref!r}")
        if self.arch_latency_weight < 0:
            p.append(f"search.arch_latency_weight must be >= 0, got {self.arch_latency_weight}")
        if not self.arch_params_weight >= 0:
            p.append(f"search.arch_params_weight must be >= 0, got {self.arch_params_weight}")
        if self.C % 2:
            p.append(f"search.C must be even (FactorizedReduce halves it), got {self.C}")
        if self.partial_channels >= 1 and self.C % self.partial_channels:
            p.append(f"search.partial_channels={self.partial_channels} must divide search.C={self.C}")
        if self.stem_stride not in (1, 2):
            p.append(f"search.stem_stride must be 1 or 2, got {self.stem_stride}")
        if self.arch_warmup_epochs > self.epochs:
            p.append(f"search.arch_warmup_epochs must be <= search.epochs={self.epochs}, got {self.arch_warmup_epochs}")
        if not 0.0 < self.train_portion < 1.0:
            p.append(f"search.train_portion must be in (0, 1), got {self.train_portion}")
        if self.lr_min > self.lr:
            p.append(f"search.lr_min must be <= search.lr={self.lr}, got {self.lr_min}")
        if self.arch_weight_decay < 0:
            p.append(f"search.arch_weight_decay must be >= 0, got {self.arch_weight_decay}")
        raise_problems("DartsSearchConfig", p)


@dataclass(frozen=True)
class DartsGalSizingConfig(SizingConfig):
    """The sizing grid of the stacked baseline (no formula: every candidate is measured by
    ``ctx.check``; :class:`~compress.strategies.darts.configs.SizingConfig`) plus

    Attributes:
        size_margin: the baseline is sized to ``size_margin`` x every budget limit (>= 1); above 1
            the GAL pruning (and the closing loop) must bring it into the budget.

    Raises:
        ConfigError: a value out of range (the message names the field).
    """

    size_margin: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.size_margin >= 1.0:
            raise ConfigError(f"DartsGalSizingConfig: sizing.size_margin must be >= 1 (the baseline may exceed the "
                              f"budget, never undershoot it), got {self.size_margin}.")


@dataclass(frozen=True)
class GALConfig:
    """Stage 3 of ``darts-gal`` -- GAL node pruning (paper §3.3, Eq. 4-7; docs/algorithms/darts-gal.md,
    choices), the lambda search toward the budget (issue 18) and the closing loop.

    Attributes:
        epochs: 100 (GAL reference). batch_size: 100 (paper).
        lr, momentum, weight_decay: SGD on the generator weights (wd = R(W_G)).
        lr_step_epochs, lr_gamma: StepLR of every GAL learning rate (30, 0.1).
        max_g_steps_per_epoch: cap on generator steps per GAL epoch (None: one generator pass
            over the data; the critic reads ``n_critic`` further batches per generator step).
        n_critic: discriminator steps per generator step (5, paper §3.4), each on a fresh batch.
        gan: ``"log"`` (Eq. 5 log-loss, GAL wiring) or ``"wgan"`` (critic D(f_g) - D(f_b),
            generator -D(f_g), weight clipping ``wgan_clip``).
        bn: ``"train"`` (GAL code: the generator trains with batch statistics) or ``"eval"``
            (its BatchNorms keep the baseline's running statistics; on DARTS cells this makes the
            masked network hypersensitive to mask scale -- a 5 % shrink of every mask changes
            19 % of the digits predictions -- and the masks diverge).
        grad_clip: gradient-norm clip of the generator weights (5, the DARTS value; None = off
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
        lambda_probe_epochs: GAL epochs of one probe (None: ``epochs``, and the accepted probe
            is the GAL result; fewer: the chosen lambda is then run for ``epochs``).
        latency_weight_floor: with a latency-aware objective (``DartsGalConfig.objective``) node j's
            L1 weight is its predicted latency share; this is the smallest weight, as a fraction of
            the mean (0.05): a node of only skips and pools costs no conv time but still some.
        lambda_sweep: optional lambdas tried from the same baseline (docs/algorithms/darts-gal.md, CPU
            profile); the one whose removed-node fraction is closest to ``target_prune_fraction``
            (within the budget) wins; empty = ``sparse_lambda`` only.
        target_prune_fraction: 0.5 (the paper removes 40-65 % of the intermediate nodes).
        mask_lr: FISTA step size (0.01); mask_step: generator steps between FISTA updates (200).
        mask_init: ``"ones"`` (G == B at step 0) or ``"normal"`` (GAL code: N(0, 1)).
        l1_in_gradient: the mask gradient includes ``lambda * sign(m)`` before soft-thresholding
            (GAL code) -- off gives the textbook proximal step.
        mask_threshold: a node whose mask is <= this value is removed (0).
        keep_nonempty: a cell whose masks are all zero keeps its strongest node (the paper's
            Tables 3/5 show empty cells; see the strategy docstring).
        max_prune_rounds: closing loop: extra GAL rounds with lambda x ``lambda_growth`` while the
            pruned network is over budget; then the smallest masks are zeroed one by one.
        lambda_growth: the lambda factor of a closing-loop round and of the lambda search's bracket.
        prune_round_epochs: GAL epochs per extra round (None: ``epochs``).

    Raises:
        ConfigError: a value out of range (the message names the field).
    """

    epochs: int = 100
    batch_size: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_step_epochs: int = 30
    lr_gamma: float = 0.1
    max_g_steps_per_epoch: int | None = None
    n_critic: int = 5
    gan: str = "log"
    wgan_clip: float = 0.01
    bn: str = "train"
    grad_clip: float | None = 5.0
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
    latency_weight_floor: float = 0.05
    lambda_sweep: tuple[float, ...] = ()
    target_prune_fraction: float = 0.5
    mask_lr: float = 0.01
    mask_step: int = 200
    mask_init: str = "ones"
    l1_in_gradient: bool = True
    mask_threshold: float = 0.0
    keep_nonempty: bool = True
    max_prune_rounds: int = 3
    lambda_growth: float = 4.0
    prune_round_epochs: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        object.__setattr__(self, "lambda_sweep", tuple(float(v) for v in self.lambda_sweep))
        p = []

        def need(cond: bool, msg: str) -> None:
            if not cond:
                p.append(f"gal.{msg}")

        for name in ("batch_size", "n_critic", "mask_step", "lr_step_epochs", "lambda_search_probes"):
            need(getattr(self, name) >= 1, f"{name} must be an int >= 1, got {getattr(self, name)}")
        need(self.max_prune_rounds >= 0, f"max_prune_rounds must be an int >= 0, got {self.max_prune_rounds}")
        for name in ("max_g_steps_per_epoch", "prune_round_epochs", "lambda_probe_epochs"):
            v = getattr(self, name)
            need(v is None or v >= 1, f"{name} must be None or an int >= 1, got {v!r}")
        for name in ("d_weight_decay", "mu", "mask_threshold"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mask_lr", "wgan_clip", "lambda_search_start"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        need(0.0 < self.lr_gamma <= 1.0, f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        need(self.gan in ("log", "wgan"), f"gan must be 'log' or 'wgan', got {self.gan!r}")
        need(self.d_input in ("softmax", "logits"), f"d_input must be 'softmax' or 'logits', got {self.d_input!r}")
        need(self.data_input in ("softmax", "logits"),
             f"data_input must be 'softmax' or 'logits', got {self.data_input!r}")
        need(self.data_scale in ("baseline", "none"),
             f"data_scale must be 'baseline' or 'none', got {self.data_scale!r}")
        need(self.bn in ("train", "eval"), f"bn must be 'train' or 'eval', got {self.bn!r}")
        need(self.d_init_std is None or self.d_init_std > 0, f"d_init_std must be None or > 0, got {self.d_init_std}")
        need(self.d_activation in ("none", "relu"),
             f"d_activation must be 'none' or 'relu', got {self.d_activation!r}")
        need(all(h >= 1 for h in self.d_hidden), f"d_hidden sizes must be >= 1, got {self.d_hidden}")
        need(self.sparse_lambda is None or self.sparse_lambda >= 0,
             f"sparse_lambda must be None (searched) or >= 0, got {self.sparse_lambda}")
        need(self.mask_scale in ("cell", "free"), f"mask_scale must be 'cell' or 'free', got {self.mask_scale!r}")
        need(0.0 < self.lambda_search_tolerance < 1.0,
             f"lambda_search_tolerance must be in (0, 1), got {self.lambda_search_tolerance}")
        need(0.0 <= self.latency_weight_floor <= 1.0,
             f"latency_weight_floor must be in [0, 1], got {self.latency_weight_floor}")
        need(all(v >= 0 for v in self.lambda_sweep), f"lambda_sweep values must be >= 0, got {self.lambda_sweep}")
        need(self.mask_init in ("ones", "normal"), f"mask_init must be 'ones' or 'normal', got {self.mask_init!r}")
        need(self.lambda_growth > 1.0, f"lambda_growth must be > 1, got {self.lambda_growth}")
        raise_problems("GALConfig", p)


def _train_block(epochs: int) -> DARTSTrainConfig:
    """The baseline's and the retrain's default block (paper: same hyper-parameters for both)."""
    return DARTSTrainConfig(epochs=epochs, lr=0.01, momentum=0.9, weight_decay=3e-4)


#: the flat names (the layout before the nested configs) the two training blocks shared
_SHARED_TRAIN = {"kd_alpha": "kd_alpha", "kd_temperature": "kd_temperature", "augment": "augment",
                 "drop_path": "drop_path"}


@dataclass(frozen=True)
class DartsGalConfig:
    """Settings of ``darts-gal``, one sub-config per phase; every field lands in ``report.json``
    under ``config`` (nested).

    The search (stage 1) reads ``search`` (:class:`DartsSearchConfig`); the sizing and the baseline
    (stage 2, KD from the teacher) read ``sizing`` (:class:`DartsGalSizingConfig`) and ``baseline``
    (:class:`~compress.strategies.darts.configs.DARTSTrainConfig`: the shared fine-tune block plus
    drop-path; paper: 50 epochs, lr 0.01); GAL with its lambda search and closing loop (stage 3)
    reads ``gal`` (:class:`GALConfig`); the retrain (stage 4, KD) reads ``final`` (a
    ``DARTSTrainConfig``; paper: the baseline's hyper-parameters). Flat keys (the layout before the nested configs) still
    load (with a ``ConfigDeprecationWarning``): ``search_<x>`` / ``baseline_<x>`` / ``gal_<x>`` /
    ``final_<x>`` -> ``<phase>.<x>``; ``kd_alpha``, ``kd_temperature``, ``augment``, ``drop_path`` ->
    both ``baseline.<x>`` and ``final.<x>``; every other flat name -> the leaf of that name
    (``grad_clip``, ``arch_*``, ... -> ``search``; ``n_critic``, ``d_*``, ``mask_*``, ``lambda_*`` ...
    -> ``gal``; ``candidates_*``, ``stem_strides``, ``capacity``, ``size_margin`` -> ``sizing``).

    Attributes:
        search, sizing, baseline, gal, final: the phases' sub-configs (above).
        objective: ``"auto"`` (default): latency-aware when the budget names latency, plain
            otherwise; ``"latency"``: always latency-aware; ``"size"``: never. Latency-aware means
            both (issue 18, part 4): (1) the DARTS search (``search.genotype="search"``) adds the
            expected latency of the mixed ops under softmax(alpha) to its architecture loss, weighted
            by ``search.arch_latency_weight``, from the target's per-layer latency table; (2) GAL's L1
            is latency-weighted: node j's weight is its predicted latency (the same table, summed over
            the convs of its in-edges) divided by the mean over nodes, floored at
            ``gal.latency_weight_floor``. The budget check at the end stays a real measurement.
        retrain: ``"scratch"`` (paper §3.4) or ``"finetune"`` (GAL: keep the pruned weights).

    Raises:
        ConfigError: any value out of range (the message names the field).
    """

    search: DartsSearchConfig = subconfig(DartsSearchConfig, legacy_prefix="search_", legacy={
        name: name for name in ("genotype", "grad_clip", "train_portion", "second_order", "arch_lr",
                                "arch_weight_decay", "arch_warmup_epochs", "arch_reference_steps",
                                "arch_latency_weight", "arch_params_weight", "partial_channels", "edge_norm")})
    sizing: DartsGalSizingConfig = subconfig(DartsGalSizingConfig)
    baseline: DARTSTrainConfig = subconfig(lambda: _train_block(50), legacy_prefix="baseline_", legacy=_SHARED_TRAIN)
    gal: GALConfig = subconfig(GALConfig, legacy_prefix="gal_", legacy={
        name: name for name in ("n_critic", "gan", "wgan_clip", "d_input", "data_input", "data_scale", "d_hidden",
                                "d_activation", "d_init_std", "d_lr", "d_momentum", "d_weight_decay", "mu",
                                "sparse_lambda", "mask_scale", "lambda_search_probes", "lambda_search_start",
                                "lambda_search_tolerance", "lambda_probe_epochs", "latency_weight_floor",
                                "lambda_sweep", "target_prune_fraction", "mask_lr", "mask_step", "mask_init",
                                "l1_in_gradient", "mask_threshold", "keep_nonempty", "max_prune_rounds",
                                "lambda_growth", "prune_round_epochs")})
    final: DARTSTrainConfig = subconfig(lambda: _train_block(50), legacy_prefix="final_", legacy=_SHARED_TRAIN)
    objective: str = "auto"
    retrain: str = "scratch"

    def __post_init__(self) -> None:
        check_fields(self)  # the top-level leaves; each sub-config checks its own
        coerce_subconfigs(self)
        p = []
        if self.objective not in ("auto", "latency", "size"):
            p.append(f"objective must be 'auto', 'latency' or 'size', got {self.objective!r}")
        if self.retrain not in ("scratch", "finetune"):
            p.append(f"retrain must be 'scratch' or 'finetune', got {self.retrain!r}")
        raise_problems("DartsGalConfig", p)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DartsGalConfig":
        """A named setting plus overrides (nested, ``gal={"epochs": 2}``, or flat, with a warning).

        * ``"paper"``: the defaults (GPU scale).
        * ``"cpu-small"``: docs/algorithms/darts-gal.md, CPU profile -- a tiny first-order search (C 8, 5 cells, at half
          resolution, 4 epochs of 16 steps), a small sizing grid, 6 baseline epochs, 3 GAL epochs
          of 10 generator steps (batch 32, 5 critic steps each, a FISTA step after every generator
          step), lambda searched in at most 5 GAL probes toward the budget from a baseline sized to
          1.5 x the budget, 8 retrain epochs. The architecture steps (issue 18; :mod:`.search`): at
          DARTS' lr 3e-4 alpha stays uniform over so few steps, so ``search.arch_reference_steps=39_100``
          (DARTS' 19,550 steps, x2 by Adam's square-root batch scaling) sets the travel, each alpha
          step on ``search.arch_batch_size=256`` images with ``search.arch_weight_decay=0``.
          Minutes on 2 CPU cores for the digits demo.

        Raises:
            ConfigError: unknown preset name, or an invalid override.
        """
        if name not in PRESETS:
            raise ConfigError(f"Unknown DartsGalConfig preset {name!r}; known: {sorted(PRESETS)}.")
        return replace_config(config_from_dict(cls, PRESETS[name]), **overrides)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu-small": {
        "search": {
            "C": 8, "layers": 5, "stem_stride": 2, "epochs": 4, "batch_size": 32, "lr": 0.025,
            "max_steps_per_epoch": 16, "val_batches": 2,
            # issue 18 (compress/strategies/darts_gal/search.py has the measurements): DARTS' total Adam travel
            # (§3.1.1: 19,550 steps of lr 3e-4 at batch 64) over this search's own alpha steps, as eg-nas' cpu-small;
            # each alpha step on 256 images without alpha weight decay (first-order alpha gradients of a 32-image
            # batch change sign from batch to batch, so Adam's steps cancel), and the travel doubled by Adam's
            # square-root batch scaling (256 / 64 = 4x DARTS' batch: x2; Malladi et al., NeurIPS 2022). 16 weight
            # steps per epoch (8 before): with 8, alpha collapsed onto pools on digits while the weights were barely
            # trained (supernet val accuracy 0.36-0.79 vs 0.89-0.95 with 16).
            # Measured 2026-12-04, 3 seeds each: final entropy 1.27-1.44 nats on the digits demo task
            # (before: 1.63-1.84), 1.05-1.15 at bench_nas_random's CIFAR settings (before: 1.79-1.89).
            "arch_reference_steps": 39_100, "arch_batch_size": 256, "arch_weight_decay": 0.0,
        },
        "sizing": {"candidates_C": (4, 6, 8, 10, 12, 16, 20, 24), "candidates_layers": (5, 8), "size_margin": 1.5},
        "baseline": {"epochs": 6, "lr": 0.01},
        "gal": {"epochs": 3, "batch_size": 32, "max_g_steps_per_epoch": 10, "mask_step": 1, "mask_lr": 0.05,
                "lambda_search_probes": 5, "max_prune_rounds": 2, "prune_round_epochs": 2},
        "final": {"epochs": 8, "lr": 0.025},
    },
}


def resolve_genotype(value: str) -> Genotype | None:
    """``None`` for ``"search"``, else the published genotype of that name or the parsed JSON.

    Raises:
        ConfigError: neither ``"search"``, a known name, nor valid Genotype JSON.
    """
    if not isinstance(value, str):
        raise ConfigError(f"DartsGalConfig: search.genotype must be a string, got {type(value).__name__}.")
    if value == "search":
        return None
    if value in GENOTYPES:
        return GENOTYPES[value]
    if value.lstrip().startswith("{"):
        try:
            return Genotype.from_json(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"DartsGalConfig: search.genotype is not valid JSON: {exc}") from exc
    raise ConfigError(
        f"DartsGalConfig: search.genotype {value!r} is unknown; use 'search', one of {sorted(GENOTYPES)}, "
        "or a Genotype JSON object (Genotype.to_json())."
    )
