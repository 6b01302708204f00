"""Peak resident memory of an onnxruntime session, measured in a child process.

Why a child process: the resident-set high-water mark (Linux ``VmHWM``, else ``ru_maxrss``) of the
calling process already holds torch, the training data and every earlier model, and it never goes
down. A fresh interpreter that imports only onnxruntime and NumPy, then creates the session and
runs it, gives a figure that belongs to the model and its target settings alone.

Two numbers come back, both in **bytes**:

* ``peak_rss_bytes`` -- the child's whole high-water mark (interpreter + onnxruntime + session +
  arena + inference buffers): what the deployed process would need at least.
* ``session_peak_bytes`` -- ``peak_rss_bytes`` minus the high-water mark just before the session
  was created (after ``import onnxruntime``). This is what the model adds, and what a
  ``memory=`` budget limits: the interpreter and onnxruntime's own import are not under the
  student's control.

Both depend on the target (threads, graph optimisation level, batch size, the ORT-format model for
``ort-mobile``), so a report names the target with every figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from compress.exporters.mobile import convert_to_ort
from compress.profiling.errors import ProfilingError
from compress.profiling.target import _ORT_LEVEL_NAMES, Target

__all__ = ["MemoryStats", "profile_peak_memory"]

# Runs in a fresh interpreter: argv = [onnx_path, json(target fields), runs]. Prints one JSON line.
# The mark is VmHWM from /proc/self/status where it exists (KiB); ru_maxrss elsewhere (bytes on macOS).
_CHILD = r"""
import json, resource, sys
import numpy as np
import onnxruntime as ort

path, spec, runs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
def hwm():
    try:  # Linux: this process's own mm (ru_maxrss can carry the parent's mark over fork + exec)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
before = hwm()
so = ort.SessionOptions()
so.intra_op_num_threads = spec["intra_op_threads"]
so.inter_op_num_threads = spec["inter_op_threads"]
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, spec["level"])
so.log_severity_level = 3
sess = ort.InferenceSession(path, sess_options=so, providers=[spec["provider"]])
inp = sess.get_inputs()[0]
shape = [spec["batch_size"]] + list(spec["input_shape"])
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
for _ in range(runs):
    sess.run(None, {inp.name: x})
print(json.dumps({"before": before, "peak": hwm()}))
"""


@dataclass(frozen=True)
class MemoryStats:
    """Peak memory of one onnxruntime session on one target (bytes).

    Attributes:
        peak_rss_bytes: the child process's resident-set high-water mark after the runs.
        session_peak_bytes: ``peak_rss_bytes`` minus the mark before the session was created.
        baseline_rss_bytes: the mark before the session (interpreter + onnxruntime + NumPy).
        runs: inference calls made.
        target: the target's name.
    """

    peak_rss_bytes: int
    session_peak_bytes: int
    baseline_rss_bytes: int
    runs: int
    target: str

    def to_dict(self) -> dict:
        return asdict(self)


def profile_peak_memory(
    onnx_path: str | Path,
    target: Target | str = "cpu-1t",
    *,
    input_shape: tuple[int, ...] | None = None,
    runs: int = 3,
    timeout_s: float = 300.0,
) -> MemoryStats:
    """Measure the peak resident memory of an onnxruntime session running ``onnx_path``.

    A child interpreter creates the session with ``target``'s options and runs ``runs`` inferences
    on a ``(target.batch_size, *input_shape)`` float32 input; its high-water marks before and after
    are returned (see the module docstring).

    Args:
        onnx_path: an ``.onnx`` (or ``.ort``) file. With an ``ort``-format target and an ``.onnx``
            file, the ORT-format model is converted first (what ORT Mobile loads).
        target: a :class:`Target` or a preset name.
        input_shape: one sample's shape (no batch dim) when the target does not give it.
        runs: inference calls (>= 1).
        timeout_s: the child is killed after this many seconds.

    Raises:
        ProfilingError: missing file, no input shape, ``runs < 1``, or the child failed (its
            stderr's last line is quoted) or timed out.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise ProfilingError(f"no model file at {path}; export the model first (compress.exporters.export_onnx).")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ProfilingError(f"runs must be an int >= 1, got {runs!r}.")
    t = Target.resolve(target, input_shape=input_shape)
    shape = t.input_shape or input_shape
    if shape is None:
        raise ProfilingError(f"target {t.name!r} has no input_shape; pass input_shape=(C, H, W).")
    # The child must not import compress (its package init pulls in torch, which would inflate
    # peak_rss_bytes), so it rebuilds Target.session_options() from these fields.
    spec = {"intra_op_threads": t.intra_op_threads, "inter_op_threads": t.inter_op_threads,
            "level": _ORT_LEVEL_NAMES[t.graph_optimization_level], "provider": t.provider,
            "batch_size": t.batch_size, "input_shape": list(shape)}
    with tempfile.TemporaryDirectory(prefix="compress-mem-") as tmp:
        model_file = path
        if t.model_format == "ort" and path.suffix != ".ort":
            try:
                model_file = convert_to_ort(path, Path(tmp) / "model.ort")
            except Exception as exc:
                raise ProfilingError(f"target {t.name!r} loads the ORT format, but conversion failed: {exc}") from exc
        env = {**os.environ, "OMP_NUM_THREADS": str(t.intra_op_threads)}
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(model_file), json.dumps(spec), str(runs)],
                                  capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired as exc:
            raise ProfilingError(f"peak-memory probe of {path.name} did not finish in {timeout_s:g} s.") from exc
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise ProfilingError(f"peak-memory probe of {path.name} failed (exit {proc.returncode}): {tail}")
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise ProfilingError(f"peak-memory probe of {path.name} printed no result: {proc.stdout[-200:]!r}") from exc
    return MemoryStats(peak_rss_bytes=int(out["peak"]), session_peak_bytes=max(0, int(out["peak"]) - int(out["before"])),
                       baseline_rss_bytes=int(out["before"]), runs=runs, target=t.name)
