"""pytest-benchmark suite: compress wall time, exported latency per target, counting/profiling overhead.

Groups (``@pytest.mark.benchmark(group=...)``):

* ``compress-wall`` -- one ``compress()`` call per registered strategy
  (``compress.registry.list_strategies()``; a new strategy is benchmarked as soon as it is
  registered) on :class:`compress.testing.TinyConvNet` and the digits task, budget
  ``macs=0.5x``, with the strategy's fast config from ``CONTRACT_CONFIGS`` in
  ``tests/integration/test_pipeline.py``. One round each (a call takes seconds).
* ``latency-<target>`` for ``cpu-1t``, ``cpu-2t``, ``ort-mobile`` -- one onnxruntime
  ``InferenceSession.run`` of batch 1 at ``(1, 3, 32, 32)``, teacher vs student, under the
  target's session options. The pair comes from one gp-prune run per module: timm ``resnet18``
  (10 classes, untrained) to ``macs=0.5x`` on digits. ``ort-mobile`` runs the ORT-format files
  (``student.ort`` written by compress, ``teacher.ort`` converted by the fixture).
* ``overhead`` -- fvcore MAC/param counting (``measure_cost``) and ONNX-graph counting
  (``onnx_cost``) of resnet18 at 3x32x32, ``export_onnx``, and ``profile_latency`` with few
  repeats (from the ``.onnx`` file, and from the module, which adds an export).

``benchmark.extra_info`` of each row carries the figures behind it: MACs and params per sample,
the student/teacher MACs ratio, the latency ratio (student median / teacher median of this
session, same target), the per-phase ``wall_s`` of compress, and the measured latencies.

Run (never part of ``make test``: every test carries the ``bench`` marker and ``testpaths`` is
``tests``; pyproject's ``addopts`` disables benchmarking, so ``--benchmark-enable`` is needed)::

    OMP_NUM_THREADS=1 .venv/bin/pytest benchmarks -m bench --benchmark-enable --benchmark-only \
        --benchmark-group-by=group --benchmark-autosave          # or: make bench-suite

Compare with earlier runs (saved under ``.benchmarks/<machine>/NNNN_*.json``, git-ignored)::

    .venv/bin/pytest benchmarks -m bench --benchmark-enable --benchmark-only \
        --benchmark-group-by=group --benchmark-compare            # against the latest save
    .venv/bin/pytest ... --benchmark-compare=0001 --benchmark-compare-fail=median:25%
    .venv/bin/pytest-benchmark compare 0001 0002 --group-by=group   # two saved runs, no rerun

Select one group with ``-k``, e.g. ``-k latency`` or ``-k compress_wall``. Without
``--benchmark-enable`` each benchmark body runs once, untimed (a smoke run).

Notes: gp-prune's default ``channel_rounding="measured"`` calibrates per-layer latencies once per
target and caches them under ``$SLIMFORGE_CACHE`` (default ``~/.cache/slimforge``), so the first
run on a fresh cache includes that calibration. The ``.ort`` files come from onnxruntime's converter
without ``target_platform="amd64"``, which leaves out the x86-only NCHWc layout transform, so on an
x86 host the ``latency-ort-mobile`` rows are several times slower than ``latency-cpu-1t``. Timings on a shared machine are noisy; compare
medians and use ``--benchmark-compare-fail`` thresholds well above the run-to-run spread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.api import compress
from compress.budgets import measure_cost, onnx_cost
from compress.exporters import export_onnx
from compress.exporters.mobile import convert_to_ort
from compress.models import load_model
from compress.profiling import PRESETS, Target, profile_latency
from compress.registry import list_strategies
from compress.testing import TinyConvNet

pytestmark = pytest.mark.bench

INPUT_SHAPE = (3, 32, 32)
BUDGET = "macs=0.5x"
LATENCY_TARGETS = ("cpu-1t", "cpu-2t", "ort-mobile")
LATENCY_MODEL = "timm:resnet18"
# gp-prune settings of the latency pair: bisection only (no fine-tuning), so the fixture stays
# under a minute; latency does not depend on the weights' values.
LATENCY_GP_CONFIG = {"epochs": 0, "bisection_steps": 5, "calib_samples": 64}

# teacher median (s) per target measured in this session, for the student's latency ratio
_TEACHER_MEDIAN_S: dict[str, float] = {}


def _median_s(benchmark) -> float | None:
    """Median seconds per call of a finished benchmark; None when benchmarking is disabled."""
    stats = getattr(benchmark, "stats", None)
    return float(stats.stats.median) if stats is not None else None


# --------------------------------------------------------------------------------------------
# compress-wall
# --------------------------------------------------------------------------------------------
@pytest.mark.benchmark(group="compress-wall")
@pytest.mark.parametrize("strategy", list_strategies())
def test_compress_wall(benchmark, strategy, contract_configs, digits_task, tmp_path):
    if strategy not in contract_configs:
        pytest.fail(f"strategy {strategy!r} has no entry in CONTRACT_CONFIGS (tests/integration/test_pipeline.py); "
                    "add a fast config there to benchmark it")
    teacher = TinyConvNet(num_classes=10).eval()

    def run():
        torch.manual_seed(0)
        return compress(teacher, BUDGET, data=digits_task, strategy=strategy, config=contract_configs[strategy],
                        progress=False, out_dir=tmp_path / "out", resume=False, latency_repeats=5, latency_warmup=1)

    res = benchmark.pedantic(run, rounds=1, iterations=1)
    assert res.budget_check.ok, res.budget_check.violations
    assert res.validation.ok, res.validation.mismatches
    t, s = res.teacher, res.student_report
    benchmark.extra_info.update({
        "strategy": strategy,
        "teacher": "TinyConvNet",
        "data": "digits 3x32x32",
        "budget": BUDGET,
        "teacher_macs": t.cost.macs,
        "student_macs": s.cost.macs,
        "macs_ratio": s.cost.macs / t.cost.macs,
        "teacher_params": t.cost.params,
        "student_params": s.cost.params,
        "teacher_latency_ms_cpu1t": t.latency.median_ms if t.latency else None,
        "student_latency_ms_cpu1t": s.latency.median_ms if s.latency else None,
        "student_accuracy_val": s.accuracy_val,
        "wall_s": {k: round(float(v), 3) for k, v in res.wall_s.items()},
    })


# --------------------------------------------------------------------------------------------
# latency-<target>
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployed(tmp_path_factory, digits_task):
    """One gp-prune run (timm resnet18 -> macs=0.5x) whose teacher/student files are timed."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("deployed")
    model = load_model(LATENCY_MODEL, num_classes=10).eval()
    res = compress(model, BUDGET, data=digits_task, strategy="gp-prune", config=LATENCY_GP_CONFIG, progress=False,
                   out_dir=out, latency_repeats=5, latency_warmup=1, model_spec=LATENCY_MODEL)
    assert res.budget_check.ok, res.budget_check.violations
    files = {
        ("teacher", "onnx"): out / "teacher.onnx",
        ("student", "onnx"): out / "student.onnx",
        ("teacher", "ort"): convert_to_ort(out / "teacher.onnx", out / "teacher.ort"),
        ("student", "ort"): out / "student.ort",
    }
    for path in files.values():
        assert path.is_file(), path
    return {
        "files": files,
        "cost": {"teacher": res.teacher.cost, "student": res.student_report.cost},
        "wall_s": res.wall_s,
    }


