"""Device, precision and process group of every training phase, on Lightning Fabric.

slimforge does not own a training framework: placement, mixed precision, gradient scaling and
data-parallel process groups come from Lightning Fabric (``lightning-fabric``), with the same code
on a laptop CPU, one GPU, ``torchrun`` or SLURM. :class:`RuntimeOptions` is the public setting
(``compress(..., runtime=...)``, CLI ``--device --precision --devices``); :class:`Runtime` is the
resolved object a strategy uses.

Choices written down here (where Fabric leaves them to us):

* ``device="auto"`` is CUDA when ``torch.cuda.is_available()``, else the CPU. It is resolved once,
  when the :class:`Runtime` is built.
* ``precision``: ``"fp32"`` -> Fabric ``"32-true"``; ``"bf16"`` -> ``"bf16-mixed"`` (autocast to
  bfloat16, fp32 master weights); ``"fp16"`` -> ``"16-mixed"`` (autocast + loss scaling). Fabric
  would silently turn ``16-mixed`` on a CPU into bf16; we refuse it with :class:`ConfigError`
  instead, so a report never says fp16 where bf16 ran.
* ``devices=N > 1`` from a single process: the fine-tune runs in N processes started with Fabric's
  spawn launcher (``strategy="ddp_spawn"``: NCCL on GPUs, gloo on the CPU). The launcher that
  re-executes ``sys.argv`` is never used, so this works from user code and pytest. Under
  ``torchrun``/SLURM (a cluster environment Fabric detects, ``WORLD_SIZE > 1``) slimforge is one
  rank of the job and every phase that goes through :func:`compress.training.fit` runs DDP.
* ``channels_last``: ``"auto"`` turns it on on CUDA (the layout tensor cores want) and leaves the
  CPU in the default layout, because on the CPU it depends on the machine: the ResNet-56 KD step
  ran at 1.4x the images/s in fp32 (1.5x in bf16) on an AMD EPYC (Zen 4) at one thread per
  process (``benchmarks/results/runtime.md``), and at 0.8x in fp32 (0.56x in bf16) on an Intel
  Xeon with AMX at two threads (``benchmarks/results/runtime_2threads/runtime.md``). ``"on"`` and
  ``"off"`` force it. It changes the memory
  layout of 4-D weights and batches only, never the numbers a layer computes beyond rounding.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from compress.errors import ConfigError

__all__ = ["RuntimeOptions", "Runtime", "PRECISIONS", "resolve_device", "cluster_world_size"]

#: our precision names -> Lightning Fabric's precision plugin names
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_CHANNELS_LAST = ("auto", "on", "off")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` -> a concrete :class:`torch.device`.

    Raises:
        ConfigError: an unknown device string, or CUDA asked for where none is available.
    """
    if not isinstance(device, str):
        raise ConfigError(f"device must be a string ('auto', 'cpu', 'cuda' or 'cuda:N'), got {device!r}.")
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for CUDA, but torch sees no CUDA device here "
                              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use device='cpu' or 'auto'.")
        idx = int(d[5:]) if ":" in d else torch.cuda.current_device()
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}.")
        return torch.device("cuda", idx)
    raise ConfigError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")


