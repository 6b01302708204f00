"""Saving a student so it can be reloaded without unpickling code.

A pruned or grown student has layer widths that differ from its architecture's defaults, so a
plain ``state_dict`` is not enough. We write two files:

* ``student.safetensors`` -- every tensor of ``state_dict()`` (safetensors: data only);
* ``student.arch.json`` -- the base model spec (e.g. ``"timm:resnet18"``), the surgery applied
  before compression (e.g. ``"pad_shortcuts_to_conv"``) and, for every Conv/Linear/BatchNorm
  module, its width attributes; or, for students that are new architectures (grown, searched),
  the strategy and the JSON arguments of its ``build_student``.

:func:`load_student` rebuilds the base model, applies the surgery, resizes the listed modules
to the saved widths and loads the tensors (strict). No pickle is involved at any point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import ModelSpecError
from compress.exporters.atomic import write_bytes_atomic, write_text_atomic

__all__ = ["save_student", "load_student", "describe_widths", "apply_widths"]

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


def save_student(model: nn.Module, directory: str | Path, *, base_spec: str | None, surgery: list[str],
                 builder: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``student.safetensors`` and ``student.arch.json`` atomically into ``directory``."""
    from safetensors.torch import save as st_save

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    write_bytes_atomic(d / "student.safetensors", st_save(tensors))
    arch = {"format": "slimforge-student/1", "base_spec": base_spec, "surgery": surgery, "modules": describe_widths(model),
            "builder": builder}
    write_text_atomic(d / "student.arch.json", json.dumps(arch, indent=2, sort_keys=True))
    return {"weights": str(d / "student.safetensors"), "arch": str(d / "student.arch.json")}


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
        _resize(named[name], spec)
    return model


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise ModelSpecError(
            f"{path} is corrupt or truncated ({exc}); re-run the compression or restore the file from its source."
        ) from exc


def load_student(directory: str | Path, base: nn.Module | None = None, *, num_classes: int | None = None) -> nn.Module:
    """Rebuild a saved student.

    Args:
        directory: holds ``student.safetensors`` and ``student.arch.json``.
        base: an instance of the uncompressed architecture; if None it is built from the saved
            ``base_spec`` with :func:`compress.models.load_model`.

    Raises:
        ModelSpecError: files missing or corrupt, no base model available, or tensors do not fit.
    """
    from compress.models import load_model, pad_shortcuts_to_conv

    d = Path(directory)
    arch_path, w_path = d / "student.arch.json", d / "student.safetensors"
    if not arch_path.is_file() or not w_path.is_file():
        raise ModelSpecError(f"{d} has no student.arch.json / student.safetensors; point to a slimforge output directory.")
    try:
        arch = json.loads(arch_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"{arch_path} is corrupt or truncated ({exc}); re-run the compression.") from exc
    if arch.get("builder"):
        from compress.registry import get_strategy

        model = get_strategy(arch["builder"]["strategy"]).build_student(arch["builder"]["args"])
        try:
            model.load_state_dict(_read_tensors(w_path), strict=True)
        except RuntimeError as exc:
            raise ModelSpecError(f"Saved tensors do not fit the rebuilt student: {str(exc).splitlines()[0]}") from exc
        return model.eval()
    if base is None:
        if not arch.get("base_spec"):
            raise ModelSpecError(
                "This student was compressed from a model object, not a spec string: pass `base=` an instance of "
                "the original architecture to load_student()."
            )
        base = load_model(arch["base_spec"], num_classes=num_classes)
    import copy

    model = copy.deepcopy(base)
    if "pad_shortcuts_to_conv" in arch.get("surgery", []):
        model = pad_shortcuts_to_conv(model)
    apply_widths(model, arch["modules"])
    state = _read_tensors(w_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelSpecError(f"Saved tensors do not fit the rebuilt student: {str(exc).splitlines()[0]}") from exc
    return model.eval()
