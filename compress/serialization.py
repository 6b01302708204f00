"""Saving a student so it can be reloaded without unpickling code.

A pruned or grown student has layer widths that differ from its architecture's defaults, so a
plain ``state_dict`` is not enough. We write two files:

* ``student.safetensors`` -- every tensor of ``state_dict()`` (safetensors: data only);
* ``student.arch.json`` -- the base model spec (e.g. ``"timm:resnet18"``), the surgery applied
  before compression (e.g. ``"pad_shortcuts_to_conv"``), the residual blocks removed by depth
  pruning (``dropped_blocks``, only when there are any: :mod:`compress.models.blocks`) and, for
  every Conv/Linear/BatchNorm module, its width attributes; or, for students that are new architectures (grown, searched),
  the strategy and the JSON arguments of its ``build_student``.

:func:`load_student` rebuilds the base model, applies the surgery, resizes the listed modules
to the saved widths and loads the tensors (strict). No pickle is involved at any point, and
loading runs no code named by the folder: ``student.arch.json`` is checked against a schema
(:class:`StudentArch`; NaN and infinities refused), its ``base_spec`` is built only when it is a
registry spec (``timm:``, ``torchvision:``, ``cifar:``, a ``compress.testing`` model) unless the
caller passes it again (``base_spec=``) or ``trust_remote_code=True``, and nothing is imported
from the folder itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import torch
from pydantic import BaseModel, Field
from torch import nn

from compress._strict_json import STRICT, read_json_file, validate
from compress.errors import CompressError, ModelSpecError
from compress.exporters.atomic import write_bytes_atomic, write_text_atomic
from compress.models import load_model, no_imports_from, pad_shortcuts_to_conv, require_registry_spec
from compress.models.blocks import drop_blocks, dropped_block_names
from compress.models.widths import apply_widths, describe_widths, planned_shapes
from compress.strategies import get_strategy  # the built-ins, for students saved with a builder

__all__ = ["save_student", "load_student", "StudentArch", "STUDENT_FORMAT"]

STUDENT_FORMAT = "slimforge-student/1"

def save_student(model: nn.Module, directory: str | Path, *, base_spec: str | None, surgery: list[str],
                 builder: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``student.safetensors`` and ``student.arch.json`` atomically into ``directory``."""
    from safetensors.torch import save as st_save

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    write_bytes_atomic(d / "student.safetensors", st_save(tensors))
    arch = {"format": STUDENT_FORMAT, "base_spec": base_spec, "surgery": surgery, "modules": describe_widths(model),
            "builder": builder}
    dropped = dropped_block_names(model)
    if dropped:  # depth pruning (compress.models.blocks); absent otherwise, so earlier files are unchanged
        arch["dropped_blocks"] = dropped
    write_text_atomic(d / "student.arch.json", json.dumps(arch, indent=2, sort_keys=True))
    return {"weights": str(d / "student.safetensors"), "arch": str(d / "student.arch.json")}


# ------------------------------------------------------------------------------ the arch schema

_Width = Annotated[int, Field(ge=1, le=2**31 - 1)]


class _ConvWidths(BaseModel):
    model_config = STRICT
    type: Literal["Conv2d"]
    in_channels: _Width
    out_channels: _Width
    groups: _Width


class _LinearWidths(BaseModel):
    model_config = STRICT
    type: Literal["Linear"]
    in_features: _Width
    out_features: _Width


class _NormWidths(BaseModel):
    model_config = STRICT
    type: Literal["BatchNorm2d", "BatchNorm1d"]
    num_features: _Width


class _Builder(BaseModel):
    model_config = STRICT
    strategy: str = Field(min_length=1)
    args: dict[str, Any]


class StudentArch(BaseModel):
    """Schema of ``student.arch.json`` (strict: no coercion, no NaN / infinities, no unknown keys;
    ``builder`` may be absent)."""

    model_config = STRICT
    format: Literal["slimforge-student/1"]
    base_spec: Optional[str] = Field(min_length=1)
    surgery: list[Literal["pad_shortcuts_to_conv"]]
    modules: dict[str, Annotated[Union[_ConvWidths, _LinearWidths, _NormWidths], Field(discriminator="type")]]
    builder: Optional[_Builder] = None
    dropped_blocks: list[Annotated[str, Field(min_length=1)]] = []


_ARCH_FIX = "re-save the student (CompressionResult.save) or restore the folder from its source"


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise ModelSpecError(
            f"{path} is corrupt or truncated ({exc}); re-run the compression or restore the file from its source."
        ) from exc


