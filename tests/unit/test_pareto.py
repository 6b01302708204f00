"""compress.pareto: the frontier of reference models, its plot, the reference file's validation, and
``compress(reference_points=...)`` / ``slimforge run --reference-points``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from compress.errors import ConfigError
from compress.pareto import (frontier, frontier_accuracy, pareto_plot, place_student, reference_points_from_file,
                             validate_reference_points)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# a hand-built shelf: D is dominated (dearer than C and less accurate), E has no latency
TABLE = [
    {"name": "A", "accuracy": 0.50, "macs": 1_000_000, "latency_ms": 1.0},
    {"name": "B", "accuracy": 0.70, "macs": 2_000_000, "latency_ms": 2.0},
    {"name": "C", "accuracy": 0.80, "macs": 4_000_000, "latency_ms": 3.0},
    {"name": "D", "accuracy": 0.75, "macs": 5_000_000, "latency_ms": 4.0},
    {"name": "E", "accuracy": 0.60, "macs": 1_500_000, "latency_ms": None, "params": 1234},
]


def test_frontier_keeps_the_upper_envelope_cheapest_first():
    assert [r["name"] for r in frontier(TABLE)] == ["A", "E", "B", "C"]
    assert [r["name"] for r in frontier(TABLE, "latency_ms")] == ["A", "B", "C"]  # E has no latency


@pytest.mark.parametrize("macs, expected", [
    (1_000_000, 0.50),    # on A
    (1_250_000, 0.55),    # half-way A -> E
    (1_750_000, 0.65),    # half-way E -> B
    (3_000_000, 0.75),    # half-way B -> C
    (4_500_000, 0.80),    # past C: D is dominated, the frontier stays at C
    (9_000_000, 0.80),    # above the dearest: the best accuracy
    (500_000, 0.50),      # below the cheapest: clamped to A
])
def test_frontier_accuracy_interpolates_a_hand_built_table(macs, expected):
    assert frontier_accuracy(TABLE, macs) == pytest.approx(expected, abs=1e-12)


def test_frontier_accuracy_at_half_resnet56_is_the_issue_goal_from_measured_macs():
    """Issue 14's goal line: the stock frontier at macs=0.5x of ResNet-56 is ~92.5%, between ResNet-20
    (91.5%) and ResNet-32 (92.8%), with the MACs counted by our fvcore counting, not typed in."""
    from compress.budgets import measure_cost
    from compress.models.cifar_resnet import cifar_resnet

    x = torch.zeros(2, 3, 32, 32)
    macs = {d: measure_cost(cifar_resnet(d), x).macs for d in (20, 32, 56)}
    shelf = [{"name": "resnet20", "accuracy": 0.915, "macs": macs[20], "latency_ms": None},
             {"name": "resnet32", "accuracy": 0.928, "macs": macs[32], "latency_ms": None}]
    at = 0.5 * macs[56]
    assert macs[20] < at < macs[32]
    f = frontier_accuracy(shelf, at)
    assert f == pytest.approx(0.915 + (at - macs[20]) / (macs[32] - macs[20]) * 0.013, abs=1e-12)
    assert round(100 * f, 1) == 92.5


def test_place_student_says_whether_it_beats_the_frontier():
    above = place_student({"name": "s", "accuracy": 0.78, "macs": 3_000_000}, TABLE)
    assert above["frontier_accuracy"] == pytest.approx(0.75) and above["beats_frontier"]
    assert above["margin_pts"] == pytest.approx(3.0) and above["within_range"]
    assert "beats the shelf frontier at equal MACs by 3.0 points" in above["sentence"]
    assert "interpolated between B and C" in above["sentence"]
    below = place_student({"name": "s", "accuracy": 0.70, "macs": 3_000_000}, TABLE)
    assert not below["beats_frontier"]
    assert "does not beat the shelf frontier at equal MACs: it is 5.0 points below it" in below["sentence"]
    assert below["nearest_accuracy"]["name"] == "B"
    outside = place_student({"name": "s", "accuracy": 0.9, "macs": 100}, TABLE)
    assert not outside["within_range"] and "clamped to A" in outside["sentence"]


def test_pareto_plot_writes_one_valid_png_of_the_documented_size(tmp_path):
    from matplotlib.image import imread
    from PIL import Image

    points = [{"name": "student", "accuracy": 0.72, "macs": 3_000_000, "latency_ms": 1.5},
              {"name": "no-latency", "accuracy": 0.6, "macs": 2_500_000, "latency_ms": None}]
    path = pareto_plot(points, TABLE, tmp_path / "sub" / "pareto.png", title="test")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1100, 420)
    assert imread(path).shape[:2] == (420, 1100)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["pareto.png"]  # nothing else left behind


@pytest.mark.parametrize("data, expected", [
    ({"name": "A"}, "holds an object, not a list of points"),
    ([], "is an empty list"),
    ([{"name": "A", "accuracy": 0.5, "macs": 1e6}], "`[0].latency_ms`: missing"),
    ([{"name": "A", "macs": 1e6, "latency_ms": 1.0}], "`[0].accuracy`: missing"),
    ([{"name": "A", "accuracy": 0.5, "macs": -4e7, "latency_ms": 1.0}], "`[0].macs`: should be greater than 0"),
    ([{"name": "A", "accuracy": 91.5, "macs": 1e6, "latency_ms": 1.0}], "write 0.915 for 91.5%"),
    ([{"name": "A", "accuracy": 0.5, "macs": "40M", "latency_ms": 1.0}], "`[0].macs`: should be a valid number"),
    ([{"name": "A", "accuracy": 0.5, "macs": 1e6, "latency_ms": 1.0, "acc": 1}], "`[0].acc`: unknown key"),
    ([dict(TABLE[0]), dict(TABLE[0])], "'A' appears 2 times"),
    ([3], "`[0]`: a number, not a JSON object"),
])
def test_invalid_reference_points_raise_config_error_saying_what_and_how(data, expected):
    with pytest.raises(ConfigError) as err:
        validate_reference_points(data)
    msg = str(err.value)
    assert expected in msg, msg
    assert "write a JSON list of objects such as" in msg  # ... and how to fix it


def test_reference_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        reference_points_from_file(tmp_path / "nope.json")
    for text, expected in [("[{", "not valid JSON"), ('[{"name": "A", "accuracy": NaN, "macs": 1, "latency_ms": 1}]',
                                                       "NaN"),
                           ('{"name": "A"}', "holds an object"), ('[{"name": "A", "accuracy": 0.5, "macs": -1, '
                                                                  '"latency_ms": null}]', "greater than 0")]:
        p = tmp_path / "refs.json"
        p.write_text(text)
        with pytest.raises(ConfigError) as err:
            reference_points_from_file(p)
        assert expected in str(err.value) and str(p) in str(err.value), str(err.value)
    p.write_text(json.dumps(TABLE))
    assert [r["name"] for r in reference_points_from_file(p)] == list("ABCDE")


def _tiny_shelf(model) -> list[dict]:
    """References around ``model``'s own MACs, so that a pruned student lands inside them."""
    from compress.budgets import measure_cost

    macs = measure_cost(model, model.example_inputs()).macs
    return [{"name": "shelf-small", "accuracy": 0.30, "macs": 0.25 * macs, "latency_ms": 0.01},
            {"name": "shelf-big", "accuracy": 0.95, "macs": 1.0 * macs, "latency_ms": 1.0}]


