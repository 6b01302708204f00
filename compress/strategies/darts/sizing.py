"""Size a DARTS evaluation network to a budget by measuring a small grid of (C, cells).

No formula: every candidate ``NetworkCIFAR(C, layers, genotype)`` is built and measured through
the budget oracle (``ctx.check``: fvcore MACs, params, and measured ONNX latency when the budget
limits latency). Among the candidates that fit, the one with the most capacity wins (most params,
then most MACs, by default). Stem strides are tried in the given order and the first stride for
which something fits is used, so a stride-2 stem (a quarter of the MACs) is a fallback only.

For a fixed (layers, stem stride) the cost grows with C, so each C sweep stops at the first
candidate over budget (fewer measurements, same answer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from compress.budgets import BudgetCheck, Cost
from compress.errors import BudgetUnreachableError, ConfigError
from compress.strategies.darts.genotype import Genotype
from compress.strategies.darts.model import NetworkCIFAR

__all__ = ["size_to_budget", "SizingResult", "DEFAULT_C", "DEFAULT_LAYERS"]

DEFAULT_C: tuple[int, ...] = (4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 36)
DEFAULT_LAYERS: tuple[int, ...] = (3, 5, 8, 11, 14, 20)

CheckFn = Callable[[nn.Module], "tuple[Cost, BudgetCheck, float | None]"]


class SizingResult(NamedTuple):
    """``(C, layers, cost)`` of the chosen network, then its stem stride, the measured latency
    (ms, or None) and every measured candidate (JSON-ready dicts)."""

    C: int
    layers: int
    cost: Cost
    stem_stride: int
    latency_ms: float | None
    trials: list[dict[str, Any]]


def _check_fn(ctx_or_check_fn: Any) -> CheckFn:
    if hasattr(ctx_or_check_fn, "check") and callable(ctx_or_check_fn.check):
        return ctx_or_check_fn.check
    if callable(ctx_or_check_fn):
        return ctx_or_check_fn
    raise ConfigError("size_to_budget needs a StrategyContext or a callable model -> (Cost, BudgetCheck, latency_ms).")


def size_to_budget(
    genotype: Genotype,
    ctx_or_check_fn: Any,
    num_classes: int,
    input_shape: Sequence[int],
    candidates_C: Sequence[int] = DEFAULT_C,
    candidates_layers: Sequence[int] = DEFAULT_LAYERS,
    *,
    stem_strides: Sequence[int] = (1,),
    capacity: str = "params",
    stem_multiplier: int = 3,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> SizingResult:
    """Pick ``(C, layers)`` of ``NetworkCIFAR(C, num_classes, layers, genotype)`` with the most capacity within budget.

    Args:
        genotype: the cells.
        ctx_or_check_fn: a :class:`~compress.strategies.base.StrategyContext` (its ``check``) or a
            callable ``model -> (Cost, BudgetCheck, latency_ms | None)``.
        num_classes, input_shape: classifier outputs and ``(C_in, H, W)`` (C_in sets the stem input).
        candidates_C: initial channel counts to try (even numbers; FactorizedReduce halves them).
        candidates_layers: cell counts to try.
        stem_strides: stem strides in order of preference (e.g. ``(1, 2)``).
        capacity: ``"params"`` (maximise params, then MACs) or ``"macs"`` (the reverse).
        stem_multiplier: stem width factor (3).
        on_trial: called with each measured candidate's record.

    Returns:
        :class:`SizingResult`; ``result.C, result.layers, result.cost`` are the chosen network's.

    Raises:
        BudgetUnreachableError: no candidate fits; the message gives the smallest cost measured.
        ConfigError: empty or invalid candidate lists, unknown ``capacity``.
    """
    check = _check_fn(ctx_or_check_fn)
    if capacity not in ("params", "macs"):
        raise ConfigError(f"capacity must be 'params' or 'macs', got {capacity!r}.")
    cs = sorted(set(int(c) for c in candidates_C))
    ls = sorted(set(int(v) for v in candidates_layers))
    if not cs or not ls or min(cs) < 2 or min(ls) < 1 or any(c % 2 for c in cs):
        raise ConfigError(f"candidates_C must be even numbers >= 2 and candidates_layers >= 1, got {cs} and {ls}.")
    if not stem_strides or any(s not in (1, 2) for s in stem_strides):
        raise ConfigError(f"stem_strides must be a non-empty sequence of 1 and/or 2, got {tuple(stem_strides)}.")
    in_channels = int(input_shape[0])
    trials: list[dict[str, Any]] = []
    smallest: tuple[Cost, BudgetCheck, dict] | None = None
    for stride in stem_strides:
        fits: list[tuple[tuple[int, int], int, int, Cost, float | None]] = []
        for layers in ls:
            for C in cs:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    net = NetworkCIFAR(C, num_classes, layers, genotype, in_channels=in_channels,
                                       stem_multiplier=stem_multiplier, stem_stride=stride).eval()
                cost, chk, lat = check(net)
                rec = {"C": C, "layers": layers, "stem_stride": stride, "macs": int(cost.macs),
                       "params": int(cost.params), "latency_ms": lat, "ok": bool(chk.ok)}
                trials.append(rec)
                if on_trial is not None:
                    on_trial(rec)
                if smallest is None or (cost.macs, cost.params) < (smallest[0].macs, smallest[0].params):
                    smallest = (cost, chk, rec)
                if not chk.ok:
                    break  # larger C only costs more at this depth and stride
                key = (cost.params, cost.macs) if capacity == "params" else (cost.macs, cost.params)
                fits.append((key, C, layers, cost, lat))
        if fits:
            _key, C, layers, cost, lat = max(fits, key=lambda f: (f[0], -f[2], f[1]))
            return SizingResult(C, layers, cost, stride, lat, trials)
    if smallest is None:  # pragma: no cover - candidate lists are validated non-empty above
        raise ConfigError("size_to_budget measured no candidate.")
    cost, chk, rec = smallest
    raise BudgetUnreachableError(
        f"No DARTS network fits the budget: the smallest candidate (C={rec['C']}, {rec['layers']} cells, "
        f"stem stride {rec['stem_stride']}) costs {cost.macs:,} MACs and {cost.params:,} params and violates "
        + "; ".join(str(v) for v in chk.violations)
        + ". Loosen the budget, add smaller candidates_C / candidates_layers, or allow stem stride 2."
    )
