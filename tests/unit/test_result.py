"""CompressionResult pieces that need no compress() run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from compress.result import CompressionResult


def _result(strategy: str, rounding: str | None, teacher_ms: float, student_ms: float):
    def rep(macs, ms):
        return SimpleNamespace(cost=SimpleNamespace(macs=macs), latency=SimpleNamespace(median_ms=ms))

    return SimpleNamespace(teacher=rep(100, teacher_ms), student_report=rep(50, student_ms),
                           target=SimpleNamespace(name="cpu-1t"), strategy=strategy,
                           config={} if rounding is None else {"channel_rounding": rounding})


@pytest.mark.parametrize("strategy, rounding, advises_rounding", [
    ("gp-prune", "off", True), ("gp-prune", "fixed", True), ("gp-prune", "measured", False), ("grow", None, False),
])
def test_a_latency_cut_below_the_macs_cut_warns_with_advice_that_applies(strategy, rounding, advises_rounding):
    out = CompressionResult.speedup_summary(_result(strategy, rounding, 1.0, 0.8))  # MACs -50%, latency -20%
    assert out["macs_cut"] == pytest.approx(0.5) and out["latency_cut"] == pytest.approx(0.2)
    assert "latency budget" in out["warning"]
    assert ("channel_rounding='measured'" in out["warning"]) is advises_rounding
    assert CompressionResult.speedup_summary(_result(strategy, rounding, 1.0, 0.5))["warning"] is None