def test_compress_with_reference_points_writes_the_pareto_view(digits_task, tmp_path):
    from compress import compress
    from compress.testing import TinyConvNet

    teacher = TinyConvNet()
    shelf = _tiny_shelf(teacher)
    refs = tmp_path / "shelf.json"
    refs.write_text(json.dumps(shelf))
    out = tmp_path / "run"
    res = compress(teacher, "macs=0.5x", data=digits_task, strategy="gp-prune", progress=False, mobile=False,
                   memory=False, allow_slower=True, out_dir=out, reference_points=refs,
                   config={"epochs": 0, "bisection_steps": 2})
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    report = json.loads((out / "report.json").read_text())
    pareto = report["pareto"]
    macs = report["student"]["macs"]
    assert pareto["frontier_accuracy"] == pytest.approx(frontier_accuracy(shelf, macs), abs=1e-12)
    assert pareto["student"]["accuracy"] == report["student"]["accuracy"]["test"]
    assert pareto["beats_frontier"] == (report["student"]["accuracy"]["test"] > pareto["frontier_accuracy"])
    assert [r["name"] for r in pareto["references"]] == ["shelf-small", "shelf-big"]
    assert pareto["references_source"] == str(refs)
    md = (out / "report.md").read_text()
    assert "## Where the student sits" in md and "(pareto.png)" in md and pareto["sentence"] in md
    assert md.count("(pareto.png)") == 1
    assert res.pareto == pareto
    assert dataclasses.replace(res, pareto=None).to_dict()["pareto"] is None  # without references: the key, None


def test_compress_refuses_bad_reference_points_before_any_work(digits_task, tmp_path):
    from compress import compress
    from compress.testing import TinyConvNet

    bad = tmp_path / "shelf.json"
    bad.write_text(json.dumps([{"name": "r20", "accuracy": 0.915, "macs": -1, "latency_ms": 1.0}]))
    out = tmp_path / "run"
    for refs, expected in [(bad, r"`\[0\]\.macs`: should be greater than 0"), ({"r20": 1}, "a JSON file path or a list")]:
        with pytest.raises(ConfigError, match=expected):
            compress(TinyConvNet(), "macs=0.5x", data=digits_task, progress=False, mobile=False, memory=False,
                     out_dir=out, reference_points=refs, config={"epochs": 0, "bisection_steps": 2})
    assert not out.exists()


def test_cli_run_reference_points_flag(tmp_path):
    from typer.testing import CliRunner

    from compress.cli import app
    from compress.testing import TinyConvNet

    runner = CliRunner()
    refs = tmp_path / "shelf.json"
    refs.write_text(json.dumps(_tiny_shelf(TinyConvNet())))
    out = tmp_path / "run"
    args = ["run", "--model", "compress.testing:TinyConvNet", "--data", "digits", "--budget", "macs=0.5x",
            "--allow-slower", "--config", '{"epochs": 0, "bisection_steps": 2}']
    res = runner.invoke(app, [*args, "--out", str(out), "--reference-points", str(refs)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert 0 <= report["pareto"]["frontier_accuracy"] <= 1 and (out / "pareto.png").is_file()
    assert json.loads((out / "run_args.json").read_text())["args"]["reference_points"] == str(refs.resolve())

    refs.write_text("[]")
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "bad"), "--reference-points", str(refs)])
    assert res.exit_code == 2 and "ConfigError" in res.output and "empty list" in " ".join(res.output.split())
    assert "Traceback" not in res.output and not (tmp_path / "bad").exists()
