"""Executors: where a strategy's population is evaluated (serial, a local process pool, or Ray).

Every population-based search evaluates a batch of independent candidates at a time (GP trees
of one generation, the lambda CMA-ES candidates of one ``tell``). It hands that batch to an
:class:`Executor`::

    results = executor.map(fn, items)   # list, results[i] == fn(items[i]), in item order

Implementations:

* :class:`SerialExecutor` (``"serial"``, the default): ``[fn(x) for x in items]`` in this process.
* :class:`ProcessExecutor` (``"process"``): a ``concurrent.futures.ProcessPoolExecutor`` with the
  ``spawn`` start method, kept alive between calls. ``fn`` and the items must be picklable.
* :class:`RayExecutor` (``"ray"``): one Ray task per item, declared with ``num_cpus`` /
  ``num_gpus`` per task; connects to a running cluster (``address="ray://head:10001"`` or
  ``"auto"``) or starts a local one. ``fn`` is put in the object store once per ``map`` call.
  Needs the ``ray`` extra: ``pip install 'slimforge[ray]'``.

Reproducibility: an executor only decides *where* ``fn`` runs. Whatever randomness a candidate
needs must come from the item itself (the strategies put a seed derived from the run seed and the
candidate's identity into it), so serial, process and Ray runs return the same numbers. Floating
point results are bit-identical when the workers use the same number of intra-op threads as the
serial run (e.g. ``OMP_NUM_THREADS=1`` everywhere; Ray sets ``OMP_NUM_THREADS`` to the task's
``num_cpus`` in its workers).

Fault tolerance: a worker process that dies (SIGKILL, OOM killer) does not fail the run. Ray
retries the task (``max_retries``); the process executor rebuilds the pool and resubmits the
items that had not finished, at most ``max_retries`` times. An exception *raised by* ``fn`` is
not retried: it propagates to the caller unchanged.
"""

from __future__ import annotations

import abc
import difflib
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ClassVar

import torch

from compress.errors import ConfigError, ExecutorError

__all__ = [
    "EXECUTORS",
    "Executor",
    "ProcessExecutor",
    "RayExecutor",
    "SerialExecutor",
    "make_executor",
]

RAY_INSTALL_HINT = "pip install 'slimforge[ray]'"


