"""The GP primitive set of evolved channel-pruning metrics: operands, operators, evaluation limits.

Source: Liu et al., "Evolving transferable neural pruning functions", GECCO'22 (paper
001): Sec. 3.1 (function design space, uni-tree), Tables 1, 2 and 6 (operands and
operators), supplementary Sec. 9.2 (SOAP) and ``docs/algorithms/gp-prune.md``.

A pruning metric is a ``deap.gp`` expression tree over the six operands of Table 1.
Every value flowing through a tree carries a leading **channel axis**: the C channels of
one layer are scored in a single tree call (no Python loop over channels).

Operands (the ``deap`` argument names, in call order)
----------------------------------------------------
``W``  ``(1, c_out, c_in, kh, kw)``  whole layer weight, shared by all channels (axis 0 = 1,
       broadcast against C);
``WI`` ``(C, c_in, kh, kw)``         each channel's incoming filter;
``B``  ``(C, 4)``                    BN ``[gamma, beta, running_mean, running_var]``;
``F``  ``(C, N, D)``                 the channel's N feature maps, flattened (D = H * W);
``Fp`` ``(C, N_k, D)``               F+ : the maps of class k;
``Fm`` ``(C, N - N_k, D)``           F- : the maps of the other classes.

Value kinds (by ``rank = ndim - 1``, i.e. ignoring the channel axis): rank 0 "scalar"
``(C,)``, rank 1 "vector" ``(C, D)``, rank 2 "matrix" ``(C, N, D)`` / ``(C, D, D)``,
rank >= 3 "tensor" (filters ``(C, c_in, kh, kw)``, the layer ``(1, c_out, c_in, kh, kw)``).
Matrix operators (matmul, inv, tran, tr, rbf, geo) read a rank >= 3 tensor through its
**matrix view** ``(C, s1, s2 * s3 * ...)``: the layer W becomes the ``c_out x (c_in kh kw)``
matrix of flattened filters, a filter ``WI`` the ``c_in x (kh kw)`` matrix of its kernels.

Untyped primitive set (docs/algorithms/gp-prune.md, choice 1)
--------------------------------------------
:data:`PSET` is an untyped ``gp.PrimitiveSet`` of arity 6 (``ARG0..ARG5`` renamed
``W, WI, B, F, Fp, Fm``) -- the paper's space, the one the reference code uses, and the
one ``gp.genHalfAndHalf`` / ``gp.mutUniform`` / ``gp.cxOnePoint`` work on directly. Tree
strings therefore read like the paper: ``"sum_g(abs(WI))"``. Random trees that do not
reduce to one scalar per channel (or that produce inf/NaN) are rejected by
:func:`~compress.evolution.trees.is_valid`, the validity test of Sec. 3.4 and docs/algorithms/gp-prune.md, choice 2. There are no constant terminals
(Table 1 has none).

Operators (Table 6) and the semantics chosen here
-------------------------------------------------
* ``add, sub, mul, div`` -- elementwise, with the paper's mismatch rule (Sec. 9 and docs/algorithms/gp-prune.md, choice 1):
  ranks are aligned on the channel axis and right-aligned (a lower-rank value gets
  singleton axes inserted after the channel axis, so a scalar broadcasts everywhere and
  a vector ``(C, D)`` broadcasts over the samples of ``(C, N, D)``); axes of size 1
  broadcast; axes of different sizes > 1 are **padded** to the larger size with 0 for
  ``+/-`` and with 1 for ``x/÷``. (The reference code truncates instead; the brief and
  the paper ask for padding.) ``div`` is plain division: a zero denominator gives inf/NaN
  and the tree is invalid -- SOAP and xi* put explicit ridges in their denominators.
* ``abs, sq`` -- elementwise. ``sqrt`` is the protected square root ``sqrt(|x|)`` (Koza's
  convention): identical to sqrt on the non-negative arguments of every SOAP / xi tree,
  and it keeps random trees valid instead of turning them into NaN.
* ``ridge`` -- ``+ 1e-4`` (the reference's rho1); on a square matrix ``+ 1e-4 I`` (used
  before inversion, DI). ``ridge5`` -- the same with ``0.05`` (the reference's rho5, used
  in the SymDiv and xi* denominators). Any other value gets the constant added
  elementwise (a vector is read as ``diag(v)``, for which ``diag(v) + rho I = diag(v + rho)``).
* ``tr`` -- trace; scalar -> itself, vector -> ``sum(v)`` (= tr diag(v)), matrix ->
  ``sum_i M_ii`` (rectangular: the main diagonal), tensor -> trace of its matrix view.
  Always returns a scalar.
* ``matmul`` -- per channel; scalar operand -> elementwise product; vector x vector ->
  inner product ``(C,)``; vector ``(C, K)`` x matrix ``(C, K, E)`` -> ``(C, E)`` (row
  vector); matrix ``(C, M, K)`` x vector ``(C, K)`` -> ``(C, M)`` (column vector);
  matrix x matrix -> ``(C, M, E)``. A mismatched inner dimension is zero-padded
  (equivalently: truncated to the common length).
* ``inv`` -- scalar -> ``1/x``; vector -> ``1/v`` (inverse of ``diag(v)``); square matrix
  -> ``torch.linalg.inv`` (a singular matrix makes the tree invalid); rectangular matrix
  -> Moore-Penrose pseudo-inverse (computed through the smaller Gram matrix).
* ``dot`` -- inner product of all entries: ``sum(a * b)`` per channel after the alignment
  rule with zero padding; always a scalar.
* ``outer`` (outprod) -- both operands flattened per channel: ``(C, n) x (C, m) ->
  (C, n, m)``; with a scalar operand it is the elementwise product.
* ``tran`` -- transpose of a matrix (of the matrix view of a tensor); identity on scalars
  and vectors (``matmul`` decides a vector's orientation by its position).
* ``sum/prod/mean/std/var/count`` with ``_g``: flatten everything per channel, one scalar
  per channel; with ``_s``: reduce along the **sample axis** = the first axis after the
  channel axis (``mean_s(F)`` is the average map ``f-bar (C, D)``; ``mean_s(W)`` the mean
  filter; on a vector it reduces its entries; on a scalar sum/mean/prod are the identity,
  std/var are 0 and count is 1). ``std``/``var`` are population statistics (ddof = 0,
  gp-prune.md choice 9). ``count_s`` is the number of samples (N for F, N_k for Fp), ``count_g`` the
  number of entries.
* ``rbf(a, b)`` -- Gaussian kernel matrix between two sets of samples (rows of the matrix
  view; a vector is one sample, a scalar one 1-d sample): ``K_ij = exp(-||a_i - b_j||^2 / D)``
  with D the feature length (bandwidth ``2 sigma^2 = D``, i.e. ``gamma = 1/D``: the
  exponent is the per-pixel mean squared difference). A fixed, data-independent bandwidth
  is required so that the three kernel matrices of MMD (``rbf(F+,F+)``, ``rbf(F-,F-)``,
  ``rbf(F+,F-)``) use the *same* kernel -- a per-call median heuristic would not. A
  feature-length mismatch is zero-padded. Between two single samples (scalars/vectors)
  the 1 x 1 kernel matrix is returned as the scalar kernel value.
* ``geo(x)`` -- FPGM's approximation of the geometric median (gp-prune.md, choice 10): the existing row
  of the matrix view with the smallest sum of L2 distances to all rows (first one on
  ties), reshaped like one sample of ``x``; ``geo(W)`` is a filter ``(1, c_in, kh, kw)``.
  On a vector it returns the entry minimising the summed absolute differences (a median
  entry); identity on scalars.
* ``slice(x)`` -- the tensor slicer returns the first entry of ``x`` (row-major, per
  channel), always a scalar; in particular ``slice(B) = B[:, 0] = gamma``, so
  ``abs(slice(B))`` is the BN-scale criterion of Sec. 9.2 (the paper uses the slicer only
  for this). Identity on scalars.

Evaluation limits: every operator checks the size of its result (and the cost of
matmul / inversion) against :data:`LIMITS` and raises :class:`MetricError` instead of
exhausting memory; this replaces the reference's 10-second wall-clock limit (gp-prune.md, choice 2) with
a deterministic one. A tree that is valid on the small :func:`~compress.evolution.trees.validity_operands` can still
exceed the limits on real layers (e.g. ``outer(F, F)`` with N = 1000): scoring then
raises :class:`MetricError` and the caller should treat the tree as failed (fitness 0,
gp-prune.md choice 4).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from deap import gp

from compress.errors import CompressError

__all__ = [
    "ARG_NAMES",
    "ChannelOperands",
    "EvalLimits",
    "LABEL_ARGS",
    "LIMITS",
    "MAP_ARGS",
    "MAX_TREE_HEIGHT",
    "MetricError",
    "PRIMITIVE_NAMES",
    "PSET",
    "RIDGE",
    "RIDGE5",
    "VALIDITY_LIMITS",
    "evaluation_limits",
    "make_pset",
]

RIDGE = 1e-4
"""rho1 of the reference code: ``ridge`` adds it (``+ rho I`` on a square matrix)."""
RIDGE5 = 0.05
"""rho5 of the reference code: ``ridge5`` adds it (SymDiv and xi* denominators)."""

ARG_NAMES: tuple[str, ...] = ("W", "WI", "B", "F", "Fp", "Fm")
"""Operand names of Table 1 in the order of the compiled callable's arguments."""
LABEL_ARGS = frozenset({"Fp", "Fm"})
MAP_ARGS = frozenset({"F", "Fp", "Fm"})
MAX_TREE_HEIGHT = 90
"""Trees higher than this are rejected (deap's own ``gp.compile`` fails near 91)."""


