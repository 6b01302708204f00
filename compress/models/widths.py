"""Width surgery: record a model's layer widths, and resize a model to recorded widths.

A pruned student keeps its architecture's module tree but not its widths. :func:`describe_widths`
records, for every Conv2d/Linear/BatchNorm module, the attributes that fix its tensors' shapes;
:func:`apply_widths` resizes another instance of the same architecture to them, with fresh,
uninitialised tensors, so that the pruned ``state_dict`` loads into it. :func:`planned_shapes`
gives the shapes :func:`apply_widths` would allocate, to compare with saved tensors before
allocating anything.

Used by :mod:`compress.serialization` (``student.arch.json``) and by strategies (gp-prune's
checkpoints); it imports neither.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.errors import ModelSpecError

__all__ = ["describe_widths", "apply_widths", "planned_shapes"]

_ATTRS = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm2d: ("num_features",),
    nn.BatchNorm1d: ("num_features",),
}


def describe_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Module name -> ``{"type": ..., attr: value}`` for every Conv/Linear/BN module."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        for cls, attrs in _ATTRS.items():
            if type(m) is cls or (isinstance(m, cls) and cls in (nn.Conv2d, nn.Linear)):
                out[name] = {"type": cls.__name__, **{a: int(getattr(m, a)) for a in attrs}}
                break
    return out


def _like(old: torch.Tensor, *shape: int) -> nn.Parameter:
    """A fresh, uninitialised parameter of ``shape`` with ``old``'s device, dtype and ``requires_grad``."""
    return nn.Parameter(old.new_empty(shape), old.requires_grad)


def _resize(m: nn.Module, spec: dict[str, Any]) -> None:
    """Set ``m``'s width attributes from ``spec`` and replace its tensors by fresh ones of the new
    shapes, each on the device and in the dtype of the tensor it replaces."""
    for k, v in spec.items():
        if k != "type":
            setattr(m, k, v)
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        m.weight = _like(m.weight, m.out_channels, m.in_channels // m.groups, kh, kw)
        if m.bias is not None:
            m.bias = _like(m.bias, m.out_channels)
    elif isinstance(m, nn.Linear):
        m.weight = _like(m.weight, m.out_features, m.in_features)
        if m.bias is not None:
            m.bias = _like(m.bias, m.out_features)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        n = m.num_features
        if m.weight is not None:
            m.weight = _like(m.weight, n)
            m.bias = _like(m.bias, n)
        if m.running_mean is not None:
            m.running_mean = m.running_mean.new_zeros(n)
            m.running_var = m.running_var.new_ones(n)


def apply_widths(model: nn.Module, modules: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize ``model``'s Conv/Linear/BN modules in place to :func:`describe_widths` output
    (fresh, uninitialised tensors of the new shapes: load a state_dict afterwards).

    Raises:
        ModelSpecError: a listed module does not exist in ``model``.
    """
    named = dict(model.named_modules())
    for name, spec in modules.items():
        if name not in named:
            raise ModelSpecError(f"Saved module {name!r} does not exist in the base model {type(model).__name__}.")
        kind = spec.get("type")
        cls = next((c for c in _ATTRS if c.__name__ == kind), None)
        if cls is None or not isinstance(named[name], cls):
            raise ModelSpecError(f"Saved module {name!r} is a {kind}, but the base model's is a "
                                 f"{type(named[name]).__name__}; pass the architecture the student was compressed from.")
        _resize(named[name], spec)
    return model


def planned_shapes(model: nn.Module, modules: dict[str, dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` of the weights :func:`apply_widths` would allocate (Conv/Linear
    weights and BatchNorm running means), to compare with the saved tensors before allocating."""
    named = dict(model.named_modules())
    out: dict[str, tuple[int, ...]] = {}
    for name, spec in modules.items():
        m = named.get(name)
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.Conv2d) and spec["type"] == "Conv2d":
            if spec["in_channels"] % spec["groups"]:
                out[prefix + "weight"] = (-1,)  # cannot be built: reported as a mismatch
            else:
                out[prefix + "weight"] = (spec["out_channels"], spec["in_channels"] // spec["groups"], *m.kernel_size)
        elif isinstance(m, nn.Linear) and spec["type"] == "Linear":
            out[prefix + "weight"] = (spec["out_features"], spec["in_features"])
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_mean is not None:
            out[prefix + "running_mean"] = (spec["num_features"],)
    return out