class Executor(abc.ABC):
    """Evaluates ``fn`` over a batch of independent items; results come back in item order.

    Subclasses implement :meth:`map`; :meth:`close` releases workers (idempotent). An executor is
    a context manager and is also callable as ``executor(fn, items)`` (the ``map_fn`` contract
    of :func:`~compress.evolution.evolve.evolve_metric`).
    """

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """``[fn(x) for x in items]``, possibly computed elsewhere; same order as ``items``.

        Raises:
            ExecutorError: workers kept dying after all retries, or the backend failed.
            Exception: whatever ``fn`` raised for an item (not retried).
        """

    def close(self) -> None:
        """Release the workers; the executor may be used again afterwards (it restarts them)."""

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings, for reports."""
        return {"name": self.name}

    def can_run_on(self, device: torch.device | str) -> bool:
        """Whether items holding tensors on ``device`` can be evaluated by this executor's workers.

        The base rule: CPU tensors only (a worker process gets a pickled copy, and a CUDA tensor
        needs a GPU that the worker can see). :class:`SerialExecutor` runs in the caller's process
        and takes any device; :class:`RayExecutor` takes CUDA when each task reserves a GPU share
        (``num_gpus_per_task > 0``), since Ray hides the GPUs from tasks that reserve none.
        """
        return torch.device(device).type == "cpu"

    def __call__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return self.map(fn, items)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SerialExecutor(Executor):
    """Evaluates every item in the calling process, one after the other (the default)."""

    name = "serial"

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return [fn(x) for x in items]

    def can_run_on(self, device: torch.device | str) -> bool:
        return True


_MISSING = object()


class ProcessExecutor(Executor):
    """A local process pool (``concurrent.futures.ProcessPoolExecutor``).

    Args:
        workers: pool size (>= 1). Each worker uses torch's default thread count: set
            ``OMP_NUM_THREADS`` to ``cores // workers``.
        context: multiprocessing start method, ``"spawn"`` (no inherited torch/OpenMP state) or
            ``"forkserver"``.
        max_retries: how many times the pool is rebuilt after a worker died before giving up.

    The pool starts on the first :meth:`map` and stays alive until :meth:`close` (workers keep
    what they loaded, e.g. task data). ``fn`` and the items must be picklable.

    Raises:
        ConfigError: invalid arguments.
    """

    name = "process"

    def __init__(self, workers: int, context: str = "spawn", max_retries: int = 2) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be a positive int, got {workers!r}.")
        if context not in ("spawn", "forkserver"):
            raise ConfigError(f"context must be 'spawn' or 'forkserver', got {context!r}.")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be a non-negative int, got {max_retries!r}.")
        self.workers = workers
        self.context = context
        self.max_retries = max_retries
        self.restarts = 0  # pools rebuilt after a worker died (over the executor's life)
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=multiprocessing.get_context(self.context))
        return self._pool

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        results: list[Any] = [_MISSING] * len(items)
        pending = list(range(len(items)))
        attempt = 0
        while pending:
            pool = self._ensure_pool()
            try:
                futures: dict[int, Future] = {i: pool.submit(fn, items[i]) for i in pending}
            except BrokenProcessPool:
                futures = {}
            broken = len(futures) < len(pending)
            try:
                for i, fut in futures.items():
                    try:
                        results[i] = fut.result()
                    except BrokenProcessPool:
                        broken = True  # finished futures keep their results; the rest is resubmitted
            except BaseException:
                for fut in futures.values():
                    fut.cancel()
                raise
            pending = [i for i in pending if results[i] is _MISSING]
            if not broken:
                break
            self._discard_pool()
            self.restarts += 1
            attempt += 1
            if pending and attempt > self.max_retries:
                raise ExecutorError(
                    f"a worker of the process pool died {attempt} times while evaluating {len(pending)} of "
                    f"{len(items)} items (killed, out of memory, or a crash in native code); lower the number of "
                    f"workers or raise max_retries (now {self.max_retries})."
                )
        return results

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._discard_pool()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": self.workers, "context": self.context, "max_retries": self.max_retries}


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"executor 'ray' needs Ray, which is not installed: {RAY_INSTALL_HINT} (or pip install ray)."
        ) from exc
    return ray


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    """The body of every Ray task (module level, so workers import it by reference)."""
    return fn(item)


class RayExecutor(Executor):
    """One Ray task per item, with resources declared per candidate.

    Args:
        address: a running cluster (``"ray://head:10001"`` through Ray Client, needs
            ``ray[client]``; ``"auto"`` or ``"head:6379"`` on a cluster node). None: reuse the Ray
            instance this process is already connected to, or start a local one. A cluster with
            token authentication needs ``RAY_AUTH_MODE=token`` in this process's environment.
        num_cpus: CPUs of the local instance started when ``address`` is None (None: all cores).
        num_cpus_per_task, num_gpus_per_task: resources of each task (``.options(num_cpus=...,
            num_gpus=...)``); Ray runs as many tasks at once as the cluster has resources for.
        max_retries: retries of a task whose worker process died.
        init_kwargs: extra keyword arguments of ``ray.init`` (e.g. ``runtime_env``).

    Ray is imported and initialised on the first :meth:`map`. :meth:`close` calls
    ``ray.shutdown()`` only if this executor called ``ray.init`` (a local instance is stopped, a
    connection to a cluster is dropped, the cluster keeps running); a Ray instance started by the
    caller is left alone. Workers on other nodes need slimforge installed in the same version.

    Raises:
        ConfigError: invalid arguments; Ray not installed (raised on first use).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_cpus_per_task: float = 1,
                 num_gpus_per_task: float = 0, max_retries: int = 2,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
            raise ConfigError(f"num_cpus must be None or a positive int, got {num_cpus!r}.")
        if address is not None and num_cpus is not None:
            raise ConfigError("num_cpus sizes a local Ray instance; with address= the cluster's own resources apply. "
                              "Pass one of them.")
        for label, v in (("num_cpus_per_task", num_cpus_per_task), ("num_gpus_per_task", num_gpus_per_task)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{label} must be a non-negative number, got {v!r}.")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be a non-negative int, got {max_retries!r}.")
        self.address = address
        self.num_cpus = num_cpus
        self.num_cpus_per_task = num_cpus_per_task
        self.num_gpus_per_task = num_gpus_per_task
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False
        self._remote = None

    def _ensure(self):
        ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, **self.init_kwargs}
            if self.address is not None and self.address.startswith("ray://"):
                try:
                    import grpc  # noqa: F401  (Ray Client's transport)
                except ImportError as exc:
                    raise ConfigError(
                        f"ray_address={self.address!r} uses Ray Client, which needs grpcio: {RAY_INSTALL_HINT} "
                        "(installs ray[client])."
                    ) from exc
            try:
                if self.address is not None:
                    ray.init(address=self.address, **kwargs)
                else:
                    ray.init(num_cpus=self.num_cpus, include_dashboard=False, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray instance"
                raise ExecutorError(
                    f"cannot start or reach {where}: {exc}. Start the head with `ray start --head` and pass its "
                    "address (ray://HOST:10001, HOST:6379 or auto); if the cluster uses token authentication "
                    "(the default of `ray start` since Ray 2.59), export RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN, "
                    "see `ray get-auth-token`, unless ~/.ray/auth_token holds it) before starting this process. "
                    "Or omit ray_address to start a local instance."
                ) from exc
            self._started = True
        if self._remote is None:
            self._remote = ray.remote(_apply)
        return ray

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        if not items:
            return []
        ray = self._ensure()
        task = self._remote.options(num_cpus=self.num_cpus_per_task, num_gpus=self.num_gpus_per_task,
                                    max_retries=self.max_retries, retry_exceptions=False)
        fn_ref = ray.put(fn)  # shipped once per call, not once per item
        refs = [task.remote(fn_ref, item) for item in items]
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayTaskError as exc:  # fn raised: re-raise the user's own exception
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from exc
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.RaySystemError) as exc:
            raise ExecutorError(
                f"Ray workers kept dying while evaluating {len(items)} items ({type(exc).__name__}: {exc}); "
                f"check the cluster's memory, or raise max_retries (now {self.max_retries})."
            ) from exc

    def close(self) -> None:
        if self._started:
            ray = _import_ray()
            ray.shutdown()
            self._started = False
        self._remote = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "num_cpus": self.num_cpus,
                "num_cpus_per_task": self.num_cpus_per_task, "num_gpus_per_task": self.num_gpus_per_task,
                "max_retries": self.max_retries}

    def can_run_on(self, device: torch.device | str) -> bool:
        return torch.device(device).type == "cpu" or (torch.device(device).type == "cuda"
                                                      and self.num_gpus_per_task > 0)


