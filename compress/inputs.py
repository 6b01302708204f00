"""``compress()``'s input checks, all run before any work: the seed, the options, the model and
teacher on a batch of the data, the validation split (streamed once: checked, fingerprinted, its
first :data:`VAL_KEEP_BYTES` kept), the output directory, the reference points, and a budget the
model already meets. Each raises a :class:`~compress.errors.SlimforgeError` subclass whose message
says what to change.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.budgets import Budget
from compress.data import iter_batches
from compress.errors import BudgetAlreadyMetError, ConfigError, DataError, ModelSpecError, UnsupportedModelError
from compress.pareto import reference_points_from_file, validate_reference_points
from compress.strategies._parts.checkpoint import SplitFingerprint
from compress.training.loop import main_logits

__all__ = ["VAL_KEEP_BYTES", "check_seed", "check_model", "check_options", "check_time_limit", "check_budget_not_met",
           "reference_points", "check_writable", "scan_val"]

log = logging.getLogger(__name__)


def check_seed(seed: Any, *, name: str = "seed") -> int:
    """``seed`` if it is an int in ``[0, 2**32 - 1]`` (what NumPy and every RNG here accept), else a
    :class:`ConfigError` saying so."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ConfigError(f"{name} must be an integer from 0 to {2**32 - 1}, got {seed!r}; pick another seed.")
    return int(seed)


def check_model(model: Any, x: torch.Tensor, num_classes: int, who: str) -> None:
    """``model`` maps the data's batches to ``(B, num_classes)`` logits in eval mode and in train mode.

    In train mode the main logits count (:func:`compress.training.main_logits`: the tensor itself,
    or the first element of a tuple such as torchvision GoogLeNet / Inception v3's
    ``(logits, aux_logits)``); auxiliary outputs are ignored by every training loop. The train-mode
    forward leaves the model as found (buffers such as BatchNorm statistics restored, torch RNG
    forked).

    Raises:
        UnsupportedModelError: not a module, fails on the batch, wrong output shape.
        ModelSpecError: weights (parameters or buffers) that are NaN or infinite.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"{who} must be a torch.nn.Module, got {type(model).__name__}.", layer=who)
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelSpecError(
            f"{who} has NaN or infinite weights in {len(bad)} tensor(s) ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); load finite weights (check the checkpoint or the training that "
            "wrote it) before compressing."
        )
    was = model.training
    saved = {k: b.detach().clone() for k, b in model.named_buffers()}
    mode = "eval"
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model.eval()(x)
            mode = "train"  # (a batch of one cannot go through BatchNorm in train mode; training drops it too)
            train_out = main_logits(model.train()(x)) if x.shape[0] > 1 else out
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedModelError(
            f"{who} fails on a batch of the data {tuple(x.shape)} in {mode} mode: {type(exc).__name__}: {first}. "
            "Check that the model's input channels and size match the data (slimforge run: --in-chans, "
            "--image-size) and that it returns class logits (B, K), or a tuple whose first element is the logits.",
            layer=who,
        ) from exc
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in saved and b.shape == saved[k].shape:
                    b.copy_(saved[k])
        model.train(was)
    for mode, o in (("eval", out), ("train", train_out)):
        if not isinstance(o, torch.Tensor) or o.dim() != 2 or o.shape[1] != num_classes:
            got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
            raise UnsupportedModelError(
                f"{who} must return class logits of shape (batch, {num_classes}) for this data, got {got} in {mode} "
                f"mode. Give a classifier whose head has {num_classes} outputs, one per class of the data "
                "(slimforge run builds it with --num-classes, by default the data's class count; API: "
                "load_model(spec, num_classes=...)).",
                layer=who,
            )


def check_options(**options: Any) -> None:
    """compress()'s switches are real bools (``"false"`` or ``0`` is not), its counts real ints.

    Raises:
        ConfigError: every option of the wrong type or range, with the value given.
    """
    bad = []
    for name, v in options.items():
        if name.startswith("latency_"):
            low = 1 if name == "latency_repeats" else 0
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                bad.append(f"{name}={v!r} (an int >= {low})")
        elif not isinstance(v, (bool, np.bool_)):
            bad.append(f"{name}={v!r} (True or False)")
    if bad:
        raise ConfigError(f"compress() options of the wrong type or range: {', '.join(bad)}; pass the values shown in "
                          "brackets.")


def check_time_limit(seconds: Any) -> None:
    """``trace_time_limit_s`` is a positive, finite number of seconds or None (no limit).

    Raises:
        ConfigError: anything else (a bool, a string, NaN, inf, 0 or less), with the value given.
    """
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not np.isfinite(seconds) or seconds <= 0):
        raise ConfigError(f"trace_time_limit_s must be a positive number of seconds or None (no limit), got {seconds!r}.")


def check_budget_not_met(strategy_cls, resolved: Budget, cost, latency_ms: float | None = None,
                          memory_bytes: float | None = None) -> None:
    """Refuse (strategies that only shrink the given model) or log a budget the model already meets."""
    check = resolved.check(cost, latency_ms=latency_ms if resolved.needs_latency else None,
                           memory_bytes=memory_bytes if resolved.needs_memory else None)
    if not check.ok:
        return
    figures = {"macs": (cost.macs, "MACs {:,.0f}"), "params": (cost.params, "params {:,.0f}"),
               "latency_ms": (latency_ms, "latency {:.3f} ms"), "memory_bytes": (memory_bytes, "memory {:,.0f} B")}
    met = ", ".join(f"{fmt.format(v)} <= {fmt.format(v + room).split(' ', 1)[1]}"
                    for k, room in check.headroom.items() for v, fmt in [figures[k]] if v is not None)
    if getattr(strategy_cls, "shrinks_teacher", False):
        raise BudgetAlreadyMetError(
            f"the model already meets budget {resolved.describe()!r} ({met}), and {strategy_cls.name} only removes parts "
            "of the given model, so there is nothing to compress. Tighten the budget (e.g. 'macs=0.5x'), or ship the "
            "model as it is."
        )
    log.info("the model already meets budget %r (%s); %s builds a new network, which the budget still bounds.",
             resolved.describe(), met, strategy_cls.name)


def reference_points(points: Any) -> tuple[list[dict], str] | None:
    """compress()'s ``reference_points`` read and validated (:mod:`compress.pareto`), with where they
    came from; None when not given.

    Raises:
        ConfigError: a missing or invalid file, an invalid list, or another type.
    """
    if points is None:
        return None
    if isinstance(points, (str, Path)):
        return reference_points_from_file(points), str(points)
    if isinstance(points, (list, tuple)):
        return validate_reference_points(list(points)), "the reference_points list given to compress()"
    raise ConfigError(f"reference_points must be a JSON file path or a list of point dicts, got "
                      f"{type(points).__name__}; see compress.pareto for the format.")


def check_writable(path: Path) -> None:
    """Refuse an output directory that cannot be created or written, before any work.

    Raises:
        ConfigError: ``path`` is a file, or its nearest existing ancestor is not a writable directory.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output path {path} exists and is not a directory; choose a directory for out_dir.")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {path} cannot be written ({probe} is not writable); choose another out_dir.")


