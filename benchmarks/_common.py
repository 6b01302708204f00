"""Helpers shared by the benchmark scripts: paired statistics, the stock frontier, tables.

Every accuracy comparison on the same test images is paired: McNemar's exact test on the
discordant pairs, and a bootstrap 95% interval of the accuracy difference.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from compress.budgets import measure_cost
from compress.exporters.atomic import write_text_atomic
from compress.profiling import Target, profile_latency


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch: int = 250) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i: i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test (two-sided binomial on the discordant pairs)."""
    from scipy.stats import binomtest

    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "p_value": p}


def bootstrap_diff(correct_a: np.ndarray, correct_b: np.ndarray, n: int = 10000, seed: int = 0) -> dict[str, float]:
    """Bootstrap (resampling test images) 95% interval of acc(a) - acc(b), in points."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct_a), size=(n, len(correct_a)))
    d = (correct_a[idx].mean(1) - correct_b[idx].mean(1)) * 100
    return {"diff_pts": float((correct_a.mean() - correct_b.mean()) * 100),
            "ci95_low": float(np.percentile(d, 2.5)), "ci95_high": float(np.percentile(d, 97.5))}


def mean_random_test(correct_s: np.ndarray, correct_randoms: list[np.ndarray], n: int = 10000,
                     seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of ``acc(strategy) - mean_k acc(random_k)`` over the test images.

    ``d_i = c_s,i - mean_k c_k,i`` per image (``c`` in {0, 1}); ``n`` resamples of the images give
    the 95% percentile interval of ``mean(d)`` (in points) and the two-sided p-value of the centred
    bootstrap ``(1 + #{|mean(d*) - mean(d)| >= |mean(d)|}) / (n + 1)`` (the null ``E[d] = 0``).
    Used by bench_nas_random (eg-nas, darts-gal) and bench_grow (``--random-k``)."""
    cs = np.asarray(correct_s, dtype=float)
    m = np.mean(np.stack([np.asarray(c, dtype=float) for c in correct_randoms]), axis=0)
    d = cs - m
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n, len(d)))
    boot = d[idx].mean(1)
    obs = float(d.mean())
    p = (1 + int(np.sum(np.abs(boot - obs) >= abs(obs)))) / (n + 1)
    return {"diff_pts": 100 * obs, "ci95_low": float(np.percentile(boot, 2.5)) * 100,
            "ci95_high": float(np.percentile(boot, 97.5)) * 100, "p_value": float(p),
            "acc_strategy": float(cs.mean()), "acc_random_mean": float(m.mean()), "n_boot": n}


def frontier(data_dir: Path, x_test: torch.Tensor, y_test: torch.Tensor, target: Target,
             depths=(20, 32, 44, 56), repeats: int = 50) -> list[dict[str, Any]]:
    """The stock frontier: the pretrained CIFAR ResNets as a user could pick them off the shelf."""
    from compress.models import load_model

    rows = []
    for d in depths:
        path = data_dir / f"resnet{d}_cifar10.pt"
        if not path.is_file():
            continue
        m = load_model(f"cifar:resnet{d}", num_classes=10, weights=path).eval()
        pred = predictions(m, x_test)
        cost = measure_cost(m, x_test[:2])
        lat = profile_latency(m, target, example_inputs=x_test[:2], repeats=repeats)
        rows.append({"model": f"resnet{d} (pretrained)", "test_acc": float((pred == y_test.numpy()).mean()),
                     "macs": cost.macs, "params": cost.params, "ort_latency_ms": lat.median_ms,
                     "ort_latency_p90_ms": lat.p90_ms, "correct": (pred == y_test.numpy())})
    return rows


def machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}


def write_outputs(out_dir: Path, stem: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j = write_text_atomic(out_dir / f"{stem}.json", json.dumps(payload, indent=2, default=json_default))
    m = write_text_atomic(out_dir / f"{stem}.md", markdown)
    return j, m


def publish(out_dir: Path, stem: str, payload: dict[str, Any], markdown: str) -> int:
    """:func:`write_outputs`, then the Markdown and the paths on stdout; returns 0 (a ``main``'s exit code)."""
    j, m = write_outputs(out_dir, stem, payload, markdown)
    print(markdown)
    print(f"wrote {j} and {m}")
    return 0


def locked_json_update(path: Path, update: Callable[[dict[str, Any]], dict[str, Any]],
                       default: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Read-modify-write of a JSON file shared by several processes (one per core): under an exclusive
    ``flock`` on ``<path>.lock``, ``update(what the file holds now, {} when absent)`` returns what is
    written (atomically, ``indent=1``, ``default`` for non-JSON values), and is returned.

    Raises:
        SystemExit: the file is not valid JSON (with what to do).
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            disk = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError as exc:
            raise SystemExit(f"{path}: not valid JSON ({exc}); restore it from git or use another output folder") from exc
        data = update(disk)
        write_text_atomic(path, json.dumps(data, indent=1, default=default))
    return data


def json_default(o: Any) -> Any:
    """``json.dumps(default=)`` for benchmark payloads: NumPy arrays and scalars as plain values, paths and
    anything else as strings."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def cut_facts(teacher_macs: int, student_macs: int, vs_teacher: dict | None) -> dict[str, float | None]:
    """The MACs cut and the latency cut of a student against its teacher, and their ratio (issue 18's
    goal 3: >= 0.6 under a latency budget). ``vs_teacher``: compress()'s side-by-side timing
    (report ``budget.latency_vs_teacher``: ``teacher_ms``, ``student_ms``); None or incomplete gives
    no latency cut."""
    vs = vs_teacher or {}
    out: dict[str, float | None] = {"macs_cut": 1 - student_macs / teacher_macs if teacher_macs else None,
                                    "latency_cut": None, "cut_ratio": None}
    if vs.get("teacher_ms") and vs.get("student_ms") is not None:
        out["latency_cut"] = 1 - vs["student_ms"] / vs["teacher_ms"]
        if out["macs_cut"]:
            out["cut_ratio"] = out["latency_cut"] / out["macs_cut"]
    return out