EXECUTORS: dict[str, type[Executor]] = {"serial": SerialExecutor, "process": ProcessExecutor, "ray": RayExecutor}


def make_executor(spec: Executor | str | None = None, *, workers: int | None = None, ray_address: str | None = None,
                  **kwargs: Any) -> Executor:
    """An :class:`Executor` from a spec.

    Args:
        spec: an :class:`Executor` (returned as is; the caller keeps ownership), None or
            ``"serial"``, ``"process"``, ``"ray"``.
        workers: pool size of ``"process"`` (default: the CPUs this process may use); with
            ``"ray"`` and no ``ray_address``, the CPUs of the local Ray instance.
        ray_address: cluster address of ``"ray"`` (None: a local instance, see :class:`RayExecutor`).
        **kwargs: further arguments of the executor class (e.g. ``num_gpus_per_task``).

    Raises:
        ConfigError: an unknown name (with close matches), arguments that do not apply to the
            chosen executor, or invalid values.
    """
    if isinstance(spec, Executor):
        if workers is not None or ray_address is not None or kwargs:
            raise ConfigError("executor is already an Executor instance; configure it directly instead of passing "
                              "workers / ray_address / options.")
        return spec
    if spec is None:
        spec = "serial"
    if not isinstance(spec, str):
        raise ConfigError(f"executor must be an Executor or one of {', '.join(EXECUTORS)}, got {type(spec).__name__}.")
    key = spec.strip().lower()
    if key not in EXECUTORS:
        close = difflib.get_close_matches(key, list(EXECUTORS), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(f"unknown executor {spec!r}; {hint}choose one of {', '.join(EXECUTORS)}.")
    if key != "ray" and ray_address is not None:
        raise ConfigError(f"ray_address applies to executor='ray' only (got executor={spec!r}).")
    if key == "serial" and workers is not None and workers > 0:
        raise ConfigError("workers applies to executor='process' or 'ray', not 'serial'.")
    if key == "serial":
        if kwargs:
            raise ConfigError(f"the serial executor takes no options, got {sorted(kwargs)}.")
        return SerialExecutor()
    if key == "process":
        n = workers if workers else _available_cpus()
        return ProcessExecutor(n, **kwargs)
    if workers:
        if ray_address is not None:
            raise ConfigError("workers sizes a local Ray instance; a cluster at ray_address brings its own CPUs. "
                              "Drop one of them.")
        kwargs.setdefault("num_cpus", workers)
    return RayExecutor(address=ray_address, **kwargs)


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
