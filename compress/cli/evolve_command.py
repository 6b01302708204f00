"""``slimforge evolve-metric``: evolve a channel-pruning metric with genetic programming
(:mod:`compress.evolution`), for gp-prune's ``metric`` config field.

The evolution, the executors and torch are imported inside the command, so that
``slimforge --help`` starts without them. :mod:`compress.cli` registers the command on the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from compress.cli.app import _clean_errors, _console
from compress.cli.options import _check_seed


@_clean_errors
def evolve_metric_cmd(
    preset: str = typer.Option("cpu-small", help="Evolution preset: 'cpu-small' (digits tasks, minutes) or 'full' (paper)."),
    out: Path = typer.Option(Path("slimforge-out/evolve"), help="Run directory (checkpoint, best_metric.json, fitness.png)."),
    seed: int = typer.Option(0, help="Run seed."),
    workers: int = typer.Option(0, help="Evaluate individuals in a local process pool of this size (0: serial); with --executor ray, the CPUs of the local Ray instance."),
    resume: bool = typer.Option(True, help="Continue from the run directory's checkpoint when present."),
    generations: Optional[int] = typer.Option(None, help="Override the preset's number of generations."),
    data: Optional[Path] = typer.Option(None, help="Folder with the real task data (the 'full' preset: MNIST and CIFAR-10 npz)."),
    executor: Optional[str] = typer.Option(None, help="Where individuals are evaluated: serial, process or ray (default: process when --workers > 0, else serial)."),
    ray_address: Optional[str] = typer.Option(None, help="With --executor ray: cluster address (ray://HOST:10001 or auto); default: a local Ray instance."),
) -> None:
    """Evolve a channel-pruning metric with genetic programming (GECCO'22), then use it with
    `--config '{"metric": "OUT/best_metric.json"}'` in gp-prune."""
    from tqdm.auto import tqdm

    from compress.executors import make_executor  # deferred: torch, kept out of `slimforge --help`
    from compress.evolution.config import EvolveConfig  # deferred: torch, timm, torch-pruning, deap, kept out of `slimforge --help`
    from compress.evolution.evolve import evolve_metric  # deferred: torch, timm, torch-pruning, deap, kept out of `slimforge --help`

    _check_seed(seed)

    overrides: dict = {"generations": generations} if generations else {}
    if data is not None:
        overrides["data_dir"] = str(data)
    cfg = EvolveConfig.preset(preset, **overrides)
    bars: dict = {}

    def progress(phase: str, done: int, total, info: dict) -> None:
        bar = bars.get(phase)
        if bar is None or (total is not None and bar.total != total):
            if bar is not None:
                bar.close()
            bar = bars[phase] = tqdm(total=total, desc=phase, leave=phase == "generation", dynamic_ncols=True)
        bar.n = done
        bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()
                         if isinstance(v, (int, float, str))}, refresh=False)
        bar.refresh()

    kind = executor or ("process" if workers > 0 else "serial")
    pool = make_executor(kind, workers=workers or None, ray_address=ray_address)
    try:
        result = evolve_metric(cfg, out_dir=out, seed=seed, executor=pool, progress=progress, resume=resume)
    finally:
        pool.close()
        for bar in bars.values():
            bar.close()
    con = _console()
    con.print(f"best metric (fitness {result.best_fitness:.4f}, task accuracies {list(result.best_acc)}):")
    con.print(f"  {result.best_formula}")
    if result.soap_best_gen0 is not None:
        con.print(f"best SOAP fitness in generation 0: {result.soap_best_gen0:.4f}")
    con.print(f"{result.generations_done} generations, {result.evaluations} evaluations, {result.wall_s:.0f} s; "
              f"outputs in {out} (best_metric.json, fitness.json, fitness.png)")

