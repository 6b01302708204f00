"""Strategy ``grow`` (SEArch): the faithfulness tests of ALGORITHMS.md §1(e) and the partition.

Tiny everything: digits data, TinyConvNet teachers, one-step training stages.
"""

from __future__ import annotations

import copy
import json
import math
import random
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import compress.strategies.grow  # noqa: F401  (registers "grow")
from compress.budgets import Budget, measure_cost
from compress.errors import BudgetUnreachableError, ConfigError, UnsupportedModelError
from compress.profiling import Target
from compress.strategies.base import StrategyContext, config_from_dict, config_to_dict
from compress.strategies.config_tree import ConfigDeprecationWarning, key_config, replace_config
from compress.strategies.grow import (
    FeatureExtractor,
    Grow,
    GrowConfig,
    GrowStudent,
    Structure,
    attention_weights,
    channel_attention,
    choose_split,
    closest_precursor,
    modification_scores,
    partition_teacher,
    plan_split,
    random_split,
    widen_index,
)
from compress.strategies.grow.strategy import (
    AttentionBank,
    apply_decision,
    build_initial,
    grow_loss,
    score_nodes,
    split_indices,
    train_stage,
)
from compress.strategies.grow.student import EdgeSpec, NodeSpec, UnitSpec
from compress.testing import TinyConvNet

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _scramble(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight and BN statistic non-trivial values (a 'trained' network)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def tiny_partition():
    torch.manual_seed(0)
    return partition_teacher(TinyConvNet(width=8).eval(), X32)


def _student(partition, cfg=None, seed=0) -> GrowStudent:
    return _scramble(build_initial(partition, 10, cfg or GrowConfig(), seed=seed), seed)


# ------------------------------------------------------------------------------------- Eq. 6


def test_widen_index_eq6_and_edge_cases():
    assert widen_index(1, 28, 0.5) == 14
    assert widen_index(3, 4, 0.5) == 3  # adjacent teacher nodes: q_k = q_i
    assert widen_index(1, 29, 0.0) == 29 and widen_index(1, 29, 1.0) == 1
    assert widen_index(1, 29, 0.25) == 22 and widen_index(1, 29, 0.75) == 8  # Eq. 6 literally (c weights q_i)
    # exact rational floor for every pair (float round-off must not drop a unit)
    for c in ("0.1", "0.25", "0.3", "0.5", "0.7", "0.75", "0.9"):
        for qi in range(1, 15):
            for qj in range(qi, 30):
                exact = math.floor(Fraction(c) * qi + (1 - Fraction(c)) * qj)
                assert widen_index(qi, qj, float(c)) == exact, (c, qi, qj)


# ------------------------------------------------------------------------------------- f_a (Eq. 1)


def test_attention_shape_and_invariants():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 5, 4, 4, generator=g)
    t = torch.randn(3, 7, 4, 4, generator=g)
    out = channel_attention(s, t)
    assert out.shape == (3, 5, 4, 4)
    a = attention_weights(s, t)
    assert a.shape == (3, 5, 7)
    torch.testing.assert_close(a.sum(-1), torch.ones(3, 5))
    lo, hi = t.min(dim=1, keepdim=True).values, t.max(dim=1, keepdim=True).values
    assert bool((out >= lo - 1e-5).all()) and bool((out <= hi + 1e-5).all())
    # one teacher channel: broadcast to every student channel
    t1 = torch.randn(3, 1, 4, 4, generator=g)
    torch.testing.assert_close(channel_attention(s, t1), t1.expand(3, 5, 4, 4))
    # permuting the teacher channels changes nothing
    perm = torch.randperm(7, generator=g)
    torch.testing.assert_close(channel_attention(s, t[:, perm]), out)
    # gradient reaches the student (query) side
    s.requires_grad_(True)
    channel_attention(s, t).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_proj_attention_starts_as_dot_and_learns():
    from compress.strategies.grow import NodeAttention

    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 6, 3, 3, generator=g)
    att = NodeAttention(4, 6, "proj")
    torch.testing.assert_close(att(s, t), channel_attention(s, t))
    att(s, t).pow(2).sum().backward()
    assert att.q.weight.grad.abs().sum() > 0 and att.k.weight.grad.abs().sum() > 0
    assert NodeAttention(4, 6, "dot")(s, t[:, :, :2, :2]).shape == (2, 4, 3, 3)  # teacher pooled to student size


