"""Experiment (issue 18, the entropy goal end to end): does a search setting that commits alpha give a
better or worse darts-gal student at the ``cpu-small`` preset on the digits demo task?

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/bench_darts_gal_digits_presets.py \
        [--variants NAME=JSON ...] [--seeds 0,1,2] [--work DIR] [--resume] [--out benchmarks/results]

``bench_darts_entropy.py --task digits`` measures the search alone (alpha's entropy, the derived
cells, the supernet's val accuracy); this runs the whole strategy. For every seed: the digits demo's
task and teacher (``load_digits_task(seed)``; ``slimforge demo``'s recipe, timm ResNet-18, 12
epochs, from the teacher cache when there), then for every variant
``compress(teacher, "macs=0.5x", data=task, strategy="darts-gal", config=C, seed=seed)`` with ``C`` =
``DartsGal.demo_config(6)`` (the ``cpu-small`` preset, as ``slimforge demo --strategy darts-gal``)
and the variant's fields merged into it (nested, leaf by leaf). Each variant names every search field
it depends on, so a later change of the preset does not change what a row means.

Per run: the student's accuracy on the task's test split, params and MACs (fvcore), the final mean
per-edge entropy of softmax(alpha) (nats; uniform ln 8 = 2.0794), the parameter-free edges of the
derived normal and reduction cells, whether the budget check passed, and the wall time. Paired, every
variant against the first, pooled over the seeds (the same test images per seed): McNemar exact p and
the bootstrap 95% CI of the accuracy difference.

Writes ``darts_gal_digits_presets.{json,md}`` after every run; ``--resume`` skips the runs already
there (same variant fields and seed); ``compress()`` itself resumes from ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bootstrap_diff, machine, mcnemar, predictions, write_outputs  # noqa: E402
from bench_darts_entropy import param_free, parse_variant, variant_config  # noqa: E402
from bench_latency_pruning import git_commit  # noqa: E402

from compress.api import compress  # noqa: E402
from compress.data import collect, load_digits_task  # noqa: E402
from compress.strategies.config_tree import config_from_dict, config_to_dict  # noqa: E402
from compress.strategies.darts_gal.config import DartsGalConfig  # noqa: E402
from compress.strategies.darts_gal.strategy import DartsGal  # noqa: E402
from compress.teachers import TeacherRecipe, get_or_train_teacher  # noqa: E402

HERE = Path(__file__).resolve().parent
BUDGET = "macs=0.5x"  # slimforge demo's default
DEMO_EPOCHS = 6  # slimforge demo's --epochs default
STEM = "darts_gal_digits_presets"
#: the search of the cpu-small preset before session 17 (DARTS' Adam settings, travel matched to the
#: step count), and the one since (alpha steps on 256 images without weight decay, Adam's
#: square-root batch scaling of the travel, 16 weight steps per epoch)
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "darts_travel": {"search": {"arch_batch_size": None, "arch_weight_decay": 1e-3, "arch_reference_steps": 19_550,
                                "max_steps_per_epoch": 8}},
    "batch256_sqrt_steps16": {"search": {"arch_batch_size": 256, "arch_weight_decay": 0.0,
                                         "arch_reference_steps": 39_100, "max_steps_per_epoch": 16}},
}


def run_config(fields: dict[str, Any]) -> dict[str, Any]:
    """``DartsGal.demo_config(DEMO_EPOCHS)`` with a variant's fields
    (:func:`bench_darts_entropy.variant_config`: merged into each sub-config leaf by leaf), nested."""
    demo = config_from_dict(DartsGalConfig, DartsGal.demo_config(DEMO_EPOCHS))
    return config_to_dict(variant_config(demo, fields))


def seed_setup(seed: int) -> tuple[Any, Any, dict, torch.Tensor, torch.Tensor]:
    """The digits task, ``slimforge demo``'s teacher (trained once, then from the cache) and the test split of a seed."""
    task = load_digits_task(seed=seed)
    teacher, meta = get_or_train_teacher(TeacherRecipe(seed=seed), task)
    x_test, y_test = collect(task.test)
    return task, teacher, meta, x_test, y_test


