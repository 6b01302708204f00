"""Pruning metrics as expression trees: SOAP, the evolved xi*, and a name registry.

Source: Liu et al., GECCO'22 (paper 001) -- Eq. 3 (xi*), supplementary Sec. 9.2 (SOAP,
the "state-of-the-art population"), Sec. 12 (extra evolved functions) -- and
``docs/algorithms/gp-prune.md``. Tree semantics (operators, shapes, the uni-tree class loop)
are defined and documented in :mod:`compress.evolution.trees`.

Registered metrics (:func:`list_metrics`):

* SOAP (Sec. 9.2), exactly the printed formulas written with the operators of Table 6,
  plus the reference code's ridges in the denominators: ``ridge`` (rho1 = +1e-4) in
  AbsSNR, Student-T (added after the square root) and Fisher; ``ridge5`` (rho5 = +0.05)
  in the three denominators of Symmetric Divergence. DI uses ``inv(ridge(S_F))`` with
  ``S_F = (F - mean_s F)^T (F - mean_s F)`` (``ridge`` = +1e-4 I). MMD is the biased
  estimate of Sec. 9.2 with the ``rbf`` kernel ``exp(-||a - b||^2 / D)``
  (:mod:`~compress.evolution.primitives` explains the bandwidth).
  ``l1, l2, bn_scale, fpgm`` are labelless (filter / BN operands only); ``di, mmd,
  abs_snr, t_test, fisher, sym_div`` are label-aware uni-trees.
* ``xi_star`` -- Eq. 3 with every denominator ridged by +0.05 (docs/algorithms/gp-prune.md, choice 6), with
  ``f-bar = mean_s(F)`` and the all-ones vector realised by broadcasting a scalar over the
  D entries of ``f-bar``::

      var_g(F-)/(var_g(F+)+.05) + var_g(F+)/(var_g(F-)+.05)
        + ||std_g(f-bar) var_g(F-) f-bar + (var_g(F+) - mean_g(F-)) 1||^2 / (var_g(F+)+var_g(F-)+.05)

* ``xi_star_ref`` -- the released code's ``GA_Func2``: the two scalar terms are added to
  the D-vector of the third term before the final sum, i.e. they are multiplied by
  ``D = H x W``. It ranks channels differently from ``xi_star``.
* ``xi_1, xi_2, xi_3`` -- Sec. 12, Eqs. 5-7 (``xi_1``'s denominator gets the same +0.05
  ridge as xi*, whose printed form also omits it).

All label-aware metrics are summed over the classes of ``y`` by default (reference code);
``class_reduction="mean"`` averages them (same ranking).

The ``reference_*`` functions are independent closed-form implementations in plain torch
(explicit loops over channels and classes, no tree engine); the tests compare the trees
against them.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable

import torch
from deap import gp

from compress.evolution.primitives import RIDGE, RIDGE5, ChannelOperands, MetricError
from compress.evolution.trees import CompiledTree, compile_tree, parse_tree, score_tree

__all__ = [
    "ChannelOperands",
    "METRICS",
    "MetricError",
    "PruningMetric",
    "REFERENCES",
    "SOAP",
    "XI_STAR",
    "get_metric",
    "list_metrics",
    "reference_score",
]

XI_STAR = "xi_star"

SOAP: dict[str, str] = {
    "l1": "sum_g(abs(WI))",
    "l2": "sqrt(sum_g(sq(WI)))",
    "bn_scale": "abs(slice(B))",
    "fpgm": "sqrt(sum_g(sq(sub(WI, geo(W)))))",
    "di": (
        "mul(count_s(Fp), matmul(matmul(tran(sub(mean_s(Fp), mean_s(F))), "
        "inv(ridge(matmul(tran(sub(F, mean_s(F))), sub(F, mean_s(F)))))), sub(mean_s(Fp), mean_s(F))))"
    ),
    "mmd": (
        "sub(sub(add(div(sum_g(rbf(Fp, Fp)), sq(count_s(Fp))), div(sum_g(rbf(Fm, Fm)), sq(count_s(Fm)))), "
        "div(sum_g(rbf(Fp, Fm)), mul(count_s(Fp), count_s(Fm)))), "
        "div(sum_g(rbf(Fp, Fm)), mul(count_s(Fp), count_s(Fm))))"
    ),
    "abs_snr": "div(abs(sub(mean_g(Fp), mean_g(Fm))), ridge(add(std_g(Fp), std_g(Fm))))",
    "t_test": (
        "div(abs(sub(mean_g(Fp), mean_g(Fm))), "
        "ridge(sqrt(add(div(var_g(Fp), count_s(Fp)), div(var_g(Fm), count_s(Fm))))))"
    ),
    "fisher": "div(sq(sub(mean_g(Fp), mean_g(Fm))), ridge(add(var_g(Fp), var_g(Fm))))",
    "sym_div": (
        "add(add(div(var_g(Fp), ridge5(var_g(Fm))), div(var_g(Fm), ridge5(var_g(Fp)))), "
        "div(sq(sub(mean_g(Fp), mean_g(Fm))), ridge5(add(var_g(Fp), var_g(Fm)))))"
    ),
}
"""The 10 SOAP functions of supplementary Sec. 9.2 as tree strings (see module docstring)."""

_T1 = "div(var_g(Fm), ridge5(var_g(Fp)))"
_T2 = "div(var_g(Fp), ridge5(var_g(Fm)))"
_V = "add(mul(mul(std_g(mean_s(F)), var_g(Fm)), mean_s(F)), sub(var_g(Fp), mean_g(Fm)))"
_DEN = "ridge5(add(var_g(Fp), var_g(Fm)))"

METRICS: dict[str, str] = {
    **SOAP,
    XI_STAR: f"add(add({_T1}, {_T2}), div(sum_g(sq({_V})), {_DEN}))",
    "xi_star_ref": f"sum_g(add(add({_T1}, {_T2}), div(sq({_V}), {_DEN})))",
    "xi_1": f"add(div(sum_g(sq(sub(mean_s(F), var_g(Fm)))), {_DEN}), var_g(Fp))",
    "xi_2": "var_g(Fp)",
    "xi_3": "var_g(WI)",
}
"""All registered metrics: name -> tree string."""


class PruningMetric:
    """A channel-scoring function xi(C) encoded as an expression tree (paper Sec. 3.1).

    Attributes:
        name: registry name, or the name given to :meth:`from_string` (``"custom"`` by default).
        expr: the canonical deap tree string, e.g. ``"sum_g(abs(WI))"``.
        label_aware: the tree uses ``Fp``/``Fm`` (uni-tree evaluated once per class).
        needs_feature_maps: the tree uses ``F``, ``Fp`` or ``Fm``.
    """

    __slots__ = ("_compiled", "name")

    def __init__(self, expr: str | gp.PrimitiveTree, name: str | None = None) -> None:
        """Raises :class:`MetricError` if ``expr`` does not parse (see :func:`trees.parse_tree`)."""
        self._compiled: CompiledTree = compile_tree(expr)
        if name is None:
            name = next((k for k, v in METRICS.items() if v == self._compiled.expr), "custom")
        self.name = str(name)

    @classmethod
    def from_string(cls, expr: str, name: str | None = None) -> PruningMetric:
        """Build a metric from a tree string (operators of Table 6, operands ``W, WI, B, F, Fp, Fm``).

        Raises:
            MetricError: unknown token (with close matches), wrong arity, malformed string.
        """
        return cls(expr, name)

    @classmethod
    def from_tree(cls, tree: gp.PrimitiveTree, name: str | None = None) -> PruningMetric:
        """Build a metric from a ``gp.PrimitiveTree`` on :data:`trees.PSET` (e.g. an evolved individual)."""
        return cls(parse_tree(tree), name)

    @classmethod
    def from_dict(cls, d: dict) -> PruningMetric:
        """Inverse of :meth:`to_dict` (only ``expr`` and ``name`` are read)."""
        if "expr" not in d:
            raise MetricError(f"metric dict needs an 'expr' entry, got keys {sorted(d)}")
        return cls(d["expr"], d.get("name"))

    @property
    def expr(self) -> str:
        return self._compiled.expr

    @property
    def label_aware(self) -> bool:
        return self._compiled.label_aware

    @property
    def needs_feature_maps(self) -> bool:
        return self._compiled.needs_feature_maps

    @property
    def tree(self) -> gp.PrimitiveTree:
        """A copy of the ``gp.PrimitiveTree`` (safe to mutate)."""
        return gp.PrimitiveTree(list(self._compiled.tree))

    def score(
        self, ops: ChannelOperands, class_reduction: str = "sum", dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """Score the C channels of one layer.

        Args:
            ops: the layer's operands (``F``/``y`` required when the tree uses them).
            class_reduction: ``"sum"`` (reference code, default) or ``"mean"`` over the
                classes present in ``ops.y`` (label-aware trees only; Sec. 3.1 uni-tree).
            dtype: computation dtype (float64 by default).

        Returns:
            ``(C,)`` finite scores in ``dtype``; higher = more important.

        Raises:
            MetricError: missing operands, fewer than 2 classes, a tree that does not give
                one finite scalar per channel, or exceeded evaluation limits.
        """
        return score_tree(self._compiled, ops, class_reduction=class_reduction, dtype=dtype)

    def to_dict(self) -> dict:
        """JSON-serialisable description: ``name, expr, label_aware, needs_feature_maps``."""
        return {
            "name": self.name,
            "expr": self.expr,
            "label_aware": self.label_aware,
            "needs_feature_maps": self.needs_feature_maps,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PruningMetric) and (self.name, self.expr) == (other.name, other.expr)

    def __hash__(self) -> int:
        return hash((self.name, self.expr))

    def __repr__(self) -> str:
        return f"PruningMetric(name={self.name!r}, expr={self.expr!r})"


@functools.lru_cache(maxsize=None)
def _registered(name: str) -> PruningMetric:
    return PruningMetric(METRICS[name], name)


def get_metric(name: str) -> PruningMetric:
    """The registered metric ``name`` (one of :func:`list_metrics`).

    Raises:
        MetricError: unknown name; the message lists close matches and all known names.
    """
    if name in METRICS:
        return _registered(name)
    close = difflib.get_close_matches(str(name), list(METRICS), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise MetricError(
        f"unknown pruning metric {name!r}; {hint}known metrics: {', '.join(METRICS)}. "
        "For a custom tree use PruningMetric.from_string('sum_g(abs(WI))')."
    )


def list_metrics() -> list[str]:
    """Names of all registered metrics: the 10 SOAP keys, ``xi_star``, ``xi_star_ref``, ``xi_1..3``."""
    return list(METRICS)


# ----------------------------------------------------------------------------- closed forms
# Plain-torch reference implementations (no tree engine): explicit loops over channels and
# classes, float64, population statistics. Each takes (ops, class_reduction) and returns (C,).


def _pvar(x: torch.Tensor) -> torch.Tensor:
    x = x.double().flatten()
    return ((x - x.mean()) ** 2).mean()


def _pstd(x: torch.Tensor) -> torch.Tensor:
    return _pvar(x).sqrt()


def _labelless(fn: Callable[[ChannelOperands, int], torch.Tensor]) -> Callable[[ChannelOperands, str], torch.Tensor]:
    def ref(ops: ChannelOperands, class_reduction: str = "sum") -> torch.Tensor:
        return torch.stack([fn(ops, c).double() for c in range(ops.num_channels)])

    return ref


def _per_class(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[ChannelOperands, str], torch.Tensor]:
    """fn(X (N, D), P (N_k, D), Q (N - N_k, D)) -> scalar; summed / averaged over classes."""

    def ref(ops: ChannelOperands, class_reduction: str = "sum") -> torch.Tensor:
        if ops.F is None or ops.y is None:
            raise MetricError("label-aware reference needs F and y")
        classes = sorted(set(ops.y.tolist()))
        y = ops.y.to(ops.F.device)
        out = []
        for c in range(ops.num_channels):
            x = ops.F[c].double()
            total = x.new_zeros(())
            for k in classes:
                p = x[y == k]
                q = x[y != k]
                total = total + fn(x, p, q)
            out.append(total / len(classes) if class_reduction == "mean" else total)
        return torch.stack(out)

    return ref


def _geo_filter(w: torch.Tensor) -> torch.Tensor:
    """FPGM's approximation: the filter of w (c_out, ...) with the smallest summed L2 distance to all filters."""
    filters = [f.double() for f in w]
    totals = [sum(float(torch.sqrt(((a - b) ** 2).sum())) for b in filters) for a in filters]
    return filters[min(range(len(filters)), key=totals.__getitem__)]