def test_loss_matches_hand_computation_and_teacher_gets_no_gradient(tiny_partition):
    cfg = GrowConfig(stage={"kd_alpha": 0.0}, growth={"r_norm": "mean"})
    student = _student(tiny_partition, cfg)
    teacher = TinyConvNet(width=8).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    part = partition_teacher(teacher, X32)
    extractor = FeatureExtractor(part)
    before = copy.deepcopy(teacher.state_dict())
    attn = AttentionBank("dot")
    attn.sync(student.structure, part)
    y = torch.tensor([3, 7])
    student.train()
    with torch.no_grad():
        t_logits, t_feats = extractor(X32)
    loss, rs = grow_loss(student, attn, X32, y, t_logits, t_feats, cfg)
    # by hand: CE + mean over supervised nodes of mean_(C,H,W) (h - A h^)^2, A = softmax(h h^T / sqrt(HW))
    student2 = copy.deepcopy(student)
    logits, feats = student2.forward_features(X32)
    inner = []
    for n in student2.structure.nodes:
        if n.id == 1:
            continue
        h, th = feats[n.id], t_feats[n.q - 1]
        b, c, hh, ww = h.shape
        hs, ts = h.reshape(b, c, -1), th.reshape(b, th.shape[1], -1)
        a = torch.softmax(hs @ ts.transpose(1, 2) / math.sqrt(hh * ww), dim=-1)
        inner.append(((hs - a @ ts) ** 2).mean())
    hand = F.cross_entropy(logits, y) + torch.stack(inner).mean()
    torch.testing.assert_close(loss, hand)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# ------------------------------------------------------------------------------------- function preservation


def _outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.eval()
        ev = m(x)
        m.train()
        tr = m(x)
    return ev, tr


def test_deepen_preserves_function_exactly(tiny_partition):
    student = _student(tiny_partition)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ev0, tr0 = _outputs(student, x)
    n0 = student.structure.edge(1, 2).n_ops
    student.deepen(1, 2, 3, seed=5)
    assert student.structure.edge(1, 2).n_ops == n0 + 3 == len(student.edges["e1_2"].units)
    ev1, tr1 = _outputs(student, x)
    assert torch.equal(ev0, ev1) and torch.equal(tr0, tr1)


@pytest.mark.parametrize("init", ["gate", "zero_bn"])
def test_widen_preserves_function_exactly_and_bookkeeping(tiny_partition, init):
    cfg = GrowConfig(growth={"widen_init": init})
    student = _student(tiny_partition, cfg)
    student.deepen(1, 2, 5, seed=1)
    _scramble(student, 2)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ev0, tr0 = _outputs(student, x)
    s0 = student.structure.copy()
    d = plan_split(student.structure, 1, 2, b_op=7, c=0.5)
    assert d.op == "widen" and d.q_k == widen_index(1, tiny_partition.m, 0.5) == 2
    k = apply_decision(student, d, tiny_partition, cfg, seed=9)
    s1 = student.structure
    assert len(s1.nodes) == len(s0.nodes) + 1 and len(s1.edges) == len(s0.edges) + 2 and s1.is_dag()
    assert s1.node(k).q == 2 and {(e.src, e.dst) for e in s1.edges} >= {(1, k), (k, 2)}
    assert s1.deg_in(2) == 2
    ev1, tr1 = _outputs(student, x)
    assert torch.equal(ev0, ev1) and torch.equal(tr0, tr1)
    # the new summand can learn with the gate; the literal zero-BN init is stuck at ReLU(0)
    student.train()
    student(x).sum().backward()
    branch = student.edges[f"e{k}_2"]
    if init == "gate":
        assert branch.gate.grad.abs().sum() > 0
    else:
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in branch.parameters())


def test_op_count_schedule_1_4_7_then_widen(tiny_partition):
    cfg = GrowConfig(growth={"stride_rule": "single"})  # one unit of stride 4 reaches the 8x8 sink: 1 op to start
    g = cfg.growth
    student = build_initial(tiny_partition, 10, cfg, seed=0)
    counts, ops = [student.structure.edge(1, 2).n_ops], []
    for step in range(4):
        d = plan_split(student.structure, 1, 2, b_op=g.b_op, deepen_step=g.deepen_step, c=g.c)
        ops.append(d.op)
        apply_decision(student, d, tiny_partition, cfg, seed=step)
        counts.append(student.structure.edge(1, 2).n_ops)
        assert all(e.n_ops <= g.b_op for e in student.structure.edges)
    assert counts == [1, 4, 7, 7, 7]
    assert ops == ["deepen", "deepen", "widen", "widen"]


