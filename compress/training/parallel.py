"""Data-parallel fine-tunes started from one process: Lightning Fabric's spawn launcher.

``compress(..., runtime=RuntimeOptions(devices=N))`` called from a script, a notebook or pytest
cannot re-execute ``sys.argv`` (what Fabric's default ``ddp`` launcher does), so the KD fine-tune
runs in ``N`` processes started with ``strategy="ddp_spawn"`` (NCCL on GPUs, gloo on the CPU).
Each process holds a copy of the student, the teacher and the loaders (so they must pickle), the
samples are sharded with a ``DistributedSampler`` and each rank takes ``batch_size // N`` of them a
step, so the global batch is the configured one. Rank 0 alone commits checkpoints; its weights and
history come back to the calling process, which replays ``on_epoch`` for them.

Under ``torchrun`` or SLURM no processes are spawned: the job's ranks already exist, and
:class:`~compress.training.Runtime` joins them (see its module docstring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compress.errors import CompressError
from compress.training.checkpoint import EpochCheckpoint
from compress.training.runtime import PRECISIONS, Runtime

__all__ = ["finetune_parallel", "spawn"]


def spawn(runtime: Runtime, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(rank_runtime, *args)`` on ``runtime.options.devices`` spawned processes; returns
    rank 0's return value. ``fn`` and ``args`` must pickle."""
    from lightning_fabric import Fabric

    opts = runtime.options
    accelerator = "cuda" if runtime.device.type == "cuda" else "cpu"
    fabric = Fabric(accelerator=accelerator, devices=opts.devices, strategy="ddp_spawn",
                    precision=PRECISIONS[opts.precision])
    return fabric.launch(_rank_entry, fn, dataclasses.replace(opts, devices=1), *args)


def _rank_entry(fabric: Any, fn: Callable[..., Any], options: Any, *args: Any) -> Any:
    rt = Runtime(dataclasses.replace(options, device=str(fabric.device) if fabric.device.type == "cuda" else "cpu"),
                 fabric=fabric)
    try:
        return fn(rt, *args)
    except CompressError as exc:  # every rank raises the same typed error (fit agrees on it collectively)
        return _Failure(exc)


@dataclasses.dataclass
class _Failure:
    error: BaseException


def _finetune_rank(rt: Runtime, model: nn.Module, data_train: Any, data_val: Any, settings: Any,
                   teacher: nn.Module | None, checkpoint: EpochCheckpoint | None, phase: str | None) -> Any:
    from compress.training.loop import finetune

    history = finetune(model, data_train, data_val, settings, teacher=teacher, checkpoint=checkpoint, phase=phase,
                       runtime=rt)
    if not rt.is_global_zero:
        return None
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, history


def finetune_parallel(model: nn.Module, data_train: Any, data_val: Any, settings: Any, *,
                      teacher: nn.Module | None = None, on_epoch: Callable[[int, dict], None] | None = None,
                      checkpoint: EpochCheckpoint | None = None, phase: str | None = None,
                      runtime: Runtime) -> list[dict]:
    """:func:`compress.training.finetune` on ``runtime.options.devices`` spawned DDP processes;
    ``model`` gets rank 0's final weights. Same arguments and errors as ``finetune``."""
    home = next(iter(model.parameters()), torch.empty(0)).device
    out = spawn(runtime, _finetune_rank, model.cpu(), data_train, data_val, settings,
                None if teacher is None else teacher, checkpoint, phase)
    if isinstance(out, _Failure):
        model.to(home)
        raise out.error
    state, history = out
    model.load_state_dict(state)
    model.to(home).eval()
    if on_epoch is not None:
        for rec in history:
            on_epoch(int(rec["epoch"]), rec)
    return history
