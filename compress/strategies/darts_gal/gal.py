"""GAL: generative adversarial learning of soft node masks (Lin et al., CVPR 2019, as used by
DARTS-GAL §3.3, Eq. 4-7; reference-code details in docs/algorithms/darts-gal.md, choices).

The baseline ``B`` (a trained :class:`~compress.strategies.darts.model.NetworkCIFAR`) is frozen.
The generator ``G`` is a copy of ``B`` with one scalar soft mask ``m_{c,i} >= 0`` per intermediate
node ``i`` of every cell ``c`` (placement of docs/algorithms/darts-gal.md, choice 8: ``m_i`` multiplies node i's
concat slice and every edge that reads node i, so a node whose mask is 0 can be removed exactly).
A discriminator ``D`` tells ``f_b = feat(B(x))`` (real) from ``f_g = feat(G(x))`` (fake), where
``feat`` is the softmax (paper, ``d_input``) or the logits (GAL code).

An epoch is one pass of the generator over the data (``len(loader)`` generator steps, capped by
``max_g_steps_per_epoch``); the critic's fresh batches come from a second seeded stream over the
same data. Per generator step (paper §3.4: five discriminator steps, then one generator step):

* ``n_critic`` times, on a fresh batch: D step on
  ``L_D = BCE(D(f_b), 1) + BCE(D(f_g), 0) + BCE(D(f_g), 1)`` (Eq. 5 plus ``R(W_D)`` of Eq. 7, as
  the GAL code wires it) -- or, with ``gan="wgan"``, ``D(f_g) - D(f_b)`` and weight clipping;
* G step on a fresh batch: ``L_G = BCE(D(f_g), 1) + mu * L_data + lambda * ||m||_1`` with
  ``L_data = (1/2n) sum_x ||z_b - z_g||^2`` (Eq. 6) on the logits (``data_input``, GAL code),
  divided by the baseline's mean ``(1/2)||z_b||^2`` (``data_scale="baseline"``, a relative error) --
  or ``-D(f_g)`` as the adversarial term with WGAN. The weights take a (clipped) SGD step (weight
  decay = ``R(W_G)``); the masks are not in the SGD optimiser: every ``mask_step`` generator steps,
  :class:`MaskFISTA` takes a proximal step (soft-threshold ``lr * lambda``, clamp at 0, FISTA
  momentum) with that step's mask gradient (which includes ``lambda * sign(m)``, GAL code). With
  ``mask_scale="cell"`` (default) every cell's masks are then divided by their max
  (:meth:`GALTrainer.fix_mask_scale`, issue 18); ``mask_weights`` turn ``||m||_1`` into
  ``sum_j w_j |m_j|`` (:func:`mask_penalty`, the latency-weighted penalty).

Runtime: B, G and D go to ``runtime.device`` when the trainer is built and at the start of every
:meth:`GALTrainer.run` (batches there too, forwards under its autocast) and come back to the CPU in
float32 and the default memory format at the end of each run, for counting and pruning. Both
optimisation steps go through ``runtime.optimize``. The masks ride in the generator's optimiser as
a group with learning rate 0 (no momentum, no weight decay), so that fp16 loss scaling unscales
their gradients with the weights'; that SGD step leaves them unchanged (``m + 0 * g``) and FISTA
moves them (skipped when an fp16 step found non-finite gradients).

BatchNorm: G trains with batch statistics (``bn="train"``, GAL code); B's outputs are computed once
in eval mode and cached. After a run G's running statistics are re-estimated with the final masks
(they lag behind masks that move every step). Observed on DARTS stacks (digits, 5 cells): in train
mode a node's output scale is normalised away by the next cell's BatchNorm, so most masks shrink
together and the data loss singles nodes out only near zero; in eval mode (``bn="eval"``) the
network is hypersensitive to the scale and the masks diverge.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compress.errors import ConfigError
from compress.strategies.darts.model import NetworkCIFAR
from compress.training.data import Cycle
from compress.training.runtime import Runtime

__all__ = [
    "Discriminator",
    "discriminator_loss",
    "generator_adv_loss",
    "data_loss",
    "soft_threshold",
    "mask_penalty",
    "MaskFISTA",
    "attach_masks",
    "mask_values",
    "GALSettings",
    "GALTrainer",
    "GALResult",
    "features",
]


# --------------------------------------------------------------------------- discriminator and losses


class Discriminator(nn.Module):
    """The GAL discriminator: Linear layers ``K -> 128 -> 256 -> 128 -> 1``.

    GAL's code has no activation between the layers (the authors confirm FC-only, GAL issue #4) and
    initialises weights from N(0, 0.01) with zero biases. It returns a **logit** ``(B,)`` (the GAL
    code applies a sigmoid and then BCE-with-logits, a double sigmoid; here the sigmoid is applied
    once, inside the loss).

    Args:
        num_inputs: K, the number of classes.
        hidden: hidden widths.
        activation: ``"none"`` (reference) or ``"relu"`` (the GAL paper's drawing).
        generator: torch generator for the init (None: global RNG).
        init_std: weight std of the N(0, std) init (0.01, reference); None = PyTorch's default
            uniform init (with the reference init a 4-layer linear D passes gradients of order
            ``std^3`` to its first layers and learns little beyond the last bias).
    """

    def __init__(self, num_inputs: int, hidden: Sequence[int] = (128, 256, 128), activation: str = "none",
                 generator: torch.Generator | None = None, init_std: float | None = 0.01) -> None:
        super().__init__()
        if activation not in ("none", "relu"):
            raise ConfigError(f"Discriminator activation must be 'none' or 'relu', got {activation!r}.")
        dims = [int(num_inputs), *(int(h) for h in hidden), 1]
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            lin = nn.Linear(a, b)
            with torch.no_grad():
                if init_std is None:  # PyTorch's default: U(-1/sqrt(a), 1/sqrt(a)) for weight and bias
                    bound = 1.0 / math.sqrt(a)
                    lin.weight.copy_((torch.rand(b, a, generator=generator) * 2 - 1) * bound)
                    lin.bias.copy_((torch.rand(b, generator=generator) * 2 - 1) * bound)
                else:
                    lin.weight.copy_(torch.randn(b, a, generator=generator) * init_std)
                    lin.bias.zero_()
            layers.append(lin)
            if activation == "relu" and k < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """``f (B, K) -> logits (B,)``."""
        return self.net(f).squeeze(-1)


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor, gan: str = "log") -> torch.Tensor:
    """Loss the discriminator minimises, from its logits on real ``f_b`` and fake ``f_g`` ``(B,)``.

    ``"log"``: ``BCE(d_real, 1) + BCE(d_fake, 0) + BCE(d_fake, 1)`` -- maximising Eq. 5's
    ``E log D(f_b) + E log(1 - D(f_g))`` plus Eq. 7's ``R(W_D) = E log D(f_g)`` (GAL ``main.py``).
    ``"wgan"``: ``mean D(f_g) - mean D(f_b)`` (the critic maximises ``D(f_b) - D(f_g)``).
    """
    if gan == "log":
        return _bce(d_real, 1.0) + _bce(d_fake, 0.0) + _bce(d_fake, 1.0)
    if gan == "wgan":
        return d_fake.mean() - d_real.mean()
    raise ConfigError(f"gan must be 'log' or 'wgan', got {gan!r}.")


def generator_adv_loss(d_fake: torch.Tensor, gan: str = "log") -> torch.Tensor:
    """Adversarial term of the generator: ``BCE(D(f_g), 1)`` (non-saturating form of minimising
    Eq. 5's ``log(1 - D(f_g))``, GAL code) or ``-mean D(f_g)`` (WGAN)."""
    if gan == "log":
        return _bce(d_fake, 1.0)
    if gan == "wgan":
        return -d_fake.mean()
    raise ConfigError(f"gan must be 'log' or 'wgan', got {gan!r}.")


def data_loss(f_b: torch.Tensor, f_g: torch.Tensor) -> torch.Tensor:
    """Eq. 6: ``(1/2n) sum_x ||f_b(x) - f_g(x)||_2^2`` over a batch ``(n, K)`` (= ``K/2 * F.mse_loss``)."""
    return 0.5 * (f_b - f_g).pow(2).sum(dim=1).mean()


def mask_penalty(masks: Sequence[torch.Tensor], weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """The sparsity term ``||m||_1`` of GAL's Eq. 7 (``R_lambda``, without lambda), or its weighted
    form ``sum_j w_j |m_j|`` (issue 18 part 4: ``w_j`` = node j's predicted latency share, see
    :func:`~compress.strategies.darts_gal.latency.node_latency_weights`).

    Args:
        masks: one tensor per cell, ``(steps,)`` each (any shapes).
        weights: one non-negative tensor per mask, of its shape (None: every weight 1).

    Returns:
        a scalar tensor (differentiable in the masks).

    Raises:
        ConfigError: ``weights`` do not match ``masks``.
    """
    if weights is None:
        return sum((m.abs().sum() for m in masks), torch.zeros(()))
    if len(weights) != len(masks) or any(w.shape != m.shape for w, m in zip(weights, masks)):
        raise ConfigError("mask_penalty: weights must have one tensor per mask, of the mask's shape.")
    return sum(((w.to(m.device, m.dtype) * m.abs()).sum() for m, w in zip(masks, weights)), torch.zeros(()))


def features(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """What D sees and the data loss compares: ``softmax(logits)`` (paper) or the logits (GAL code)."""
    return F.softmax(logits, dim=1) if kind == "softmax" else logits


def soft_threshold(v: torch.Tensor, threshold: "float | torch.Tensor") -> torch.Tensor:
    """The proximal operator of ``threshold * ||.||_1``: ``sign(v) * max(|v| - threshold, 0)``
    (``threshold`` a number or a tensor broadcastable to ``v``, one threshold per entry)."""
    return torch.sign(v) * torch.clamp(v.abs() - threshold, min=0.0)


class MaskFISTA:
    """Proximal gradient with FISTA momentum on non-negative masks (GAL ``fista.py`` semantics).

    ``step()``: ``t' = (1 + sqrt(1 + 4 t^2)) / 2``; ``y = m + ((t - 1) / t') (m - m_prev)``;
    ``m <- max(soft_threshold(y - lr * grad, lr * lambda), 0)``, with ``t = 1`` at the start and no
    momentum (``y = m``, ``t`` unchanged) at the first call, as GAL's ``fista.py``. The gradient is
    the one already in ``m.grad`` (computed at ``m``, as the reference does, not at ``y``); a
    missing grad counts as 0. A mask with ``|y - lr * g| <= lr * lambda`` becomes exactly 0.

    Args:
        masks: the mask parameters (each any shape).
        lr: step size. lam: lambda.
    """

    def __init__(self, masks: Sequence[torch.Tensor], lr: float, lam: float,
                 weights: Sequence[torch.Tensor] | None = None) -> None:
        if lr <= 0 or lam < 0:
            raise ConfigError(f"MaskFISTA needs lr > 0 and lambda >= 0, got lr={lr}, lambda={lam}.")
        self.masks = list(masks)
        self.lr = float(lr)
        self.lam = float(lam)
        if weights is not None and (len(weights) != len(self.masks)
                                    or any(w.shape != m.shape for w, m in zip(weights, self.masks))):
            raise ConfigError("MaskFISTA weights must have one tensor per mask, of the mask's shape.")
        #: per-mask penalty weights ``w`` (None: 1); the threshold of mask ``j`` is ``lr * lambda * w_j``
        self.weights = None if weights is None else [w.detach().clone().float() for w in weights]
        self.t = 1.0
        self.prev = [m.detach().clone() for m in self.masks]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        if self.steps == 0:  # the reference's first call only initialises the momentum state
            beta = 0.0
        else:
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * self.t * self.t)) / 2.0
            beta = (self.t - 1.0) / t_next
            self.t = t_next
        for k, (m, prev) in enumerate(zip(self.masks, self.prev)):
            g = torch.zeros_like(m) if m.grad is None else m.grad
            y = m + beta * (m - prev)
            prev.copy_(m)
            thr = self.lr * self.lam if self.weights is None else self.lr * self.lam * self.weights[k].to(m.device)
            m.copy_(soft_threshold(y - self.lr * g, thr).clamp_min(0.0) + 0.0)  # no -0.0
        self.steps += 1

    @torch.no_grad()
    def rescale(self, k: int, factor: float) -> None:
        """Divide mask ``k`` by ``factor`` (a change of the mask's unit,
        :meth:`GALTrainer.fix_mask_scale`) and restart its momentum (``prev = m``): measured on a
        5-cell digits stack, carrying FISTA's momentum (``beta -> 1``) across the renormalisation
        accumulated the common shrink and zeroed whole cells in one step (19 of 20 nodes at
        lambda 0.2, against 1 of 20 without the momentum)."""
        self.masks[k].div_(factor)
        self.prev[k].copy_(self.masks[k])

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "steps": self.steps, "prev": [p.clone() for p in self.prev]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = float(state["t"])
        self.steps = int(state["steps"])
        for p, v in zip(self.prev, state["prev"]):
            p.copy_(v)


# --------------------------------------------------------------------------- masks on a network


def attach_masks(net: NetworkCIFAR, init: str = "ones", generator: torch.Generator | None = None,
                 values: Sequence[torch.Tensor] | None = None) -> list[nn.Parameter]:
    """Give every cell of ``net`` a trainable node mask ``(steps,)`` (turned on) and return them.

    ``init``: ``"ones"`` (G == B) or ``"normal"`` (N(0, 1), GAL code); ``values`` overrides both.
    Masks of removed nodes (``None`` in the cell spec) exist but are never read.
    """
    masks = []
    for c, cell in enumerate(net.cells):
        if values is not None:
            v = values[c].detach().clone().float()
        elif init == "normal":
            v = torch.randn(cell.steps, generator=generator)
        elif init == "ones":
            v = torch.ones(cell.steps)
        else:
            raise ConfigError(f"mask init must be 'ones' or 'normal', got {init!r}.")
        m = nn.Parameter(v)
        cell.set_node_mask(m)
        masks.append(m)
    return masks


def mask_values(net: NetworkCIFAR) -> list[list[float]]:
    """Current node-mask values per cell (plain floats)."""
    return [[float(v) for v in cell.node_mask.detach()] for cell in net.cells]


# --------------------------------------------------------------------------- training loop


@dataclass(frozen=True)
class GALSettings:
    """One GAL run (see :class:`~compress.strategies.darts_gal.config.DartsGalConfig` for meanings)."""

    epochs: int
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
    d_input: str = "softmax"
    d_hidden: tuple[int, ...] = (128, 256, 128)
    d_activation: str = "none"
    d_lr: float = 0.01
    d_momentum: float = 0.9
    d_weight_decay: float = 2e-4
    mu: float = 1.0
    lam: float = 0.6
    mask_lr: float = 0.01
    mask_step: int = 200
    mask_init: str = "ones"
    l1_in_gradient: bool = True
    bn: str = "train"
    data_input: str = "logits"
    data_scale: str = "baseline"
    recalibrate_bn: bool = True
    grad_clip: float | None = None
    d_init_std: float | None = 0.01
    mask_scale: str = "cell"
    mask_weights: tuple[tuple[float, ...], ...] | None = None
    seed: int = 0


@dataclass
class GALResult:
    """Masks and per-epoch facts of a GAL run."""

    masks: list[list[float]]
    history: list[dict[str, Any]] = field(default_factory=list)
    d_steps: int = 0
    g_steps: int = 0
    mask_updates: int = 0


class _Indexed(Dataset):
    """``(x, index)`` pairs of a dataset of ``(x, y, ...)`` samples (GAL is label-free)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ds[i][0], i


def _cycle(ds: Dataset, batch_size: int, seed: int) -> Cycle:
    """A :class:`Cycle` over ``ds`` seeded once with ``seed``; a last partial batch is dropped when
    there is more than one batch."""
    c = Cycle(ds, batch_size)
    c.loader = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=c.gen, num_workers=0,
                          drop_last=len(ds) > batch_size)  # type: ignore[arg-type]
    c.reseed(int(seed))
    return c


class GALTrainer:
    """Runs GAL on a generator copy of ``baseline``.

    Args:
        baseline: the trained network B; never modified (frozen, eval mode while used).
        train_ds: map-style dataset of ``(x, y)``; labels are unused (GAL is label-free).
        num_classes: K (discriminator input size).
        settings: :class:`GALSettings`.
        generator_net: continue from this generator (already masked) instead of a fresh copy of B.
        progress: ``progress(phase, done, total, info)``; log: ``log(**record)`` per epoch.
        runtime: device and precision (default: CPU fp32); see the module docstring.

    Attributes:
        G, D: generator and discriminator; masks: the mask parameters (one per cell);
        g_opt, d_opt: SGD optimisers (``g_opt``'s first group: G's weights; second: the masks at
        lr 0); fista: :class:`MaskFISTA`.
    """

    def __init__(self, baseline: NetworkCIFAR, train_ds: Dataset, num_classes: int, settings: GALSettings, *,
                 generator_net: NetworkCIFAR | None = None,
                 progress: Callable[[str, int, int | None, dict], None] | None = None,
                 log: Callable[..., None] | None = None, phase_name: str = "gal",
                 runtime: Runtime | None = None) -> None:
        s = settings
        if s.n_critic < 1 or s.mask_step < 1 or s.batch_size < 1:
            raise ConfigError("GAL needs n_critic, mask_step and batch_size >= 1.")
        if s.bn not in ("eval", "train"):
            raise ConfigError(f"GAL bn must be 'eval' or 'train', got {s.bn!r}.")
        if s.mask_scale not in ("cell", "free"):
            raise ConfigError(f"GAL mask_scale must be 'cell' or 'free', got {s.mask_scale!r}.")
        self.s = s
        self.runtime = runtime or Runtime()
        self.B = baseline
        self.progress = progress or (lambda *a, **k: None)
        self.log = log or (lambda **k: None)
        self.phase_name = phase_name
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            if generator_net is None:
                self.G = copy.deepcopy(baseline)
                self.G.drop_path_prob = 0.0  # no dropout while pruning (paper §4)
                self.masks = attach_masks(self.G, s.mask_init, torch.Generator().manual_seed(s.seed + 1))
            else:
                self.G = generator_net
                self.masks = [cell.node_mask for cell in self.G.cells]
                for m in self.masks:
                    if not isinstance(m, nn.Parameter):
                        raise ConfigError("generator_net must carry trainable node masks (attach_masks).")
            self.D = Discriminator(num_classes, s.d_hidden, s.d_activation, torch.Generator().manual_seed(s.seed + 2),
                                   init_std=s.d_init_std)
        for p in self.B.parameters():
            p.requires_grad_(False)
        mask_ids = {id(m) for m in self.masks}
        self.weights = [p for p in self.G.parameters() if id(p) not in mask_ids]
        for p in self.weights:
            p.requires_grad_(True)
        self.g_opt = torch.optim.SGD(
            [{"params": self.weights},
             {"params": self.masks, "lr": 0.0, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}],
            lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        self.d_opt = torch.optim.SGD(self.D.parameters(), lr=s.d_lr, momentum=s.d_momentum,
                                     weight_decay=s.d_weight_decay)
        self.mask_weights: list[torch.Tensor] | None = None
        if s.mask_weights is not None:
            if len(s.mask_weights) != len(self.masks) or any(
                    len(w) != m.numel() for w, m in zip(s.mask_weights, self.masks)):
                raise ConfigError(f"GAL mask_weights need one row of {[m.numel() for m in self.masks]} weights per "
                                  f"cell, got {[len(w) for w in s.mask_weights]}.")
            if any(v < 0 or not math.isfinite(v) for w in s.mask_weights for v in w):
                raise ConfigError("GAL mask_weights must be finite and >= 0.")
            self.mask_weights = [torch.tensor(w, dtype=torch.float32).reshape(m.shape)
                                 for w, m in zip(s.mask_weights, self.masks)]
        self.fista = MaskFISTA(self.masks, s.mask_lr, s.lam, self.mask_weights)
        indexed = _Indexed(train_ds)
        self.data = _cycle(indexed, s.batch_size, s.seed + 3)
        self.critic_data = _cycle(indexed, s.batch_size, s.seed + 4)
        self.to_runtime()
        self._zb = self._baseline_logits(indexed)
        if s.data_scale not in ("baseline", "none"):
            raise ConfigError(f"GAL data_scale must be 'baseline' or 'none', got {s.data_scale!r}.")
        #: divisor of Eq. 6: 1, or the baseline's mean ``(1/2) ||f_b||^2`` so the data loss is a relative error
        self.data_norm = 1.0
        if s.data_scale == "baseline":
            fb = features(self._zb, s.data_input)
            self.data_norm = max(float(0.5 * fb.pow(2).sum(1).mean()), 1e-12)
        per_epoch = len(self.data.loader)
        if s.max_g_steps_per_epoch is not None:
            per_epoch = min(per_epoch, s.max_g_steps_per_epoch)
        self.g_steps_per_epoch = per_epoch
        self.d_steps = 0
        self.g_steps = 0

    def to_runtime(self) -> None:
        """B, G, D (and the FISTA state) onto the runtime's device."""
        self.runtime.prepare(self.G, self.D, self.B)
        self._move_state(self.runtime.device)

    def to_cpu(self) -> None:
        """B, G, D (and the FISTA state) back on the CPU in float32, default memory format."""
        for m in (self.G, self.D, self.B):
            m.to("cpu")
            m.to(memory_format=torch.contiguous_format)
        self._move_state(torch.device("cpu"))

    def _move_state(self, device: torch.device) -> None:
        self.fista.prev = [p.to(device) for p in self.fista.prev]
        if hasattr(self, "_zb"):
            self._zb = self._zb.to(device)

    def _set_lr(self, epoch: int) -> None:
        factor = self.s.lr_gamma ** (epoch // self.s.lr_step_epochs)
        self.g_opt.param_groups[0]["lr"] = self.s.lr * factor
        for group in self.d_opt.param_groups:
            group["lr"] = self.s.d_lr * factor
        self.fista.lr = self.s.mask_lr * factor

    def _feat(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return features(net(x), self.s.d_input)

    def train_mode(self) -> None:
        """G in train mode; with ``bn="eval"`` its BatchNorms keep the baseline's running statistics."""
        self.G.train()
        if self.s.bn == "eval":
            for m in self.G.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    @torch.no_grad()
    def _baseline_logits(self, ds: Dataset) -> torch.Tensor:
        """``B(x)`` of every training sample ``(N, K)``: B is frozen and in eval mode, so its outputs
        are fixed and computed once (the same numbers a per-batch forward would give)."""
        was = self.B.training
        self.B.eval()
        loader = DataLoader(ds, batch_size=256, shuffle=False, num_workers=0)
        rt = self.runtime
        outs = []
        for x, _i in loader:
            with rt.autocast():
                outs.append(self.B(rt.to_device(x)).float())
        self.B.train(was)
        return torch.cat(outs)

    @torch.no_grad()
    def recalibrate_bn(self) -> None:
        """Re-estimate G's BatchNorm running statistics with the current masks (one pass over the
        training data, cumulative average). During GAL the masks move every few steps and the
        running averages lag behind them, so the eval-mode generator (what gets pruned and, with
        ``retrain="finetune"``, fine-tuned) would not compute what the train-mode one learned."""
        bns = [m for m in self.G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        was = self.G.training
        self.G.train()
        loader = DataLoader(self.data.loader.dataset, batch_size=self.s.batch_size, shuffle=False, num_workers=0)
        for x, _i in loader:
            self.G(self.runtime.to_device(x))
        for m, mom in zip(bns, saved):
            m.momentum = mom
        self.G.train(was)

    def d_step(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> float:
        """One discriminator update on batch ``x`` (``idx``: its sample indices, for the cached
        baseline features; None computes them); returns its loss. ``x``, ``idx`` on the runtime's device."""
        with torch.no_grad(), self.runtime.autocast():
            f_b = features(self.B(x) if idx is None else self._zb[idx], self.s.d_input)
            f_g = self._feat(self.G, x)
        with self.runtime.autocast():
            loss = discriminator_loss(self.D(f_b), self.D(f_g), self.s.gan)
        self.runtime.optimize(loss, self.d_opt)
        if self.s.gan == "wgan":
            with torch.no_grad():
                for p in self.D.parameters():
                    p.clamp_(-self.s.wgan_clip, self.s.wgan_clip)
        self.d_steps += 1
        return float(loss.detach())

    def g_step(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dict[str, float]:
        """One generator update on batch ``x`` (weights by SGD; masks by FISTA every ``mask_step``).
        ``x``, ``idx`` on the runtime's device."""
        s, rt = self.s, self.runtime
        with torch.no_grad(), rt.autocast():
            z_b = self.B(x) if idx is None else self._zb[idx]
        self.D.requires_grad_(False)
        with rt.autocast():
            z_g = self.G(x)
            adv = generator_adv_loss(self.D(features(z_g, s.d_input)), s.gan)
            dat = data_loss(features(z_b, s.data_input), features(z_g, s.data_input)) / self.data_norm
            l1 = mask_penalty(self.masks, self.mask_weights)
            loss = adv + s.mu * dat + (s.lam * l1 if s.l1_in_gradient else 0.0)
        # zeroes the weights' and the masks' gradients (both are in g_opt); the clip covers the weights only
        rt.optimize(loss, self.g_opt, grad_clip=s.grad_clip, clip_params=self.weights)
        self.D.requires_grad_(True)
        self.g_steps += 1
        if self.g_steps % s.mask_step == 0 and self._mask_grads_usable():
            self.fista.step()
            if s.mask_scale == "cell":
                self.fix_mask_scale()
        for m in self.masks:
            m.grad = None
        return {"adv": float(adv.detach()), "data": float(dat.detach()), "l1": float(l1.detach()),
                "objective": float(adv.detach()) + s.mu * float(dat.detach()) + s.lam * float(l1.detach())}

    @torch.no_grad()
    def fix_mask_scale(self) -> None:
        """``mask_scale="cell"``: divide every cell's masks by their largest value (a cell whose masks
        are all 0 is left alone), so each cell's largest mask is 1 after every proximal step.

        Why (measured, issue 18): a cell's output reaches the next cells only through
        ``ReLU -> conv -> BatchNorm`` preprocesses, which in train mode (``bn="train"``) cancel a
        common factor of the cell's masks. The data and adversarial terms therefore do not resist a
        uniform shrink of a cell's masks, while the L1 prox shrinks them all by ``lr * lambda`` per
        step: the masks of a cell fall in lockstep and reach 0 together. On a 5-cell digits stack
        (cpu-small GAL, 30 FISTA steps) lambda 0.02 / 0.05 / 0.1 / 0.2 left every mask of cells 1-4
        at 0.73 / 0.32 / 0.00 / 0.00 (+-0.04): 0, 0, 15 and 20 of 20 nodes removed. Fixing the unit
        of each cell's masks removes that free direction; the prox then removes the masks that are
        small *relative to the cell's strongest* node, one by one as lambda grows (0, 1, 6, 14 of 20
        at lambda 0.1, 0.2, 0.5, 1.0 on the same stack). The paper's Eq. 7 penalises ``||m||_1`` in
        absolute units, which is what GAL's own ResNet block masks (before a residual add, not
        followed by BatchNorm) can use; ``mask_scale="free"`` keeps that.

        The last cell feeds global pooling and the linear classifier, where a common factor is not
        cancelled: it is moved into ``classifier.weight`` (multiplied by the same max), which leaves
        the logits unchanged up to the cell's unmasked input edges. A rescaled cell's FISTA momentum
        restarts (:meth:`MaskFISTA.rescale`).
        """
        last = len(self.masks) - 1
        for k, m in enumerate(self.masks):
            mx = float(m.detach().max())
            if mx <= 0.0 or mx == 1.0:
                continue
            self.fista.rescale(k, mx)
            if k == last:
                self.G.classifier.weight.mul_(mx)

    def _mask_grads_usable(self) -> bool:
        """False only in fp16 when the loss scaler found non-finite gradients (it skipped the step)."""
        if self.runtime.precision != "fp16":
            return True
        return all(bool(torch.isfinite(m.grad).all()) for m in self.masks if m.grad is not None)

    def run(self, epochs: int | None = None, start_epoch: int = 0) -> GALResult:
        """Train for ``epochs`` (default ``settings.epochs``) GAL epochs on the runtime's device;
        returns the masks. B, G and D end on the CPU (float32, default memory format)."""
        s, rt = self.s, self.runtime
        epochs = s.epochs if epochs is None else epochs
        self.to_runtime()
        self.B.eval()
        history: list[dict[str, Any]] = []
        self.progress(self.phase_name, 0, epochs, {"lambda": s.lam})
        for e in range(epochs):
            self._set_lr(start_epoch + e)
            self.train_mode()
            self.D.train()
            sums = {"d_loss": 0.0, "adv": 0.0, "data": 0.0, "l1": 0.0, "objective": 0.0}
            for _ in range(self.g_steps_per_epoch):
                for _k in range(s.n_critic):
                    sums["d_loss"] += self.d_step(*rt.to_device(self.critic_data.next())) / s.n_critic
                for k, v in self.g_step(*rt.to_device(self.data.next())).items():
                    sums[k] += v
            n = self.g_steps_per_epoch
            masks = mask_values(self.G)
            rec = {"phase": self.phase_name, "epoch": start_epoch + e + 1, "lambda": s.lam,
                   **{k: v / n for k, v in sums.items()}, "g_steps": self.g_steps, "d_steps": self.d_steps,
                   "mask_updates": self.fista.steps,
                   "zero_masks": sum(1 for cell, row in zip(self.G.cells, masks) for i, v in enumerate(row)
                                     if cell.spec.nodes[i] is not None and v <= 0.0),
                   "masks": masks}
            history.append(rec)
            self.log(**rec)
            self.progress(self.phase_name, e + 1, epochs, {k: rec[k] for k in ("data", "d_loss", "zero_masks")})
        if s.recalibrate_bn and s.bn == "train":  # with bn="eval" the running statistics never moved
            self.recalibrate_bn()
        self.G.eval()
        self.to_cpu()
        return GALResult(masks=mask_values(self.G), history=history, d_steps=self.d_steps, g_steps=self.g_steps,
                         mask_updates=self.fista.steps)
