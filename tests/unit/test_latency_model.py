"""compress.profiling.latency_model: interleaved end-to-end timing. (The benchmark-only latency model,
node by node, is tested in ``benchmarks/test_latency_model_fit.py``.) No assertion here depends on how
fast anything runs."""

from __future__ import annotations

import pytest

from compress.profiling import ProfilingError, Target
from compress.profiling.latency_model import measure_interleaved
from compress.testing import TinyResidualNet

TARGET = Target.preset("cpu-1t", input_shape=(3, 32, 32))


def test_measure_interleaved_gives_round_medians():
    nets = [TinyResidualNet(width=8).eval(), TinyResidualNet(width=16).eval()]
    res = measure_interleaved(nets, TARGET, rounds=3, repeats=2, warmup=1)
    assert len(res) == 2
    for r in res:
        assert len(r["rounds_ms"]) == 3 and 0 < r["min_ms"] <= r["median_ms"] <= max(r["rounds_ms"])
    with pytest.raises(ProfilingError, match="rounds"):
        measure_interleaved(nets, TARGET, rounds=0)
