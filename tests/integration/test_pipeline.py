"""The main job end to end: compress() contract, report keys, errors, and the user's model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress import list_strategies
from compress.api import compress
from compress.budgets import BudgetError
from compress.errors import BudgetUnreachableError, StrategyError, UnsupportedModelError
from compress.registry import get_strategy
from compress.serialization import load_student
from compress.testing import HiddenStateNet, NoClassifierNet, TinyConvNet, TinyResidualNet, TinyShuffleNet

# Fast settings per registered strategy. A strategy registered without an entry here fails
# test_every_strategy_has_a_contract_config, so nothing ships untested.
CONTRACT_CONFIGS = {
    "gp-prune": {"epochs": 1, "bisection_steps": 5, "calib_samples": 64, "max_steps_per_epoch": 5},
    "darts-gal": {"search_C": 4, "search_layers": 3, "search_stem_stride": 2, "search_epochs": 1,
                  "search_batch_size": 32, "search_max_steps_per_epoch": 2, "search_val_batches": 1,
                  "candidates_C": [4, 6, 8], "candidates_layers": [3], "stem_strides": [1, 2],
                  "baseline_epochs": 1, "baseline_max_steps_per_epoch": 3, "gal_epochs": 1, "gal_batch_size": 32,
                  "gal_max_g_steps_per_epoch": 2, "n_critic": 5, "mask_step": 1, "mask_lr": 0.05,
                  "sparse_lambda": 0.5, "final_epochs": 1, "final_max_steps_per_epoch": 3},
    "eg-nas": {"search_C": 4, "search_layers": 3, "partial_channels": 1, "search_stem_stride": 2, "search_epochs": 2,
               "warmup_epochs": 1, "batch_size": 32, "es_batch_size": 32, "max_steps_per_epoch": 2,
               "search_val_batches": 1, "restarts": 2, "popsize": 4, "candidates_C": [4, 6, 8],
               "candidates_layers": [3], "stem_strides": [1, 2], "final_epochs": 1, "final_max_steps_per_epoch": 3},
    "grow": {"stage_epochs": 1, "max_iterations": 3, "max_steps_per_epoch": 3, "score_max_batches": 1,
             "final_epochs": 1, "final_max_steps_per_epoch": 5},
}

# the sections each strategy promises a reader of report.md (beyond the common summary)
REPORT_SECTIONS = {
    "darts-gal": ["## Nodes kept per cell", "## Genotype", "## Cells after pruning"],
    "grow": ["## Growth decisions", "| iteration | op | edge |", "## Final student structure", "digraph student"],
    "gp-prune": ["## Channels kept per layer", "| layer | teacher | student | kept |"],
    "eg-nas": ["## Search (cmaes", "| epoch | alpha entropy |", "## Genotype", "normal cell"],
}

REPORT_KEYS = [
    "strategy", "seed", "target", "config", "versions",
    "budget.spec", "budget.ok", "budget.violations", "budget.allow_slower",
    "budget.latency_vs_teacher.teacher_ms", "budget.latency_vs_teacher.student_ms", "budget.latency_vs_teacher.reduced",
    "onnx.path", "onnx.parity.ok", "onnx.parity.max_abs_diff", "onnx.parity.top1_agreement",
    "wall_s.total",
] + [
    f"{who}.{key}"
    for who in ("teacher", "student")
    for key in ("macs", "params", "accuracy.val", "accuracy.test", "latency_ms.median", "latency_ms.p90")
]


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def _assert_mobile_artifacts(out_dir, report: dict, student: torch.nn.Module, x: torch.Tensor) -> None:
    """student.ort loads in onnxruntime and computes what the student computes; the NNAPI/CoreML
    usability report is in report.json and the manifest; the manifest's hash is the file's."""
    import hashlib

    import numpy as np
    import onnxruntime as ort

    ort_file = out_dir / "student.ort"
    assert ort_file.read_bytes()[4:8] == b"ORTM"  # the ORT-format flatbuffer identifier
    sess = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = student.eval()(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    usability = report["mobile"]["usability"]
    assert set(usability) == {"nnapi", "coreml_neuralnetwork", "coreml_mlprogram"}
    for ep, info in usability.items():
        assert 0 <= info["supported_nodes"] <= info["nodes"] and info["nodes"] > 0, ep
        assert info["coverage"] == pytest.approx(info["supported_nodes"] / info["nodes"]), ep
        assert info["suitability"] in {"YES", "MAYBE", "NO"}, ep
    manifest = json.loads((out_dir / "manifest.json").read_text())
    row = next(a for a in manifest["artifacts"] if a["file"] == "student.ort")
    assert row["sha256"] == hashlib.sha256(ort_file.read_bytes()).hexdigest()
    assert row["mobile_usability"] == usability


def test_every_strategy_has_a_contract_config():
    missing = sorted(set(list_strategies()) - set(CONTRACT_CONFIGS))
    assert not missing, f"registered strategies without a contract test config: {missing}"


@pytest.mark.parametrize("strategy", sorted(CONTRACT_CONFIGS))
@pytest.mark.parametrize("teacher_cls", [TinyConvNet, TinyResidualNet])
def test_registry_contract(strategy, teacher_cls, digits_task, tmp_path):
    torch.manual_seed(0)
    teacher = teacher_cls(num_classes=10).eval()
    # allow_slower: this contract is the MACs budget, parity and the report; whether a student of a
    # 3-layer teacher wins on wall-clock is a timing question no test may hang on (on a 2-core
    # AVX-512 machine the darts-gal and eg-nas students of these teachers ran 2-6x *slower*:
    # refused by default, see test_a_student_slower_than_its_teacher_is_refused_unless_allowed)
    res = compress(teacher, "macs=0.5x", data=digits_task, strategy=strategy, config=CONTRACT_CONFIGS[strategy],
                   progress=False, out_dir=tmp_path, latency_repeats=5, latency_warmup=1, allow_slower=True)
    assert res.budget_check.ok
    assert res.student_report.cost.macs <= 0.5 * res.teacher.cost.macs
    assert res.validation.ok and res.validation.top1_agreement == 1.0
    report = json.loads((tmp_path / "report.json").read_text())
    for key in REPORT_KEYS:
        _get(report, key)  # KeyError = broken contract
    assert report["strategy"] == strategy
    assert report["budget"]["ok"] is True and report["budget"]["allow_slower"] is True
    vs = report["budget"]["latency_vs_teacher"]  # measured side by side, recorded whether or not it is faster
    assert vs["teacher_ms"] > 0 and vs["student_ms"] > 0 and vs["reduced"] == (vs["student_ms"] < vs["teacher_ms"])
    assert report["student"]["macs"] == res.student_report.cost.macs
    assert report["student"]["latency_ms"]["median"] > 0
    assert {"measure_teacher", "export", "validate", "profile"} <= set(report["wall_s"])
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# slimforge report")
    for heading in REPORT_SECTIONS.get(strategy, []):
        assert heading in md, f"{strategy}: report.md lacks {heading!r}"
    assert (tmp_path / "student.ort").is_file() and (tmp_path / "manifest.json").is_file()
    assert report["mobile"]["usability"]["nnapi"]["nodes"] > 0
    # the saved student reloads without pickle and computes the same function
    reloaded = load_student(tmp_path, base=teacher_cls(num_classes=10))  # base ignored for new architectures
    x = digits_task.spec and next(iter(digits_task.val))[0][:4]
    torch.testing.assert_close(reloaded(x), res.student(x))
    _assert_mobile_artifacts(tmp_path, report, res.student, x)
    # no leftovers of atomic writes
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_user_model_unchanged_and_train_mode_kept(digits_task):
    model = TinyConvNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress(model, "macs=0.5x", data=digits_task, config={"epochs": 1, "bisection_steps": 3, "max_steps_per_epoch": 3},
             progress=False, latency_repeats=3, latency_warmup=1)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.features[0].out_channels == 16


def test_a_group_that_breaks_the_prune_is_kept_whole_and_reported(digits_task):
    # issue 19: the layer with channel-dependent state the graph cannot see breaks the group that feeds it;
    # that group is found, kept whole and named, and the rest is pruned to the budget
    res = compress(HiddenStateNet(), "macs=0.5x", data=digits_task, config={"epochs": 0, "bisection_steps": 3},
                   progress=False, latency_repeats=3, latency_warmup=1, mobile=False, memory=False, allow_slower=True)
    assert res.budget_check.ok
    (group,) = res.info["untouched_groups"]
    assert group["group"] == "features.3" and "features.6" in group["layers"] and "forward fails" in group["reason"]
    widths = res.info["layer_widths"]
    assert widths["features.3"] == 32 and widths["features.0"] < 16  # kept whole / pruned


@pytest.mark.parametrize("allocation", ["uniform", "latency"])
def test_a_channel_shuffle_network_is_pruned_partially_and_reports_its_untouched_groups(allocation, digits_task):
    # issue 19: the ShuffleNetV2 shuffle (view -> transpose -> reshape in forward) made Torch-Pruning divide by zero
    res = compress(TinyShuffleNet(), "macs=0.7x", data=digits_task, progress=False, mobile=False, memory=False,
                   allow_slower=True, config={"epochs": 0, "bisection_steps": 3, "metric": "l1", "allocation": allocation})
    assert res.budget_check.ok and res.validation.ok
    untouched = res.info["untouched_groups"]
    assert {u["group"] for u in untouched} == {"units.0.branch2.5", "units.1.branch2.5"}
    assert all("mixes channels" in u["reason"] for u in untouched)
    widths = res.info["layer_widths"]
    assert widths["units.0.branch2.5"] == widths["units.1.branch2.5"] == 16  # the shuffled channels stay
    teacher = {n: m.out_channels for n, m in TinyShuffleNet().named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert any(widths[n] < c for n, c in teacher.items())  # the rest is pruned


def test_a_budget_out_of_reach_without_the_unprunable_groups_names_them(digits_task):
    with pytest.raises(UnsupportedModelError) as err:
        compress(HiddenStateNet(), "macs=0.05x", data=digits_task, config={"epochs": 0, "bisection_steps": 2},
                 progress=False, latency_repeats=3, latency_warmup=1, mobile=False, memory=False)
    assert err.value.layer == "features.3"
    assert "'features.3'" in str(err.value) and "kept whole" in str(err.value)


def test_model_without_classifier_is_refused(digits_task):
    with pytest.raises(UnsupportedModelError, match=r"\(batch, 10\)"):
        compress(NoClassifierNet(), "macs=0.5x", data=digits_task, progress=False)


def test_unknown_strategy_suggests(digits_task):
    with pytest.raises(StrategyError, match="gp-prune"):
        compress(TinyConvNet(), "macs=0.5x", data=digits_task, strategy="gp_prune", progress=False)
    with pytest.raises(StrategyError, match="Registered strategies"):
        get_strategy("nope")


def test_bad_budget_raises_before_work(digits_task):
    with pytest.raises(BudgetError, match="Did you mean 'macs'"):
        compress(TinyConvNet(), "mac=0.5x", data=digits_task, progress=False)


def test_unreachable_budget(digits_task):
    with pytest.raises(BudgetUnreachableError, match="max_ratio"):
        compress(TinyConvNet(), "params=100", data=digits_task, config={"epochs": 0, "max_ratio": 0.5},
                 progress=False, latency_repeats=3, latency_warmup=1)


def test_progress_callback_and_history(digits_task):
    seen = []
    res = compress(TinyConvNet(), "macs=0.5x", data=digits_task,
                   config={"epochs": 2, "bisection_steps": 3, "max_steps_per_epoch": 3},
                   progress=lambda phase, done, total, info: seen.append(phase), latency_repeats=3, latency_warmup=1)
    assert {"bisection", "finetune", "calibrate"} <= set(seen)
    phases = [h["phase"] for h in res.history]
    assert phases.count("finetune") == 2 and "bisection" in phases
    oks = [h for h in res.history if h["phase"] == "bisection" and h["ok"]]
    assert min(h["ratio"] for h in oks) == pytest.approx(res.info["pruning_ratio"])


def test_peak_memory_budget_is_measured_and_honoured(digits_task, tmp_path):
    torch.manual_seed(0)
    teacher = TinyConvNet(num_classes=10).eval()
    cfg = {"epochs": 1, "bisection_steps": 3, "max_steps_per_epoch": 3}
    # an onnxruntime session of any student of this tiny net needs about as much as the teacher's
    # (the arena and thread pool dominate), so half the teacher's peak is out of reach
    with pytest.raises(BudgetUnreachableError, match="memory_bytes"):
        compress(teacher, "macs=0.5x,memory=0.5x", data=digits_task, config=cfg, progress=False,
                 latency_repeats=3, latency_warmup=1)
    res = compress(teacher, "macs=0.5x,memory=1.5x", data=digits_task, config=cfg, progress=False,
                   out_dir=tmp_path, latency_repeats=3, latency_warmup=1, allow_slower=True)  # memory, not speed
    report = json.loads((tmp_path / "report.json").read_text())
    t_mem, s_mem = report["teacher"]["peak_memory_bytes"], report["student"]["peak_memory_bytes"]
    assert 0 < t_mem["session"] < t_mem["process"] and 0 < s_mem["session"] < s_mem["process"]
    assert report["budget"]["limits"]["max_memory_bytes"] == pytest.approx(1.5 * t_mem["session"])
    assert report["budget"]["headroom"]["memory_bytes"] == pytest.approx(1.5 * t_mem["session"] - s_mem["session"])
    assert res.budget_check.ok and "peak memory MiB" in (tmp_path / "report.md").read_text()


def test_two_calls_with_the_same_data_and_seed_give_the_same_student(digits_task):
    # the training loader's shuffling generator is handed back as found, so a second call does not
    # see a different data order than the first
    teacher = TinyConvNet(num_classes=10).eval()
    gen = digits_task.train.generator
    before = gen.get_state().clone()
    cfg = {"epochs": 1, "bisection_steps": 3, "max_steps_per_epoch": 4}
    runs = [compress(teacher, "macs=0.5x", data=digits_task, config=cfg, progress=False, latency_repeats=3,
                     latency_warmup=1, mobile=False, memory=False).student.state_dict() for _ in range(2)]
    assert torch.equal(gen.get_state(), before)
    assert runs[0].keys() == runs[1].keys() and all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


# ------------------------------------------------------------------ a student must be faster (issue 16, part 6)


def _side_by_side(teacher_ms: float, student_ms: float):
    """A stand-in for the final side-by-side timing in compress.api: fixed figures, no clock."""
    def fake(models, target, example_inputs=None, *, rounds=10, repeats=20, warmup=3, min_round_ms=0.0):
        assert len(models) == 2 and str(models[0]).endswith("teacher.onnx") and str(models[1]).endswith("student.onnx")
        return [{"median_ms": ms, "min_ms": ms, "rounds_ms": [ms] * rounds} for ms in (teacher_ms, student_ms)]
    return fake


@pytest.mark.parametrize("student_ms", [1.25, 1.0])  # slower, and exactly as fast: neither is "compressed"
def test_a_student_slower_than_its_teacher_is_refused_unless_allowed(digits_task, tmp_path, monkeypatch, student_ms):
    monkeypatch.setattr("compress.measure.measure_interleaved", _side_by_side(1.0, student_ms))
    teacher = TinyConvNet(num_classes=10).eval()
    cfg = {"epochs": 0, "bisection_steps": 3, "calib_samples": 64}
    kw = dict(data=digits_task, config=cfg, progress=False, latency_repeats=3, latency_warmup=1, mobile=False,
              memory=False)
    res = compress(teacher, "macs=0.5x", out_dir=tmp_path / "refused", **kw)
    assert res.student_report.cost.macs <= 0.5 * res.teacher.cost.macs  # the MACs budget alone is met
    assert not res.budget_check.ok
    (viol,) = res.budget_check.violations
    assert (viol.metric, viol.limit, viol.actual, viol.unit) == ("latency_not_reduced", 1.0, student_ms, "ms")
    assert "allow_slower=True" in str(viol) and "--allow-slower" in str(viol)
    report = json.loads((tmp_path / "refused" / "report.json").read_text())
    assert report["budget"]["ok"] is False and report["budget"]["allow_slower"] is False
    assert [v["metric"] for v in report["budget"]["violations"]] == ["latency_not_reduced"]
    assert report["budget"]["latency_vs_teacher"]["reduced"] is False
    assert "latency_not_reduced" in (tmp_path / "refused" / "report.md").read_text()

    allowed = compress(teacher, "macs=0.5x", out_dir=tmp_path / "allowed", allow_slower=True, **kw)
    assert allowed.budget_check.ok and allowed.budget_check.violations == ()
    report = json.loads((tmp_path / "allowed" / "report.json").read_text())
    assert report["budget"]["ok"] is True and report["budget"]["allow_slower"] is True
    assert report["budget"]["latency_vs_teacher"]["student_ms"] == student_ms


def test_a_faster_student_passes_and_the_comparison_is_recorded(digits_task, monkeypatch):
    monkeypatch.setattr("compress.measure.measure_interleaved", _side_by_side(1.0, 0.6))
    res = compress(TinyConvNet(num_classes=10).eval(), "macs=0.5x", data=digits_task,
                   config={"epochs": 0, "bisection_steps": 3, "calib_samples": 64}, progress=False,
                   latency_repeats=3, latency_warmup=1, mobile=False, memory=False)
    assert res.budget_check.ok
    assert res.budget_check.latency_vs_teacher["reduced"] is True
    assert res.budget_check.latency_vs_teacher["method"] == "interleaved"


@pytest.mark.parametrize("extra, code", [([], 3), (["--allow-slower"], 0)])
def test_cli_exits_3_for_a_slower_student_and_0_with_allow_slower(tmp_path, monkeypatch, extra, code):
    from typer.testing import CliRunner

    from compress.cli import app

    monkeypatch.setattr("compress.measure.measure_interleaved", _side_by_side(1.0, 1.5))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--model", "compress.testing:TinyConvNet", "--data", "digits",
                                   "--budget", "macs=0.5x", "--out", str(out), "--config",
                                   '{"epochs": 0, "bisection_steps": 3, "calib_samples": 64}', *extra])
    assert res.exit_code == code, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["budget"]["allow_slower"] is bool(extra)
    assert ("latency_not_reduced" in res.output) is (code == 3)


def test_a_relative_latency_budget_is_judged_side_by_side_with_the_teacher(digits_task, monkeypatch):
    # a machine 3x busier than when the teacher was measured: every side-by-side timing is 3x, but the
    # candidate/teacher ratio is what a relative budget is about (the ratio here: ONNX file size, ~params)
    calls = []

    def busy(models, target, example_inputs=None, *, rounds=10, repeats=20, warmup=3, min_round_ms=0.0):
        calls.append([str(m) for m in models])
        sizes = [Path(m).stat().st_size / 1e4 for m in models]
        return [{"median_ms": 3 * s, "min_ms": 3 * s, "rounds_ms": [3 * s] * rounds} for s in sizes]

    monkeypatch.setattr("compress.measure.measure_interleaved", busy)
    res = compress(TinyConvNet(num_classes=10).eval(), "latency=0.5x", data=digits_task, progress=False,
                   config={"epochs": 0, "bisection_steps": 4, "allocation": "uniform"}, latency_repeats=3,
                   latency_warmup=1, mobile=False, memory=False)
    assert all(c[0].endswith("teacher.onnx") for c in calls) and len(calls) > 2  # every probe, and the final check
    vs = res.budget_check.latency_vs_teacher
    ratio = vs["student_ms"] / vs["teacher_ms"]
    assert vs["budget_latency_ms"] == pytest.approx(ratio * res.teacher.latency.median_ms)
    assert res.budget_check.ok and ratio <= 0.5  # an absolute check would have compared 3x figures with the limit


def test_a_latency_budget_met_by_a_lucky_measurement_is_re_timed_and_pruned_further(digits_task, monkeypatch):
    # every other timing is 10% optimistic: the bisection's last "ok" may be luck, so the chosen network is
    # re-timed and, while not 2% under the limit, pruned further toward a network known to meet the budget
    calls = []

    def jittery(models, target, example_inputs=None, *, rounds=10, repeats=20, warmup=3, min_round_ms=0.0):
        calls.append(1)
        f = 0.9 if len(calls) % 2 else 1.1
        sizes = [Path(m).stat().st_size / 1e4 for m in models]
        out = [sizes[0]] + [s * f for s in sizes[1:]]
        return [{"median_ms": s, "min_ms": s, "rounds_ms": [s] * rounds} for s in out]

    monkeypatch.setattr("compress.measure.measure_interleaved", jittery)
    res = compress(TinyConvNet(num_classes=10).eval(), "latency=0.5x", data=digits_task, progress=False,
                   config={"epochs": 0, "bisection_steps": 5, "allocation": "uniform"}, latency_repeats=3,
                   latency_warmup=1, mobile=False, memory=False, allow_slower=True)
    verify = [h for h in res.history if str(h.get("step", "")).startswith("verify")]
    assert len(verify) > 1 and verify[-1]["ok"]  # the first re-timing missed (the 10% pessimistic call)
    assert all(not h["ok"] for h in verify[:-1])
    limit = res.budget.max_latency_ms
    assert verify[-1]["latency_ms"] <= 0.98 * limit
    assert verify[-1]["ratio"] > verify[0]["ratio"]  # it moved toward more pruning


def test_a_noisy_latency_probe_widens_the_re_timing_margin(digits_task, monkeypatch):
    # per-round student/teacher ratios spread by +-20%: the median's relative standard error is
    # 1.2533 x 0.158 / sqrt(5) ~ 0.089, so the chosen network must re-time 2 x that (not 2%) under the limit
    spread = [0.8, 1.2, 1.0, 0.8, 1.2]

    def noisy(models, target, example_inputs=None, *, rounds=10, repeats=20, warmup=3, min_round_ms=0.0):
        sizes = [Path(m).stat().st_size / 1e4 for m in models]
        return [{"median_ms": sizes[0], "min_ms": sizes[0], "rounds_ms": [sizes[0]] * rounds}] + [
            {"median_ms": s, "min_ms": 0.8 * s, "rounds_ms": [s * spread[i % 5] for i in range(rounds)]}
            for s in sizes[1:]]

    monkeypatch.setattr("compress.measure.measure_interleaved", noisy)
    res = compress(TinyConvNet(num_classes=10).eval(), "latency=0.5x", data=digits_task, progress=False,
                   config={"epochs": 0, "bisection_steps": 5, "allocation": "uniform"}, latency_repeats=3,
                   latency_warmup=1, mobile=False, memory=False, allow_slower=True)
    verify = [h for h in res.history if str(h.get("step", "")).startswith("verify")]
    rel_se = 1.2533 * float(torch.tensor(spread).std()) / 5 ** 0.5
    assert verify and all(h["margin"] == pytest.approx(2 * rel_se, rel=1e-3) for h in verify)
    ok = [h for h in verify if h["ok"]]
    assert ok and ok[0]["latency_ms"] <= (1 - 2 * rel_se) * res.budget.max_latency_ms
    assert all(h["latency_ms"] > (1 - 2 * rel_se) * res.budget.max_latency_ms for h in verify if not h["ok"])
