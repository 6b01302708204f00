"""Channel-space attention ``f_a`` (SEArch Eq. 1) and the imitation error ``R_inner`` (Eq. 2).

Eq. 1: ``f_a(v̂_q) = Atten(v_i, v̂_q, v̂_q)`` -- query = the student's map, key = value = the
teacher's map -- "inspired by the target-aware transformer (Lin et al. 2022) but in channel
space": every student channel attends over the teacher channels and takes a convex combination
of them, so the projected teacher map has the student's channel count.

Default (docs/algorithms/grow.md, choice 1, ``attention="dot"``), per sample::

    S = h_v  flattened to (C_s, HW)        T = h^ flattened to (C_t, HW)
    A = softmax_over_teacher_channels(S T^T / sqrt(HW))          (C_s, C_t), rows sum to 1
    f_a(h^) = A T  reshaped to (C_s, H, W)

Parameter-free; gradients reach the student through the query (``A`` depends on ``S``); the
teacher map is a constant. Variant ``attention="proj"``: learnable 1x1 convolutions on the
query (``C_s -> C_s``) and key (``C_t -> C_t``), initialised to the identity (TaT-like
regressor); their weights live in the loss, not in the student, and are trained with it.

Eq. 2: ``R_inner(v) = || v - f_a(v̂_q) ||_2^2``. ``r_norm="mean"`` (default, docs/algorithms/grow.md, choice 3) averages the squared error over ``C x H x W`` so nodes of different sizes are
comparable in Eq. 5; ``r_norm="sum"`` is the literal squared norm. Both are then averaged over
the batch. When a student node's spatial size differs from its teacher node's (non power-of-two
ratios), the teacher map is average-pooled to the student's size first (adaptive pooling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["channel_attention", "attention_weights", "r_inner", "match_size", "NodeAttention", "ATTENTIONS", "R_NORMS"]

ATTENTIONS = ("dot", "proj")
R_NORMS = ("mean", "sum")


def attention_weights(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Channel attention weights of Eq. 1.

    Args:
        query: student map ``(B, C_s, H, W)``.
        key: teacher map ``(B, C_t, H, W)`` (same ``H, W``).
    Returns:
        ``A`` of shape ``(B, C_s, C_t)``; every row is a softmax over the teacher channels.
    """
    b, cs, h, w = query.shape
    q = query.reshape(b, cs, h * w)
    k = key.reshape(b, key.shape[1], h * w)
    logits = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(h * w)
    return torch.softmax(logits, dim=-1)


def channel_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None = None) -> torch.Tensor:
    """``f_a`` of Eq. 1: the teacher map projected onto the student's channels.

    Args:
        query: student map ``(B, C_s, H, W)``.
        key: teacher map ``(B, C_t, H, W)``.
        value: defaults to ``key`` (the paper's ``Atten(v_i, v̂, v̂)``).
    Returns:
        ``(B, C_s, H, W)``; each output element is a convex combination of the teacher channels at
        the same position.
    """
    value = key if value is None else value
    a = attention_weights(query, key)
    b, ct, h, w = value.shape
    out = torch.bmm(a, value.reshape(b, ct, h * w))
    return out.reshape(b, a.shape[1], h, w)


def r_inner(student: torch.Tensor, teacher: torch.Tensor, *, norm: str = "mean",
            projected: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample ``R_inner`` of Eq. 2.

    Args:
        student: ``(B, C_s, H, W)``.
        teacher: ``(B, C_t, H_t, W_t)``; pooled to ``(H, W)`` when the sizes differ.
        norm: ``"mean"`` (per-element mean) or ``"sum"`` (literal squared L2 norm).
        projected: precomputed ``f_a(teacher)`` (e.g. from :class:`NodeAttention`).
    Returns:
        ``(B,)`` errors (average them for the batch value).
    """
    if projected is None:
        teacher = match_size(teacher, student.shape[-2:])
        projected = channel_attention(student, teacher)
    sq = (student - projected).pow(2).flatten(1)
    return sq.mean(dim=1) if norm == "mean" else sq.sum(dim=1)


def match_size(teacher: torch.Tensor, hw) -> torch.Tensor:
    """Average-pool ``teacher`` ``(B, C, H_t, W_t)`` to spatial size ``hw`` if it differs."""
    if tuple(teacher.shape[-2:]) != tuple(hw):
        return F.adaptive_avg_pool2d(teacher, tuple(int(v) for v in hw))
    return teacher


class NodeAttention(nn.Module):
    """``f_a`` for one student node: ``"dot"`` (parameter-free) or ``"proj"`` (learnable 1x1
    query/key projections, identity-initialised). Input/output as :func:`channel_attention`."""

    def __init__(self, c_student: int, c_teacher: int, kind: str = "dot") -> None:
        super().__init__()
        self.kind = kind
        if kind == "proj":
            self.q = nn.Conv2d(c_student, c_student, 1, bias=False)
            self.k = nn.Conv2d(c_teacher, c_teacher, 1, bias=False)
            with torch.no_grad():
                self.q.weight.copy_(torch.eye(c_student).view(c_student, c_student, 1, 1))
                self.k.weight.copy_(torch.eye(c_teacher).view(c_teacher, c_teacher, 1, 1))
        else:
            self.q = self.k = None

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = match_size(teacher, student.shape[-2:])
        if self.q is None:
            return channel_attention(student, teacher)
        a = attention_weights(self.q(student), self.k(teacher))
        b, ct, h, w = teacher.shape
        return torch.bmm(a, teacher.reshape(b, ct, h * w)).reshape(b, a.shape[1], h, w)
