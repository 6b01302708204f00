"""Parsing, compiling and scoring GP expression trees over :mod:`compress.evolution.primitives`.

Source: Liu et al., "Evolving transferable neural pruning functions", GECCO'22: Sec. 3.1
(uni-tree), Sec. 3.4 (validity test); ``docs/algorithms/gp-prune.md`` (tree evaluation). The
``gp-prune`` strategy uses this module at run time (through :mod:`compress.evolution.metrics`)
to score the channels of every layer; the evolution uses it to parse, repair and print trees.

Label-aware uni-tree (Sec. 3.1, Fig. 3): :func:`score_tree` evaluates a tree that uses
``Fp``/``Fm`` once per class k present in ``y`` (``Fp = F[:, y == k]``,
``Fm = F[:, y != k]``) and sums (reference code, default) or averages the per-class
scores; subtrees that do not involve ``Fp``/``Fm`` (e.g. ``inv(ridge(S_F))`` in DI) are
computed once per layer and reused for every class. A labelless tree is evaluated once.
A tree whose value is not one finite scalar per channel raises :class:`MetricError` --
nothing is summed silently (a value with exactly one entry per channel, e.g. a 1 x 1
matrix, counts as a scalar; a scalar derived from ``W`` alone has channel axis 1 and is
broadcast to all C channels, i.e. it scores every channel alike). Identical subtrees
(``var_g(Fp)`` occurs four times in xi*) are evaluated once per class.

Random trees: with this untyped set about 55 % of ``gp.genHalfAndHalf(PSET, 1, 4)`` trees
are valid (measured on 3,000 seeded trees; almost all failures are non-scalar results),
so variation + repair (gp-prune.md, choice 2) needs about two attempts per tree.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import torch
from deap import gp

from compress.evolution.primitives import (
    _CONTEXT,
    ARG_NAMES,
    LABEL_ARGS,
    MAP_ARGS,
    MAX_TREE_HEIGHT,
    PRIMITIVE_NAMES,
    PSET,
    VALIDITY_LIMITS,
    ChannelOperands,
    EvalLimits,
    MetricError,
    evaluation_limits,
)

__all__ = [
    "CompiledTree",
    "compile_tree",
    "is_valid",
    "parse_tree",
    "readable_formula",
    "score_tree",
    "validity_operands",
]


# ----------------------------------------------------------------------------- parsing


_TOKEN_SPLIT = re.compile(r"[\s(),]+")


def parse_tree(expr: str | gp.PrimitiveTree, pset: gp.PrimitiveSet = PSET) -> gp.PrimitiveTree:
    """Parse a tree string such as ``"sum_g(abs(WI))"`` into a ``gp.PrimitiveTree``.

    Unlike ``gp.PrimitiveTree.from_string`` (which ``eval``s unknown tokens and ignores
    arities for untyped sets) every token must be an operator or operand of ``pset`` and
    the parenthesisation must match the arities exactly.

    Raises:
        MetricError: unknown token (close matches are suggested), wrong number of
            arguments, or a tree higher than ``MAX_TREE_HEIGHT``.
    """
    if isinstance(expr, gp.PrimitiveTree):
        tree = expr
    else:
        if not isinstance(expr, str) or not expr.strip():
            raise MetricError(f"a metric expression must be a non-empty tree string, got {expr!r}")
        import difflib

        for tok in _TOKEN_SPLIT.split(expr):
            if tok and tok not in pset.mapping:
                close = difflib.get_close_matches(tok, list(pset.mapping), n=3)
                hint = f" -- did you mean {', '.join(close)}?" if close else ""
                raise MetricError(
                    f"unknown token {tok!r} in metric expression {expr!r}{hint} "
                    f"(operators: {', '.join(PRIMITIVE_NAMES)}; operands: {', '.join(pset.arguments)})"
                )
        try:
            tree = gp.PrimitiveTree.from_string(expr, pset)
        except (TypeError, ValueError, IndexError) as exc:
            raise MetricError(f"cannot parse metric expression {expr!r}: {exc}") from exc
        if str(tree) != re.sub(r"\s+", "", expr).replace(",", ", "):
            raise MetricError(
                f"metric expression {expr!r} does not match the operator arities "
                f"(parsed as {str(tree)!r}); check the number of arguments of each operator"
            )
    # structural check: prefix list must form exactly one complete tree
    need = 1
    for i, node in enumerate(tree):
        if need == 0:
            raise MetricError(f"tree {tree!s} has trailing nodes after position {i}")
        need += node.arity - 1
    if need != 0:
        raise MetricError(f"tree {tree!s} is incomplete: {need} operand(s) missing")
    if tree.height > MAX_TREE_HEIGHT:
        raise MetricError(f"tree height {tree.height} exceeds MAX_TREE_HEIGHT={MAX_TREE_HEIGHT}")
    return tree


# ----------------------------------------------------------------------------- evaluation


class CompiledTree:
    """A parsed tree ready for repeated evaluation; call it as ``f(W, WI, B, F, Fp, Fm)``.

    The interpreter walks the prefix list with the :data:`PSET` operator functions (same
    semantics as ``gp.compile``) and can cache the values of subtrees that do not depend
    on ``Fp``/``Fm`` across the classes of a uni-tree evaluation.

    Attributes:
        tree: the ``gp.PrimitiveTree``.
        expr: its string.
        arguments: operand names used.
        label_aware: the tree uses ``Fp`` or ``Fm``.
        needs_feature_maps: the tree uses ``F``, ``Fp`` or ``Fm``.
    """

    def __init__(self, tree: gp.PrimitiveTree, pset: gp.PrimitiveSet = PSET) -> None:
        self.tree = tree
        self.expr = str(tree)
        nodes = []  # (name, fn or None, child indices, class_dependent)
        stack: list[list] = []
        for i, node in enumerate(tree):
            if isinstance(node, gp.Primitive):
                fn = _CONTEXT.get(node.name) or pset.context[node.name]
                nodes.append([node.name, fn, [], False])
            else:
                name = node.value if node.value in ARG_NAMES else None
                if name is None:
                    raise MetricError(f"terminal {node.name!r} is not an operand of Table 1 ({', '.join(ARG_NAMES)})")
                nodes.append([name, None, [], name in LABEL_ARGS])
            if stack:
                stack[-1][1].append(i)
                stack[-1][0] -= 1
            if isinstance(node, gp.Primitive):
                stack.append([node.arity, nodes[i][2]])
            while stack and stack[-1][0] == 0:
                stack.pop()
        keys = [""] * len(nodes)
        for i in range(len(nodes) - 1, -1, -1):  # children come after their parent in prefix order
            if nodes[i][1] is not None:
                nodes[i][3] = any(nodes[j][3] for j in nodes[i][2])
                keys[i] = f"{nodes[i][0]}({', '.join(keys[j] for j in nodes[i][2])})"
            else:
                keys[i] = nodes[i][0]
        self._nodes = nodes
        self._keys = keys  # subtree strings: identical subtrees are evaluated once per call
        self.arguments = frozenset(n[0] for n in nodes if n[1] is None)
        self.label_aware = bool(self.arguments & LABEL_ARGS)
        self.needs_feature_maps = bool(self.arguments & MAP_ARGS)

    def evaluate(self, env: Mapping[str, torch.Tensor | None], cache: dict | None = None) -> torch.Tensor:
        """Evaluate with operands from ``env`` (keys of :data:`ARG_NAMES`).

        Identical subtrees are evaluated once per call. ``cache`` (optional, a dict owned
        by the caller) keeps class-independent subtree values between calls that differ
        only in ``Fp``/``Fm``.

        Raises:
            MetricError: a used operand is missing/None, or an operator fails.
        """
        for a in self.arguments:
            if env.get(a) is None:
                what = "feature maps F (C, N, D)" if a in MAP_ARGS else f"operand {a}"
                raise MetricError(f"tree {self.expr!r} uses {a} but no {what} was given")
        local: dict = {}
        return self._eval(0, env, local, local if cache is None else cache)

    def _eval(self, i: int, env, local: dict, shared: dict):
        name, fn, children, dep = self._nodes[i]
        if fn is None:
            return env[name]
        store = local if dep else shared
        key = self._keys[i]
        if key in store:
            return store[key]
        out = fn(*(self._eval(j, env, local, shared) for j in children))
        store[key] = out
        return out

    def __call__(self, W=None, WI=None, B=None, F=None, Fp=None, Fm=None) -> torch.Tensor:
        return self.evaluate({"W": W, "WI": WI, "B": B, "F": F, "Fp": Fp, "Fm": Fm})

    def __repr__(self) -> str:
        return f"CompiledTree({self.expr!r})"


@functools.lru_cache(maxsize=4096)
def _compile_cached(expr: str) -> CompiledTree:
    return CompiledTree(parse_tree(expr, PSET), PSET)


def compile_tree(expr: str | gp.PrimitiveTree, pset: gp.PrimitiveSet = PSET) -> CompiledTree:
    """Compile a tree (string or ``gp.PrimitiveTree``) into a callable ``f(W, WI, B, F, Fp, Fm) -> Tensor``.

    Raises:
        MetricError: the expression does not parse (see :func:`parse_tree`).
    """
    if pset is PSET:
        return _compile_cached(str(expr) if isinstance(expr, gp.PrimitiveTree) else expr)
    return CompiledTree(parse_tree(expr, pset), pset)


def _operand_env(ops: ChannelOperands, dtype: torch.dtype, used: frozenset[str]) -> dict[str, torch.Tensor | None]:
    """The operands a tree uses, cast to ``dtype`` (unused ones are not copied)."""
    env: dict[str, torch.Tensor | None] = {}
    for name in ("W", "WI", "B", "F"):
        t = getattr(ops, name)
        needed = name in used or (name == "F" and bool(used & LABEL_ARGS))
        env[name] = t.detach().to(dtype) if (t is not None and needed) else None
    return env


def _per_channel(value: torch.Tensor, c: int, expr: str, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and value.ndim > 1 and value[0].numel() == 1:
        value = value.reshape(value.shape[0])  # a 1 x 1 (x ...) value per channel is a scalar
    if not isinstance(value, torch.Tensor) or value.ndim != 1 or value.shape[0] not in (1, c):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise MetricError(
            f"tree {expr!r} returns shape {shape}{where}, not one scalar per channel ({c},); a pruning metric "
            "must end in a reducing operator such as sum_g/mean_g/var_g/dot/tr (values are never summed implicitly)"
        )
    value = value.expand(c)
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        idx = bad.nonzero().flatten()[:8].tolist()
        raise MetricError(
            f"tree {expr!r} gives non-finite scores{where} for channels {idx} (of {c}); add ridge/ridge5 to "
            "denominators, or treat the tree as invalid (if the model's weights or the data hold NaN / inf, fix "
            "those first: compress() refuses them where it can see them)"
        )
    return value


def score_tree(
    tree: str | gp.PrimitiveTree | CompiledTree,
    ops: ChannelOperands,
    class_reduction: str = "sum",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Score the C channels of one layer with a tree (uni-tree rule of Sec. 3.1 for label-aware trees).

    Args:
        tree: tree string, ``gp.PrimitiveTree`` or :class:`CompiledTree`.
        ops: the layer's :class:`ChannelOperands`.
        class_reduction: ``"sum"`` (reference code) or ``"mean"`` over the classes of ``y``.
        dtype: computation dtype (float64 by default).

    Returns:
        ``(C,)`` scores in ``dtype``, all finite.

    Raises:
        MetricError: unparsable tree, missing operands (``F`` for map trees, ``y`` for
            label-aware trees, fewer than 2 classes), a value that is not one scalar per
            channel, non-finite scores, or an exceeded :data:`LIMITS`.
    """
    if class_reduction not in ("sum", "mean"):
        raise MetricError(f"class_reduction must be 'sum' or 'mean', got {class_reduction!r}")
    compiled = tree if isinstance(tree, CompiledTree) else compile_tree(tree)
    c = ops.num_channels
    env = _operand_env(ops, dtype, compiled.arguments)
    if compiled.needs_feature_maps and env["F"] is None:
        raise MetricError(f"tree {compiled.expr!r} needs feature maps: pass ChannelOperands.F of shape (C, N, D)")
    if not compiled.label_aware:
        return _per_channel(compiled.evaluate(env), c, compiled.expr, "")
    if ops.y is None:
        raise MetricError(
            f"tree {compiled.expr!r} is label-aware (uses Fp/Fm): pass ChannelOperands.y (N,) class labels"
        )
    y = ops.y.to(env["F"].device)
    classes = torch.unique(y)
    if classes.numel() < 2:
        raise MetricError(f"label-aware tree {compiled.expr!r} needs at least 2 classes in y, got {classes.tolist()}")
    cache: dict = {}
    total = None
    for k in classes.tolist():
        mask = y == k
        env["Fp"] = env["F"][:, mask]
        env["Fm"] = env["F"][:, ~mask]
        s = _per_channel(compiled.evaluate(env, cache), c, compiled.expr, f" for class {k}")
        total = s.clone() if total is None else total + s
    if class_reduction == "mean":
        total = total / classes.numel()
    return _per_channel(total, c, compiled.expr, " after the class reduction")


