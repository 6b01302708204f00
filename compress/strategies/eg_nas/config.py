"""Settings of ``eg-nas``: :class:`EGNASConfig` (one sub-config per phase), its named presets, and
the checkpoint keys of the search and the final network (:func:`search_key`, :func:`final_key`).

Defaults follow Cai et al., "EG-NAS: Neural Architecture Search with Fast Evolutionary
Exploration", AAAI 2024 (CIFAR-10 setting); every documented deviation from the paper or the
released code (docs/algorithms/eg-nas.md, choices) is a field here, described where it acts
(:mod:`.cmaes`, :mod:`.search`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields, raise_problems
from compress.strategies.config_tree import (coerce_subconfigs, config_from_dict, key_config, replace_config,
                                             subconfig, subconfig_names)
from compress.strategies.darts.configs import DARTSTrainConfig, SizingConfig
from compress.strategies.darts.ops import PRIMITIVE_SETS
from compress.training.checkpoint import stable_hash

__all__ = ["EGNASConfig", "EGNASSearchConfig", "CMAESConfig", "search_key", "final_key"]


def _optional_count(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


@dataclass(frozen=True)
class EGNASSearchConfig:
    """The supernet, its weight training and the gradient alpha update of the ``"gradient"``
    baseline (``EGNASConfig.search``; the search phase reads it).

    Attributes:
        C, layers: supernet width and cells (16, 8).
        primitives: ``"eg-nas"`` (7 ops, no ``'none'``; released code) or ``"darts"`` (8 ops).
        partial_channels: PC-DARTS K (4; 1 = off). Must divide ``C``.
        edge_norm: PC-DARTS edge normalisation (EG-NAS: off).
        pool_bn: BN after pools in MixedOps (EG-NAS: off; DARTS: on).
        stem_stride: 1, or 2 to search at half resolution (CPU).
        epochs, warmup_epochs: T = 50, W = 15 (no alpha update for t < W).
        batch_size: weight-training minibatch (256).
        train_portion: fraction of the train split that trains the weights; the rest is the
            direction half (0.5).
        lr, lr_min, momentum, weight_decay, grad_clip: SGD on the weights, cosine per epoch from
            ``lr`` to ``lr_min`` (0.1 -> 0, 0.9, 3e-4, clip 5).
        max_steps_per_epoch: cap on weight steps per search epoch (None: the whole weight half).
        val_batches: batches of the task's val split for the per-epoch supernet accuracy (None: all).
        alpha_update: ``"cmaes"`` (EG-NAS) or ``"gradient"`` (first-order DARTS baseline).
        arch_lr, arch_weight_decay: Adam on alpha for ``alpha_update="gradient"`` (DARTS 3e-4, 1e-3).
        arch_reference_steps: for ``alpha_update="gradient"``: Adam's lr becomes
            ``arch_lr * arch_reference_steps / (alpha steps of the search)`` (DARTS CIFAR-10:
            50 x 391 = 19,550 steps; see :class:`~compress.strategies.darts.architect.Architect`).
            None (default): ``arch_lr`` per step.

    Raises:
        ConfigError: any value out of range (the message names the field).
    """

    #: added after search checkpoints existed (issue 18): left out of the keys at its old-behaviour value
    KEY_OMIT: ClassVar[dict[str, Any]] = {"arch_reference_steps": None}

    C: int = 16
    layers: int = 8
    primitives: str = "eg-nas"
    partial_channels: int = 4
    edge_norm: bool = False
    pool_bn: bool = False
    stem_stride: int = 1
    epochs: int = 50
    warmup_epochs: int = 15
    batch_size: int = 256
    train_portion: float = 0.5
    lr: float = 0.1
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    max_steps_per_epoch: int | None = None
    val_batches: int | None = None
    alpha_update: str = "cmaes"
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    arch_reference_steps: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        p: list[str] = []
        if self.alpha_update not in ("cmaes", "gradient"):
            p.append(f"search.alpha_update must be 'cmaes' or 'gradient', got {self.alpha_update!r}")
        if self.primitives not in PRIMITIVE_SETS:
            p.append(f"search.primitives must be one of {sorted(PRIMITIVE_SETS)}, got {self.primitives!r}")
        for name in ("C", "layers", "epochs", "partial_channels"):
            if getattr(self, name) < 1:
                p.append(f"search.{name} must be an int >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            p.append(f"search.warmup_epochs must be in [0, search.epochs={self.epochs}], got {self.warmup_epochs}")
        if self.partial_channels >= 1 and self.C % self.partial_channels:
            p.append(f"search.partial_channels={self.partial_channels} must divide search.C={self.C}")
        if self.C % 2:
            p.append(f"search.C must be even (FactorizedReduce halves it), got {self.C}")
        if self.stem_stride not in (1, 2):
            p.append(f"search.stem_stride must be 1 or 2, got {self.stem_stride}")
        if not 0.0 < self.train_portion < 1.0:
            p.append(f"search.train_portion must be in (0, 1), got {self.train_portion}")
        if self.lr_min > self.lr:
            p.append(f"search.lr_min ({self.lr_min}) must be <= search.lr ({self.lr})")
        if not _optional_count(self.arch_reference_steps):
            p.append(f"search.arch_reference_steps must be None or an int >= 1, got {self.arch_reference_steps!r}")
        raise_problems(type(self).__name__, p)


@dataclass(frozen=True)
class CMAESConfig:
    """The CMA-ES architecture update (``EGNASConfig.es``; Alg. 1, Eq. 3-9, with the restarts; the
    search phase reads it for ``search.alpha_update="cmaes"``).

    Attributes:
        restarts: N sampled starting points (5).
        popsize: CMA-ES population lambda (25).
        generations: G, CMA-ES generations per restart (1).
        zeta, eta: weights of CE and L2 in Eq. 7 (1.0, 0.4).
        xi: alpha step size of Eq. 8 (0.6).
        restart_noise: sigma_n of Alg. 1 line 5 (0.01).
        sigma_min: floor of sigma_t = max(1/(t+1), sigma_min) (0.02).
        direction: ``"softmax"`` (dir(s) = per-edge softmax of s) or ``"raw"`` (s itself).
        keep_mean: add the CMA mean after the last generation to P.
        bn: ``"batch"`` (fitness forwards use batch statistics, running stats untouched) or
            ``"running"`` (eval mode).
        batch_size: the direction minibatch used by every fitness call of an epoch (128).
        xi_reference_updates: the number of Eq. 8 updates ``xi`` is meant for (the paper's
            T - W = 35); the step becomes ``xi * xi_reference_updates / (T - W)`` so a shorter search
            keeps the paper's total step ``xi * 35`` (issue 18; see :mod:`.search`). None (default):
            ``xi`` per update, as published.

    Raises:
        ConfigError: any value out of range (the message names the field).
    """

    #: added after search checkpoints existed (issue 18): left out of the keys at its old-behaviour value
    KEY_OMIT: ClassVar[dict[str, Any]] = {"xi_reference_updates": None}

    restarts: int = 5
    popsize: int = 25
    generations: int = 1
    zeta: float = 1.0
    eta: float = 0.4
    xi: float = 0.6
    restart_noise: float = 0.01
    sigma_min: float = 0.02
    direction: str = "softmax"
    keep_mean: bool = True
    bn: str = "batch"
    batch_size: int = 128
    xi_reference_updates: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        p: list[str] = []
        for name in ("restarts", "generations"):
            if getattr(self, name) < 1:
                p.append(f"es.{name} must be an int >= 1, got {getattr(self, name)}")
        if self.popsize < 2:
            p.append(f"es.popsize (lambda) must be >= 2, got {self.popsize}")
        if self.zeta < 0 or self.eta < 0 or not self.xi > 0:
            p.append(f"need es.zeta >= 0, es.eta >= 0, es.xi > 0 (got {self.zeta}, {self.eta}, {self.xi})")
        if self.restart_noise < 0 or not self.sigma_min > 0:
            p.append(f"need es.restart_noise >= 0 and es.sigma_min > 0 (got {self.restart_noise}, {self.sigma_min})")
        if self.direction not in ("softmax", "raw"):
            p.append(f"es.direction must be 'softmax' or 'raw', got {self.direction!r}")
        if self.bn not in ("batch", "running"):
            p.append(f"es.bn must be 'batch' or 'running', got {self.bn!r}")
        if not _optional_count(self.xi_reference_updates):
            p.append(f"es.xi_reference_updates must be None or an int >= 1, got {self.xi_reference_updates!r}")
        raise_problems(type(self).__name__, p)


@dataclass(frozen=True)
class EGNASConfig:
    """Settings of ``eg-nas``; every field lands in ``report.json`` under ``config``, nested.

    Defaults are the paper's CIFAR-10 setting (§"Datasets and Implementation Details") and the
    released code where the paper is silent (docs/algorithms/eg-nas.md, defaults); they are GPU-scale. Use
    ``EGNASConfig.preset("cpu-small")`` on a CPU.

    The search reads ``search`` and ``es`` (and ``objective``, ``latency_weight``), the sizing reads
    ``sizing``, the retrain ``final``. Flat keys (the layout before the nested configs) still load (with a
    :class:`~compress.strategies.config_tree.ConfigDeprecationWarning`): ``search_C``/``search_layers``/
    ``search_stem_stride``/``search_epochs``/``search_val_batches`` and ``w_lr``/``w_lr_min``/
    ``w_momentum``/``w_weight_decay`` -> ``search.*``, ``es_bn``/``es_batch_size`` -> ``es.bn``/``es.batch_size``,
    ``final_*``/``kd_alpha``/``kd_temperature``/``augment`` -> ``final.*``; every other flat name is its
    leaf's own name in ``search``, ``es`` or ``sizing``.

    Attributes:
        search: :class:`EGNASSearchConfig` -- the supernet, its weight training, the gradient
            alpha update.
        es: :class:`CMAESConfig` -- Eq. 8 and the CMA-ES restarts.
        sizing: :class:`~compress.strategies.darts.configs.SizingConfig` -- the (C, cells, stem
            stride) grid the genotype is sized over.
        final: :class:`~compress.strategies.darts.configs.DARTSTrainConfig` -- the retrain from
            scratch with KD from the teacher (DARTS protocol: 600 epochs, lr 0.025 cosine, momentum
            0.9, wd 3e-4; SGD Nesterov), drop-path ramped linearly (0 = off).
        objective: ``"auto"`` (default: latency-aware when the budget names ``latency``),
            ``"latency"`` (always) or ``"size"`` (never): whether the architecture objective adds
            ``latency_weight * E[lat] / E_uniform[lat]`` from the target's per-layer latency table
            (ProxylessNAS §3.3, FBNet §3.2; :mod:`compress.strategies.darts.latency`). The budget
            check at the end stays a real measurement.
        latency_weight: lambda_lat >= 0 of that term (0.2; dimensionless, since E[lat] is divided
            by its value under uniform op weights; a choice, not a paper value).
        stability_seeds: 0 (default) or >= 2: the search is repeated with ``stability_seeds - 1``
            more seeds (same settings, no checkpoints; costs that many more searches) and
            ``search.genotype_stability`` reports the share of edges whose argmax op agrees in all
            of them (None when 0). It never enters a checkpoint key.

    Raises:
        ConfigError: any value out of range (the message names the field).
    """

    #: added after search and final checkpoints existed (issue 18): left out of the keys at these
    #: values. ``objective="auto"`` reproduces the old search only without a latency limit: with one,
    #: the latency term's reference latency enters the search key (``latency_ms``), as it should.
    KEY_OMIT: ClassVar[dict[str, Any]] = {"objective": "auto", "latency_weight": 0.2}

    search: EGNASSearchConfig = subconfig(
        EGNASSearchConfig, legacy={"C": "search_C", "layers": "search_layers", "stem_stride": "search_stem_stride",
                                   "epochs": "search_epochs", "val_batches": "search_val_batches",
                                   "lr": "w_lr", "lr_min": "w_lr_min", "momentum": "w_momentum",
                                   "weight_decay": "w_weight_decay"})
    es: CMAESConfig = subconfig(CMAESConfig, legacy={"bn": "es_bn", "batch_size": "es_batch_size"})
    sizing: SizingConfig = subconfig(SizingConfig)
    final: DARTSTrainConfig = subconfig(
        lambda: DARTSTrainConfig(epochs=600, lr=0.025, momentum=0.9, weight_decay=3e-4),
        legacy_prefix="final_", legacy={"kd_alpha": "kd_alpha", "kd_temperature": "kd_temperature",
                                        "augment": "augment"})
    objective: str = "auto"
    latency_weight: float = 0.2
    stability_seeds: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        coerce_subconfigs(self)
        p: list[str] = []
        if self.objective not in ("auto", "size", "latency"):
            p.append(f"objective must be 'auto', 'size' or 'latency', got {self.objective!r}")
        if self.latency_weight < 0:
            p.append(f"latency_weight must be >= 0, got {self.latency_weight}")
        if not (self.stability_seeds == 0 or self.stability_seeds >= 2):
            p.append(f"stability_seeds must be 0 (off) or >= 2 (searches compared), got {self.stability_seeds}")
        raise_problems(type(self).__name__, p)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "EGNASConfig":
        """A named setting plus overrides (nested, ``search={"epochs": 4}``, or flat, ``search_epochs=4``).

        * ``"paper"``: the defaults (GPU scale).
        * ``"cpu-small"``: docs/algorithms/eg-nas.md, CPU profile -- supernet C 8, 5 cells, K 2, searched at half
          resolution; T 8, W 3; N 2, lambda 8, G 1, ES batch 64; a small sizing grid and a
          10-epoch retrain; ``es.xi_reference_updates=35`` and ``search.arch_reference_steps=19_550``
          (issue 18: without them alpha stays uniform, see :mod:`.search`). Minutes on 2 CPU cores for the digits demo.

        Raises:
            ConfigError: unknown preset name, or an override the config refuses.
        """
        if name not in _PRESETS:
            raise ConfigError(f"Unknown EGNASConfig preset {name!r}; known: {sorted(_PRESETS)}.")
        return replace_config(config_from_dict(cls, _PRESETS[name]), **overrides)


#: the named presets, in the nested spelling (:meth:`EGNASConfig.preset`)
_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu-small": {
        "search": dict(
            C=8, layers=5, partial_channels=2, stem_stride=2, epochs=8, warmup_epochs=3, batch_size=64, lr=0.05,
            val_batches=4,
            # issue 18, for alpha_update="gradient": DARTS' 19,550 steps of lr 3e-4 (§3.1.1) over this search's
            # steps. Measured on the digits demo task (seed 0, max_steps_per_epoch=3; 15 steps, lr 0.391): entropy
            # 1.9459 at every epoch without it; 1.7379, 1.6286, 1.4961, 1.4272, 1.4388 after epochs 4-8 with it.
            arch_reference_steps=19_550),
        "es": dict(
            batch_size=64, restarts=2, popsize=8, generations=1,
            # issue 18: the paper's total Eq. 8 step (35 updates of xi = 0.6) over this search's 5 updates,
            # xi_effective = 4.2. Measured on the digits demo task (seed 0, max_steps_per_epoch=3 to keep the
            # shared-CPU run short; the ES update does not depend on the step count): mean per-edge entropy
            # after epochs 4-8 = 1.9457, 1.9456, 1.9455, 1.9454, 1.9452 with xi per update (ln 7 = 1.9459),
            # 1.9346, 1.9145, 1.8468, 1.6598, 1.2399 with this setting.
            xi_reference_updates=35),
        "sizing": dict(candidates_C=(4, 6, 8, 12, 16, 20, 24), candidates_layers=(3, 5, 8)),
        "final": dict(epochs=10, lr=0.025),
    },
}

#: top-level fields that never shape a checkpointed result, left out of every key:
#: ``stability_seeds`` runs extra searches (not checkpointed) beside the run's own, whose search and
#: retrain it leaves as they are
_UNKEYED = frozenset({"stability_seeds"})


def _key(cfg: EGNASConfig, subs: tuple[str, ...], extra: dict[str, Any]) -> str:
    """The stable hash of the flat-named leaves of ``subs`` and the top level (less ``_UNKEYED``
    and the ``KEY_OMIT`` leaves at their old values) and ``extra``, whose ``latency_ms`` is left out
    when None (no latency term), so the keys of runs made before issue 18 are unchanged."""
    config = key_config(cfg, *subs, top_level=True, skip=_UNKEYED)
    return stable_hash({"config": config, **{k: v for k, v in extra.items() if not (k == "latency_ms" and v is None)}})


def search_key(cfg: EGNASConfig, extra: dict[str, Any]) -> str:
    """The key of the search checkpoints: ``search``, ``es`` and the top-level leaves (``objective``,
    ``latency_weight``), with ``extra`` (seed, data sizes, the latency term's reference latency)."""
    return _key(cfg, ("search", "es"), extra)


def final_key(cfg: EGNASConfig, extra: dict[str, Any]) -> str:
    """The key of the final network (sizing + retrain): every sub-config and top-level leaf (the
    final network depends on the search too), with ``extra`` (seed, genotype, budget, task sizes)."""
    return _key(cfg, subconfig_names(EGNASConfig), extra)
