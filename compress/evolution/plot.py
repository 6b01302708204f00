"""Fitness curve of an evolution run (paper Fig. 5): every individual, best-so-far, 25th percentile.

Uses matplotlib's object-oriented API with the Agg canvas, so the global backend of the
caller (e.g. a notebook) is never changed.
"""

from __future__ import annotations

from pathlib import Path

from compress.exporters.atomic import write_bytes_atomic

__all__ = ["write_fitness_plot"]


def write_fitness_plot(history: list[dict], path: str | Path) -> Path:
    """Write a PNG of the per-generation fitness (atomically).

    Args:
        history: ``EvolutionResult.history`` records (``generation``, ``best_so_far``, ``p25``,
            ``best`` and ``fitnesses`` of every individual).
        path: destination ``.png``.

    Returns:
        the written path.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    gens = [h["generation"] for h in history]
    for h in history:
        fits = h.get("fitnesses", [])
        ax.scatter([h["generation"]] * len(fits), fits, s=9, color="0.6", alpha=0.6, linewidths=0)
    ax.plot(gens, [h["best_so_far"] for h in history], color="tab:red", marker="o", label="best so far")
    ax.plot(gens, [h["best"] for h in history], color="tab:orange", linestyle=":", label="best of generation")
    ax.plot(gens, [h["p25"] for h in history], color="tab:green", marker="s", label="25th percentile")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (weighted geometric mean of accuracies)")
    ax.set_xticks(gens)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())