def run_one(name: str, fields: dict, seed: int, work: Path, setup: tuple) -> dict[str, Any]:
    task, teacher, meta, x_test, y_test = setup
    cfg = run_config(fields)
    t0 = time.perf_counter()
    res = compress(teacher, BUDGET, data=task, strategy="darts-gal", config=cfg, seed=seed,
                   out_dir=work / f"{name}-seed{seed}")
    correct = predictions(res.student, x_test) == y_test.numpy()
    info = res.info
    search = info.get("search") or {}
    ent = search.get("alpha_entropy") or []
    geno = info.get("genotype")
    rec = {"seed": seed, "fields": fields, "test_acc": float(correct.mean()), "correct": correct.tolist(),
           "teacher_test_acc": float((predictions(teacher, x_test) == y_test.numpy()).mean()),
           "teacher_cached": bool(meta.get("cached")), "params": int(res.student_report.cost.params),
           "macs": int(res.student_report.cost.macs), "budget_ok": bool(res.budget_check.ok),
           "alpha_entropy": ent, "final_entropy": ent[-1] if ent else None, "genotype": geno,
           "param_free": [param_free(geno, "normal"), param_free(geno, "reduce")] if geno else None,
           "nodes_removed": info.get("nodes_removed"), "nodes_total": info.get("nodes_total"),
           "search_wall_s": res.wall_s.get("search"), "wall_s": time.perf_counter() - t0, "commit": git_commit()}
    print(f"{name} seed {seed}: test {100 * rec['test_acc']:.2f}%  entropy {rec['final_entropy']}  "
          f"param-free {rec['param_free']}  {rec['wall_s']:.0f} s", flush=True)
    return rec


