"""Helper of ``test_sigkill_resume.py``: one tiny run per strategy, and a worker
process that stops right after a chosen checkpoint boundary so the test can SIGKILL it there.

``python sigkill_worker.py STRATEGY OUT_DIR --pause-after N --marker FILE`` runs the case; after
the N-th checkpoint commit (``CheckpointStore.commit``: the tensors and the JSON naming them are
both on disk) it writes FILE (the boundary's label) and sleeps until it is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Tiny settings per strategy (a few seconds each), with at least three checkpoint boundaries.
# gp-prune uses exact widths ("off"): "measured" rounding times layers on this machine, and the
# reference and the killed run must take the same pruning decisions.
CASES: dict[str, dict] = {
    "gp-prune": {"epochs": 3, "bisection_steps": 4, "calib_samples": 64, "max_steps_per_epoch": 3,
                 "channel_rounding": "off"},
    "grow": {"stage_epochs": 1, "max_iterations": 3, "max_steps_per_epoch": 2, "score_max_batches": 1, "width_mult": 0.25,
             "final_epochs": 2, "final_max_steps_per_epoch": 3},
    "darts-gal": {"search_C": 4, "search_layers": 3, "search_stem_stride": 2, "search_epochs": 1,
                  "search_batch_size": 32, "search_max_steps_per_epoch": 2, "search_val_batches": 1,
                  "candidates_C": [4, 6], "candidates_layers": [3], "stem_strides": [2],
                  "baseline_epochs": 2, "baseline_max_steps_per_epoch": 2, "gal_epochs": 1, "gal_batch_size": 32,
                  "gal_max_g_steps_per_epoch": 2, "n_critic": 2, "mask_step": 1, "mask_lr": 0.05,
                  "sparse_lambda": 0.5, "final_epochs": 2, "final_max_steps_per_epoch": 2},
    "eg-nas": {"search_C": 4, "search_layers": 3, "partial_channels": 1, "search_stem_stride": 2, "search_epochs": 2,
               "warmup_epochs": 1, "batch_size": 32, "es_batch_size": 32, "max_steps_per_epoch": 2,
               "search_val_batches": 1, "restarts": 2, "popsize": 4, "candidates_C": [4, 6],
               "candidates_layers": [3], "stem_strides": [2], "final_epochs": 2, "final_max_steps_per_epoch": 2},
}


def run_case(strategy: str, out_dir: str | Path, config: dict | None = None):
    """The run every process repeats, at the strategy level (no ONNX export or latency timing, so
    it takes seconds): a seeded TinyConvNet teacher on freshly loaded digits data (fresh loaders:
    their shuffling generators start from the same seed in every run), budget ``macs=0.5x``,
    checkpoints in ``out_dir``. Returns ``(StrategyOutput, StrategyContext)``."""
    import copy

    import torch

    from compress.api import seed_everything
    from compress.budgets import Budget, measure_cost
    from compress.data import load_digits_task
    from compress.profiling import Target
    from compress.registry import get_strategy
    from compress.strategies.base import StrategyContext
    from compress.testing import TinyConvNet

    seed_everything(0)
    teacher = TinyConvNet(num_classes=10).eval()
    task = load_digits_task(seed=0, batch_size=64)
    example = torch.stack([task.val.dataset[0][0], task.val.dataset[1][0]])  # (2, C, H, W), as compress() uses
    frozen = copy.deepcopy(teacher).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    cost = measure_cost(frozen, example)
    ctx = StrategyContext(model=copy.deepcopy(teacher), teacher=frozen, data=task,
                          budget=Budget.coerce("macs=0.5x").resolve(cost), teacher_cost=cost, example_inputs=example,
                          target=Target.preset("cpu-1t").with_input_shape(tuple(example.shape[1:])), seed=0,
                          out_dir=Path(out_dir))
    out = get_strategy(strategy)(config if config is not None else CASES[strategy]).run(ctx)
    return out, ctx


def run_compress(strategy: str, out_dir: str | Path, config: dict | None = None):
    """The same case through :func:`compress.compress` (manifest, report), for the API-level checks."""
    import torch

    from compress.api import compress
    from compress.data import load_digits_task
    from compress.testing import TinyConvNet

    torch.manual_seed(0)
    return compress(TinyConvNet(num_classes=10).eval(), "macs=0.5x", data=load_digits_task(seed=0, batch_size=64),
                    strategy=strategy, config=config if config is not None else CASES[strategy], progress=False,
                    out_dir=out_dir, latency_repeats=2, latency_warmup=1, mobile=False)


@contextlib.contextmanager
def on_commit(callback: Callable[[str], None]) -> Iterator[None]:
    """Call ``callback(label)`` after every checkpoint commit; label ``"<strategy>/<name>.<tag>"``."""
    from compress.strategies._parts.checkpoint import CheckpointStore

    original = CheckpointStore.commit

    def commit(self, name, state, tensors=None, *, key, tag=0, generators=None):
        original(self, name, state, tensors, key=key, tag=tag, generators=generators)
        if self.dir is not None:
            callback(f"{self.dir.name}/{name}.{tag}")

    CheckpointStore.commit = commit
    try:
        yield
    finally:
        CheckpointStore.commit = original


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("strategy")
    ap.add_argument("out_dir")
    ap.add_argument("--pause-after", type=int, required=True)
    ap.add_argument("--marker", required=True)
    a = ap.parse_args()

    import torch

    from compress.exporters.atomic import write_text_atomic

    torch.set_num_threads(1)
    seen: list[str] = []

    def pause(label: str) -> None:
        seen.append(label)
        if len(seen) == a.pause_after:
            write_text_atomic(a.marker, json.dumps({"label": label, "count": len(seen)}))
            while True:  # the boundary is on disk: wait here for SIGKILL
                time.sleep(60)

    with on_commit(pause):
        run_case(a.strategy, a.out_dir)
    sys.exit(f"finished after {len(seen)} boundaries without reaching boundary {a.pause_after}")


if __name__ == "__main__":
    main()