# ----------------------------------------------------------------------------- validity


@functools.lru_cache(maxsize=4)
def validity_operands(seed: int = 0) -> ChannelOperands:
    """The fixed, seeded test argument of :func:`is_valid` (gp-prune.md, choice 2).

    C = 3 channels of a 5 x 2 x 3 x 3 conv layer with BN, N = 12 positive 4 x 4 maps
    (D = 16) in 3 balanced classes with class-dependent means; all axis lengths differ so
    that shape bugs are not hidden by coincidences. The reference uses a few MNIST pixel
    columns; any small fixed argument serves the purpose (reject trees that fail or are
    non-scalar / non-finite) and keeps the test cheap.
    """
    g = torch.Generator().manual_seed(seed)  # a CPU generator: the argument lives on the CPU
    cpu = torch.device("cpu")
    c, c_out, c_in, k, n, d, n_cls = 3, 5, 2, 3, 12, 16, 3
    w = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64, device=cpu)
    bn = torch.stack(
        [
            torch.rand(c_out, generator=g, dtype=torch.float64, device=cpu) + 0.5,
            torch.randn(c_out, generator=g, dtype=torch.float64, device=cpu) * 0.1,
            torch.randn(c_out, generator=g, dtype=torch.float64, device=cpu) * 0.1,
            torch.rand(c_out, generator=g, dtype=torch.float64, device=cpu) + 0.5,
        ],
        dim=1,
    )
    y = torch.arange(n, device=cpu) % n_cls
    shift = torch.randn(c_out, n_cls, d, generator=g, dtype=torch.float64, device=cpu)[:, y]  # class-dependent means
    f = torch.relu(torch.randn(c_out, n, d, generator=g, dtype=torch.float64, device=cpu) + shift) + 0.01
    return ChannelOperands(W=w.unsqueeze(0), WI=w[:c], B=bn[:c], F=f[:c], y=y)


