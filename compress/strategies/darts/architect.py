"""DARTS architecture steps on a train/val split (Liu et al., DARTS, ICLR 2019, §2.3, Eq. 6-8;
ALGORITHMS.md §0.3).

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

    Raises:
        ConfigError: non-positive lr.
    """

    per_step = True
    alpha_requires_grad = True

    def __init__(self, model: SearchNetwork, *, lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999),
                 weight_decay: float = 1e-3, second_order: bool = False, w_momentum: float = 0.9,
                 w_weight_decay: float = 3e-4, loss_fn: LossFn = F.cross_entropy,
                 runtime: Runtime | None = None) -> None:
        if lr <= 0:
            raise ConfigError(f"architect lr must be > 0, got {lr}.")
        self.model = model
        self.second_order = second_order
        self.w_momentum = w_momentum
        self.w_weight_decay = w_weight_decay
        self.loss_fn = loss_fn
        self.runtime = runtime or Runtime()
        model.set_arch_requires_grad(True)
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=betas, weight_decay=weight_decay)

    def state_tensors(self) -> dict[str, Any]:
        return {"arch_opt": self.optimizer.state_dict()}

    def load_state_tensors(self, tensors: Mapping[str, Any]) -> None:
        if "arch_opt" in tensors:
            self.optimizer.load_state_dict(tensors["arch_opt"])

    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
             eta: float, w_optimizer: torch.optim.Optimizer | None = None) -> float:
        """One architecture update; returns the validation loss before the step (float).

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
                self.runtime.optimize(loss, self.optimizer, zero_grad=False)
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
        grads = torch.autograd.grad(val_loss, arch + [unrolled[n] for n in names], allow_unused=True)
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
