"""Build a model from a spec string, optionally loading local weights.

Spec forms (``MODEL_SCHEMES``):

* ``timm:NAME`` -- ``timm.create_model(NAME, pretrained=False, ...)``; any timm
  architecture name, with or without a pretrained tag (``resnet18.a1_in1k``).
* ``torchvision:NAME`` -- ``torchvision.models.get_model(NAME, weights=None, ...)``;
  image classifiers only (googlenet/inception_v3 are built with ``aux_logits=False``
  so they return plain logits in train mode too).
* ``cifar:resnetDEPTH`` -- :mod:`compress.models.cifar_resnet` (depth 6n+2, e.g.
  20/32/44/56/110).
* ``package.module:factory`` (scheme ``"python"``; ``python:package.module:factory``
  also works) -- imports ``package.module`` and calls ``factory``, passing
  ``num_classes``/``in_chans`` when the factory accepts them. ``factory`` may be
  a dotted attribute path (``Class.build``).

Nothing is ever downloaded: pretrained weights come only from a local file
passed as ``weights``. A ``package.module:factory`` is never imported from the current
directory (an implicit ``sys.path`` entry) nor from a folder named by :func:`no_imports_from`
(the run directory or student folder being loaded): install the package or put its folder on
``PYTHONPATH``.

Files slimforge reads (``run_args.json``, ``student.arch.json``) may name a model only as a
*registry spec* (:func:`is_registry_spec`: ``timm:``, ``torchvision:``, ``cifar:`` or a model
of ``compress.testing``); :func:`require_registry_spec` refuses the rest unless the caller names
the same spec again or trusts the file (``trust_remote_code=True``, the Hugging Face convention).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import inspect
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from compress.errors import ModelSpecError, UntrustedCodeError
from compress.models.cifar_resnet import cifar_resnet

__all__ = ["MODEL_SCHEMES", "REGISTRY_MODULES", "load_model", "describe_model_spec", "load_weights",
           "is_registry_spec", "require_registry_spec", "no_imports_from"]

#: Spec schemes understood by :func:`load_model`; ``"python"`` is the
#: ``package.module:factory`` form.
MODEL_SCHEMES: tuple[str, ...] = ("timm", "torchvision", "cifar", "python")

#: Modules whose public models (``__all__``) count as registry specs: shipped with slimforge.
REGISTRY_MODULES: tuple[str, ...] = ("compress.testing",)

_TV_AUX_LOGITS = ("googlenet", "inception_v3")
_CIFAR_NAMES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
_MAX_LISTED_KEYS = 5
_HOW_TO_SPEC = (
    "use 'timm:NAME', 'torchvision:NAME', 'cifar:resnet20|32|44|56|110' or 'package.module:factory'"
)


# --------------------------------------------------------------------------- parsing


def _split_spec(spec: str) -> tuple[str, str]:
    """``spec -> (scheme, name)``; raises ModelSpecError for malformed specs (no import)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec must be a non-empty string, got {spec!r}; {_HOW_TO_SPEC}")
    spec = spec.strip()
    if ":" not in spec:
        hint = _suggest_unscoped(spec)
        raise ModelSpecError(f"model spec {spec!r} has no scheme; {hint or _HOW_TO_SPEC}")
    prefix, _, rest = spec.partition(":")
    prefix = prefix.strip()
    rest = rest.strip()
    if prefix.lower() in ("timm", "torchvision", "cifar"):
        prefix = prefix.lower()
        if not rest:
            raise ModelSpecError(f"model spec {spec!r} has no model name after '{prefix}:'; {_HOW_TO_SPEC}")
        return prefix, rest
    if prefix == "python" and ":" in rest:
        prefix, _, rest = rest.partition(":")
        prefix, rest = prefix.strip(), rest.strip()
    if not prefix or not rest:
        raise ModelSpecError(f"model spec {spec!r} is incomplete; {_HOW_TO_SPEC}")
    if not all(part.isidentifier() for part in prefix.split(".")) or not all(
        part.isidentifier() for part in rest.split(".")
    ):
        raise ModelSpecError(
            f"model spec {spec!r}: {prefix!r} is not a known scheme ({', '.join(MODEL_SCHEMES[:3])}) "
            f"and {prefix}:{rest} is not a 'package.module:factory' path; {_HOW_TO_SPEC}"
        )
    return "python", f"{prefix}:{rest}"