# ------------------------------------------------------------------------------------- Eq. 5 and the split


def _hand_graph() -> Structure:
    # 1 = input, 2 = sink, a = 3 (deg +1/-2), b = 4 (deg +3/-1), 5 = helper
    nodes = [NodeSpec(1, 1, 3, 0, (8, 8)), NodeSpec(2, 9, 4, 0, (8, 8)), NodeSpec(3, 6, 4, 0, (8, 8)),
             NodeSpec(4, 3, 4, 0, (8, 8)), NodeSpec(5, 5, 4, 0, (8, 8))]
    u = [UnitSpec(4, 4)]
    edges = [EdgeSpec(1, 4, [UnitSpec(3, 4)]), EdgeSpec(1, 3, [UnitSpec(3, 4)]), EdgeSpec(4, 3, u),
             EdgeSpec(4, 2, u), EdgeSpec(4, 5, u), EdgeSpec(5, 2, u), EdgeSpec(3, 2, u)]
    return Structure(nodes=nodes, edges=edges, num_classes=10)


def test_score_ranking_and_ablation_a():
    s = _hand_graph()
    assert (s.deg_out(3), s.deg_in(3), s.deg_out(4), s.deg_in(4)) == (1, 2, 3, 1)
    rbar = {1: 100.0, 2: 0.0, 3: 1.0, 4: 0.6, 5: 0.0}
    scores = modification_scores(s, rbar)
    assert 1 not in scores  # the input node is never a candidate
    assert scores[3] == pytest.approx(0.5) and scores[4] == pytest.approx(1.8)
    full = choose_split(s, scores)
    ablated = choose_split(s, modification_scores(s, rbar, deg_factor=False))
    assert full.dst == 4 and ablated.dst == 3
    # closest precursor of a (node 3): precursors 1 (q=1) and 4 (q=3) -> 4
    assert closest_precursor(s, 3) == 4 and ablated.src == 4
    # the head counts as a successor of the sink (deg+ = 1 -> S(sink) > 0)
    assert modification_scores(s, {2: 1.0})[2] == pytest.approx(1.0 / 3)
    assert modification_scores(s, {2: 1.0}, head_counts=False)[2] == 0.0


def test_closest_precursor_ties_and_adjacent_policy():
    s = _hand_graph()
    s.node(4).q = s.node(1).q  # tie between precursors 1 and 4 -> lowest id
    assert closest_precursor(s, 3) == 1
    s = _hand_graph()
    for e in s.edges:
        if (e.src, e.dst) == (4, 3):
            e.units = [UnitSpec(4, 4)] * 7
    s.node(3).q = 4  # q_j - q_i = 1 with q_i = 3
    scores = {3: 1.0, 4: 0.5}
    assert choose_split(s, scores, adjacent="allow") == plan_split(s, 4, 3)
    assert plan_split(s, 4, 3).q_k == 3
    nxt = choose_split(s, scores, adjacent="next_node")
    assert nxt.dst == 4


def test_random_split_is_seeded_and_respects_b_op():
    s = _hand_graph()
    a = [random_split(s, random.Random(7)) for _ in range(3)]
    b = [random_split(s, random.Random(7)) for _ in range(3)]
    assert a == b
    seen = {(d.src, d.dst, d.op) for seed in range(40) for d in [random_split(s, random.Random(seed))]}
    assert len(seen) > 3 and all(d[1] != 1 for d in seen)
    for e in s.edges:
        e.units = [UnitSpec(4, 4)] * 7
    assert all(random_split(s, random.Random(i)).op == "widen" for i in range(10))


# ------------------------------------------------------------------------------------- data split spy


class _Spy(Dataset):
    def __init__(self, base):
        self.base, self.seen = base, []

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.base[i]


