"""An expression-tree pruning metric as a Torch-Pruning ``Importance``.

Torch-Pruning groups every layer whose channels must be removed together (a conv, its BN, the
next conv's input channels, every layer tied by a residual add or a concat ...). For a group we
score the channels of every layer in it whose *output* channels are pruned (Conv2d / Linear),
using that layer's operands (Table 1 of the GECCO'22 paper):

* ``W``  = the layer's weight ``(c_out, c_in/groups, kh, kw)`` (Linear: ``(out, in, 1, 1)``),
* ``W_I`` = each channel's incoming filter, ``B`` = the BN that directly follows it
  (``[gamma, beta, running_mean, running_var]``), and
* ``F`` = the feature maps of that BN's output (or the layer's own output when no BN follows),
  recorded on the calibration set before any pruning.

Operands are always read from the *unpruned reference* model, so a channel's score does not
depend on the order in which Torch-Pruning visits groups or on the pruning ratio being tried.
Per-layer scores are divided by their mean absolute value (scales differ between layers) and
averaged over the layers of the group, which is Torch-Pruning's own ``group_reduction="mean"``
after a per-layer ``"mean"`` normalisation. The lowest-scored channels are removed.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from compress.evolution.metrics import ChannelOperands, PruningMetric

__all__ = ["TreeImportance"]

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


def _bn_params(bn: nn.BatchNorm2d | None, w: torch.Tensor) -> torch.Tensor:
    """``(C, 4)`` float32 ``[gamma, beta, mean, var]`` of ``bn`` for the ``C = w.shape[0]`` output
    channels of weight ``w`` (``[1, 0, 0, 1]`` where ``bn`` or a field is missing), on ``w``'s device."""
    c = w.shape[0]
    ones, zeros = w.new_ones(c, dtype=torch.float32), w.new_zeros(c, dtype=torch.float32)
    if bn is None:
        return torch.stack([ones, zeros, zeros, ones], dim=1)
    gamma = bn.weight.detach() if bn.weight is not None else ones
    beta = bn.bias.detach() if bn.bias is not None else zeros
    mean = bn.running_mean.detach() if bn.running_mean is not None else zeros
    var = bn.running_var.detach() if bn.running_var is not None else ones
    return torch.stack([gamma.float(), beta.float(), mean.float(), var.float()], dim=1)


class TreeImportance(tp.importance.Importance):
    """Channel importance from a :class:`PruningMetric` (expression tree).

    Args:
        metric: the tree to evaluate.
        reference: the unpruned model the candidate was deep-copied from (same module names).
        maps: module name -> ``(C, N, D)`` calibration feature maps (None for labelless metrics).
        labels: ``(N,)`` int64 calibration labels.
        class_reduction: "sum" (reference code) or "mean" over the per-class uni-tree scores.
    """

    def __init__(
        self,
        metric: PruningMetric,
        reference: nn.Module,
        maps: dict[str, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        class_reduction: str = "sum",
    ) -> None:
        self.metric = metric
        self.ref_modules = dict(reference.named_modules())
        self.maps = maps or {}
        self.labels = labels
        self.class_reduction = class_reduction
        self._names: dict[int, str] = {}
        self._cache: dict[tuple[str, str | None], torch.Tensor] = {}

    def bind(self, candidate: nn.Module) -> "TreeImportance":
        """Map the modules of a deep copy of ``reference`` back to their names."""
        self._names = {id(m): n for n, m in candidate.named_modules()}
        return self

    def layer_scores(self, layer_name: str, bn_name: str | None) -> torch.Tensor:
        """``(c_out,)`` scores of every output channel of ``layer_name`` (cached)."""
        key = (layer_name, bn_name)
        if key in self._cache:
            return self._cache[key]
        layer = self.ref_modules[layer_name]
        w = layer.weight.detach().float()
        if w.dim() == 2:
            w = w[:, :, None, None]
        c = w.shape[0]
        bn = self.ref_modules.get(bn_name) if bn_name else None
        feats = None
        if self.metric.needs_feature_maps:
            src = bn_name if bn_name in self.maps else layer_name
            feats = self.maps.get(src)
            if feats is None or feats.shape[0] != c:
                raise KeyError(f"no calibration feature maps recorded for layer {layer_name!r}")
        ops = ChannelOperands(
            W=w.unsqueeze(0),
            WI=w,
            B=_bn_params(bn if isinstance(bn, nn.BatchNorm2d) else None, w),
            F=feats,
            y=self.labels if feats is not None else None,
        )
        scores = self.metric.score(ops, class_reduction=self.class_reduction).detach().double()
        self._cache[key] = scores
        return scores

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        # find, for each pruned-output layer, the BN it feeds directly
        bn_of: dict[int, str] = {}
        for dep, _ in group:
            if dep.handler == tp.prune_batchnorm_out_channels and isinstance(dep.source.module, (nn.Conv2d, nn.Linear)):
                bn_name = self._names.get(id(dep.target.module))
                if bn_name is not None:
                    bn_of[id(dep.source.module)] = bn_name
        reduced: torch.Tensor | None = None
        n = 0
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            if dep.handler not in _OUT_FNS or not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            name = self._names.get(id(layer))
            if name is None or name not in self.ref_modules:
                continue
            root_idxs = group[i].root_idxs
            if any(r is None for r in root_idxs):
                continue
            local = self.layer_scores(name, bn_of.get(id(layer)))[list(idxs)]
            local = local / (local.abs().mean() + 1e-12)
            if reduced is None:
                reduced = local.new_zeros(len(group[0].idxs))  # float64, on the scores' device
            reduced.scatter_add_(0, torch.tensor(root_idxs, dtype=torch.long, device=local.device), local)
            n += 1
        if reduced is None:
            return None
        return (reduced / n).float()
