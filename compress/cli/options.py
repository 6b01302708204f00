"""Option values of the ``slimforge`` commands, parsed and checked before any work: the seed, the
data options of ``run`` (against the kind of ``--data``), ``--mean``/``--std``, ``--time-limit`` and
``--config``. Each problem is a ``ConfigError`` that names the flag and says what it takes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

from compress.errors import ConfigError
from compress.phases import known_phases, unknown_phase


def _check_seed(seed: int, option: str = "--seed") -> None:
    from compress.api import check_seed  # deferred: torch, timm, torch-pruning (the API and the strategies), kept out of `slimforge --help`

    check_seed(seed, name=option)


def _floats(option: str, text: Optional[str], *, positive: bool = False) -> Optional[tuple[float, ...]]:
    """``'0.485,0.456,0.406'`` -> floats (one per channel, or one for all), or a ConfigError saying the format."""
    if text is None:
        return None
    example = "0.229,0.224,0.225" if positive else "0.485,0.456,0.406"
    fmt = (f"{option} takes comma-separated numbers, one per image channel or one for all channels "
           f"(e.g. {option} {example} for RGB, {option} 0.5 for all)")
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{fmt}; got {text!r}.") from None
    if not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"{fmt}, finite; got {text!r}.")
    if positive and min(vals) <= 0:
        raise ConfigError(f"{fmt}, each > 0 (a std of 0 divides by zero); got {text!r}.")
    return vals


def _data_options(data: str, *, seed: int, test_data: Optional[str], mean: Optional[str], std: Optional[str],
                  image_size: Optional[int], in_chans: Optional[int], num_classes: Optional[int],
                  crop_pct: Optional[float] = None, interpolation: Optional[str] = None,
                  model: Optional[str] = None, num_workers: Optional[int] = None) -> dict:
    """``slimforge run``'s data options as ``load_task`` keyword arguments, each checked against the
    kind of ``--data`` (digits, .npz or an image folder) with a ConfigError naming the flag.

    An image folder is read with the data config of a ``timm:`` / ``torchvision:`` ``model``
    (issue 17; :mod:`compress.data.transforms`), which ``--image-size``, ``--crop-pct``,
    ``--interpolation``, ``--mean`` and ``--std`` override; other specs keep the legacy resize."""
    from compress.data.transforms import INTERPOLATIONS  # deferred: torch (the compress.data package), kept out of `slimforge --help`

    _check_seed(seed)
    kw: dict = {"seed": seed}
    m, s = _floats("--mean", mean), _floats("--std", std, positive=True)
    digits = data.strip().lower() == "digits"
    folder = Path(data).expanduser().is_dir()
    bad = []
    if digits and (m is not None or s is not None):
        bad.append("--mean/--std apply to .npz and image-folder data (digits is normalised by slimforge); drop them")
    if digits and test_data:
        bad.append("--test-data applies to .npz and image-folder data (digits has its own test split); drop it")
    if image_size is not None and not folder:
        bad.append("--image-size applies to image-folder data only (an .npz is used at its stored size); drop it")
    if image_size is not None and image_size < 1:
        bad.append(f"--image-size must be a positive number of pixels, got {image_size}")
    if in_chans is not None and in_chans < 1:
        bad.append(f"--in-chans must be a positive number of channels, got {in_chans}")
    if in_chans is not None and folder and in_chans not in (1, 3):
        bad.append(f"--in-chans must be 1 (grayscale) or 3 (RGB) for an image folder, got {in_chans}")
    if num_classes is not None and num_classes < 1:
        bad.append(f"--num-classes must be >= 1, got {num_classes}")
    if crop_pct is not None and not folder:
        bad.append("--crop-pct applies to image-folder data only (an .npz is used at its stored size); drop it")
    elif crop_pct is not None and not (math.isfinite(crop_pct) and 0 < crop_pct <= 1):
        bad.append(f"--crop-pct must be in (0, 1], the fraction of the resized image the center crop keeps "
                   f"(e.g. --crop-pct 0.875: resize to 256, crop 224), got {crop_pct}")
    if interpolation is not None and not folder:
        bad.append("--interpolation applies to image-folder data only (an .npz is used at its stored size); drop it")
    elif interpolation is not None and interpolation.strip().lower() not in INTERPOLATIONS:
        bad.append(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if num_workers is not None and num_workers < 0:
        bad.append(f"--num-workers must be >= 0 (0: decode in the main process), got {num_workers}")
    if bad:
        raise ConfigError("; ".join(bad) + ".")
    if test_data:
        kw["test_path"] = test_data
    if m is not None:
        kw["mean"] = m
    if s is not None:
        kw["std"] = s
    if folder:
        if image_size is not None:
            kw["image_size"] = image_size
        if in_chans is not None:
            kw["channels"] = in_chans
        if crop_pct is not None:
            kw["crop_pct"] = crop_pct
        if interpolation is not None:
            kw["interpolation"] = interpolation.strip().lower()
        if num_workers is not None:
            kw["num_workers"] = num_workers
        if model is not None and model.split(":", 1)[0].strip().lower() in ("timm", "torchvision"):
            kw["model"] = model.strip()  # the teacher's data config (a spec: resolved without building it)
    return kw


_TIME_LIMIT_FORMAT = ("--time-limit takes PHASE=SECONDS, repeated per phase (e.g. --time-limit prune=7200 "
                      "--time-limit finetune=none); SECONDS may end in s, m or h (90s, 30m, 2h); none: no limit")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _time_limits(items: Optional[List[str]]) -> Optional[dict]:
    """``["prune=2h", "finetune=none"]`` -> ``{"prune": 7200.0, "finetune": None}`` (the phase names
    checked against :data:`compress.phases.PHASES`), or None when no ``--time-limit`` was given.

    Raises:
        ConfigError: a malformed item, a phase given twice, an unknown phase (with the known ones) or a
            limit that is not a positive number of seconds; every problem at once.
    """
    if not items:
        return None
    out: dict = {}
    bad, names_bad = [], False
    for item in items:
        name, sep, value = (part.strip() for part in item.partition("="))
        text = value.lower()
        if not sep or not name or not text:
            bad.append(f"{item!r} is not PHASE=SECONDS")
            continue
        if name in out:
            bad.append(f"phase {name!r} is given twice")
            continue
        if unknown_phase(name):
            bad.append(unknown_phase(name))
            names_bad = True
            out[name] = None
            continue
        if text in ("none", "inf", "unlimited"):
            out[name] = None
            continue
        unit = _UNITS.get(text[-1], None)
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1.0)
        except ValueError:
            seconds = None
        if seconds is None or not math.isfinite(seconds) or seconds <= 0:
            bad.append(f"{item!r}: {value!r} is not a positive number of seconds (or none)")
            continue
        out[name] = seconds
    if bad:
        raise ConfigError(f"--time-limit: {'; '.join(bad)}. {_TIME_LIMIT_FORMAT}."
                          + (f" {known_phases()}" if names_bad else ""))
    return out



def _load_config(config: Optional[str]) -> Optional[dict]:
    """``--config``: a JSON object, given inline or as the path of a file, or None when not given."""
    if config is None:
        return None
    p = Path(config)
    text = p.read_text() if p.is_file() else config
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config must be a JSON object or a path to a JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("--config must be a JSON object of the strategy's config fields.")
    return data