def _latency_params():
    # teacher before student within each target, so the student row can carry the ratio
    return [pytest.param(t, role, id=f"{t}-{role}", marks=pytest.mark.benchmark(group=f"latency-{t}"))
            for t in LATENCY_TARGETS for role in ("teacher", "student")]


@pytest.mark.parametrize(("target_name", "role"), _latency_params())
def test_latency(benchmark, deployed, target_name, role):
    import onnxruntime as ort

    target = Target.preset(target_name, input_shape=INPUT_SHAPE)
    path = deployed["files"][(role, target.model_format)]
    sess = ort.InferenceSession(str(path), sess_options=target.session_options(), providers=[target.provider])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((target.batch_size, *INPUT_SHAPE)).astype(np.float32)
    feed = {name: x}
    (logits,) = sess.run(None, feed)
    assert logits.shape == (target.batch_size, 10)

    benchmark(sess.run, None, feed)

    cost, t_cost = deployed["cost"][role], deployed["cost"]["teacher"]
    median = _median_s(benchmark)
    info = {
        "model": LATENCY_MODEL,
        "role": role,
        "file": path.name,
        "target": target.to_dict(),
        "macs": cost.macs,
        "params": cost.params,
        "macs_ratio": cost.macs / t_cost.macs,
        "median_ms": None if median is None else median * 1e3,
    }
    if role == "teacher" and median is not None:
        _TEACHER_MEDIAN_S[target_name] = median
    elif role == "student" and median is not None and target_name in _TEACHER_MEDIAN_S:
        ratio = median / _TEACHER_MEDIAN_S[target_name]
        info["latency_ratio"] = ratio  # student / teacher median, same target, this session
        # the figure of merit: (1 - latency ratio) / (1 - MACs ratio)
        info["latency_reduction_over_macs_reduction"] = (1 - ratio) / (1 - info["macs_ratio"])
    benchmark.extra_info.update(info)