class MetricError(CompressError, ValueError):
    """A pruning-metric tree cannot be parsed, evaluated, or does not give one finite score per channel."""


@dataclass
class EvalLimits:
    """Deterministic resource limits checked by every operator (see the module docstring)."""

    max_elements: int = 2**26
    """Largest number of elements any intermediate value may have (whole layer, all channels)."""
    max_flops: int = 2**37
    """Largest multiply-add count of one matmul / matrix inversion."""


LIMITS = EvalLimits()
VALIDITY_LIMITS = EvalLimits(max_elements=2**20, max_flops=2**26)
"""Tighter limits used by :func:`~compress.evolution.trees.is_valid` (its test argument is tiny; a tree that needs
more than 1M entries or 67M multiply-adds there would be hopeless on a real layer)."""


@contextlib.contextmanager
def evaluation_limits(limits: EvalLimits):
    """Temporarily replace the fields of :data:`LIMITS` (not thread-safe)."""
    saved = (LIMITS.max_elements, LIMITS.max_flops)
    LIMITS.max_elements, LIMITS.max_flops = limits.max_elements, limits.max_flops
    try:
        yield LIMITS
    finally:
        LIMITS.max_elements, LIMITS.max_flops = saved


# ----------------------------------------------------------------------------- operands


@dataclass(frozen=True)
class ChannelOperands:
    """Operands of Table 1 for the C channels of one layer, batched along a leading channel axis.

    Attributes:
        W: ``(1, c_out, c_in, kh, kw)`` the whole layer weight, shared by every channel.
        WI: ``(C, c_in, kh, kw)`` each channel's incoming filter.
        B: ``(C, 4)`` BN ``[gamma, beta, running_mean, running_var]`` (``[1, 0, 0, 1]`` when
            the layer has no BN).
        F: ``(C, N, D)`` the channel's feature maps for N calibration samples, ``D = H * W``
            (``None`` for metrics that do not use feature maps).
        y: ``(N,)`` int64 class labels (``None`` for labelless metrics).

    Raises:
        MetricError: on inconsistent shapes (the message names the offending field).
    """

    W: torch.Tensor
    WI: torch.Tensor
    B: torch.Tensor
    F: torch.Tensor | None = None
    y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("W", "WI", "B"):
            if not isinstance(getattr(self, name), torch.Tensor):
                got = type(getattr(self, name)).__name__
                raise MetricError(f"ChannelOperands.{name} must be a torch.Tensor, got {got}")
        c = self.WI.shape[0] if self.WI.ndim else 0
        if self.WI.ndim < 2 or c == 0:
            raise MetricError(f"ChannelOperands.WI must be (C, c_in, kh, kw) with C >= 1, got {tuple(self.WI.shape)}")
        if self.W.ndim < 2 or self.W.shape[0] != 1:
            raise MetricError(
                f"ChannelOperands.W must be the layer weight with a leading axis of 1, (1, c_out, c_in, kh, kw); "
                f"got {tuple(self.W.shape)} -- use weight.unsqueeze(0)"
            )
        if tuple(self.B.shape) != (c, 4):
            raise MetricError(
                f"ChannelOperands.B must be (C, 4) = [gamma, beta, mean, var] per channel with C={c}, "
                f"got {tuple(self.B.shape)}"
            )
        if self.F is not None:
            if self.F.ndim != 3 or self.F.shape[0] != c or self.F.shape[1] == 0:
                raise MetricError(
                    f"ChannelOperands.F must be (C, N, D) with C={c} and N >= 1 (flatten each H x W map), "
                    f"got {tuple(self.F.shape)}"
                )
        if self.y is not None:
            if self.y.ndim != 1:
                raise MetricError(f"ChannelOperands.y must be (N,) class labels, got {tuple(self.y.shape)}")
            if self.F is not None and self.y.shape[0] != self.F.shape[1]:
                raise MetricError(
                    f"ChannelOperands.y has {self.y.shape[0]} labels but F has N={self.F.shape[1]} samples"
                )

    @property
    def num_channels(self) -> int:
        """C, the number of channels scored."""
        return int(self.WI.shape[0])

    @classmethod
    def from_layer(
        cls,
        weight: torch.Tensor,
        bn: torch.Tensor | None = None,
        feature_maps: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ChannelOperands:
        """Build the operands of all output channels of one layer.

        Args:
            weight: conv ``(c_out, c_in, kh, kw)`` or linear ``(c_out, c_in)`` weight.
            bn: ``(c_out, 4)`` BN ``[gamma, beta, running_mean, running_var]`` or None
                (-> ``[1, 0, 0, 1]``).
            feature_maps: layer outputs ``(N, c_out, H, W)`` or ``(N, c_out)`` or None.
            labels: ``(N,)`` class labels or None.
        """
        w = weight.detach()
        if w.ndim == 2:
            w = w[:, :, None, None]
        c = w.shape[0]
        if bn is None:
            bn = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=w.dtype, device=w.device).expand(c, 4).clone()
        f = None
        if feature_maps is not None:
            fm = feature_maps.detach()
            f = fm.reshape(fm.shape[0], fm.shape[1], -1).transpose(0, 1).contiguous()
        return cls(W=w.unsqueeze(0), WI=w, B=bn.detach(), F=f, y=None if labels is None else labels.detach())


