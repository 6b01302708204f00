"""A pytest plugin so users can assert a budget inside their own test suites.

Installed as the ``slimforge`` pytest11 entry point; the fixture is available without imports::

    def test_student_fits(slimforge_budget):
        slimforge_budget("out/student.onnx", "params=300k,latency=2ms", target="cpu-1t")
        slimforge_budget(my_module, "macs=20M", example_inputs=torch.randn(1, 3, 32, 32))

The check counts MACs/params (fvcore for modules, the ONNX graph for ``.onnx`` files) and, when
the budget limits latency, measures it on the target. A miss fails the test with every
violation and its margin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from torch import nn

from compress.budgets import Budget, BudgetError, measure_cost, onnx_cost
from compress.profiling import Target, profile_latency


def check_budget(model: Any, budget: Any, *, target: Any = "cpu-1t", example_inputs: Any = None,
                 repeats: int = 30) -> Any:
    """Return the :class:`BudgetCheck` of ``model`` (module or ONNX path) against ``budget``.

    Raises:
        BudgetError: a relative budget (it needs a teacher) or a bad spec.
    """
    b = Budget.coerce(budget)
    if b.is_relative:
        raise BudgetError("slimforge_budget takes absolute limits (e.g. 'macs=20M'); relative ones need a teacher.")
    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise BudgetError("pass example_inputs=torch.randn(1, C, H, W) to check an nn.Module.")
        cost = measure_cost(model, example_inputs)
    else:
        cost = onnx_cost(Path(model))
    latency = None
    if b.needs_latency:
        t = Target.resolve(target, input_shape=tuple(cost.input_shape) or None)
        latency = profile_latency(model, t, repeats=repeats, example_inputs=example_inputs).median_ms
    return b.check(cost, latency_ms=latency)


@pytest.fixture()
def slimforge_budget():
    """A callable ``(model_or_onnx_path, budget, *, target="cpu-1t", example_inputs=None)`` that
    fails the test when the budget is not met."""

    def _assert(model: Any, budget: Any, **kw: Any):
        chk = check_budget(model, budget, **kw)
        if not chk.ok:
            pytest.fail("budget not met:\n" + "\n".join(f"  {v}" for v in chk.violations), pytrace=False)
        return chk

    return _assert
