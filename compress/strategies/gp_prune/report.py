"""What gp-prune writes about its pruning into ``report.md`` and ``report.json``: the sentence on how
the widths were allocated (:func:`allocation_line`) and the rule that ``channel_rounding="measured"``
followed (:data:`ROUNDING_RULE`, under ``info.channel_rounding.rule``). See :mod:`.strategy`."""

from __future__ import annotations

from compress.strategies._parts import channel_rounding
from compress.strategies.gp_prune.config import GPPruneConfig

__all__ = ["allocation_line", "ROUNDING_RULE"]


def allocation_line(record: dict | None, ratio: float, cfg: GPPruneConfig) -> str:
    """One sentence on how the widths were allocated, for ``report.md``."""
    fallback = (record or {}).get("fallback")
    note = (f" The requested allocation could not meet the budget ({len(fallback['tried'])} attempt(s) in "
            f"`report.json` info.allocation.fallback): {fallback['used']}." if fallback else "")
    if record is None or record["mode"] == "uniform":
        return f"uniform ratio {ratio:.4f}; channel rounding `{cfg.prune.channel_rounding}`." + note
    cap = record.get("max_group_ratio", cfg.prune.max_group_ratio)
    if record["mode"] == "global":
        return (f"global ranking, {100 * ratio:.1f}% of the prunable channels removed (no group over "
                f"{100 * cap:.0f}%); channel rounding `{cfg.prune.channel_rounding}`." + note)
    return (f"latency knapsack (HALP): predicted {record['predicted_ms']:.3f} ms of {record['predicted_full_ms']:.3f} ms "
            f"for the full network (conv/linear layers only, from the table `{record['table']}`); "
            f"{100 * ratio:.1f}% of the prunable channels removed, no group over {100 * cap:.0f}%." + note)


ROUNDING_RULE = {
    "min_gain": channel_rounding.MIN_GAIN, "noise_z": channel_rounding.NOISE_Z, **channel_rounding.TIMING,
    "criterion": "ms per kept channel vs the nominal width, round by round; the group leaves the nominal width when "
                 "the candidates' median cut exceeds max(min_gain, noise_z x median standard error); then, among "
                 "the widths cutting over min_gain / 2: most aligned (up to 16), then nearest",
}
"""How "measured" rounding decided, written beside its per-group records in the report."""