def is_valid(
    tree: str | gp.PrimitiveTree,
    operands: ChannelOperands | None = None,
    limits: EvalLimits = VALIDITY_LIMITS,
) -> bool:
    """Validity test of Sec. 3.4 and docs/algorithms/gp-prune.md, choice 2: the tree parses, evaluates on a fixed test argument
    (:func:`validity_operands` unless ``operands`` is given) without error and within
    ``limits`` (default :data:`VALIDITY_LIMITS`), and yields one finite scalar per channel
    (for every class, for label-aware trees). Deterministic; never raises, returns False on
    any failure.
    """
    try:
        with evaluation_limits(limits):
            score_tree(tree, operands if operands is not None else validity_operands())
    except MetricError:
        return False
    except (RuntimeError, ArithmeticError, MemoryError, RecursionError):
        return False
    return True


# ============================================================================ formula

_OPERAND_NAMES = {"Fp": "F+", "Fm": "F-", "WI": "W_I", "W": "W", "B": "B", "F": "F"}
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def readable_formula(expr: str) -> str:
    """Infix rendering of a tree string for humans, e.g.
    ``div(var_g(Fm), ridge5(var_g(Fp)))`` -> ``var_g(F-) / (var_g(F+) + 0.05)``.

    ``ridge(x)`` is shown as ``(x + 1e-4)`` and ``ridge5(x)`` as ``(x + 0.05)`` (on a square
    matrix the engine adds ``rho I``); ``sq(x)`` as ``(x)^2``, ``abs(x)`` as ``|x|``.

    Raises:
        MetricError: the string does not parse.
    """
    tree = parse_tree(expr)
    pos = 0

    def walk() -> tuple[str, bool]:  # (text, is_compound)
        nonlocal pos
        node = tree[pos]
        pos += 1
        if isinstance(node, gp.Terminal):
            return _OPERAND_NAMES.get(node.value, str(node.value)), False
        args = [walk() for _ in range(node.arity)]

        def wrap(a: tuple[str, bool]) -> str:
            return f"({a[0]})" if a[1] else a[0]

        if node.name in _INFIX:
            return f"{wrap(args[0])} {_INFIX[node.name]} {wrap(args[1])}", True
        if node.name == "ridge":
            return f"{wrap(args[0])} + 1e-4", True
        if node.name == "ridge5":
            return f"{wrap(args[0])} + 0.05", True
        if node.name == "sq":
            return f"({args[0][0]})^2" if args[0][1] else f"{args[0][0]}^2", False
        if node.name == "abs":
            return f"|{args[0][0]}|", False
        return f"{node.name}({', '.join(a[0] for a in args)})", False

    text, _ = walk()
    return text
