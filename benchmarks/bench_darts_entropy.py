"""Experiment (issue 18, the entropy goal): what makes darts-gal's first-order DARTS search commit?

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/bench_darts_entropy.py --data ../shared/data \
        [--variants NAME=JSON ...] [--seeds 0] [--resume] [--out benchmarks/results]

Runs only stage 1 of darts-gal (:class:`~compress.strategies.darts_gal.search.DartsSearch`, no
checkpoints) at the search settings of ``bench_nas_random.py --strategy darts-gal`` (its ``FULL``
config: C 8, 5 cells, stem stride 2, 3 epochs, batch 32, the ``cpu-small`` preset's
``arch_reference_steps=19,550``) on the same stratified 1,500-image CIFAR-10 subset (10% held out
for the supernet's val accuracy). Each variant changes search fields (flat darts-gal keys, e.g.
``{"arch_weight_decay": 0}``, or a sub-config object for any field, ``{"search": {"arch_batch_size": 128}}``,
since fields added after the flat names have none); every variant runs with every seed. Per run: the mean per-edge entropy
of softmax(alpha) after each epoch (nats; uniform over the 8 DARTS ops is ln 8 = 2.0794; issue
18's goal: <= 1.5), the supernet's val accuracy, the derived genotype (and how many of its edges are
parameter-free ops: DARTS' collapse), and the wall time.

``--task digits`` runs the same variants on the digits demo task (``load_digits_task(seed=0)``) at
darts-gal's ``cpu-small`` preset itself (4 epochs x 8 steps; issue 18 asks for the goal "at the preset's
settings") and writes ``darts_alpha_entropy_digits.{json,md}``.

The base follows the preset: since 2026-12-04 ``cpu-small`` (and so bench_nas_random's darts-gal
settings) takes alpha steps on 256 images without alpha weight decay at twice DARTS' travel, with 16
weight steps per epoch on digits. The committed ``darts_alpha_entropy*.json`` were run on the base
before that (it is in their ``settings.base``; their "shipped" rows are DARTS' alpha settings, and the
change is their ``arch_batch256+wd0+sqrt`` / ``sqrt+steps16`` rows), so ``--resume`` on them refuses;
write new runs to another ``--out``.

Writes ``darts_alpha_entropy.{json,md}``, after every run (``--resume`` skips the runs already
there with the same settings). The search is deterministic for a seed, so a rerun gives the same
entropies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_nas_random  # noqa: E402  (the darts-gal benchmark settings)
from _common import machine, write_outputs  # noqa: E402
from bench_latency_pruning import git_commit  # noqa: E402

from compress.data import IMAGENET_MEAN, IMAGENET_STD, load_digits_task, load_npz_task  # noqa: E402
from compress.strategies.config_tree import config_from_dict, replace_config  # noqa: E402
from compress.strategies.darts_gal.config import PRESETS, DartsGalConfig  # noqa: E402
from compress.strategies.darts_gal.search import DartsSearch  # noqa: E402

HERE = Path(__file__).resolve().parent
#: the variants run without --variants: the shipped search and one change at a time, then the pair
#: that moved alpha most.
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "arch_wd0": {"arch_weight_decay": 0.0},
    "second_order": {"second_order": True},
    "warmup1": {"arch_warmup_epochs": 1},
    "warmup1+wd0": {"arch_warmup_epochs": 1, "arch_weight_decay": 0.0},
    "arch_batch128": {"search": {"arch_batch_size": 128}},
    "arch_batch128+wd0": {"search": {"arch_batch_size": 128}, "arch_weight_decay": 0.0},
    "arch_batch256+wd0": {"search": {"arch_batch_size": 256}, "arch_weight_decay": 0.0},
}
GOAL = 1.5
UNIFORM = float(torch.log(torch.tensor(8.0)))


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, js = text.partition("=")
    try:
        fields = json.loads(js)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--variants {text!r}: the part after '=' must be a JSON object ({e})") from None
    if not name or not isinstance(fields, dict):
        raise SystemExit(f"--variants {text!r}: write NAME={{\"field\": value}}")
    return name, fields


def variant_config(base: DartsGalConfig, fields: dict[str, Any]) -> DartsGalConfig:
    """``base`` with a variant's fields: a flat key names a ``search`` field, an object a sub-config."""
    nested = {k: dict(v) for k, v in fields.items() if isinstance(v, dict)}
    search = {**{k: v for k, v in fields.items() if not isinstance(v, dict)}, **nested.pop("search", {})}
    return replace_config(base, **nested, **({"search": search} if search else {}))