def describe_model_spec(spec: str) -> dict:
    """Parse ``spec`` for reports without building anything.

    Returns:
        ``{"spec": spec, "scheme": one of MODEL_SCHEMES, "name": str}``; for the
        python scheme ``name`` is ``"package.module:factory"``.

    Raises:
        ModelSpecError: ``spec`` is empty or malformed (unknown names are not
            checked here; :func:`load_model` checks them).
    """
    scheme, name = _split_spec(spec)
    return {"spec": spec.strip(), "scheme": scheme, "name": name}


# --------------------------------------------------------------------------- trust


def is_registry_spec(spec: str) -> bool:
    """True when ``spec`` builds a model without running code named by the spec itself:
    ``timm:NAME``, ``torchvision:NAME``, ``cifar:NAME``, or ``MODULE:NAME`` with ``MODULE`` in
    :data:`REGISTRY_MODULES` and ``NAME`` an ``nn.Module`` class in its ``__all__``. Malformed specs are not."""
    try:
        scheme, name = _split_spec(spec)
    except ModelSpecError:
        return False
    if scheme != "python":
        return True
    module_name, _, attr = name.partition(":")
    if module_name not in REGISTRY_MODULES:
        return False
    module = importlib.import_module(module_name)
    obj = getattr(module, attr, None) if attr in getattr(module, "__all__", ()) else None
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def require_registry_spec(spec: str, *, source: str | Path, explicit: str | None = None,
                          trust_remote_code: bool = False, how_to_pass: str = "") -> None:
    """Refuse a model spec read from the file ``source`` unless it is a registry spec, the caller
    passed the same spec again (``explicit``), or ``trust_remote_code``.

    Args:
        how_to_pass: how the caller names the spec again (``"--model SPEC"``,
            ``"load_student(dir, base_spec=SPEC)"``), for the message.

    Raises:
        UntrustedCodeError: ``spec`` would import and call code that only the file asks for.
    """
    if is_registry_spec(spec) or trust_remote_code or (explicit is not None and explicit.strip() == spec.strip()):
        return
    again = f" ({how_to_pass.replace('SPEC', spec)})" if how_to_pass else ""
    raise UntrustedCodeError(
        f"{source} names the model {spec!r}, which is not a registry spec (timm:, torchvision:, cifar: or a "
        f"compress.testing model), so loading it would import and run code that only the file asks for. "
        f"If you trust that code, pass the spec again explicitly{again}, or set trust_remote_code=True "
        f"(CLI --trust-remote-code)."
    )


_NO_IMPORT_DIRS: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("no_import_dirs", default=())


@contextlib.contextmanager
def no_imports_from(*dirs: str | Path) -> Iterator[None]:
    """While active, a ``package.module:factory`` spec is never imported from ``dirs`` or folders
    below them (in addition to the current directory, which is always excluded)."""
    token = _NO_IMPORT_DIRS.set(_NO_IMPORT_DIRS.get() + tuple(Path(d).resolve() for d in dirs))
    try:
        yield
    finally:
        _NO_IMPORT_DIRS.reset(token)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _import_outside(module_name: str) -> object:
    """``importlib.import_module`` with ``sys.path`` cleared, for the import, of the current
    directory (``''``, ``'.'`` or its absolute path, unless listed in ``PYTHONPATH``) and of every
    entry inside a :func:`no_imports_from` folder. Modules imported before are returned as is."""
    if module_name in sys.modules:
        return importlib.import_module(module_name)
    cwd = Path.cwd().resolve()
    banned = _NO_IMPORT_DIRS.get()
    explicit = {Path(e).resolve() for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e not in ("", ".")}

    def refused(entry: str) -> bool:
        if entry in ("", "."):
            return True
        try:
            p = Path(entry).resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        return (p == cwd and p not in explicit) or any(_within(p, b) for b in banned)

    saved = list(sys.path)
    kept = [e for e in saved if not (isinstance(e, str) and refused(e))]
    sys.path[:] = kept
    try:
        return importlib.import_module(module_name)
    finally:
        added = [e for e in sys.path if e not in kept]  # entries the imported code added itself
        sys.path[:] = saved + [e for e in added if e not in saved]


