"""grow's report.md sections: the growth decisions and the final student's DAG."""

from __future__ import annotations

from typing import Any


def _report_sections(records: list[dict[str, Any]], s: Any, stop_reason: str) -> list[tuple[str, str]]:
    """report.md sections: every growth decision (Eq. 5 bottleneck node, deepen or widen with the
    Eq. 6 q_k, the candidate's params/MACs, accepted or reverted at the budget) and the final DAG
    (nodes with their teacher node q and feature-map shape, edges with their sep-conv unit count)."""
    def num(v: Any) -> str:
        return "-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.3f}")

    rows = ["| iteration | op | edge | q_k | params | MACs | val acc before | accepted |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        if r.get("phase") != "grow" or r.get("op") in (None, "init"):
            continue
        edge = "->".join(f"v{i}" for i in r["edge"]) if r.get("edge") else "-"
        acc = {True: "yes", False: "reverted (over budget)"}.get(r.get("accepted"), "-")
        rows.append(f"| {r.get('iteration')} | {r.get('op')} | {edge} | {num(r.get('q_k'))} | {num(r.get('params'))} | "
                    f"{num(r.get('macs'))} | {num(r.get('val_acc'))} | {acc} |")
    rows += ["", f"Stopped: {stop_reason}."]
    nodes = ["| node | teacher node q | channels x H x W | in-degree | out-degree |", "| --- | --- | --- | --- | --- |"]
    for n in s.nodes:
        nodes.append(f"| v{n.id} | {n.q} | {n.channels}x{n.hw[0]}x{n.hw[1]} | {s.deg_in(n.id)} | "
                     f"{len(s.out_edges(n.id))} |")
    edges = ", ".join(f"v{e.src}->v{e.dst} ({e.n_ops} sep_conv_3x3)" for e in s.edges)
    final = "\n".join(nodes) + f"\n\nEdges: {edges}.\n\nGraphviz:\n\n```dot\n{s.to_dot('final student')}\n```"
    return [("Growth decisions (SEArch Eq. 5 bottleneck, deepen 1->4->7 then widen with Eq. 6)", "\n".join(rows)),
            ("Final student structure", final)]
