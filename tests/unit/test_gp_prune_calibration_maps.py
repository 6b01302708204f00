"""gp-prune's calibration maps (issue 17): ``collect_feature_maps`` builds each ``(C, N, D)`` map in one
copy (a concatenation of transposed views) instead of a concatenation and a transposed copy; the maps
must be the same tensors, bit for bit, as the old construction's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.strategies.gp_prune.features import collect_feature_maps
from compress.testing import TinyConvNet, TinyResidualNet


class _Mixed(nn.Module):
    """A conv without BN, a conv whose output feeds a BN and a residual add, a conv run twice per
    forward (its maps hold both calls), a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.bn4 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv1(x))
        c2 = self.conv2(a)
        b = torch.relu(self.bn2(c2) + c2)  # conv2's output feeds bn2 and the add
        b = torch.relu(self.bn3(self.shared(b)))
        b = torch.relu(self.bn4(self.shared(b)))
        return self.fc(b.mean(dim=(2, 3)))


def _batches(n_batches: int = 3, batch: int = 5, classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, 16, 16, generator=g), torch.arange(batch) % classes) for _ in range(n_batches)]


def _old_maps(model: nn.Module, batches, max_samples: int, max_map_hw: int) -> dict[str, torch.Tensor]:
    """The maps as the code before issue 17 built them: ``cat(dim=0).transpose(0, 1).contiguous()``."""
    import torch.nn.functional as F

    buffers: dict[str, list[torch.Tensor]] = {}

    def make(name):
        def hook(_m, _i, out):
            o = out.detach().float()
            if o.dim() == 4:
                if o.shape[2] > max_map_hw or o.shape[3] > max_map_hw:
                    o = F.adaptive_avg_pool2d(o, (min(o.shape[2], max_map_hw), min(o.shape[3], max_map_hw)))
                o = o.flatten(2)
            else:
                o = o.unsqueeze(-1)
            buffers.setdefault(name, []).append(o)
        return hook

    hs = [m.register_forward_hook(make(n)) for n, m in model.named_modules()
          if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    seen = 0
    with torch.no_grad():
        for x, y in batches:
            take = min(len(y), max_samples - seen)
            if take <= 0:
                break
            model(x[:take])
            seen += take
    for h in hs:
        h.remove()
    return {k: torch.cat(v, dim=0).transpose(0, 1).contiguous() for k, v in buffers.items()}


def _models():
    torch.manual_seed(0)
    return {"tiny_conv": TinyConvNet(num_classes=3, width=8).eval(),
            "tiny_residual": TinyResidualNet(num_classes=3, width=8).eval(), "mixed": _Mixed().eval()}


@pytest.mark.parametrize("net", ["tiny_conv", "tiny_residual", "mixed"])
@pytest.mark.parametrize("max_samples", [12, 15])  # a cut batch; every batch
def test_maps_equal_the_old_concatenation(net, max_samples):
    model = _models()[net]
    old = _old_maps(model, _batches(), max_samples=max_samples, max_map_hw=4)
    maps, labels = collect_feature_maps(model, _batches(), max_samples=max_samples, max_map_hw=4)
    assert set(maps) == set(old) and labels.numel() == max_samples
    for k in old:
        assert maps[k].is_contiguous() and maps[k].shape == old[k].shape and torch.equal(maps[k], old[k]), k