def test_scores_use_only_the_scoring_split(digits_task, tiny_partition):
    spy = _Spy(digits_task.train.dataset)
    tr, sc = split_indices(len(spy), 0.5, seed=0)
    assert not set(tr) & set(sc) and len(tr) + len(sc) == len(spy)
    cfg = GrowConfig()
    student = build_initial(tiny_partition, 10, cfg, seed=0)
    teacher = TinyConvNet(width=8).eval()
    extractor = FeatureExtractor(partition_teacher(teacher, X32))
    attn = AttentionBank("dot")
    attn.sync(student.structure, tiny_partition)
    train_stage(student, attn, extractor, DataLoader(Subset(spy, tr), batch_size=64, shuffle=True), cfg,
                epochs=1, lr=0.01, seed=0, max_steps=2)
    trained = set(spy.seen)
    spy.seen.clear()
    rbar = score_nodes(student, attn, extractor, DataLoader(Subset(spy, sc), batch_size=64), cfg, max_batches=2)
    scored = set(spy.seen)
    assert trained <= set(tr) and scored <= set(sc) and scored and trained
    assert set(rbar) == {2} and rbar[2] > 0


# ------------------------------------------------------------------------------------- the loop


def _ctx(teacher: nn.Module, task, budget: str, *, seed: int = 0, out_dir=None, progress=None) -> StrategyContext:
    ex = next(iter(task.val))[0][:2]
    frozen = copy.deepcopy(teacher).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    cost = measure_cost(frozen, ex)
    return StrategyContext(model=copy.deepcopy(teacher), teacher=frozen, data=task,
                           budget=Budget.coerce(budget).resolve(cost), teacher_cost=cost, example_inputs=ex,
                           target=Target.preset("cpu-1t"), seed=seed, out_dir=out_dir,
                           progress=progress or (lambda *a: None))


LOOP = dict(stage={"epochs": 1, "max_steps_per_epoch": 1}, growth={"score_max_batches": 1},
            final={"epochs": 1, "max_steps_per_epoch": 1, "reinit": False}, checkpoint=True)


def _loop(**changes) -> GrowConfig:
    """The tiny loop config with ``changes`` merged into its sub-configs (``growth={...}``)."""
    return replace_config(GrowConfig(**LOOP), **changes)


def _decisions(history):
    return [(r["op"], tuple(r["edge"]), r.get("q_k"), r.get("accepted")) for r in history
            if r.get("phase") == "grow" and r["op"] != "init"]


def test_budget_holds_loop_terminates_and_teacher_unchanged(digits_task):
    torch.manual_seed(0)
    teacher = TinyConvNet(width=8).eval()
    ctx = _ctx(teacher, digits_task, "params=30k")
    before = copy.deepcopy(ctx.teacher.state_dict())
    out = Grow(_loop(growth={"max_iterations": 40})).run(ctx)
    cost = measure_cost(out.student, ctx.example_inputs)
    assert cost.params <= 30_000 and out.info["stop_reason"] == "budget"
    grow = [r for r in ctx.history if r["phase"] == "grow"]
    accepted = [r["params"] for r in grow if r["op"] == "init" or r.get("accepted")]
    assert accepted == sorted(accepted) and len(accepted) >= 3
    assert grow[-1]["accepted"] is False and grow[-1]["params"] > 30_000 and grow[-1]["reverted"]
    assert "widen" in [r["op"] for r in grow]  # the schedule reached a widen within the budget
    assert all(torch.equal(before[k], v) for k, v in ctx.teacher.state_dict().items())
    assert all(p.grad is None for p in ctx.teacher.parameters())
    assert out.info["structure"] == out.student.structure.to_dict()


class _Killed(Exception):
    pass


