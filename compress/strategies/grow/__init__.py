"""Strategy ``grow``: SEArch, a student grown from two nodes under a teacher's guidance.

Parts: :mod:`.partition` (teacher longest path, supervision points, feature extractor),
:mod:`.student` (DAG of sep_conv_3x3 edges, deepen/widen), :mod:`.attention` (``f_a``, Eq. 1;
``R_inner``, Eq. 2), :mod:`.selection` (Eq. 5, closest precursor, split plan, random ablation),
:mod:`.config` (``GrowConfig``, its presets and checks), :mod:`.training` (the attention bank,
Eq. 4, the training stage, ``Rbar`` scoring), :mod:`.growth` (``G_1``, applying a split, pricing
candidate splits), :mod:`.checkpoints` (the run's key and boundaries), :mod:`.report` (report.md
sections), :mod:`.strategy` (``Grow``: the growth loop and the final retrain).
"""

from compress.strategies.grow.attention import NodeAttention, attention_weights, channel_attention, r_inner
from compress.strategies.grow.config import GrowConfig
from compress.strategies.grow.partition import FeatureExtractor, TeacherPartition, TeacherPoint, partition_teacher
from compress.strategies.grow.selection import (
    Decision,
    PricedSplit,
    choose_split,
    closest_precursor,
    modification_scores,
    plan_split,
    random_split,
    rank_by_cost,
    split_candidates,
)
from compress.strategies.grow.strategy import Grow
from compress.strategies.grow.student import GrowStudent, SepConvUnit, Structure, widen_index

__all__ = [
    "Grow",
    "GrowConfig",
    "GrowStudent",
    "SepConvUnit",
    "Structure",
    "widen_index",
    "partition_teacher",
    "TeacherPartition",
    "TeacherPoint",
    "FeatureExtractor",
    "channel_attention",
    "attention_weights",
    "r_inner",
    "NodeAttention",
    "Decision",
    "modification_scores",
    "closest_precursor",
    "plan_split",
    "choose_split",
    "random_split",
    "split_candidates",
    "PricedSplit",
    "rank_by_cost",
]
