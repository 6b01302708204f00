"""Data-parallel fine-tunes started from one process: Lightning Fabric's spawn launcher.

``compress(..., runtime=RuntimeOptions(devices=N))`` called from a script, a notebook or pytest
cannot re-execute ``sys.argv`` (what Fabric's default ``ddp`` launcher does), so the KD fine-tune
(:func:`compress.training.loop.finetune_parallel`, which imports this module: the launcher knows
nothing of the loop) runs in ``N`` processes started with :func:`spawn`
(``strategy="ddp_spawn"``; NCCL on GPUs, gloo on the CPU).
Each process holds a copy of the student, the teacher and the loaders (so they must pickle), the
samples are sharded with a ``DistributedSampler`` and each rank takes ``batch_size // N`` of them a
step, so the global batch is the configured one. Rank 0 alone commits checkpoints; its weights and
history come back to the calling process, which replays ``on_epoch`` for them.

Under ``torchrun`` or SLURM no processes are spawned: the job's ranks already exist, and
:class:`~compress.training.Runtime` joins them (see its module docstring).
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError, ConfigError
from compress.training.runtime import PRECISIONS, Runtime

__all__ = ["spawn"]


def spawn(runtime: Runtime, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(rank_runtime, *args)`` on ``runtime.options.devices`` spawned processes; returns
    rank 0's return value (tensors and plain containers only). ``fn`` and ``args`` must pickle.

    Raises:
        CompressError: the error every rank raised (e.g. :class:`TrainingDivergedError`).
        ConfigError: the calling script has no ``if __name__ == "__main__":`` guard, which the
            spawn start method needs.
    """
    from lightning_fabric import Fabric

    opts = runtime.options
    accelerator = "cuda" if runtime.device.type == "cuda" else "cpu"
    fabric = Fabric(accelerator=accelerator, devices=opts.devices, strategy="ddp_spawn",
                    precision=PRECISIONS[opts.precision])
    # Arguments travel pickled in the spawn pipe; rank 0's result comes back through a file in a
    # private temp folder (a large result in the launcher's return queue would block the child
    # while the parent waits for it to exit).
    with tempfile.TemporaryDirectory(prefix="slimforge-ddp-") as tmp:
        out_path = Path(tmp) / "rank0.pt"
        try:
            failure = fabric.launch(_rank_entry, fn, _pack((dataclasses.replace(opts, devices=1), args)),
                                    str(out_path))
        except RuntimeError as exc:
            if "__main__" not in str(exc):
                raise
            raise ConfigError(
                f"devices={opts.devices} starts worker processes with the 'spawn' method, which re-imports the "
                "calling script: put the script's code under `if __name__ == \"__main__\":` (or call "
                "compress() from a function that only runs there), or use devices=1.") from None
        if failure is not None:
            raise failure.error
        return torch.load(out_path, map_location="cpu", weights_only=True)


class _Payload:
    """The serialized arguments, opaque to Fabric: its launcher walks every argument with
    ``apply_to_collection`` (``_disable_module_memory_sharing``), and a bare ``bytes`` object is a
    sequence it walks byte by byte (about 100 s for the 110 MB of a 10k-image CIFAR task)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _pack(obj: Any) -> _Payload:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return _Payload(buf.getvalue())


def _rank_entry(fabric: Any, fn: Callable[..., Any], payload: _Payload, out_path: str) -> "_Failure | None":
    # our own in-memory payload from the calling process (never a file): full unpickling is safe here
    data = payload.data
    options, args = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    rt = Runtime(dataclasses.replace(options, device=str(fabric.device) if fabric.device.type == "cuda" else "cpu"),
                 fabric=fabric)
    try:
        result = fn(rt, *args)
    except CompressError as exc:  # every rank raises the same typed error (fit agrees on it collectively)
        return _Failure(exc)
    if rt.is_global_zero:
        torch.save(result, out_path)
    return None


@dataclasses.dataclass
class _Failure:
    error: BaseException