def run_one(task, base: DartsGalConfig, fields: dict[str, Any], seed: int) -> dict[str, Any]:
    cfg = variant_config(base, fields)
    hist: list[dict[str, Any]] = []

    def log(**rec: Any) -> None:
        if "alpha_entropy" in rec:
            hist.append({k: rec.get(k) for k in ("epoch", "alpha_entropy", "alpha_entropy_normal",
                                                 "alpha_entropy_reduce", "val_acc")})

    t0 = time.perf_counter()
    search = DartsSearch(cfg, task.train.dataset, task.val, 10, task.spec.input_shape, seed, log=log)
    out = search.run(resume=False)
    return {"seed": seed, "fields": fields, "epochs": hist, "final_entropy": hist[-1]["alpha_entropy"] if hist else None,
            "val_acc": hist[-1]["val_acc"] if hist else None, "plan": out.plan, "genotype": out.genotype.to_json(),
            "wall_s": time.perf_counter() - t0}


#: the DARTS ops without weights: a genotype made of them is DARTS' known failure mode (Zela et al.,
#: ICLR 2020, "Understanding and Robustifying DARTS"), which a low entropy alone does not rule out.
PARAM_FREE = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3")


def param_free(genotype: str | dict, cell: str) -> int:
    """How many of a derived cell's chosen edges are parameter-free ops (:data:`PARAM_FREE`)."""
    g = json.loads(genotype) if isinstance(genotype, str) else genotype
    return sum(op in PARAM_FREE for op, _ in g[cell])