def test_same_seed_same_decisions_and_resume_after_kill(digits_task, tmp_path):
    torch.manual_seed(0)
    teacher = TinyConvNet(width=8).eval()
    # the learnable-attention variant and the Eq. 4 final retrain also have state that must resume exactly
    cfg = _loop(growth={"max_iterations": 4, "attention": "proj"}, final={"loss": "kd+inner"})
    ctx_a = _ctx(teacher, digits_task, "params=60k")
    out_a = Grow(cfg).run(ctx_a)

    def killer(phase, done, total, info):
        if phase == "grow" and done == 2:
            raise _Killed

    with pytest.raises(_Killed):
        Grow(cfg).run(_ctx(teacher, digits_task, "params=60k", out_dir=tmp_path, progress=killer))
    state = json.loads((tmp_path / "checkpoints" / "grow" / "state.json").read_text())["state"]
    assert state["iteration"] == 2 and state["phase"] == "grow"
    ctx_b = _ctx(teacher, digits_task, "params=60k", out_dir=tmp_path)
    out_b = Grow(cfg).run(ctx_b)
    assert out_b.info["resumed"] == {"iteration": 2, "phase": "grow"}
    assert _decisions(ctx_a.history) == _decisions(ctx_b.history) and len(_decisions(ctx_a.history)) == 4
    assert out_a.info["structure"] == out_b.info["structure"]
    sa, sb = out_a.student.state_dict(), out_b.student.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # a third run finds the finished checkpoint and returns the same student without training
    assert [r["phase"] for r in ctx_b.history].count("final_retrain") == 1
    out_c = Grow(cfg).run(_ctx(teacher, digits_task, "params=60k", out_dir=tmp_path))
    assert out_c.info["resumed"]["phase"] == "done"
    assert all(torch.equal(sa[k], v) for k, v in out_c.student.state_dict().items())


def test_unreachable_budget_raises(digits_task):
    ctx = _ctx(TinyConvNet(width=8).eval(), digits_task, "params=500")
    with pytest.raises(BudgetUnreachableError, match="width_mult"):
        Grow(_loop()).run(ctx)


def test_kd_inner_retrain_resumes_mid_phase_bit_identically(digits_task, tmp_path, monkeypatch):
    """The ``kd+inner`` final retrain commits a checkpoint per epoch: a run killed in epoch 2
    (raised from the epoch callback, before epoch 2's commit) resumes after epoch 1, trains only
    epochs 2-3, and ends with the weights and history of an uninterrupted run."""
    from compress.strategies.grow import strategy as grow_strategy

    torch.manual_seed(0)
    teacher = TinyConvNet(width=8).eval()
    # no growth iteration: the run goes straight to the retrain; flip-crop and the learnable
    # attention add generator and weight state that must resume exactly
    cfg = _loop(growth={"max_iterations": 0, "attention": "proj"},
                final={"epochs": 3, "max_steps_per_epoch": 2, "loss": "kd+inner", "augment": "flip-crop"})
    ctx_a = _ctx(teacher, digits_task, "params=60k")
    out_a = Grow(cfg).run(ctx_a)

    def killer(phase, done, total, info):
        if phase == "final retrain" and done == 2:
            raise _Killed

    with pytest.raises(_Killed):
        Grow(cfg).run(_ctx(teacher, digits_task, "params=60k", out_dir=tmp_path, progress=killer))
    final = json.loads((tmp_path / "checkpoints" / "grow" / "final.json").read_text())["state"]
    assert final["epoch"] == 1 and final["epochs"] == 3
    steps = []
    forward = grow_strategy._GrowObjective.forward
    monkeypatch.setattr(grow_strategy._GrowObjective, "forward", lambda self, *a: steps.append(1) or forward(self, *a))
    ctx_b = _ctx(teacher, digits_task, "params=60k", out_dir=tmp_path)
    out_b = Grow(cfg).run(ctx_b)
    assert len(steps) == 2 * 2  # epochs 2 and 3 only, 2 steps each
    sa, sb = out_a.student.state_dict(), out_b.student.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ha = [r for r in ctx_a.history if r["phase"] == "final_retrain"]
    hb = [r for r in ctx_b.history if r["phase"] == "final_retrain"]
    assert [r["epoch"] for r in ha] == [1, 2, 3] and ha == hb
    assert out_a.info["final_retrain"]["history"] == out_b.info["final_retrain"]["history"]


