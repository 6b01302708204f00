"""Stage 1 of DARTS-GAL: a DARTS search of the normal and reduction cells on the user's data
(paper §3.1, Eq. 1-3; DARTS Liu et al. 2019 §2; ALGORITHMS.md §0.3-0.4).

The training split is divided (seeded) into a *weight* part and an *architecture* part
(``train_portion``). Every step: an architecture step (first order: Adam on ``grad_alpha L_val``;
second order: the unrolled gradient of DARTS Eq. 7-8) on a batch of the architecture part, then an
SGD step (cosine learning rate per epoch, gradient clipping) on the weights with a batch of the
weight part. PC-DARTS partial channels / edge normalisation / alpha warm-up are options.

Checkpoints after every epoch (tensors first, then the JSON naming them, atomically, through the
shared :class:`~compress.strategies._parts.checkpoint.CheckpointStore`), so a killed search resumes
bit-identically: loaders are reseeded per epoch from (run seed, epoch), and the weight /
architecture optimiser states and the global RNG states are restored.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from compress.errors import DataError
from compress.strategies._parts.checkpoint import CheckpointStore
from compress.strategies._parts.training import evaluate
from compress.strategies.darts.architect import Architect
from compress.strategies.darts.genotype import Genotype, alpha_entropy
from compress.strategies.darts.search import SearchNetwork
from compress.strategies.darts_gal.config import DartsGalConfig

__all__ = ["derive_seed", "DartsSearch", "SearchOutcome", "split_train"]


def derive_seed(seed: int, *keys: Any) -> int:
    """A stable 31-bit seed from the run seed and keys (e.g. ``("search-loader", epoch)``)."""
    h = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def split_train(ds: Dataset, portion: float, seed: int) -> tuple[Subset, Subset]:
    """Seeded split into (weight part, architecture part).

    Raises:
        DataError: fewer than 4 samples.
    """
    n = len(ds)  # type: ignore[arg-type]
    if n < 4:
        raise DataError(f"darts-gal needs at least 4 training samples to split for the search, got {n}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "split"))).tolist()
    k = min(max(1, int(round(portion * n))), n - 1)
    return Subset(ds, perm[:k]), Subset(ds, perm[k:])


class _Cycle:
    """Persistent seeded iterator over a shuffling loader (reseeded per epoch, cycled when exhausted)."""

    def __init__(self, ds: Dataset, batch_size: int) -> None:
        self.gen = torch.Generator()
        self.loader = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=self.gen, num_workers=0)
        self.it: Iterator | None = None

    def reseed(self, seed: int) -> None:
        self.gen.manual_seed(seed)
        self.it = iter(self.loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.it is None:
            self.it = iter(self.loader)
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        return batch[0], batch[1]


@dataclass
class SearchOutcome:
    """The searched genotype, the final architecture logits and per-epoch facts."""

    genotype: Genotype
    alphas_normal: torch.Tensor
    alphas_reduce: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    resumed_from_epoch: int = 0


class DartsSearch:
    """The DARTS search loop with per-epoch checkpoints.

    Args:
        cfg: the strategy config (search fields).
        train_ds: training dataset of ``(x, y)`` (split inside).
        val_loader: loader for the per-epoch supernet accuracy (may be None).
        num_classes, input_shape: task sizes ``K`` and ``(C, H, W)``.
        seed: run seed.
        ckpt_dir: checkpoint folder (None: no checkpoints).
        progress: ``progress(phase, done, total, info)``; log: ``log(**record)`` per epoch.
    """

    def __init__(self, cfg: DartsGalConfig, train_ds: Dataset, val_loader: DataLoader | None, num_classes: int,
                 input_shape: tuple[int, int, int], seed: int, *, ckpt_dir: Path | None = None,
                 config_hash: str = "", progress: Callable[[str, int, int | None, dict], None] | None = None,
                 log: Callable[..., None] | None = None) -> None:
        self.cfg, self.seed = cfg, int(seed)
        self.val_loader = val_loader
        self.progress = progress or (lambda *a, **k: None)
        self.log = log or (lambda **k: None)
        self.ckpt_dir = ckpt_dir
        self.store = CheckpointStore(ckpt_dir)
        self.hash = config_hash
        w_part, a_part = split_train(train_ds, cfg.train_portion, self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "supernet"))
            self.model = SearchNetwork(
                cfg.search_C, num_classes, cfg.search_layers, primitives="darts", in_channels=input_shape[0],
                partial_channels=cfg.partial_channels, edge_norm=cfg.edge_norm, pool_bn=True,
                stem_stride=cfg.search_stem_stride,
                generator=torch.Generator().manual_seed(derive_seed(self.seed, "alpha")),
            )
        self.w_opt = torch.optim.SGD(self.model.weights(), lr=cfg.search_lr, momentum=cfg.search_momentum,
                                     weight_decay=cfg.search_weight_decay)
        self.architect = Architect(self.model, lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay,
                                   second_order=cfg.second_order, w_momentum=cfg.search_momentum,
                                   w_weight_decay=cfg.search_weight_decay)
        self.w_iter = _Cycle(w_part, cfg.search_batch_size)
        self.a_iter = _Cycle(a_part, cfg.search_batch_size)
        self.history: list[dict[str, Any]] = []
        self.wall = 0.0

    # ------------------------------------------------------------------ checkpoints
    def save(self, epoch_done: int) -> None:
        """Commit the state after ``epoch_done`` epochs (``search.<epoch>.pt``, then ``search.json``)."""
        self.store.commit("search", {"epoch_done": epoch_done, "history": self.history, "wall_s": self.wall},
                          {"weights": self.model.state_dict(), "arch": self.model.arch_state(),
                           "w_opt": self.w_opt.state_dict(), "arch_opt": self.architect.optimizer.state_dict()},
                          key=self.hash, tag=epoch_done)

    def try_resume(self) -> int:
        """Load a checkpoint written with the same hash; returns the epochs done (0 if none).

        Raises:
            CheckpointError: the checkpoint is corrupt or truncated.
        """
        restored = self.store.load("search", key=self.hash)
        if restored is None:
            return 0
        state, blob = restored.state, restored.tensors
        self.model.load_state_dict(blob["weights"])
        self.model.load_arch_state(blob["arch"])
        self.w_opt.load_state_dict(blob["w_opt"])
        self.architect.optimizer.load_state_dict(blob["arch_opt"])
        restored.restore_rng()
        self.history = list(state["history"])
        self.wall = float(state.get("wall_s", 0.0))
        return int(state["epoch_done"])

    # ------------------------------------------------------------------ loop
    def _lr(self, t: int) -> float:
        c = self.cfg
        return c.search_lr_min + 0.5 * (c.search_lr - c.search_lr_min) * (1 + math.cos(math.pi * t / c.search_epochs))

    def train_epoch(self, t: int) -> dict[str, Any]:
        """One epoch: (architecture step, weight step) per minibatch."""
        cfg = self.cfg
        lr = self._lr(t)
        for g in self.w_opt.param_groups:
            g["lr"] = lr
        self.w_iter.reseed(derive_seed(self.seed, "w-loader", t))
        self.a_iter.reseed(derive_seed(self.seed, "a-loader", t))
        steps = len(self.w_iter.loader)
        if cfg.search_max_steps_per_epoch is not None:
            steps = min(steps, cfg.search_max_steps_per_epoch)
        update_alpha = t >= cfg.arch_warmup_epochs
        self.model.train()
        loss_sum = correct = seen = val_loss = 0.0
        for _ in range(steps):
            x, y = self.w_iter.next()
            if update_alpha:
                xv, yv = self.a_iter.next()
                val_loss += self.architect.step(x, y, xv, yv, eta=lr, w_optimizer=self.w_opt)
            self.model.set_arch_requires_grad(False)
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.w_opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(list(self.model.weights()), cfg.grad_clip)
            self.w_opt.step()
            self.model.set_arch_requires_grad(True)
            loss_sum += float(loss.detach()) * len(y)
            correct += float((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        return {"lr": lr, "steps": steps, "alpha_updated": update_alpha, "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1), "arch_val_loss": (val_loss / steps) if update_alpha else None}

    def run(self, resume: bool = True) -> SearchOutcome:
        cfg = self.cfg
        done = self.try_resume() if resume else 0
        for rec in self.history:  # restored epochs belong in the run history as they were logged
            self.log(**rec)
        T = cfg.search_epochs
        self.progress("search", done, T, {"resumed": done} if done else {})
        for t in range(done, T):
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"phase": "search", "epoch": t + 1, **self.train_epoch(t)}
            rec["val_acc"] = evaluate(self.model, self.val_loader, cfg.search_val_batches)
            rec["alpha_entropy_normal"] = alpha_entropy(self.model.alphas_normal)
            rec["alpha_entropy_reduce"] = alpha_entropy(self.model.alphas_reduce)
            rec["genotype"] = self.model.genotype().to_dict()
            rec["wall_s"] = time.perf_counter() - t0
            self.wall += rec["wall_s"]
            self.history.append(rec)
            self.log(**rec)
            self.save(t + 1)
            self.progress("search", t + 1, T, {k: rec[k] for k in ("train_acc", "val_acc") if rec.get(k) is not None})
        return SearchOutcome(genotype=self.model.genotype(), alphas_normal=self.model.alphas_normal.detach().clone(),
                             alphas_reduce=self.model.alphas_reduce.detach().clone(), history=self.history,
                             wall_s=self.wall, resumed_from_epoch=done)