def _local_hint(module_name: str) -> str:
    """Where an unimportable module sits in a folder we do not import from, if it does."""
    top = module_name.split(".")[0]
    for folder, what in [(Path.cwd(), "the current directory"),
                         *((d, "the folder being loaded") for d in _NO_IMPORT_DIRS.get())]:
        if (folder / f"{top}.py").is_file() or (folder / top).is_dir():
            return (f"'{top}' is in {what} ({folder}), and slimforge never imports from there; install the "
                    f"package or add its folder to PYTHONPATH. ")
    return ""


# --------------------------------------------------------------------------- suggestions


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _torchvision_names(classifiers_only: bool = True) -> list[str]:
    import torchvision

    if classifiers_only:
        return list(torchvision.models.list_models(module=torchvision.models))
    return list(torchvision.models.list_models())


def _close(name: str, candidates: list[str], n: int = 5) -> list[str]:
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def _did_you_mean(matches: list[str], prefix: str = "") -> str:
    if not matches:
        return ""
    return "did you mean " + ", ".join(f"'{prefix}{m}'" for m in matches) + "? "


def _suggest_unscoped(name: str) -> str:
    tips: list[str] = []
    try:
        import timm

        if timm.is_model(name):
            tips.append(f"timm:{name}")
    except Exception:  # pragma: no cover - timm missing/broken: no suggestion
        pass
    try:
        if name in _torchvision_names():
            tips.append(f"torchvision:{name}")
    except Exception:  # pragma: no cover
        pass
    if name in _CIFAR_NAMES:
        tips.append(f"cifar:{name}")
    if not tips:
        return ""
    return "write " + " or ".join(f"'{t}'" for t in tips) + " (a spec is SCHEME:NAME)"


# --------------------------------------------------------------------------- builders


def _accepts(fn, param: str) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return param in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
    )