def _ref_fpgm(ops: ChannelOperands) -> torch.Tensor:
    g = _geo_filter(ops.W[0])
    return torch.stack([torch.sqrt(((ops.WI[c].double() - g) ** 2).sum()) for c in range(ops.num_channels)])


def _ref_di(x, p, q):
    mu = x.mean(0)
    xc = x - mu
    s = xc.T @ xc + RIDGE * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    d = p.mean(0) - mu
    return p.shape[0] * (d @ torch.linalg.solve(s, d))


def _kernel_sum(a, b):
    d = a.shape[1]
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(a.shape[0]):
        total = total + torch.exp(-((a[i] - b) ** 2).sum(1) / d).sum()
    return total


def _ref_mmd(x, p, q):
    n, m = p.shape[0], q.shape[0]
    return _kernel_sum(p, p) / n**2 + _kernel_sum(q, q) / m**2 - 2.0 * _kernel_sum(p, q) / (n * m)


def _ref_abs_snr(x, p, q):
    return (p.mean() - q.mean()).abs() / (_pstd(p) + _pstd(q) + RIDGE)


def _ref_t_test(x, p, q):
    return (p.mean() - q.mean()).abs() / (torch.sqrt(_pvar(p) / p.shape[0] + _pvar(q) / q.shape[0]) + RIDGE)