def test_stage_training_runs_on_the_runtime_and_ends_on_the_cpu(tiny_partition):
    """The runtime's channels_last layout is used while training and scoring; the modules come
    back on the CPU in float32 and the default layout (surgery, counting and export need it)."""
    from compress.training import Runtime, RuntimeOptions

    cfg = GrowConfig()
    student = build_initial(tiny_partition, 10, cfg, seed=0)
    attn = AttentionBank("proj")
    attn.sync(student.structure, tiny_partition)
    extractor = FeatureExtractor(tiny_partition)
    ds = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    rt = Runtime(RuntimeOptions(device="cpu", channels_last="on"))
    seen = []
    hook = extractor.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    losses = train_stage(student, attn, extractor, DataLoader(ds, batch_size=8), cfg, epochs=2, lr=0.01, seed=0,
                         max_steps=None, runtime=rt)
    rbar = score_nodes(student, attn, extractor, DataLoader(ds, batch_size=8), cfg, runtime=rt)
    hook.remove()
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and set(rbar) == {2}
    assert seen and all(seen)
    for m in (student, attn, extractor):
        for t in list(m.parameters()) + list(m.buffers()):
            assert t.device.type == "cpu" and (not t.is_floating_point() or t.dtype == torch.float32)
            assert t.is_contiguous()


def test_grow_has_no_hand_written_training_loop():
    """Every optimisation step of grow goes through the training runtime (``Runtime.optimize``)."""
    from pathlib import Path

    import compress.strategies.grow as pkg

    offenders = [p.name for p in Path(pkg.__file__).parent.glob("*.py") if ".backward(" in p.read_text()]
    assert offenders == []


# ------------------------------------------------------------------------------------- partition


def _partition_case(name):
    import timm
    import torchvision

    from compress.models import load_model

    return {
        "timm:resnet18": lambda: timm.create_model("resnet18", num_classes=10),
        "timm:mobilenetv3_small_100": lambda: timm.create_model("mobilenetv3_small_100", num_classes=10),
        "timm:efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=10),
        "torchvision:resnet18": lambda: torchvision.models.resnet18(num_classes=10),
        "torchvision:mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        "cifar:resnet20": lambda: load_model("cifar:resnet20", num_classes=10),
    }[name]()


@pytest.mark.parametrize("name,m,final", [
    ("timm:resnet18", 10, (512, 1, 1)),
    ("timm:mobilenetv3_small_100", None, (576, 1, 1)),
    ("timm:efficientnet_b0", None, (1280, 1, 1)),
    ("torchvision:resnet18", 10, (512, 1, 1)),
    ("torchvision:mobilenet_v3_small", None, (576, 1, 1)),
    ("cifar:resnet20", 11, (64, 8, 8)),
])
def test_partition_real_cnns(name, m, final):
    torch.manual_seed(0)
    model = _partition_case(name).eval()
    p = partition_teacher(model, X32)
    assert p.method == "fx" and p.points[0].shape == (3, 32, 32) and p.points[-1].shape == final
    if m is not None:
        assert p.m == m  # image + stem + one point per residual block
    else:
        assert p.m >= 8
    levels = [pt.level for pt in p.points]
    assert levels == sorted(levels) and levels[0] == 0
    assert len(p.path) >= p.m and p.points[-1].name == p.path[-1]
    logits, feats = FeatureExtractor(p)(X32)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(X32))
    assert [tuple(f.shape[1:]) for f in feats] == [pt.shape for pt in p.points]


def test_partition_fallback_and_errors():
    class ShapeBranch(nn.Module):  # fx cannot trace a branch on a shape; torch.export specialises it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            if x.shape[-1] > 16:
                x = F.max_pool2d(x, 2)
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    p = partition_teacher(ShapeBranch().eval(), X32)
    assert p.method == "export" and p.points[-1].shape == (8, 16, 16)

    class DataBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x) if x.mean() > 0 else x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.gate, self.fc = nn.Conv2d(3, 8, 3, padding=1), DataBranch(), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.gate(self.stem(x)).mean((2, 3)))

    with pytest.raises(UnsupportedModelError) as err:
        partition_teacher(Net().eval(), X32)
    assert err.value.layer == "gate"

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3 * 32 * 32, 16), nn.Linear(16, 10)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    with pytest.raises(UnsupportedModelError) as err:
        partition_teacher(MLP().eval(), X32)
    assert err.value.layer == "fc2"


# ------------------------------------------------------------------------------------- config, export, e2e