def _adapt_in_chans(model: nn.Module, in_chans: int, what: str) -> nn.Module:
    """Replace the first 3-channel ``nn.Conv2d`` by an ``in_chans`` one (weights: channel mean, tiled)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1:
            new = nn.Conv2d(
                in_chans,
                m.out_channels,
                m.kernel_size,
                stride=m.stride,
                padding=m.padding,
                dilation=m.dilation,
                bias=m.bias is not None,
                padding_mode=m.padding_mode,
                device=m.weight.device,
                dtype=m.weight.dtype,
            )
            with torch.no_grad():
                mean = m.weight.mean(dim=1, keepdim=True) * (3.0 / in_chans)
                new.weight.copy_(mean.expand_as(new.weight))
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            return model
    raise ModelSpecError(
        f"{what} has no 3-channel nn.Conv2d input layer to adapt to in_chans={in_chans}; "
        "use in_chans=3 (replicate grayscale images to 3 channels; slimforge run: store the images as RGB, or "
        "read an image folder with --in-chans 3) or a factory that takes in_chans"
    )


def _build_timm(name: str, num_classes: int | None, in_chans: int) -> nn.Module:
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or "/" in name:
        raise ModelSpecError(
            f"timm:{name} refers to a hub/remote model, which slimforge never downloads; "
            "use the architecture name (e.g. 'timm:resnet18') and pass the weights file as weights="
        )
    if not timm.is_model(name):
        hint = _did_you_mean(_close(name, _timm_names()), "timm:")
        raise ModelSpecError(
            f"unknown timm model '{name}'; {hint}"
            "list the names with timm.list_models('*pattern*')"
        )
    kwargs: dict = {"pretrained": False, "in_chans": in_chans}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return timm.create_model(name, **kwargs)


def _build_torchvision(name: str, num_classes: int | None, in_chans: int) -> nn.Module:
    import torchvision

    if name not in _torchvision_names(classifiers_only=False):
        hint = _did_you_mean(_close(name, _torchvision_names()), "torchvision:")
        raise ModelSpecError(
            f"unknown torchvision model '{name}'; {hint}"
            "list the classifiers with torchvision.models.list_models(module=torchvision.models)"
        )
    if name not in _torchvision_names():
        raise ModelSpecError(
            f"torchvision model '{name}' is not an image classifier (detection, segmentation, video, "
            "optical-flow or quantized model); slimforge compresses classifiers -- pick one of "
            "torchvision.models.list_models(module=torchvision.models)"
        )
    kwargs: dict = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name in _TV_AUX_LOGITS:
        # without auxiliary heads the model returns plain logits in train mode too
        kwargs["aux_logits"] = False
    with warnings.catch_warnings():
        # googlenet/inception warn about their default init scheme when weights=None
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.get_model(name, **kwargs)
    if in_chans != 3:
        model = _adapt_in_chans(model, in_chans, f"torchvision:{name}")
    return model


def _build_cifar(name: str, num_classes: int | None, in_chans: int) -> nn.Module:
    m = re.fullmatch(r"(?:cifar_)?resnet(\d+)", name.strip().lower())
    depth = int(m.group(1)) if m else -1
    if depth < 8 or (depth - 2) % 6 != 0:
        hint = _did_you_mean(_close(name, list(_CIFAR_NAMES)), "cifar:")
        raise ModelSpecError(
            f"unknown CIFAR model '{name}'; {hint}"
            "the cifar scheme provides resnetD with depth D = 6n+2 (20, 32, 44, 56, 110, ...)"
        )
    return cifar_resnet(depth, num_classes=10 if num_classes is None else num_classes, in_chans=in_chans)


def _build_python(target: str, num_classes: int | None, in_chans: int) -> nn.Module:
    module_name, _, attr_path = target.partition(":")
    try:
        module = _import_outside(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not module_name.startswith(exc.name):
            # the module exists but one of *its* imports is missing
            raise ModelSpecError(
                f"importing '{module_name}' for model factory '{target}' failed: {exc}; "
                f"install the missing package '{exc.name}'"
            ) from exc
        close = (
            difflib.get_close_matches(module_name, MODEL_SCHEMES[:3], n=1, cutoff=0.6)
            if "." not in module_name
            else []
        )
        hint = _local_hint(module_name) + (f"did you mean '{close[0]}:{attr_path}'? " if close else "")
        raise ModelSpecError(
            f"model spec '{target}': '{module_name}' is neither a scheme ({', '.join(MODEL_SCHEMES[:3])}) "
            f"nor an importable module; {hint}{_HOW_TO_SPEC}"
        ) from exc
    except Exception as exc:
        raise ModelSpecError(
            f"importing '{module_name}' for model factory '{target}' raised "
            f"{type(exc).__name__}: {exc}; fix that module so it imports cleanly"
        ) from exc
    obj = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            hint = _did_you_mean(difflib.get_close_matches(part, public, n=3, cutoff=0.6))
            raise ModelSpecError(
                f"model factory '{target}': {obj.__name__ if hasattr(obj, '__name__') else obj!r} "
                f"has no attribute '{part}'; {hint}check the 'package.module:factory' spec"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(
            f"model factory '{target}' is a {type(obj).__name__}, not callable; "
            "point the spec at a function or nn.Module class that returns the model"
        )
    kwargs: dict = {}
    if num_classes is not None:
        if _accepts(obj, "num_classes"):
            kwargs["num_classes"] = num_classes
        else:
            warnings.warn(
                f"model factory '{target}' does not accept num_classes; called without it "
                f"(requested num_classes={num_classes})",
                stacklevel=3,
            )
    pass_chans = in_chans != 3 and _accepts(obj, "in_chans")
    if pass_chans:
        kwargs["in_chans"] = in_chans
    try:
        model = obj(**kwargs)
    except Exception as exc:
        raise ModelSpecError(
            f"model factory '{target}' raised {type(exc).__name__}: {exc}; "
            "fix the factory or call it yourself and pass the model object instead of a spec"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model factory '{target}' returned {type(model).__name__}, not a torch.nn.Module; "
            "make the factory return the model"
        )
    if in_chans != 3 and not pass_chans:
        model = _adapt_in_chans(model, in_chans, f"model from '{target}'")
    return model


_BUILDERS = {
    "timm": _build_timm,
    "torchvision": _build_torchvision,
    "cifar": _build_cifar,
    "python": _build_python,
}


# --------------------------------------------------------------------------- weights


def _read_weights_file(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise ModelSpecError(
            f"weights file '{path}' does not exist or is not a file; pass the path of a local "
            "state_dict saved with torch.save(model.state_dict(), path)"
        )
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a dependency
            raise ModelSpecError(
                f"reading '{path}' needs the safetensors package; pip install safetensors"
            ) from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelSpecError(f"cannot read safetensors file '{path}': {exc}; re-save it") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelSpecError(
            f"cannot load weights file '{path}' with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
            "save a plain state_dict (torch.save(model.state_dict(), path)), not a pickled model object"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelSpecError(
            f"weights file '{path}' holds {type(obj).__name__}, not a state_dict; save "
            "torch.save(model.state_dict(), path) or a dict with a 'state_dict' or 'model' entry"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelSpecError(
            f"weights file '{path}' is not a state_dict: entries {bad[:_MAX_LISTED_KEYS]!r} are not "
            "name -> tensor; save torch.save(model.state_dict(), path)"
        )
    return obj


def _strip_prefix(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> Mapping[str, torch.Tensor]:
    """Drop a DataParallel/compile wrapper prefix when every key has it and the model has none."""
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_keys):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _fmt_keys(keys: list[str]) -> str:
    more = len(keys) - _MAX_LISTED_KEYS
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... (+{more} more)" if more > 0 else "")


def load_weights(model: nn.Module, path: str | Path, *, spec: str = "model") -> nn.Module:
    """Load a local weights file into ``model`` strictly and return ``model``.

    The file is read with ``torch.load(path, weights_only=True)`` (or
    safetensors for ``*.safetensors``) and may be a state_dict or a dict with a
    ``"state_dict"``/``"model"`` entry; a ``module.`` prefix is dropped.
    BatchNorm ``num_batches_tracked`` counters absent from the file are tolerated
    (older checkpoints lack them); every other key must match in name and shape.

    Raises:
        ModelSpecError: missing/unreadable file, not a state_dict, or missing,
            unexpected or shape-mismatched keys (the first few of each are listed).
    """
    path = Path(path).expanduser()
    state = _read_weights_file(path)
    own = model.state_dict()
    state = _strip_prefix(state, set(own))
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_fmt_keys(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_fmt_keys(mismatched)}")
        advice = (
            "pass the spec of the architecture the file was saved from"
            + (" and the num_classes it was trained with (slimforge run: --num-classes N)" if mismatched else "")
        )
        raise ModelSpecError(
            f"weights file '{path}' does not fit {spec}: " + "; ".join(parts) + f"; {advice}"
        )
    to_load = dict(state)
    for k, v in own.items():  # fill tolerated num_batches_tracked gaps with the model's own value
        if k not in to_load:
            to_load[k] = v
    model.load_state_dict(to_load, strict=True)
    return model


# --------------------------------------------------------------------------- entry point


def load_model(
    spec: str,
    *,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    in_chans: int = 3,
) -> nn.Module:
    """Build the model named by ``spec`` (see the module docstring) on CPU, in train mode.

    Args:
        spec: ``"timm:NAME"``, ``"torchvision:NAME"``, ``"cifar:resnetD"`` or
            ``"package.module:factory"``.
        num_classes: classifier outputs; ``None`` keeps the architecture's
            default (1000 for timm/torchvision, 10 for cifar).
        weights: optional local state_dict file, loaded strictly after the
            model is built (see :func:`load_weights`). Never downloaded.
        in_chans: input channels; timm models and factories taking ``in_chans``
            get it directly, otherwise the first 3-channel conv is replaced.

    Returns:
        An ``nn.Module`` mapping ``(N, in_chans, H, W)`` float images to logits
        ``(N, num_classes)``.

    Raises:
        ModelSpecError: malformed spec, unknown scheme or model name (with close
            matches), factory import/call failure, or a weights file that is
            missing, unreadable or does not match the architecture.
    """
    scheme, name = _split_spec(spec)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ModelSpecError(f"num_classes must be a positive int or None, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ModelSpecError(f"in_chans must be a positive int, got {in_chans!r}")
    model = _BUILDERS[scheme](name, num_classes, in_chans)
    if weights is not None:
        load_weights(model, weights, spec=spec.strip())
    return model
