"""DARTS architecture steps on a train/val split (Liu et al., DARTS, ICLR 2019, §2.3, Eq. 6-8;
docs/algorithms/darts-space.md).

``Architect.step(x_train, y_train, x_val, y_val, eta)`` moves the architecture tensors of a
:class:`~compress.strategies.darts.search.SearchNetwork` by one Adam step on:

* first order: ``grad_alpha L_val(w, alpha)``;
* second order (Eq. 7-8): ``grad_alpha L_val(w', alpha) - eta * H v`` with the one-step unrolled
  weights ``w' = w - eta * (grad_w L_train(w, alpha) + wd * w + mu * momentum_buffer)``,
  ``v = grad_w' L_val(w', alpha)`` and the finite-difference Hessian-vector product
  ``H v ~ [grad_alpha L_train(w + R v) - grad_alpha L_train(w - R v)] / (2R)``, ``R = 0.01 / ||v||``.

The first-order step goes through the runtime (``runtime.optimize``: backward, fp16 loss scaling,
Adam step) with the weights frozen for its forward, so only alpha receives gradients and the
weights' ``.grad`` fields are never touched. The second-order step keeps its own
:func:`torch.autograd.grad` calls (the unrolled weights are not parameters of any optimiser; the
one place outside the runtime that differentiates) and runs its forwards under the runtime's
autocast without loss scaling. Every alpha starts the step with a zero gradient, so an alpha the
loss does not reach still takes Adam's weight-decay step. BatchNorm running statistics are updated
by these forwards exactly as in the reference (the supernet is in train mode).

Issue 18 additions (both off by default, so the reference behaviour is unchanged):

* **Architecture LR matched to the number of steps** (``reference_steps``). Adam moves every
  logit by at most about ``lr`` per step whatever the gradient's scale (Kingma & Ba 2015, §2.1),
  so alpha can travel at most ``lr * steps`` in a search. DARTS' CIFAR-10 search (§3.1.1: 50
  epochs of 25,000 / 64 = 391 steps, lr 3e-4) allows 19,550 steps, about 5.9 logit units; the
  ``cpu-small`` digits search makes 5 x 10 = 50 steps, at most 0.015 units, so alpha stays
  uniform. Measured (eg-nas ``alpha_update="gradient"`` at ``cpu-small`` on digits, seed 0,
  ``max_steps_per_epoch=3``: 15 steps): the mean per-edge entropy stays 1.9459 = ln 7 at every
  epoch; with ``reference_steps=19_550`` (lr 0.391) it goes 1.7379, 1.6286, 1.4961, 1.4272,
  1.4388 over the 5 updating epochs. With ``reference_steps=R``
  the step size becomes ``lr * R / N`` once :meth:`plan` is told the search's ``N`` updates, so
  the search keeps the paper's total travel ``lr * R`` -- the paper's method, with its step
  size expressed per search rather than per step. Chosen over more steps (the CPU cost) and
  over a schedule change (Adam has none in DARTS).
* **Expected-latency term** (``latency_term``): the architecture loss is
  ``L_val + latency_term(alpha)`` (ProxylessNAS §3.3, FBNet §3.2; :mod:`.latency`); in the second
  order the term enters ``L_val(w', alpha)`` (it does not depend on w, so the Hessian part is unchanged).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from compress.errors import ConfigError
from compress.strategies.darts.latency import LatencyTerm
from compress.strategies.darts.search import SearchNetwork
from compress.strategies.darts.supernet_search import ArchUpdater
from compress.training.runtime import Runtime

__all__ = ["Architect"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def _frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """``requires_grad=False`` on ``params`` inside the block, then their flags as they were."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class Architect(ArchUpdater):
    """Adam on the architecture tensors of ``model`` (DARTS defaults: lr 3e-4, betas (0.5, 0.999), wd 1e-3).

    The per-step architecture updater of :class:`~compress.strategies.darts.supernet_search.SupernetSearch`.

    Args:
        model: the supernet; its architecture tensors get ``requires_grad=True``.
        lr, betas, weight_decay: Adam settings for alpha.
        second_order: unrolled (Eq. 7-8) instead of first-order gradients.
        w_momentum, w_weight_decay: the weight optimiser's momentum / weight decay, used by the
            unrolled step (``w_optimizer`` supplies the momentum buffers).
        loss_fn: ``loss_fn(logits, y) -> scalar``; cross-entropy by default.
        runtime: device and precision of the forwards (default: CPU fp32); the model must be
            on its device.
        reference_steps: the number of alpha steps ``lr`` is meant for (DARTS CIFAR-10: 19,550);
            :meth:`plan` then scales the step to ``lr * reference_steps / planned_steps``
            (None: ``lr`` as given, the reference behaviour).
        latency_term: ``(alphas_normal, alphas_reduce) -> 0-dim tensor`` added to the
            architecture loss (:class:`~compress.strategies.darts.latency.LatencyTerm`; None: none).

    Attributes:
        effective_lr: the Adam step size in use (``lr`` until :meth:`plan` rescales it).

    Raises:
        ConfigError: non-positive lr or reference_steps.
    """

    per_step = True
    alpha_requires_grad = True

    def __init__(self, model: SearchNetwork, *, lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999),
                 weight_decay: float = 1e-3, second_order: bool = False, w_momentum: float = 0.9,
                 w_weight_decay: float = 3e-4, loss_fn: LossFn = F.cross_entropy,
                 runtime: Runtime | None = None, reference_steps: int | None = None,
                 latency_term: LatencyTerm | None = None) -> None:
        if lr <= 0:
            raise ConfigError(f"architect lr must be > 0, got {lr}.")
        if reference_steps is not None and (isinstance(reference_steps, bool) or int(reference_steps) < 1):
            raise ConfigError(f"architect reference_steps must be None or an int >= 1, got {reference_steps!r}.")
        self.model = model
        self.lr = float(lr)
        self.effective_lr = float(lr)
        self.reference_steps = None if reference_steps is None else int(reference_steps)
        self.latency_term = latency_term
        self.second_order = second_order
        self.w_momentum = w_momentum
        self.w_weight_decay = w_weight_decay
        self.loss_fn = loss_fn
        self.runtime = runtime or Runtime()
        model.set_arch_requires_grad(True)
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=betas, weight_decay=weight_decay)

    def plan(self, updates: int) -> dict[str, Any]:
        """Told the number of alpha steps of the whole search: with ``reference_steps`` set, the Adam
        step becomes ``lr * reference_steps / updates``. Returns what the search records."""
        if self.reference_steps is not None and updates > 0:
            self.effective_lr = self.lr * self.reference_steps / int(updates)
            for group in self.optimizer.param_groups:
                group["lr"] = self.effective_lr
        return {"arch_updates": int(updates), "arch_lr": self.lr, "arch_lr_effective": self.effective_lr,
                "arch_reference_steps": self.reference_steps}

    def _latency(self) -> torch.Tensor | None:
        if self.latency_term is None:
            return None
        return self.latency_term(self.model.alphas_normal, self.model.alphas_reduce)

    def state_tensors(self) -> dict[str, Any]:
        return {"arch_opt": self.optimizer.state_dict()}

    def load_state_tensors(self, tensors: Mapping[str, Any]) -> None:
        if "arch_opt" in tensors:
            self.optimizer.load_state_dict(tensors["arch_opt"])

    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
             eta: float, w_optimizer: torch.optim.Optimizer | None = None) -> float:
        """One architecture update; returns the validation loss (cross-entropy, without the latency
        term) before the step (float).

        Args:
            x_train, y_train: a minibatch of the weight split (used only by the second order).
            x_val, y_val: a minibatch of the architecture ("valid") split.
            eta: the weight optimiser's current learning rate (second order).
            w_optimizer: the weight SGD optimiser (its momentum buffers enter the unrolled step).
        """
        arch = self.model.arch_parameters()
        if self.second_order:
            loss, grads = self._unrolled_grads(x_train, y_train, x_val, y_val, eta, w_optimizer)
            for a, g in zip(arch, grads):
                a.grad = g.detach().clone()
            self.optimizer.step()  # unscaled autograd.grad gradients: no loss-scaler step
        else:
            for a in arch:
                a.grad = torch.zeros_like(a)
            with _frozen(list(self.model.weights())):
                with self.runtime.autocast():
                    loss = self.loss_fn(self.model(x_val), y_val)
                lat = self._latency()
                self.runtime.optimize(loss if lat is None else loss + lat.to(loss.dtype), self.optimizer,
                                      zero_grad=False)
        for a in arch:
            a.grad = None
        return float(loss.detach())

    def _unrolled_grads(self, x_train, y_train, x_val, y_val, eta, w_optimizer):
        model = self.model
        names = [n for n, _ in model.named_parameters()]
        params = [p for _, p in model.named_parameters()]
        buffers = dict(model.named_buffers())
        # w' = w - eta * (g + wd * w + mu * buf)
        with self.runtime.autocast():
            train_loss = self.loss_fn(model(x_train), y_train)
        g_w = torch.autograd.grad(train_loss, params, allow_unused=True)
        unrolled = {}
        for n, p, g in zip(names, params, g_w):
            d = (torch.zeros_like(p) if g is None else g) + self.w_weight_decay * p.detach()
            if w_optimizer is not None:
                buf = w_optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    d = d + self.w_momentum * buf
            unrolled[n] = (p.detach() - eta * d).requires_grad_(True)
        with self.runtime.autocast():
            val_loss = self.loss_fn(functional_call(model, ({**unrolled, **buffers},), (x_val,)), y_val)
        arch = model.arch_parameters()
        lat = self._latency()
        objective = val_loss if lat is None else val_loss + lat.to(val_loss.dtype)
        grads = torch.autograd.grad(objective, arch + [unrolled[n] for n in names], allow_unused=True)
        d_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(arch, grads[: len(arch)])]
        v = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[len(arch):])]
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        r = 0.01 / float(norm.clamp_min(1e-12))

        def grad_alpha_at(sign: float) -> list[torch.Tensor]:
            shifted = {n: p.detach() + sign * r * vi for n, p, vi in zip(names, params, v)}
            with self.runtime.autocast():
                loss = self.loss_fn(functional_call(model, ({**shifted, **buffers},), (x_train,)), y_train)
            gs = torch.autograd.grad(loss, arch, allow_unused=True)
            return [torch.zeros_like(a) if g is None else g for a, g in zip(arch, gs)]

        g_pos, g_neg = grad_alpha_at(+1.0), grad_alpha_at(-1.0)
        hv = [(gp - gn) / (2 * r) for gp, gn in zip(g_pos, g_neg)]
        return val_loss, [da - eta * h for da, h in zip(d_alpha, hv)]
