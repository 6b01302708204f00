"""Counting what a model costs: MACs and parameters, measured with fvcore.

Units
-----
``macs``
    Multiply-accumulate operations for **one sample** (batch 1), as counted by
    :class:`fvcore.nn.FlopCountAnalysis`. fvcore counts *one fused multiply-add as one
    flop*, so its "flops" are MACs: half of what ``torch.utils.flop_counter`` reports as
    FLOPs. We therefore never call them FLOPs. A 3x3 conv from 16 to 32 channels on a
    32x32 output costs ``32*16*3*3*32*32 = 4,718,592`` MACs.
    fvcore also counts eval-mode BatchNorm as ``2 * numel`` (affine) and adaptive average
    pooling as ``numel(input)``; element-wise ops (ReLU, add) are not counted.
``params``
    Number of parameter elements (buffers such as BN running statistics excluded).
``uncounted_ops``
    Ops that fvcore saw in the trace but has no counting rule for (``aten::add_``,
    ``aten::max_pool2d`` ...), with how often they occur. They stay visible in every
    report rather than being silently treated as free.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compress.budgets.errors import CostError

__all__ = ["Cost", "measure_cost"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cost:
    """The static cost of a model for one input sample.

    Attributes:
        macs: multiply-accumulates per sample (fvcore counts one fused multiply-add as one).
        params: parameter elements.
        uncounted_ops: op name -> occurrences fvcore could not count.
        per_module: qualified module name -> ``{"macs": int, "params": int}`` for every
            leaf module with a non-zero count (the per-module table).
        input_shape: the per-sample input shape the MACs were counted at, e.g. ``(3, 32, 32)``.
    """

    macs: int
    params: int
    uncounted_ops: Mapping[str, int] = field(default_factory=dict)
    per_module: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()

    def to_dict(self, *, with_table: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "macs": int(self.macs),
            "params": int(self.params),
            "uncounted_ops": dict(self.uncounted_ops),
            "input_shape": list(self.input_shape),
        }
        if with_table:
            out["per_module"] = {k: dict(v) for k, v in self.per_module.items()}
        return out

    def table(self, top: int | None = None) -> list[tuple[str, int, int]]:
        """Rows ``(module, macs, params)`` sorted by MACs, largest first."""
        rows = sorted(
            ((k, int(v.get("macs", 0)), int(v.get("params", 0))) for k, v in self.per_module.items()),
            key=lambda r: (-r[1], -r[2], r[0]),
        )
        return rows[:top] if top else rows


def _as_tuple(example_inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise CostError(
        f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}; "
        "pass e.g. torch.randn(1, 3, 32, 32)."
    )


def measure_cost(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> Cost:
    """Count MACs (fvcore) and parameters of ``model`` for one sample.

    Args:
        model: any ``nn.Module``. It is traced in eval mode; its train/eval state is restored.
        example_inputs: a tensor ``(B, C, H, W)`` (or tuple of tensors); only the first sample
            of the batch is used, so the result is per sample.

    Returns:
        :class:`Cost`.

    Raises:
        CostError: the model cannot be traced by fvcore (the message names the failing
            module or op and suggests a fix).
    """
    from fvcore.nn import FlopCountAnalysis

    inputs = tuple(t[:1] for t in _as_tuple(example_inputs))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = int(analysis.total())
            by_module = analysis.by_module()
            unsupported = dict(analysis.unsupported_ops())
    except CostError:
        raise
    except Exception as exc:  # fvcore surfaces raw tracer errors; wrap them
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CostError(
            f"fvcore could not trace {type(model).__name__} to count MACs: {first}. "
            "Make forward() traceable (no data-dependent Python control flow, tensors in/out)."
        ) from exc
    finally:
        model.train(was_training)

    per_module: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if name == "" or any(True for _ in module.children()):
            continue
        n_params = sum(p.numel() for p in module.parameters(recurse=False))
        macs = int(by_module.get(name, 0))
        if macs or n_params:
            per_module[name] = {"macs": macs, "params": n_params}
    params = sum(p.numel() for p in model.parameters())
    return Cost(
        macs=total,
        params=int(params),
        uncounted_ops=unsupported,
        per_module=per_module,
        input_shape=tuple(inputs[0].shape[1:]),
    )
