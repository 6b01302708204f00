"""A real-size run, reduced (issue 17, part 4): a timm ImageNet-family model at 224x224 on an image
folder, through the public ``compress()``: 1 fine-tune step, the budget met, ONNX parity checked.

The model is timm's ``mobilenetv3_small_050`` (random weights: ``pretrained=False``, nothing is
downloaded), the smallest member of a family users compress at 224x224, so that the whole run
stays within about a minute on one core; widths are rounded to multiples of 8 (the measured
rounding times every new layer at 224x224, up to its 10 s budget a probe: the bound is tested
below). The folder is written into ``tmp_path``: 3 classes of
seeded 224x224 PNGs, each class its own colour pattern plus noise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

timm = pytest.importorskip("timm")

SIZE = 224
CLASSES = ("red", "green", "blue")


def _image_folder(root, n_train: int = 4, n_val: int = 2, seed: int = 0):
    """``root/{train,val}/<class>/<i>.png``: class ``c`` has channel ``c`` bright in a seeded
    random half of the rows, on noise; 224x224 RGB."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(CLASSES):
            out = root / split / name
            out.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 96, size=(SIZE, SIZE, 3), dtype=np.uint8)
                rows = rng.permutation(SIZE)[: SIZE // 2]
                img[rows, :, c] = 230
                Image.fromarray(img).save(out / f"{i}.png")
    return root


def test_timm_model_at_224_on_an_image_folder(tmp_path):
    from compress import compress
    from compress.data import IMAGENET_MEAN, IMAGENET_STD, load_image_folder_task

    folder = _image_folder(tmp_path / "images")
    task = load_image_folder_task(folder, image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size=4, seed=0)
    import torch

    torch.manual_seed(0)
    teacher = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=len(CLASSES)).eval()
    res = compress(teacher, "macs=0.5x", data=task, out_dir=tmp_path / "run", seed=0, progress=False,
                   config={"epochs": 1, "max_steps_per_epoch": 1, "calib_samples": 8,
                           "channel_rounding": "fixed", "round_to": 8},
                   latency_warmup=1, latency_repeats=3, mobile=False, memory=False)

    # the budget is met at 224x224, counted on the real input size
    assert res.budget_check.ok, res.budget_check.violations
    assert res.teacher.cost.input_shape == (3, SIZE, SIZE)
    assert res.student_report.cost.input_shape == (3, SIZE, SIZE)
    assert res.student_report.cost.macs <= 0.5 * res.teacher.cost.macs
    assert res.student_report.cost.macs < res.teacher.cost.macs
    # one fine-tune epoch of one step ran
    assert [h for h in res.history if h.get("phase") == "finetune"]
    # the ratio search stopped within the budget's tolerance or after its steps
    probes = [h for h in res.history if h.get("phase") == "bisection"]
    assert 2 <= len(probes) <= 2 + 12
    # ONNX parity at two batch sizes and on every val image, as report.json records it
    assert res.validation.ok, res.validation.mismatches
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    parity = report["onnx"]["parity"]
    assert parity["ok"] is True and parity["mismatches"] == []
    assert set(parity["per_batch"]) == {"1", "8"}
    assert all(b["ok"] and b["max_abs_diff"] <= 1e-3 for b in parity["per_batch"].values())
    assert parity["n_samples"] == len(CLASSES) * 2 and parity["top1_agreement"] == 1.0
    # the non-training phases are timed in the report
    for name in ("measure_teacher", "prune", "finetune", "export", "validate", "profile", "total"):
        assert report["wall_s"][name] >= 0.0