def test_config_validation_presets_and_json_roundtrip():
    g = GrowConfig().growth
    assert (g.b_op, g.c, g.deepen_step) == (7, 0.5, 3)
    final = GrowConfig().final
    assert (final.epochs, final.lr, final.momentum, final.weight_decay, final.grad_clip) == (400, 0.025, 0.9, 3e-4, 5.0)
    small = GrowConfig.preset("cpu-small")
    assert (small.stage.epochs, small.growth.max_iterations, small.final.epochs) == (1, 8, 15)
    assert GrowConfig.preset("cpu-small", growth={"c": 0.25}).growth.c == 0.25
    demo = Grow.demo_config(20)  # nested: the demo merges the user's config onto it leaf by leaf
    assert demo["final"]["epochs"] == 20 and demo["stage"]["epochs"] == 1 and "final_epochs" not in demo
    cfg = GrowConfig(partition={"teacher_nodes": ("relu_2", "relu_8")},
                     growth={"split_policy": "random", "deg_factor": False})
    assert config_from_dict(GrowConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    for bad, path in (({"c": 1.5}, "growth"), ({"b_op": 0}, "growth"), ({"initial_ops": 8}, "growth"),
                      ({"score_fraction": 1.0}, "growth"), ({"attention": "tat"}, "growth"),
                      ({"split_policy": "greedy"}, "growth"), ({"loss": "mse"}, "final"),
                      ({"width_mult": 0.0}, "growth"), ({"max_iterations": -1}, "growth"),
                      ({"augment": "mixup"}, "stage"), ({"teacher_granularity": "layers"}, "partition"),
                      ({"epochs": -1}, "stage"), ({"warmup_epochs": 500}, "final")):
        with pytest.raises(ConfigError, match=f"GrowConfig.{path}"):
            GrowConfig(**{path: bad})
    with pytest.raises(ConfigError):
        GrowConfig.preset("huge")


def test_flat_config_still_loads_with_a_deprecation_warning():
    """The flat spelling used before the nested configs (``--config`` JSON, report.json) loads into the nested
    config; a name the stages and the final retrain shared (``kd_alpha``) sets both."""
    flat = {"stage_epochs": 2, "max_iterations": 3, "final_epochs": 4, "final_lr": 0.1, "kd_alpha": 0.2,
            "teacher_granularity": "path", "checkpoint": False}
    with pytest.warns(ConfigDeprecationWarning, match="stage_epochs -> stage.epochs"):
        cfg = config_from_dict(GrowConfig, flat)
    assert cfg == GrowConfig(partition={"teacher_granularity": "path"}, growth={"max_iterations": 3},
                             stage={"epochs": 2, "kd_alpha": 0.2}, final={"epochs": 4, "lr": 0.1, "kd_alpha": 0.2},
                             checkpoint=False)
    with pytest.warns(ConfigDeprecationWarning):
        assert Grow(**flat).config == cfg


def test_run_key_hashes_every_leaf_but_checkpoint():
    """The run reads every sub-config, so a change to any leaf (a field added to a sub-config
    included) gives a new run key; ``checkpoint`` does not. The stages' and the retrain's shared
    flat names enter once while they agree, then apart."""
    from compress.strategies.grow.checkpoints import run_key

    def key(cfg):
        return run_key(cfg, seed=0, teacher="t", budget="b", sizes=[1, 2], classes=10)

    base = GrowConfig.preset("smoke")
    changes = [{"partition": {"teacher_granularity": "path"}}, {"growth": {"inner_weight": 2.0}},
               {"growth": {"objective": "score"}}, {"stage": {"kd_alpha": 0.1}}, {"final": {"kd_alpha": 0.1}},
               {"final": {"optimizer": "adam"}}, {"final": {"label_smoothing": 0.1}}, {"final": {"time_s": 60.0}},
               {"final": {"grad_clip": None}}, {"stage": {"grad_clip": None}}, {"final": {"reinit": False}}]
    keys = {key(replace_config(base, **c)) for c in changes}
    assert len(keys) == len(changes) and key(base) not in keys
    assert key(replace_config(base, checkpoint=False)) == key(base)
    flat = key_config(base, "stage", "final")
    assert flat["kd_alpha"] == 0.5 and "final.kd_alpha" not in flat and flat["final_epochs"] == 1
    apart = key_config(replace_config(base, final={"kd_alpha": 0.1}), "stage", "final")
    assert (apart["kd_alpha"], apart["final.kd_alpha"]) == (0.5, 0.1)


def test_kd_inner_retrain_uses_every_field_of_the_final_block(tiny_partition, monkeypatch):
    """``final.loss="kd+inner"`` trains through ``fit``, not ``finetune``: the fine-tune block's
    optimizer, warm-up, time budget, label smoothing, clip and distillation act there too."""
    from compress.strategies.grow import training

    seen: dict = {}
    make_optimizer, kd_loss = training.make_optimizer, training.kd_loss

    def spy_opt(params, name, **kw):
        seen["optimizer"] = name
        return make_optimizer(params, name, **kw)

    def spy_kd(*a, **kw):
        seen["kd"] = (kw["alpha"], kw["temperature"], kw["label_smoothing"])
        return kd_loss(*a, **kw)

    def spy_fit(plan, loader, **kw):
        seen["plan"] = plan
        return []

    monkeypatch.setattr(training, "make_optimizer", spy_opt)
    monkeypatch.setattr(training, "kd_loss", spy_kd)
    monkeypatch.setattr(training, "fit", spy_fit)
    cfg = GrowConfig(final={"loss": "kd+inner", "epochs": 4, "optimizer": "adam", "warmup_epochs": 2,
                            "time_s": 30.0, "label_smoothing": 0.1, "grad_clip": 2.0, "kd_alpha": 0.3,
                            "kd_temperature": 2.0})
    student = build_initial(tiny_partition, 10, cfg, seed=0)
    attn = AttentionBank("dot")
    attn.sync(student.structure, tiny_partition)
    extractor = FeatureExtractor(tiny_partition)
    ds = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    training._fit_grow(student, attn, extractor, DataLoader(ds, batch_size=4), cfg, cfg.final.settings(seed=0),
                       cosine=True, use_kd=True, runtime=training.Runtime(), phase="test")
    plan = seen["plan"]
    assert seen["optimizer"] == "adam" and plan.grad_clip == 2.0 and plan.time_budget_s == 30.0
    assert plan.epochs == 4 and plan.steps_per_epoch == 2
    assert [plan.lr_factor(s) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]  # 2 epochs x 2 steps of warm-up
    plan.step((X32, torch.tensor([1, 2])))
    assert seen["kd"] == (0.3, 2.0, 0.1)


def test_grown_student_exports_to_onnx(tiny_partition, tmp_path):
    from compress.exporters import export_onnx, validate_onnx

    cfg = GrowConfig()
    student = _student(tiny_partition, cfg)
    apply_decision(student, plan_split(student.structure, 1, 2), tiny_partition, cfg, seed=1)
    student.deepen(1, 2, 2, seed=2)
    apply_decision(student, plan_split(student.structure, 1, 2), tiny_partition, cfg, seed=3)
    with torch.no_grad():
        for e in student.edges.values():
            if e.gate is not None:
                e.gate.fill_(0.7)
    student.eval()
    path = export_onnx(student, X32, tmp_path / "s.onnx")
    rep = validate_onnx(student, path, torch.randn(8, 3, 32, 32), batch_sizes=(1, 8))
    assert rep.ok
    rebuilt = GrowStudent.from_dict(json.loads(json.dumps(student.structure.to_dict())))
    rebuilt.load_state_dict(student.state_dict())
    torch.testing.assert_close(rebuilt.eval()(X32), student(X32))


def test_compress_end_to_end_meets_budget_with_valid_onnx(digits_task, tmp_path):
    from compress.api import compress
    from compress.serialization import load_student

    torch.manual_seed(0)
    teacher = TinyConvNet().eval()
    res = compress(teacher, "params=0.8x", data=digits_task, strategy="grow",
                   config={"growth": {"max_iterations": 2, "score_max_batches": 1},
                           "stage": {"epochs": 1, "max_steps_per_epoch": 2},
                           "final": {"epochs": 1, "max_steps_per_epoch": 2}},
                   progress=False, out_dir=tmp_path, latency_repeats=3, latency_warmup=1)
    assert res.budget_check.ok and res.student_report.cost.params <= 0.8 * res.teacher.cost.params
    assert res.validation.ok and res.validation.top1_agreement == 1.0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["strategy"] == "grow" and report["info"]["teacher_partition"]["m"] == 4
    assert report["info"]["dot"].startswith("digraph")
    reloaded = load_student(tmp_path)  # rebuilt from student.arch.json's builder, no base model
    torch.testing.assert_close(reloaded(X32), res.student(X32))