# ----------------------------------------------------------------------------- helpers


def _check_elements(shape, what: str) -> None:
    n = math.prod(int(s) for s in shape)
    if n > LIMITS.max_elements:
        raise MetricError(
            f"{what} would create a value of shape {tuple(int(s) for s in shape)} ({n} elements > "
            f"LIMITS.max_elements={LIMITS.max_elements}); the tree is too expensive for these operands -- "
            "treat it as invalid or raise trees.LIMITS.max_elements"
        )


def _check_flops(n: int, what: str) -> None:
    if n > LIMITS.max_flops:
        raise MetricError(
            f"{what} would cost {n} multiply-adds (> LIMITS.max_flops={LIMITS.max_flops}); "
            "treat the tree as invalid or raise trees.LIMITS.max_flops"
        )


def _channels(*xs: torch.Tensor) -> int:
    cs = {x.shape[0] for x in xs}
    if len(cs - {1}) > 1:
        raise MetricError(f"channel axes disagree: {sorted(cs)} (every operand must have C or 1 channels)")
    return max(cs)


def _pad_to(x: torch.Tensor, shape: tuple[int, ...], value: float) -> torch.Tensor:
    if tuple(x.shape) == shape:
        return x
    out = x.new_full(shape, value)
    out[tuple(slice(0, s) for s in x.shape)] = x
    return out