def test_channel_rounding_time_budget_aligns_untimed_groups(tmp_path):
    """The measured rounding's bound (issue 17): with its budget spent, a group whose layers this
    search has not timed takes its most aligned candidate width untimed, and says so, whatever the
    on-disk table holds (the determinism contract); a later call of the same search (one ``cache``)
    decides the groups an earlier call timed, from the table, without timing them again."""
    from compress.profiling import Target
    from compress.profiling.latency_model import LayerLatencyTable
    from compress.strategies._parts.channel_rounding import candidate_widths, plan_widths
    from compress.testing import TinyResidualNet

    m = TinyResidualNet().eval()
    x = m.example_inputs()

    def table():
        return LayerLatencyTable(Target.preset("cpu-1t", input_shape=(3, 32, 32)), cache_dir=tmp_path, rounds=3,
                                 repeats=2, warmup=1)

    empty = table()
    plan0, records0 = plan_widths(m, x, 0.3, [m.head], empty, time_budget_s=0.0)
    assert empty.measured == 0 and len(records0) == 2
    for rec in records0:  # untimed: the most aligned candidate, then the nearest to the nominal width
        assert "not timed" in rec["decision"] and rec["candidates"] == [] and rec["timing_s"] == 0.0
        cands = candidate_widths(rec["nominal"], rec["channels"], 0.2)
        assert rec["chosen"] in cands
        assert rec["chosen"] % 8 == 0 or all(w % 8 for w in cands)
    assert sorted(plan0.values()) == sorted(rec["chosen"] for rec in records0)
    search: dict = {}  # one search's cache: its first call has no bound, so it times every layer
    _, unbounded = plan_widths(m, x, 0.3, [m.head], table(), cache=search)
    assert all(rec["timing_s"] > 0 for rec in unbounded)
    warm = table()  # the table on disk now holds every layer, but a new search has timed none of them
    plan_warm, bounded_warm = plan_widths(m, x, 0.3, [m.head], warm, time_budget_s=0.0)
    assert plan_warm == plan0 and [r["decision"] for r in bounded_warm] == [r["decision"] for r in records0]
    again = table()
    _, later = plan_widths(m, x, 0.3, [m.head], again, time_budget_s=0.0, cache=search)
    assert [r["chosen"] for r in later] == [r["chosen"] for r in unbounded]
    assert all("not timed" not in r["decision"] for r in later)
    assert again.measured == 0  # nothing timed again: every layer came from the table


def test_timing_cost_estimate_is_the_stated_formula():
    """The bound's estimate (issue 17) follows its shape-only formula: MACs per call, two random
    inputs, the weights and one session per round."""
    from compress.profiling.latency_model import ConvConfig, LinearConfig
    from compress.strategies._parts.channel_rounding import TIMING_COST, timing_cost_s

    t = {"rounds": 2, "repeats": 3, "warmup": 1}
    c = TIMING_COST
    conv = ConvConfig(8, 16, 3, 2, 1, 1, 10, 10)  # out 5x5
    w = 8 * 16 * 9
    expect = 2 * (4 * w * 25 * c["per_mac_s"] + 2 * 800 * c["per_input_value_s"] + w * c["per_weight_s"]
                  + c["per_session_s"])
    assert timing_cost_s(conv, t) == pytest.approx(expect, rel=1e-12)
    dw = ConvConfig(16, 16, 3, 1, 1, 16, 10, 10)
    assert timing_cost_s(dw, t) < timing_cost_s(ConvConfig(16, 16, 3, 1, 1, 1, 10, 10), t)
    lin = LinearConfig(64, 10, rows=4)
    assert timing_cost_s(lin, t) == pytest.approx(
        2 * (4 * 640 * 4 * c["per_mac_s"] + 2 * 256 * c["per_input_value_s"] + 640 * c["per_weight_s"]
             + c["per_session_s"]), rel=1e-12)


def test_latency_time_budget_bounds_the_calls_not_below_the_minimum():
    """profile_latency's bound (issue 17): a spent budget still times MIN_TIMED calls after one
    warm-up call; None makes exactly ``warmup`` + ``repeats`` calls."""
    from compress.profiling import latency

    calls: list[int] = []
    times = latency._time_calls(lambda: calls.append(1), 10, 50, time_budget_s=0.0)
    assert len(times) == latency.MIN_TIMED and len(calls) == 1 + latency.MIN_TIMED
    calls.clear()
    assert len(latency._time_calls(lambda: calls.append(1), 3, 4, time_budget_s=0.0)) == 4  # repeats < MIN_TIMED
    calls.clear()
    times = latency._time_calls(lambda: calls.append(1), 10, 50, time_budget_s=None)
    assert len(times) == 50 and len(calls) == 60