def _ref_fisher(x, p, q):
    return (p.mean() - q.mean()) ** 2 / (_pvar(p) + _pvar(q) + RIDGE)


def _ref_sym_div(x, p, q):
    vp, vq = _pvar(p), _pvar(q)
    return vp / (vq + RIDGE5) + vq / (vp + RIDGE5) + (p.mean() - q.mean()) ** 2 / (vp + vq + RIDGE5)


def _xi_star_terms(x, p, q):
    """(t1 + t2, t3) of Eq. 3 with the +0.05 ridges."""
    vp, vq = _pvar(p), _pvar(q)
    fbar = x.mean(0)
    v = _pstd(fbar) * vq * fbar + (vp - q.mean()) * torch.ones_like(fbar)
    return vq / (vp + RIDGE5) + vp / (vq + RIDGE5), (v**2).sum() / (vp + vq + RIDGE5)


def _ref_xi_star(x, p, q):
    first, third = _xi_star_terms(x, p, q)
    return first + third


def _ref_xi_star_ref(x, p, q):
    first, third = _xi_star_terms(x, p, q)
    return x.shape[1] * first + third


def _ref_xi_1(x, p, q):
    vp, vq = _pvar(p), _pvar(q)
    return ((x.mean(0) - vq) ** 2).sum() / (vp + vq + RIDGE5) + vp