def _align(a: torch.Tensor, b: torch.Tensor, pad: float, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring a and b to broadcast-compatible shapes by the paper's mismatch rule (module docstring)."""
    _channels(a, b)
    ra, rb = a.ndim - 1, b.ndim - 1
    r = max(ra, rb)
    a = a.reshape((a.shape[0],) + (1,) * (r - ra) + tuple(a.shape[1:]))
    b = b.reshape((b.shape[0],) + (1,) * (r - rb) + tuple(b.shape[1:]))
    sa, sb = list(a.shape), list(b.shape)
    out = [max(sa[0], sb[0])]
    for i in range(1, r + 1):
        if sa[i] == sb[i] or sa[i] == 1 or sb[i] == 1:
            out.append(max(sa[i], sb[i]))
            continue
        m = max(sa[i], sb[i])
        sa[i] = sb[i] = m
        out.append(m)
    _check_elements(out, what)
    return _pad_to(a, tuple(sa), pad), _pad_to(b, tuple(sb), pad)


def _matview(x: torch.Tensor) -> torch.Tensor:
    """Matrix view of a rank >= 3 value: ``(C, s1, s2 * s3 * ...)``; ranks <= 2 unchanged."""
    if x.ndim >= 4:
        return x.reshape(x.shape[0], x.shape[1], -1)
    return x


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """A value as a set of samples ``(C, n, r)`` (rbf): scalar -> 1 sample of length 1, vector -> 1 sample."""
    if x.ndim == 1:
        return x[:, None, None]
    if x.ndim == 2:
        return x[:, None, :]
    return _matview(x)


def _sample_axis(x: torch.Tensor) -> torch.Tensor:
    return x if x.ndim > 1 else x.unsqueeze(1)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


# ----------------------------------------------------------------------------- primitives
# Every primitive takes and returns tensors with a leading channel axis (C or 1).


def p_add(a, b):
    x, y = _align(a, b, 0.0, "add")
    return x + y


def p_sub(a, b):
    x, y = _align(a, b, 0.0, "sub")
    return x - y


def p_mul(a, b):
    x, y = _align(a, b, 1.0, "mul")
    return x * y


def p_div(a, b):
    x, y = _align(a, b, 1.0, "div")
    return x / y


def p_abs(a):
    return a.abs()


def p_sq(a):
    return a * a


def p_sqrt(a):
    return a.abs().sqrt()


def _ridge(a, rho):
    if a.ndim == 3 and a.shape[1] == a.shape[2]:
        return a + rho * torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    return a + rho


def p_ridge(a):
    return _ridge(a, RIDGE)


def p_ridge5(a):
    return _ridge(a, RIDGE5)


def p_tr(a):
    if a.ndim == 1:
        return a
    if a.ndim == 2:
        return a.sum(1)
    return _matview(a).diagonal(dim1=-2, dim2=-1).sum(-1)


def p_matmul(a, b):
    if a.ndim == 1 or b.ndim == 1:
        return p_mul(a, b)
    a, b = _matview(a), _matview(b)
    c = _channels(a, b)
    k = max(a.shape[-1], b.shape[1])
    a = _pad_to(a, tuple(a.shape[:-1]) + (k,), 0.0)
    b = _pad_to(b, (b.shape[0], k) + tuple(b.shape[2:]), 0.0)
    m = a.shape[1] if a.ndim == 3 else 1
    e = b.shape[2] if b.ndim == 3 else 1
    _check_elements((c, m, e), "matmul")
    _check_flops(c * m * k * e, "matmul")
    if a.ndim == 2 and b.ndim == 2:
        return (a * b).sum(-1)
    if a.ndim == 2:
        return torch.matmul(a.unsqueeze(1), b).squeeze(1)
    if b.ndim == 2:
        return torch.matmul(a, b.unsqueeze(-1)).squeeze(-1)
    return torch.matmul(a, b)


def p_inv(a):
    if a.ndim <= 2:
        return 1.0 / a
    m = _matview(a)
    n1, n2 = m.shape[1], m.shape[2]
    _check_flops(m.shape[0] * max(n1, n2) ** 2 * min(n1, n2), "inv")
    if not torch.isfinite(m).all():
        raise MetricError("inv: the matrix has inf/NaN entries")
    if n1 == n2:
        inv, info = torch.linalg.inv_ex(m)
        if bool((info != 0).any()):
            raise MetricError("inv: singular matrix (wrap it in ridge(...) before inverting)")
        return inv
    # Moore-Penrose pseudo-inverse through the smaller Gram matrix, pinv(A) = (A^T A)^+ A^T =
    # A^T (A A^T)^+ (symmetric eigendecomposition; LAPACK's SVD can be very slow under
    # thread contention)
    mt = m.transpose(-1, -2)
    if n1 >= n2:
        return torch.matmul(torch.linalg.pinv(torch.matmul(mt, m), hermitian=True), mt)
    return torch.matmul(mt, torch.linalg.pinv(torch.matmul(m, mt), hermitian=True))


def p_dot(a, b):
    x, y = _align(a, b, 0.0, "dot")
    return _flat(x * y).sum(1) if x.ndim > 1 else x * y


def p_outer(a, b):
    if a.ndim == 1 or b.ndim == 1:
        return p_mul(a, b)
    c = _channels(a, b)
    fa, fb = _flat(a), _flat(b)
    _check_elements((c, fa.shape[1], fb.shape[1]), "outer")
    return fa.unsqueeze(-1) * fb.unsqueeze(-2)


def p_tran(a):
    if a.ndim <= 2:
        return a
    return _matview(a).transpose(-1, -2)


def p_sum_g(a):
    return _flat(a).sum(1)


def p_prod_g(a):
    return _flat(a).prod(1)


def p_mean_g(a):
    return _flat(a).mean(1)


def p_std_g(a):
    return _flat(a).std(1, correction=0)


def p_var_g(a):
    return _flat(a).var(1, correction=0)


def p_count_g(a):
    return a.new_full((a.shape[0],), float(a[0].numel()))


def p_sum_s(a):
    return _sample_axis(a).sum(1)


def p_prod_s(a):
    return _sample_axis(a).prod(1)


def p_mean_s(a):
    return _sample_axis(a).mean(1)


def p_std_s(a):
    return _sample_axis(a).std(1, correction=0)


def p_var_s(a):
    return _sample_axis(a).var(1, correction=0)


def p_count_s(a):
    return a.new_full((a.shape[0],), float(a.shape[1]) if a.ndim > 1 else 1.0)


def p_rbf(a, b):
    ra, rb = _as_rows(a), _as_rows(b)
    c = _channels(ra, rb)
    r = max(ra.shape[2], rb.shape[2])
    ra = _pad_to(ra, tuple(ra.shape[:2]) + (r,), 0.0)
    rb = _pad_to(rb, tuple(rb.shape[:2]) + (r,), 0.0)
    _check_elements((c, ra.shape[1], rb.shape[1]), "rbf")
    _check_flops(c * ra.shape[1] * rb.shape[1] * r, "rbf")
    cross = torch.matmul(ra, rb.transpose(-1, -2))
    d2 = (ra * ra).sum(-1).unsqueeze(-1) + (rb * rb).sum(-1).unsqueeze(-2) - 2.0 * cross
    k = torch.exp(-d2.clamp_min(0.0) / r)
    if a.ndim <= 2 and b.ndim <= 2:  # two single samples: the 1 x 1 kernel matrix is the kernel value
        return k[:, 0, 0]
    return k


def p_geo(a):
    if a.ndim == 1:
        return a
    rows = a.unsqueeze(-1) if a.ndim == 2 else _matview(a)
    c, n = rows.shape[0], rows.shape[1]
    _check_elements((c, n, n), "geo")
    _check_flops(c * n * n * rows.shape[2], "geo")
    dist = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")
    idx = dist.sum(-1).argmin(-1)
    chosen = rows[torch.arange(c, device=a.device), idx]
    return chosen.reshape((c,) + tuple(a.shape[2:]))


def p_slice(a):
    return _flat(a)[:, 0]


_PRIMITIVES: tuple[tuple[str, Callable, int], ...] = (
    ("add", p_add, 2),
    ("sub", p_sub, 2),
    ("mul", p_mul, 2),
    ("div", p_div, 2),
    ("abs", p_abs, 1),
    ("sq", p_sq, 1),
    ("sqrt", p_sqrt, 1),
    ("ridge", p_ridge, 1),
    ("ridge5", p_ridge5, 1),
    ("tr", p_tr, 1),
    ("matmul", p_matmul, 2),
    ("inv", p_inv, 1),
    ("dot", p_dot, 2),
    ("outer", p_outer, 2),
    ("tran", p_tran, 1),
    ("sum_g", p_sum_g, 1),
    ("prod_g", p_prod_g, 1),
    ("mean_g", p_mean_g, 1),
    ("std_g", p_std_g, 1),
    ("var_g", p_var_g, 1),
    ("count_g", p_count_g, 1),
    ("sum_s", p_sum_s, 1),
    ("prod_s", p_prod_s, 1),
    ("mean_s", p_mean_s, 1),
    ("std_s", p_std_s, 1),
    ("var_s", p_var_s, 1),
    ("count_s", p_count_s, 1),
    ("rbf", p_rbf, 2),
    ("geo", p_geo, 1),
    ("slice", p_slice, 1),
)
PRIMITIVE_NAMES: tuple[str, ...] = tuple(n for n, _, _ in _PRIMITIVES)
"""Operator names of Table 6 (plus ``ridge5``), as they appear in tree strings."""


def _guarded(name: str, fn: Callable) -> Callable:
    """Wrap a primitive so that torch failures surface as :class:`MetricError` naming the operator."""

    @functools.wraps(fn)
    def wrapper(*args):
        for x in args:
            if not isinstance(x, torch.Tensor):
                raise MetricError(f"{name}: operands must be tensors, got {type(x).__name__} (is an operand None?)")
        try:
            return fn(*args)
        except MetricError:
            raise
        except (RuntimeError, ValueError, IndexError, ArithmeticError) as exc:
            shapes = ", ".join(str(tuple(x.shape)) for x in args)
            raise MetricError(f"operator {name} failed on shapes {shapes}: {exc}") from exc

    return wrapper


_CONTEXT: dict[str, Callable] = {name: _guarded(name, fn) for name, fn, _ in _PRIMITIVES}


def make_pset(name: str = "gp_prune") -> gp.PrimitiveSet:
    """The untyped ``deap.gp.PrimitiveSet`` of Tables 1 and 6 (arguments ``W, WI, B, F, Fp, Fm``).

    Returns a fresh set each call; :data:`PSET` is the module-level instance all helpers
    default to. ``gp.compile(tree, pset)`` on it gives a callable ``f(W, WI, B, F, Fp, Fm)``
    with the semantics of the module docstring (operators raise :class:`MetricError`).
    """
    pset = gp.PrimitiveSet(name, len(ARG_NAMES))
    for prim_name, _, arity in _PRIMITIVES:
        pset.addPrimitive(_CONTEXT[prim_name], arity, name=prim_name)
    pset.renameArguments(**{f"ARG{i}": a for i, a in enumerate(ARG_NAMES)})
    return pset


PSET: gp.PrimitiveSet = make_pset()