def markdown(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    runs: dict[str, list[dict]] = payload["runs"]
    md = ["# darts-gal end to end at the cpu-small preset on digits, per search setting (issue 18)", "",
          f"Provenance: `{s['command']}`; commit {s['commit']}; {s['machine'].get('platform')}, "
          f"{s['machine'].get('cpu_count')} CPUs, torch threads {s['machine'].get('torch_threads')}"
          + (f"; {s['note']}" if s.get("note") else "") + ".", "",
          f"`compress(teacher, {BUDGET!r}, strategy=\"darts-gal\", config=DartsGal.demo_config({DEMO_EPOCHS}) + the "
          "variant's fields, seed=s)` on `load_digits_task(seed=s)` with `slimforge demo`'s teacher (timm ResNet-18, "
          "12 epochs, seed s). Test accuracy on the task's test split (20% of the 1,797 images, about ±3 points "
          "at 95% for one run). Entropy: mean per-edge entropy of softmax(alpha) at the end of the search, nats "
          "(uniform ln 8 = 2.0794; issue 18's goal <= 1.5). Parameter-free edges: of the derived normal and "
          "reduction cells' 8 each.", "",
          "| variant | search fields | seed | test acc | teacher | params | MACs | budget | final entropy | "
          "parameter-free edges (normal, reduce) | nodes removed | search s | wall s |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | ---: | ---: |"]
    for name, rs in runs.items():
        for r in sorted(rs, key=lambda r: r["seed"]):
            pf = r.get("param_free") or ["-", "-"]
            ent = "-" if r["final_entropy"] is None else f"{r['final_entropy']:.4f}"
            md.append(f"| {name} | `{json.dumps(r['fields'].get('search', r['fields']), sort_keys=True)}` | "
                      f"{r['seed']} | {100 * r['test_acc']:.2f}% | {100 * r['teacher_test_acc']:.2f}% | "
                      f"{r['params']:,} | {r['macs']:,} | {'ok' if r['budget_ok'] else 'missed'} | {ent} | "
                      f"{pf[0]}/8, {pf[1]}/8 | {r.get('nodes_removed')}/{r.get('nodes_total')} | "
                      f"{(r.get('search_wall_s') or 0):.0f} | {r['wall_s']:.0f} |")
    md += ["", "Per variant, over its seeds:", ""]
    for name, rs in runs.items():
        acc = [r["test_acc"] for r in rs]
        ent = [r["final_entropy"] for r in rs if r["final_entropy"] is not None]
        md.append(f"- {name}: test accuracy mean {100 * np.mean(acc):.2f}% over {len(acc)} seed(s); final entropy "
                  + (f"mean {np.mean(ent):.3f}, goal <= 1.5 met by {sum(e <= 1.5 for e in ent)} of {len(ent)}"
                     if ent else "-") + ".")
    names = list(runs)
    if len(names) > 1:
        md += ["", f"Paired against `{names[0]}`, pooled over the seeds both ran (McNemar exact p; bootstrap 95% CI "
               "of the difference in points):", "", "| variant | seeds | images | diff (pts) | 95% CI | p |",
               "| --- | --- | ---: | ---: | --- | ---: |"]
        for p in payload.get("paired", []):
            md.append(f"| {p['variant']} | {p['seeds']} | {p['images']} | {p['diff_pts']:+.1f} | "
                      f"[{p['ci95_low']:+.1f}, {p['ci95_high']:+.1f}] | {p['p_value']:.3f} |")
    return "\n".join(md) + "\n"


def paired(runs: dict[str, list[dict]]) -> list[dict]:
    names = list(runs)
    out = []
    if not names:
        return out
    base = {r["seed"]: r for r in runs[names[0]]}
    for name in names[1:]:
        mine = {r["seed"]: r for r in runs[name]}
        seeds = sorted(set(base) & set(mine))
        if not seeds:
            continue
        a = np.concatenate([np.asarray(mine[s]["correct"], dtype=bool) for s in seeds])
        b = np.concatenate([np.asarray(base[s]["correct"], dtype=bool) for s in seeds])
        out.append({"variant": name, "seeds": seeds, "images": int(a.size), **mcnemar(a, b), **bootstrap_diff(a, b)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=None, help="NAME=JSON of nested darts-gal fields (default: a set)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (task split, teacher and run)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "slimforge_darts_gal_digits")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    variants = dict(parse_variant(v) for v in args.variants) if args.variants else DEFAULT_VARIANTS
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    torch.set_num_threads(1)
    path = args.out / f"{STEM}.json"
    settings = {"command": " ".join(["python", "benchmarks/bench_darts_gal_digits_presets.py",
                                     *(sys.argv[1:] if argv is None else argv)]),
                "commit": git_commit(), "note": args.note, "machine": machine(), "budget": BUDGET,
                "demo_epochs": DEMO_EPOCHS}
    payload: dict[str, Any] = {"settings": settings, "runs": {}}
    if args.resume and path.is_file():
        try:
            old = json.loads(path.read_text())
            payload["runs"] = dict(old["runs"])
            if old["settings"]["budget"] != BUDGET or old["settings"]["demo_epochs"] != DEMO_EPOCHS:
                raise SystemExit(f"{path} holds runs at other settings; remove it or drop --resume")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: not this benchmark's output ({exc}); remove it or drop --resume") from exc
        settings["note"] = "; ".join(n for n in (old["settings"].get("note", ""), args.note) if n)
        if old["settings"]["commit"] != settings["commit"]:
            settings["commit"] = f"{old['settings']['commit']}, {settings['commit']}"
    for seed in seeds:
        setup = None
        for name, fields in variants.items():
            done = payload["runs"].get(name, [])
            if any(r["seed"] == seed and r["fields"] == fields for r in done):
                continue
            setup = setup or seed_setup(seed)
            payload["runs"].setdefault(name, []).append(run_one(name, fields, seed, args.work, setup))
            payload["paired"] = paired(payload["runs"])
            write_outputs(args.out, STEM, payload, markdown(payload))
    payload["paired"] = paired(payload["runs"])
    write_outputs(args.out, STEM, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