def load_student(directory: str | Path, base: nn.Module | None = None, *, num_classes: int | None = None,
                 base_spec: str | None = None, trust_remote_code: bool = False) -> nn.Module:
    """Rebuild a saved student.

    Args:
        directory: holds ``student.safetensors`` and ``student.arch.json``.
        base: an instance of the uncompressed architecture; if None it is built from the saved
            ``base_spec`` with :func:`compress.models.load_model`.
        base_spec: the spec the student was compressed from, passed again by the caller. Needed
            (or ``trust_remote_code``) when the saved ``base_spec`` is a ``package.module:factory``
            rather than a registry spec; must equal the saved one.
        trust_remote_code: build whatever ``base_spec`` the folder names (the Hugging Face
            convention). Even then nothing is imported from ``directory`` or the current directory.

    Raises:
        ModelSpecError: files missing or corrupt, ``student.arch.json`` not valid against
            :class:`StudentArch` (every problem listed), no base model available, or tensors do
            not fit.
        UntrustedCodeError: the saved ``base_spec`` names code to import and neither ``base``,
            the same ``base_spec`` nor ``trust_remote_code`` was passed.
    """
    d = Path(directory)
    arch_path, w_path = d / "student.arch.json", d / "student.safetensors"
    if not arch_path.is_file() or not w_path.is_file():
        raise ModelSpecError(f"{d} has no student.arch.json / student.safetensors; point to a slimforge output directory.")
    raw = read_json_file(arch_path, ModelSpecError, what="student architecture file", fix=_ARCH_FIX)
    arch = validate(StudentArch, raw, ModelSpecError, what="student architecture file", path=arch_path,
                    fix=_ARCH_FIX).model_dump()
    if arch.get("builder"):
        strategy = get_strategy(arch["builder"]["strategy"])
        try:
            model = strategy.build_student(arch["builder"]["args"])
        except CompressError:
            raise
        except Exception as exc:  # noqa: BLE001 - hostile or damaged builder arguments
            raise ModelSpecError(f"the builder arguments in {arch_path} do not build a {strategy.name} student "
                                 f"({type(exc).__name__}: {exc}); {_ARCH_FIX}.") from exc
        try:
            model.load_state_dict(_read_tensors(w_path), strict=True)
        except RuntimeError as exc:
            raise ModelSpecError(f"Saved tensors do not fit the rebuilt student: {str(exc).splitlines()[0]}") from exc
        return model.eval()
    if base is None:
        saved = arch["base_spec"]
        if base_spec is not None and saved is not None and base_spec.strip() != saved.strip():
            raise ModelSpecError(f"base_spec={base_spec!r} differs from the spec the student was compressed from "
                                 f"({saved!r} in {arch_path}); pass that spec, or base= an instance of its architecture.")
        spec = saved or base_spec
        if not spec:
            raise ModelSpecError(
                "This student was compressed from a model object, not a spec string: pass `base=` an instance of "
                "the original architecture to load_student()."
            )
        if saved:
            require_registry_spec(saved, source=arch_path, explicit=base_spec, trust_remote_code=trust_remote_code,
                                  how_to_pass="load_student(dir, base_spec='SPEC')")
        with no_imports_from(d):
            base = load_model(spec, num_classes=num_classes)
    import copy

    model = copy.deepcopy(base)
    if "pad_shortcuts_to_conv" in arch["surgery"]:
        model = pad_shortcuts_to_conv(model)
    if arch["dropped_blocks"]:
        try:
            model = drop_blocks(model, arch["dropped_blocks"])
        except ModelSpecError as exc:
            raise ModelSpecError(f"{arch_path}: {exc} {_ARCH_FIX}.") from exc
    state = _read_tensors(w_path)
    wrong = [f"{k} (arch {want} vs file {tuple(state[k].shape) if k in state else 'absent'})"
             for k, want in planned_shapes(model, arch["modules"]).items()
             if k not in state or tuple(state[k].shape) != want]
    if wrong:
        raise ModelSpecError(f"the widths in {arch_path} do not match the tensors in {w_path}: {', '.join(wrong[:5])}"
                             f"{' ...' if len(wrong) > 5 else ''}; {_ARCH_FIX}.")
    apply_widths(model, arch["modules"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelSpecError(f"Saved tensors do not fit the rebuilt student: {str(exc).splitlines()[0]}") from exc
    return model.eval()
