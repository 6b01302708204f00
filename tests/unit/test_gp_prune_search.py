"""gp-prune's ratio search (issue 17: each probe of a resnet50 at 224x224 costs about 16 s):
:func:`bisect_to_budget` interpolates on the square root of the usage, so a MAC count that falls as
``(1 - t)^2`` is reached within the tolerance in fewer probes than by interpolating the usage itself,
and the network it returns still meets the budget."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from torch import nn

from compress.strategies.gp_prune import search
from compress.strategies.gp_prune.config import GPPruneConfig


class _Counted(nn.Module):
    def __init__(self, t: float):
        super().__init__()
        self.t = t


def _run(monkeypatch, macs_of, limit: float, *, sqrt: bool):
    """The search on a fake context whose candidate ``t`` has ``macs_of(t)`` MACs; returns (t, probes)."""
    budget = SimpleNamespace(max_macs=limit, max_params=None, max_latency_ms=None, max_memory_bytes=None,
                             needs_latency=False, describe=lambda: f"macs<={limit:g}")
    probes = []

    def check(m):
        macs = macs_of(m.t)
        probes.append(m.t)
        headroom = {"macs": limit - macs}
        return (SimpleNamespace(macs=macs, params=0), SimpleNamespace(ok=macs <= limit, headroom=headroom,
                                                                       violations=()), None)

    ctx = SimpleNamespace(example_inputs=SimpleNamespace(shape=(1, 3, 8, 8)), data=SimpleNamespace(spec=SimpleNamespace(num_classes=2)),
                          budget=budget, check=check, log=lambda **r: None, progress=lambda *a, **k: None)
    monkeypatch.setattr(search, "forward_or_explain", lambda *a, **k: None)
    if not sqrt:  # the previous rule: interpolate the usage itself
        monkeypatch.setattr(search.math, "sqrt", lambda v: v)
    cfg = GPPruneConfig()
    best, t, _ = search.bisect_to_budget(ctx, cfg, _Counted(0.0), 0.95, _Counted, "everything",
                                         lambda t: {"ratio": t}, [])
    return best, t, probes


@pytest.mark.parametrize("target", [0.5, 0.3, 0.15])
def test_square_root_interpolation_meets_the_budget_in_fewer_probes(monkeypatch, target):
    full = 4.1e9

    def macs_of(t):  # a uniform ratio t keeps (1 - t) of every width: MACs fall as (1 - t)^2, plus a fixed part
        return full * (0.02 + 0.98 * (1.0 - t) ** 2)

    limit = target * full
    best, t, probes = _run(monkeypatch, macs_of, limit, sqrt=True)
    monkeypatch.undo()
    _, t_old, probes_old = _run(monkeypatch, macs_of, limit, sqrt=False)
    tol = GPPruneConfig().prune.budget_tolerance
    for tt in (t, t_old):
        assert 1.0 - tol <= macs_of(tt) / limit <= 1.0  # met, within the tolerance
    assert best.t == t
    assert len(probes) < len(probes_old)
    if target >= 0.3:  # the unpruned model, the largest cut, and at most two interpolations
        assert len(probes) <= 4, (probes, probes_old)
    assert math.isclose(t, 1 - ((target - 0.02) / 0.98) ** 0.5, abs_tol=0.01)