REFERENCES: dict[str, Callable[[ChannelOperands, str], torch.Tensor]] = {
    "l1": _labelless(lambda ops, c: ops.WI[c].double().abs().sum()),
    "l2": _labelless(lambda ops, c: torch.sqrt((ops.WI[c].double() ** 2).sum())),
    "bn_scale": _labelless(lambda ops, c: ops.B[c, 0].double().abs()),
    "fpgm": lambda ops, class_reduction="sum": _ref_fpgm(ops),
    "di": _per_class(_ref_di),
    "mmd": _per_class(_ref_mmd),
    "abs_snr": _per_class(_ref_abs_snr),
    "t_test": _per_class(_ref_t_test),
    "fisher": _per_class(_ref_fisher),
    "sym_div": _per_class(_ref_sym_div),
    XI_STAR: _per_class(_ref_xi_star),
    "xi_star_ref": _per_class(_ref_xi_star_ref),
    "xi_1": _per_class(_ref_xi_1),
    "xi_2": _per_class(lambda x, p, q: _pvar(p)),
    "xi_3": _labelless(lambda ops, c: _pvar(ops.WI[c])),
}
"""Closed-form reference implementation of every registered metric: name -> f(ops, class_reduction) -> (C,)."""


def reference_score(name: str, ops: ChannelOperands, class_reduction: str = "sum") -> torch.Tensor:
    """Closed-form (non-tree) scores of registered metric ``name``: ``(C,)`` float64.

    Raises:
        MetricError: unknown name (same message as :func:`get_metric`).
    """
    get_metric(name)
    return REFERENCES[name](ops, class_reduction)
