"""compress.profiling.latency_model: interleaved end-to-end timing. (The benchmark-only latency model,
node by node, is tested in ``benchmarks/test_latency_model_fit.py``.) No assertion here depends on how
fast anything runs."""

from __future__ import annotations

import math

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


def test_measure_interleaved_fills_a_minimum_round_time_from_the_warm_up(monkeypatch):
    # a clock that advances 0.5 ms per reading: 2 warm-up calls read as 0.25 ms per call, so 10 ms
    # per round needs 40 timed calls (no assertion depends on how fast anything runs)
    import compress.profiling.latency_model as lm

    tick_s, warmup, min_round_ms = 5e-4, 2, 10.0
    ticks = iter(range(10**6))
    monkeypatch.setattr(lm.time, "perf_counter", lambda: next(ticks) * tick_s)
    nets = [TinyResidualNet(width=8).eval()]
    (res,) = measure_interleaved(nets, TARGET, rounds=2, repeats=3, warmup=warmup, min_round_ms=min_round_ms)
    assert res["calls"] == math.ceil(min_round_ms / (tick_s * 1e3 / warmup))  # one reading spans the warm-up: 40
    (plain,) = measure_interleaved(nets, TARGET, rounds=2, repeats=3, warmup=2)
    assert plain["calls"] == 3
    with pytest.raises(ProfilingError, match="min_round_ms"):
        measure_interleaved(nets, TARGET, min_round_ms=-1.0)


def test_latency_estimate_carries_the_standard_error_of_its_median():
    import copy
    import pickle

    from compress.profiling import LatencyEstimate

    est = LatencyEstimate.from_samples([0.4, 0.6, 0.5, 0.4, 0.6], scale=2.0)
    assert float(est) == pytest.approx(1.0)  # median ratio 0.5 x scale 2
    assert est.rel_se == pytest.approx(1.2533 * 0.1 / 5 ** 0.5 / 0.5, rel=1e-3)  # sd 0.1 (ddof 1)
    assert copy.deepcopy(est).rel_se == est.rel_se == pickle.loads(pickle.dumps(est)).rel_se
    assert LatencyEstimate.from_samples([0.7]).rel_se == 0.0 and LatencyEstimate(1.0, float("nan")).rel_se == 0.0
    assert est * 2 == pytest.approx(2.0)  # an ordinary float otherwise