def cluster_world_size() -> int:
    """The world size of a job launched from outside (``torchrun``, SLURM): ``WORLD_SIZE``, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how training runs. Every field is validated here (:class:`ConfigError`).

    Attributes:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"bf16"`` (bf16 autocast) or ``"fp16"`` (fp16 autocast with loss
            scaling; CUDA only).
        devices: processes for data-parallel training on this machine (1: no DDP).
        num_workers: DataLoader worker processes for the training batches (augmentation runs in
            them); 0 builds batches in the training process.
        pin_memory: page-locked host batches; None: on when the device is CUDA.
        persistent_workers: keep the workers alive between epochs (with ``num_workers > 0``).
        channels_last: ``"auto"``, ``"on"`` or ``"off"`` (see the module docstring).
        compile: ``torch.compile`` the student's and the teacher's forward in the KD fine-tunes
            (TorchInductor). It costs a compilation (about 1.5 min per process for a CIFAR ResNet
            on our 2-core CPU) and pays off only for fine-tunes much longer than that.
    """

    device: str = "auto"
    precision: str = "fp32"
    devices: int = 1
    num_workers: int = 0
    pin_memory: bool | None = None
    persistent_workers: bool = False
    channels_last: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        resolve_device(self.device)  # raises for unknown strings and missing CUDA
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}.")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1:
            raise ConfigError(f"devices must be a positive integer (processes for data-parallel training), got {self.devices!r}.")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"num_workers must be an integer >= 0, got {self.num_workers!r}.")
        if self.pin_memory is not None and not isinstance(self.pin_memory, bool):
            raise ConfigError(f"pin_memory must be true, false or None (auto), got {self.pin_memory!r}.")
        if not isinstance(self.persistent_workers, bool):
            raise ConfigError(f"persistent_workers must be true or false, got {self.persistent_workers!r}.")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}.")
        if self.channels_last not in _CHANNELS_LAST:
            raise ConfigError(f"channels_last must be one of {_CHANNELS_LAST}, got {self.channels_last!r}.")
        dev = resolve_device(self.device)
        if self.precision == "fp16" and dev.type != "cuda":
            raise ConfigError("precision 'fp16' (fp16 autocast with loss scaling) needs a CUDA device; on the CPU use "
                              "precision='bf16' (or 'fp32').")
        if self.devices > 1 and dev.type == "cuda" and self.devices > torch.cuda.device_count():
            raise ConfigError(f"devices={self.devices} but this machine has {torch.cuda.device_count()} CUDA device(s).")

    @classmethod
    def coerce(cls, value: "RuntimeOptions | dict | None", **overrides: Any) -> "RuntimeOptions":
        """A :class:`RuntimeOptions` from itself, a dict of its fields or None (defaults), with the
        non-None ``overrides`` applied.

        Raises:
            ConfigError: unknown fields or invalid values.
        """
        if value is None:
            base: dict[str, Any] = {}
        elif isinstance(value, RuntimeOptions):
            base = asdict(value)
        elif isinstance(value, dict):
            base = dict(value)
        else:
            raise ConfigError(f"runtime must be a RuntimeOptions, a dict of its fields or None, got {type(value).__name__}.")
        base.update({k: v for k, v in overrides.items() if v is not None})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(base) - known)
        if unknown:
            raise ConfigError(f"RuntimeOptions has no field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**base)


class Runtime:
    """The resolved runtime of one run: a Lightning Fabric object for one process (or one rank).

    Build it once per run (``Runtime(options)``); strategies get it as ``ctx.runtime`` and pass it
    to :func:`compress.training.fit`. ``Runtime()`` is the CPU fp32 single-process runtime.

    Args:
        options: the public settings.
        fabric: an already launched Fabric (a rank of a DDP job); None builds a single-process one
            (or joins the ``torchrun``/SLURM job when ``WORLD_SIZE > 1``).
    """

    def __init__(self, options: RuntimeOptions | None = None, *, fabric: Any = None) -> None:
        self.options = options or RuntimeOptions(device="cpu")
        self._device = resolve_device(self.options.device)
        self._fabric = fabric

    # ------------------------------------------------------------------ fabric
    @property
    def fabric(self) -> Any:
        """The Lightning Fabric object (built on first use; launched for an external cluster job)."""
        if self._fabric is None:
            from lightning_fabric import Fabric

            world = cluster_world_size()
            accelerator = "cuda" if self._device.type == "cuda" else "cpu"
            if world > 1:  # one rank of a torchrun / SLURM job: Fabric reads the cluster environment
                fabric = Fabric(accelerator=accelerator, precision=PRECISIONS[self.options.precision],
                                strategy="ddp", devices=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                num_nodes=max(1, world // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
                fabric.launch()
            else:
                devices = [self._device.index] if accelerator == "cuda" else 1
                fabric = Fabric(accelerator=accelerator, devices=devices, precision=PRECISIONS[self.options.precision],
                                strategy="auto")
            self._fabric = fabric
        return self._fabric

    @property
    def device(self) -> torch.device:
        """The device of this rank."""
        return self._fabric.device if self._fabric is not None else self._device

    @property
    def precision(self) -> str:
        return self.options.precision

    @property
    def world_size(self) -> int:
        return int(self._fabric.world_size) if self._fabric is not None else cluster_world_size()

    @property
    def global_rank(self) -> int:
        if self._fabric is not None:
            return int(self._fabric.global_rank)
        return int(os.environ.get("RANK", "0")) if cluster_world_size() > 1 else 0

    @property
    def is_global_zero(self) -> bool:
        """True on the one rank that writes checkpoints, artifacts and reports."""
        return self.global_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def channels_last(self) -> bool:
        """``"on"``/``"off"`` as set; ``"auto"``: on on CUDA, off on the CPU (see the module docstring)."""
        if self.options.channels_last == "auto":
            return self.device.type == "cuda"
        return self.options.channels_last == "on"

    @property
    def pin_memory(self) -> bool:
        pm = self.options.pin_memory
        return self.device.type == "cuda" if pm is None else pm

    @property
    def is_default(self) -> bool:
        """CPU and fp32: the numbers every checkpoint and cached teacher before the runtime existed
        were computed with (keys of other runtimes get the device type and precision added; the
        world size is checked separately, with its own message)."""
        return self.device.type == "cpu" and self.precision == "fp32"

    # ------------------------------------------------------------------ placement
    def prepare(self, *modules: nn.Module) -> None:
        """Move ``modules`` to the device (and channels_last for 4-D weights when enabled), in place."""
        for m in modules:
            if m is None:
                continue
            m.to(self.device)
            if self.channels_last and any(p.dim() == 4 for p in m.parameters()):
                m.to(memory_format=torch.channels_last)

    def to_device(self, batch: Any) -> Any:
        """``batch`` (tensor, tuple, list or dict of them) on the device; 4-D float tensors in
        channels_last when enabled."""
        if isinstance(batch, torch.Tensor):
            t = batch.to(self.device, non_blocking=self.pin_memory)
            if self.channels_last and t.dim() == 4 and t.is_floating_point():
                t = t.contiguous(memory_format=torch.channels_last)
            return t
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        return batch

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Forward passes under the precision's autocast (a no-op in fp32)."""
        if self.precision == "fp32":
            yield
            return
        with self.fabric.autocast():
            yield

    # ------------------------------------------------------------------ steps
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in a training step: ``model`` itself in one process, Fabric's DDP
        wrapper (gradients all-reduced in ``backward``) in a data-parallel job. Weights stay
        shared with ``model``; checkpoints and evaluation use ``model``."""
        if not self.distributed:
            return model
        return self.fabric.setup_module(model)

    def compiled(self, fn: Any) -> Any:
        """``torch.compile(fn)`` when the options ask for it, else ``fn`` (weights stay shared)."""
        return torch.compile(fn) if self.options.compile else fn

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` through Fabric (loss scaling in fp16)."""
        self.fabric.backward(loss)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale fp16 gradients before clipping (a no-op in fp32 and bf16)."""
        if self.precision == "fp16":
            self.fabric.strategy.precision.unscale_gradients(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` through the precision plugin (GradScaler step and update in fp16)."""
        if self.precision == "fp16":
            self.fabric.strategy.precision.optimizer_step(optimizer)
        else:
            optimizer.step()

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, *, grad_clip: float | None = None,
                 clip_params: Any = None, zero_grad: bool = True,
                 after_backward: Callable[[], None] | None = None) -> None:
        """One optimisation step on ``loss``: zero the gradients (unless ``zero_grad=False``),
        backward through Fabric, unscale (fp16), ``after_backward()`` (a gradient regulariser, e.g.
        Torch-Pruning's ``GroupNormPruner.regularize``: it sees unscaled gradients), clip the global
        norm of ``clip_params`` (default: the optimizer's parameters) to ``grad_clip`` (None: no
        clipping), ``optimizer.step()``. Every training step of slimforge ends here; a strategy never
        calls ``.backward`` itself."""
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        if after_backward is not None or grad_clip is not None:
            self.unscale(optimizer)  # once per step (GradScaler refuses a second unscale)
        if after_backward is not None:
            after_backward()
        if grad_clip is not None:
            params = list(clip_params) if clip_params is not None else [p for g in optimizer.param_groups
                                                                        for p in g["params"]]
            nn.utils.clip_grad_norm_(params, grad_clip)
        self.optimizer_step(optimizer)

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.distributed:
            self.fabric.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.fabric.broadcast(obj, src) if self.distributed else obj

    def all_reduce_sum(self, value: float) -> float:
        """Sum of a Python float over the ranks (itself in one process)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        return float(self.fabric.all_reduce(t, reduce_op="sum").item())

    def sync_buffers(self, *modules: nn.Module) -> None:
        """Give every rank rank 0's floating buffers (BatchNorm running statistics). DDP broadcasts
        them at the start of each forward, so after an epoch's last step the ranks' buffers differ
        by that step's update; evaluation, keep-best and checkpoints use rank 0's, as DDP does."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for m in modules:
            for b in m.buffers():
                dist.broadcast(b.data, src=0)

    def ranks_agree(self, value: float) -> bool:
        """True when ``value`` is bit-equal on every rank (all-gathered)."""
        if not self.distributed:
            return True
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        gathered = self.fabric.all_gather(t).reshape(-1)
        return bool((gathered == gathered[0]).all())

    # ------------------------------------------------------------------ report
    def describe(self) -> dict[str, Any]:
        """The ``runtime`` block of ``report.json``: device, precision, world size, versions."""
        dev = self.device
        return {
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "precision": self.precision,
            "world_size": self.world_size,
            "devices": self.options.devices,
            "channels_last": self.channels_last,
            "num_workers": self.options.num_workers,
            "compile": self.options.compile,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "lightning_fabric": _fabric_version(),
        }


def _fabric_version() -> str:
    try:
        import importlib.metadata as md

        return md.version("lightning-fabric")
    except Exception:  # noqa: BLE001
        return "not installed"