#: The validation split is read once at the start, batch by batch: checked, fingerprinted, and
#: its first samples up to this many bytes kept in memory (the example input, the parity check's
#: fallback when there is no test split). A split that fits is kept whole and fingerprinted as
#: before, so runs from earlier versions still resume; a larger one (an ImageNet-size folder) is
#: never held in memory (issue 17).
VAL_KEEP_BYTES = 256 * 2**20


def scan_val(loader, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | str]:
    """Check the validation split batch by batch (float finite images, int64 labels in range).

    Returns:
        ``(x_kept, y_kept, identity)``: the first samples (``VAL_KEEP_BYTES`` at most), and what
        :func:`run_identity` hashes: the whole split when it was all kept, else its streamed
        :class:`SplitFingerprint`.

    Raises:
        DataError: a batch is not float images / int64 class labels, NaN or infinite pixels (all
            of them listed), labels outside ``0..num_classes-1``, or the split is empty.
    """
    xs, ys, kept_bytes, whole = [], [], 0, True
    fp = SplitFingerprint()
    bad_rows: list[int] = []
    lo, hi, seen = None, None, 0
    for x, y in iter_batches(loader, "val"):
        if not x.is_floating_point():
            raise DataError(
                f"inputs are {x.dtype}; the model needs float images (B, C, H, W): convert with x.float() / 255 and "
                "normalise (compress.data loaders do this for you)."
            )
        if y.dtype.is_floating_point or y.dim() != 1:
            raise DataError(f"labels must be int64 class indices of shape (B,), got {y.dtype} {tuple(y.shape)}.")
        if len(x):
            finite = torch.isfinite(x.flatten(1)).all(dim=1)
            if not bool(finite.all()):
                bad_rows += (torch.nonzero(~finite).flatten() + seen).tolist()
        if len(y):
            lo = int(y.min()) if lo is None else min(lo, int(y.min()))
            hi = int(y.max()) if hi is None else max(hi, int(y.max()))
        fp.update(x, y)
        seen += len(x)
        size = x.element_size() * x.numel()
        if whole and kept_bytes + size <= VAL_KEEP_BYTES:
            xs.append(x)
            ys.append(y)
            kept_bytes += size
        elif whole:
            whole = False
            room = (VAL_KEEP_BYTES - kept_bytes) // max(1, size // max(1, len(x)))
            if room > 0:
                xs.append(x[:room])
                ys.append(y[:room])
    if not seen:
        raise DataError("the validation split is empty; give it at least one batch of (x, y)")
    if bad_rows:
        raise DataError(
            f"the validation images hold NaN or infinite values ({len(bad_rows)} image(s), first: {bad_rows[:5]}); "
            "replace or drop them (and check the train and test splits too) before compressing."
        )
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"labels range over [{lo}, {hi}] but the task has {num_classes} classes; "
            "labels must be 0..num_classes-1."
        )
    if not xs:  # a first batch larger than the keep limit: keep two samples for the example input
        x, y = next(iter_batches(loader, "val"))
        xs, ys = [x[:2]], [y[:2]]
    x_kept, y_kept = torch.cat(xs), torch.cat(ys)
    return x_kept, y_kept, ((x_kept, y_kept) if whole else fp.hexdigest())


