"""Settings of ``eg-nas``: :class:`EGNASConfig`, its named presets, and the hash that keys the
search and final checkpoints.

Defaults follow Cai et al., "EG-NAS: Neural Architecture Search with Fast Evolutionary
Exploration", AAAI 2024 (CIFAR-10 setting); every documented deviation from the paper or the
released code (docs/algorithms/eg-nas.md, choices) is a field here, described where it acts
(:mod:`.cmaes`, :mod:`.search`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from compress.errors import ConfigError
from compress.strategies._parts.config_fields import check_fields
from compress.strategies.base import config_to_dict
from compress.strategies.darts.ops import PRIMITIVE_SETS
from compress.strategies.darts.sizing import DEFAULT_C, DEFAULT_LAYERS
from compress.training import AUGMENTATIONS
from compress.training.checkpoint import stable_hash

__all__ = ["EGNASConfig"]


@dataclass(frozen=True)
class EGNASConfig:
    """Settings of ``eg-nas``; every field lands in ``report.json`` under ``config``.

    Defaults are the paper's CIFAR-10 setting (§"Datasets and Implementation Details") and the
    released code where the paper is silent (docs/algorithms/eg-nas.md, defaults); they are GPU-scale. Use
    ``EGNASConfig.preset("cpu-small")`` on a CPU.

    Attributes:
        search_C, search_layers: supernet width and cells (16, 8).
        primitives: ``"eg-nas"`` (7 ops, no ``'none'``; released code) or ``"darts"`` (8 ops).
        partial_channels: PC-DARTS K (4; 1 = off). Must divide ``search_C``.
        edge_norm: PC-DARTS edge normalisation (EG-NAS: off).
        pool_bn: BN after pools in MixedOps (EG-NAS: off; DARTS: on).
        search_stem_stride: 1, or 2 to search at half resolution (CPU).
        search_epochs, warmup_epochs: T = 50, W = 15 (no alpha update for t < W).
        batch_size: weight-training minibatch (256).
        es_batch_size: the direction minibatch used by every fitness call of an epoch (128).
        train_portion: fraction of the train split that trains the weights; the rest is the
            direction half (0.5).
        w_lr, w_lr_min, w_momentum, w_weight_decay, grad_clip: SGD on the weights, cosine per
            epoch from ``w_lr`` to ``w_lr_min`` (0.1 -> 0, 0.9, 3e-4, clip 5).
        max_steps_per_epoch: cap on weight steps per search epoch (None: the whole weight half).
        search_val_batches: batches of the task's val split for the per-epoch supernet accuracy
            (None: all).
        alpha_update: ``"cmaes"`` (EG-NAS) or ``"gradient"`` (first-order DARTS baseline).
        restarts: N sampled starting points (5).
        popsize: CMA-ES population lambda (25).
        generations: G, CMA-ES generations per restart (1).
        zeta, eta: weights of CE and L2 in Eq. 7 (1.0, 0.4).
        xi: alpha step size of Eq. 8 (0.6).
        restart_noise: sigma_n of Alg. 1 line 5 (0.01).
        sigma_min: floor of sigma_t = max(1/(t+1), sigma_min) (0.02).
        direction: ``"softmax"`` (dir(s) = per-edge softmax of s) or ``"raw"`` (s itself).
        keep_mean: add the CMA mean after the last generation to P.
        es_bn: ``"batch"`` (fitness forwards use batch statistics, running stats untouched) or
            ``"running"`` (eval mode).
        arch_lr, arch_weight_decay: Adam on alpha for ``alpha_update="gradient"`` (DARTS 3e-4, 1e-3).
        xi_reference_updates: the number of Eq. 8 updates ``xi`` is meant for (the paper's
            T - W = 35); the step becomes ``xi * xi_reference_updates / (T - W)`` so a shorter search
            keeps the paper's total step ``xi * 35`` (issue 18; see :mod:`.search`). None (default):
            ``xi`` per update, as published.
        arch_reference_steps: the same for ``alpha_update="gradient"``: Adam's lr becomes
            ``arch_lr * arch_reference_steps / (alpha steps of the search)`` (DARTS CIFAR-10:
            50 x 391 = 19,550 steps; see :class:`~compress.strategies.darts.architect.Architect`).
            None (default): ``arch_lr`` per step.
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
            of them (None when 0).
        candidates_C, candidates_layers, stem_strides, capacity: the sizing grid (see
            :func:`~compress.strategies.darts.sizing.size_to_budget`).
        final_epochs, final_lr, final_momentum, final_weight_decay: retrain schedule (DARTS
            protocol: 600 epochs, lr 0.025 cosine, momentum 0.9, wd 3e-4; SGD Nesterov here).
        final_drop_path: drop-path probability, ramped linearly over the retrain (0 = off).
        final_max_steps_per_epoch: cap on retrain steps per epoch.
        kd_alpha, kd_temperature: KD from the teacher during the retrain.
        augment: retrain augmentation (``"none"``, ``"flip-crop"``).

    Raises:
        ConfigError: any value out of range (the message names the field).
    """

    search_C: int = 16
    search_layers: int = 8
    primitives: str = "eg-nas"
    partial_channels: int = 4
    edge_norm: bool = False
    pool_bn: bool = False
    search_stem_stride: int = 1
    search_epochs: int = 50
    warmup_epochs: int = 15
    batch_size: int = 256
    es_batch_size: int = 128
    train_portion: float = 0.5
    w_lr: float = 0.1
    w_lr_min: float = 0.0
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    max_steps_per_epoch: int | None = None
    search_val_batches: int | None = None
    alpha_update: str = "cmaes"
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
    es_bn: str = "batch"
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    xi_reference_updates: int | None = None
    arch_reference_steps: int | None = None
    objective: str = "auto"
    latency_weight: float = 0.2
    stability_seeds: int = 0
    candidates_C: tuple[int, ...] = DEFAULT_C
    candidates_layers: tuple[int, ...] = DEFAULT_LAYERS
    stem_strides: tuple[int, ...] = (1, 2)
    capacity: str = "params"
    final_epochs: int = 600
    final_lr: float = 0.025
    final_momentum: float = 0.9
    final_weight_decay: float = 3e-4
    final_drop_path: float = 0.0
    final_max_steps_per_epoch: int | None = None
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    augment: str = "none"

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and, by its name, its range
        for name in ("candidates_C", "candidates_layers", "stem_strides"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"EGNASConfig: {msg}")

        need(self.alpha_update in ("cmaes", "gradient"), f"alpha_update must be 'cmaes' or 'gradient', got {self.alpha_update!r}.")
        need(self.primitives in PRIMITIVE_SETS, f"primitives must be one of {sorted(PRIMITIVE_SETS)}, got {self.primitives!r}.")
        need(self.direction in ("softmax", "raw"), f"direction must be 'softmax' or 'raw', got {self.direction!r}.")
        need(self.es_bn in ("batch", "running"), f"es_bn must be 'batch' or 'running', got {self.es_bn!r}.")
        need(self.capacity in ("params", "macs"), f"capacity must be 'params' or 'macs', got {self.capacity!r}.")
        need(self.objective in ("auto", "size", "latency"),
             f"objective must be 'auto', 'size' or 'latency', got {self.objective!r}.")
        need(self.latency_weight >= 0, f"latency_weight must be >= 0, got {self.latency_weight}.")
        need(self.stability_seeds == 0 or self.stability_seeds >= 2,
             f"stability_seeds must be 0 (off) or >= 2 (searches compared), got {self.stability_seeds}.")
        for name in ("xi_reference_updates", "arch_reference_steps"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                 f"{name} must be None or an int >= 1, got {v!r}.")
        need(self.augment in AUGMENTATIONS, f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}.")
        for name in ("search_C", "search_layers", "search_epochs", "batch_size", "es_batch_size", "restarts",
                     "generations", "partial_channels"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{name} must be an int >= 1.")
        need(self.popsize >= 2, f"popsize (lambda) must be >= 2, got {self.popsize}.")
        need(0 <= self.warmup_epochs <= self.search_epochs,
             f"warmup_epochs must be in [0, search_epochs={self.search_epochs}], got {self.warmup_epochs}.")
        need(self.search_C % self.partial_channels == 0,
             f"partial_channels={self.partial_channels} must divide search_C={self.search_C}.")
        need(self.search_C % 2 == 0, f"search_C must be even (FactorizedReduce halves it), got {self.search_C}.")
        need(self.search_stem_stride in (1, 2), f"search_stem_stride must be 1 or 2, got {self.search_stem_stride}.")
        need(0.0 < self.train_portion < 1.0, f"train_portion must be in (0, 1), got {self.train_portion}.")
        need(self.w_lr > 0 and 0 <= self.w_lr_min <= self.w_lr, "need w_lr > 0 and 0 <= w_lr_min <= w_lr.")
        need(0 <= self.w_momentum < 1 and self.w_weight_decay >= 0 and self.grad_clip > 0,
             "need 0 <= w_momentum < 1, w_weight_decay >= 0, grad_clip > 0.")
        need(self.zeta >= 0 and self.eta >= 0 and self.xi > 0, "need zeta >= 0, eta >= 0, xi > 0.")
        need(self.restart_noise >= 0 and self.sigma_min > 0, "need restart_noise >= 0 and sigma_min > 0.")
        need(self.arch_lr > 0 and self.arch_weight_decay >= 0, "need arch_lr > 0 and arch_weight_decay >= 0.")
        for name in ("max_steps_per_epoch", "search_val_batches", "final_max_steps_per_epoch"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and v >= 1), f"{name} must be None or an int >= 1.")
        need(bool(self.candidates_C) and all(c >= 2 and c % 2 == 0 for c in self.candidates_C),
             f"candidates_C must be even ints >= 2, got {self.candidates_C}.")
        need(bool(self.candidates_layers) and all(v >= 1 for v in self.candidates_layers),
             f"candidates_layers must be ints >= 1, got {self.candidates_layers}.")
        need(bool(self.stem_strides) and all(s in (1, 2) for s in self.stem_strides),
             f"stem_strides must be 1 and/or 2, got {self.stem_strides}.")
        need(self.final_epochs >= 0 and self.final_lr > 0 and 0 <= self.final_momentum < 1
             and self.final_weight_decay >= 0, "need final_epochs >= 0, final_lr > 0, 0 <= final_momentum < 1.")
        need(0.0 <= self.final_drop_path < 1.0, f"final_drop_path must be in [0, 1), got {self.final_drop_path}.")
        need(0.0 <= self.kd_alpha <= 1.0 and self.kd_temperature > 0, "kd_alpha must be in [0, 1] and kd_temperature > 0.")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "EGNASConfig":
        """A named setting plus overrides.

        * ``"paper"``: the defaults (GPU scale).
        * ``"cpu-small"``: docs/algorithms/eg-nas.md, CPU profile -- supernet C 8, 5 cells, K 2, searched at half
          resolution; T 8, W 3; N 2, lambda 8, G 1, ES batch 64; a small sizing grid and a
          10-epoch retrain; ``xi_reference_updates=35`` and ``arch_reference_steps=19_550``
          (issue 18: without them alpha stays uniform, see :mod:`.search`). Minutes on 2 CPU cores for the digits demo.

        Raises:
            ConfigError: unknown preset name.
        """
        presets = _PRESETS
        if name not in presets:
            raise ConfigError(f"Unknown EGNASConfig preset {name!r}; known: {sorted(presets)}.")
        return cls(**{**presets[name], **overrides})


_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu-small": dict(
        search_C=8, search_layers=5, partial_channels=2, search_stem_stride=2,
        search_epochs=8, warmup_epochs=3, batch_size=64, es_batch_size=64, w_lr=0.05,
        restarts=2, popsize=8, generations=1, search_val_batches=4,
        candidates_C=(4, 6, 8, 12, 16, 20, 24), candidates_layers=(3, 5, 8),
        final_epochs=10, final_lr=0.025,
        # issue 18: the paper's total Eq. 8 step (35 updates of xi = 0.6) over this search's 5 updates,
        # xi_effective = 4.2. Measured on the digits demo task (seed 0, max_steps_per_epoch=3 to keep the
        # shared-CPU run short; the ES update does not depend on the step count): mean per-edge entropy
        # after epochs 4-8 = 1.9457, 1.9456, 1.9455, 1.9454, 1.9452 with xi per update (ln 7 = 1.9459),
        # 1.9346, 1.9145, 1.8468, 1.6598, 1.2399 with this setting.
        xi_reference_updates=35,
        # the same for alpha_update="gradient": DARTS' 19,550 steps of lr 3e-4 (§3.1.1) over this search's
        # steps. Measured as above (15 steps, lr 0.391): entropy 1.9459 at every epoch without it;
        # 1.7379, 1.6286, 1.4961, 1.4272, 1.4388 after epochs 4-8 with it.
        arch_reference_steps=19_550,
    ),
}


#: Fields added after search and final checkpoints existed (issue 18), each with the value that
#: reproduces the earlier behaviour (its default). At that value a field is left out of the checkpoint
#: keys, so a search or retrain saved before the field existed still resumes (as gp-prune's
#: ``_RECIPE_DEFAULTS``); any other value gives a new key. ``objective="auto"`` reproduces the old search
#: only without a latency limit: with one, the latency term's reference latency enters the search key
#: (``latency_ms`` of :class:`~compress.strategies.eg_nas.search.EGNASSearch`), so that search gets a new
#: key, as it should.
_ADDED_DEFAULTS: dict[str, Any] = {"xi_reference_updates": None, "arch_reference_steps": None, "objective": "auto",
                                   "latency_weight": 0.2}
#: Fields that never shape a checkpointed result, left out of every key: ``stability_seeds`` runs extra
#: searches (not checkpointed) beside the run's own, whose search and retrain it leaves as they are.
_UNKEYED = {"stability_seeds"}


def _search_fields() -> set[str]:
    """Config fields that change the search (their hash guards the search checkpoints)."""
    final = {"candidates_C", "candidates_layers", "stem_strides", "capacity", "final_epochs", "final_lr",
             "final_momentum", "final_weight_decay", "final_drop_path", "final_max_steps_per_epoch",
             "kd_alpha", "kd_temperature", "augment"}
    return {f.name for f in dataclasses.fields(EGNASConfig)} - final - _UNKEYED


def _config_hash(cfg: EGNASConfig, fields: set[str] | None, extra: dict[str, Any]) -> str:
    """A checkpoint key: the stable hash of the config dict (only ``fields`` if given) and ``extra``.
    Fields of ``_ADDED_DEFAULTS`` at their old-behaviour value and those of ``_UNKEYED`` are left
    out, and so is ``extra``'s
    ``latency_ms`` when it is None (no latency term), so the keys of runs made before issue 18 are
    unchanged."""
    d = {k: v for k, v in config_to_dict(cfg).items()
         if k not in _UNKEYED and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])}
    if fields is not None:
        d = {k: v for k, v in d.items() if k in fields}
    return stable_hash({"config": d, **{k: v for k, v in extra.items() if not (k == "latency_ms" and v is None)}})