def markdown(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    md = ["# darts-gal's DARTS search: alpha entropy per variant (issue 18)", "",
          f"Search only (darts-gal stage 1): {s['train_images']} training images ({s['task']}), config `{json.dumps(s['base'], sort_keys=True)}`. "
          f"Mean per-edge entropy of softmax(alpha), nats (uniform ln 8 = {UNIFORM:.4f}; issue 18's goal <= {GOAL}). "
          f"Commit {s['commit']}; {s['note']}".rstrip("; "), "",
          "| variant | changes | seed | entropy per epoch | final | goal | supernet val acc | parameter-free edges "
          "(normal, reduce) | alpha steps, Adam lr | wall s |",
          "| --- | --- | ---: | --- | ---: | --- | ---: | --- | --- | ---: |"]
    for name, runs in payload["runs"].items():
        for r in runs:
            ent = ", ".join(f"{e['alpha_entropy']:.3f}" for e in r["epochs"])
            plan = r["plan"]
            md.append(f"| {name} | `{json.dumps(r['fields'], sort_keys=True)}` | {r['seed']} | {ent} | "
                      f"{r['final_entropy']:.4f} | {'met' if r['final_entropy'] <= GOAL else 'missed'} | "
                      f"{r['val_acc']:.3f} | {param_free(r['genotype'], 'normal')}/{len(json.loads(r['genotype'])['normal'])}, "
                      f"{param_free(r['genotype'], 'reduce')}/{len(json.loads(r['genotype'])['reduce'])} | "
                      f"{plan['arch_updates']}, {plan['arch_lr_effective']:.4g} | {r['wall_s']:.0f} |")
    md += ["", f"Supernet val accuracy: {s['val_note']}. One seed per row is one draw; variants with several seeds:", ""]
    for name, runs in payload["runs"].items():
        if len(runs) > 1:
            fin = [r["final_entropy"] for r in runs]
            free = [param_free(r["genotype"], "normal") for r in runs]
            md.append(f"- {name}: final entropy mean {sum(fin) / len(fin):.3f} over {len(fin)} seeds "
                      f"(range {min(fin):.3f}-{max(fin):.3f}), goal met by {sum(f <= GOAL for f in fin)} of {len(fin)}; "
                      f"parameter-free edges in the normal cell, mean {sum(free) / len(free):.1f}.")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None,
                    help="the shared data folder (cifar10_train10k_lossless.npz); needed by --task cifar")
    ap.add_argument("--variants", nargs="*", default=None, help='NAME=JSON of darts-gal fields, flat or {"search": {...}} (default: a set)')
    ap.add_argument("--seeds", default="0", help="comma-separated search seeds")
    ap.add_argument("--train-limit", type=int, default=1500)
    ap.add_argument("--task", choices=("cifar", "digits"), default="cifar",
                    help="cifar: bench_nas_random's settings; digits: the cpu-small preset on the demo task")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    variants = dict(parse_variant(v) for v in args.variants) if args.variants else DEFAULT_VARIANTS
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    torch.set_num_threads(1)
    if args.task == "digits":
        task = load_digits_task(seed=0)
        base = json.loads(json.dumps(PRESETS["cpu-small"]))  # tuples as lists, as the JSON stores them
        base_cfg = DartsGalConfig.preset("cpu-small")
        where = "the digits demo task, load_digits_task(seed=0); darts-gal's cpu-small preset"
        val_note = f"the demo task's val split, {base_cfg.search.val_batches} batches of 64"
        stem, limit = "darts_alpha_entropy_digits", None
    else:
        if args.data is None:
            ap.error("--task cifar needs --data, the shared data folder")
        train = args.data / "cifar10_train10k_lossless.npz"
        test = args.data / "cifar10_test1k_lossless.npz"  # unused here; passed so that the split is the benchmark's
        for p in (train, test):
            if not p.is_file():
                ap.error(f"missing {p}; pass the shared data folder with --data")
        task = load_npz_task(train, test_path=test, seed=0, mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size=128,
                             val_fraction=0.1, limit=args.train_limit)
        base = {**bench_nas_random.FULL["darts-gal"], "sparse_lambda": None, "size_margin": 1.5}
        base = {k: list(v) if isinstance(v, tuple) else v for k, v in base.items()}
        base_cfg = config_from_dict(DartsGalConfig, base)
        where = (f"CIFAR-10, a stratified {args.train_limit}-image subset; the settings of "
                 "bench_nas_random.py --strategy darts-gal")
        val_note = f"the held-out 10% of the subset, {base_cfg.search.val_batches} batches of 128"
        stem, limit = "darts_alpha_entropy", args.train_limit
    settings = {"task": where, "train_limit": limit, "train_images": len(task.train.dataset), "base": base,
                "val_note": val_note, "commit": git_commit(), "note": args.note, "machine": machine()}
    path = args.out / f"{stem}.json"
    payload: dict[str, Any] = {"settings": settings, "runs": {}}
    if args.resume and path.is_file():
        old = json.loads(path.read_text())
        if old.get("settings", {}).get("base") != base or old["settings"].get("train_limit") != limit:
            raise SystemExit(f"{path} holds runs at other settings; remove it or drop --resume")
        payload["runs"] = old.get("runs", {})
        settings["note"] = "; ".join(n for n in (old["settings"].get("note", ""), args.note) if n)
        settings["commit"] = old["settings"]["commit"] + ("" if old["settings"]["commit"] == settings["commit"]
                                                          else f", {settings['commit']}")
    for name, fields in variants.items():
        for seed in seeds:
            done = payload["runs"].get(name, [])
            if any(r["seed"] == seed and r["fields"] == fields for r in done):
                continue
            rec = run_one(task, base_cfg, fields, seed)
            print(f"{name} seed {seed}: entropy {[round(e['alpha_entropy'], 4) for e in rec['epochs']]} "
                  f"val {rec['val_acc']:.3f} {rec['wall_s']:.0f} s", flush=True)
            payload["runs"].setdefault(name, []).append(rec)
            write_outputs(args.out, stem, payload, markdown(payload))
    write_outputs(args.out, stem, payload, markdown(payload))
    print(f"wrote {args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