# --------------------------------------------------------------------------------------------
# overhead
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return load_model(LATENCY_MODEL, num_classes=10).eval()


@pytest.fixture(scope="module")
def example():
    return torch.randn(1, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.mark.benchmark(group="overhead")
def test_overhead_measure_cost(benchmark, resnet18, example):
    cost = benchmark.pedantic(measure_cost, args=(resnet18, example), rounds=5, iterations=1, warmup_rounds=1)
    assert cost.macs > 0 and cost.params > 0
    benchmark.extra_info.update({"what": "fvcore count", "model": LATENCY_MODEL, "input_shape": list(INPUT_SHAPE),
                                 "macs": cost.macs, "params": cost.params})


@pytest.mark.benchmark(group="overhead")
def test_overhead_onnx_cost(benchmark, deployed):
    path = deployed["files"][("teacher", "onnx")]
    cost = benchmark.pedantic(onnx_cost, args=(path,), rounds=5, iterations=1, warmup_rounds=1)
    fv = deployed["cost"]["teacher"]
    # the exported graph folds BatchNorm into the convs, so the two counts differ slightly
    assert abs(cost.macs - fv.macs) <= 0.02 * fv.macs, (cost.macs, fv.macs)
    benchmark.extra_info.update({"what": "ONNX graph count", "model": LATENCY_MODEL, "macs": cost.macs,
                                 "params": cost.params, "fvcore_macs": fv.macs, "fvcore_params": fv.params})


@pytest.mark.benchmark(group="overhead")
def test_overhead_export_onnx(benchmark, resnet18, example, tmp_path):
    out = tmp_path / "resnet18.onnx"
    path = benchmark.pedantic(export_onnx, args=(resnet18, example, out), rounds=3, iterations=1)
    assert path.is_file()
    benchmark.extra_info.update({"what": "export_onnx (dynamo, checked)", "model": LATENCY_MODEL,
                                 "bytes": path.stat().st_size})


@pytest.mark.benchmark(group="overhead")
@pytest.mark.parametrize("source", ["onnx-file", "module"])
def test_overhead_profile_latency(benchmark, source, deployed, resnet18):
    target = Target.preset("cpu-1t", input_shape=INPUT_SHAPE)
    model = deployed["files"][("teacher", "onnx")] if source == "onnx-file" else resnet18
    stats = benchmark.pedantic(profile_latency, args=(model, target), kwargs={"warmup": 2, "repeats": 10},
                               rounds=3, iterations=1)
    assert stats.repeats == 10 and stats.median_ms > 0
    benchmark.extra_info.update({"what": f"profile_latency from {source} (warmup 2, repeats 10)",
                                 "model": LATENCY_MODEL, "target": target.name,
                                 "measured_median_ms": stats.median_ms, "measured_p90_ms": stats.p90_ms})
