"""``make gpu-check``: the checks that need a CUDA device, with one summary line at the end.

1. the tests marked ``gpu`` (``pytest -m gpu``; skipped where there is no CUDA);
2. ``slimforge demo --device cuda --precision bf16`` (budget met, ONNX parity, accuracy, wall time).

Exit code 0 when both pass, 1 when one fails, 2 when this machine has no CUDA device (nothing run).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: NOT RUN - torch {torch.__version__} sees no CUDA device on this machine")
        return 2
    name = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                           capture_output=True, text=True)
    sys.stdout.write(tests.stdout[-4000:])
    m = re.search(r"(\d+) passed", tests.stdout)
    f = re.search(r"(\d+) failed", tests.stdout)
    out = Path("slimforge-out/gpu-check-demo")
    t1 = time.perf_counter()
    demo = subprocess.run([sys.executable, "-m", "compress", "demo", "--device", "cuda", "--precision", "bf16",
                           "--out", str(out), "--no-resume"], capture_output=True, text=True)
    sys.stdout.write(demo.stdout[-3000:])
    demo_s = time.perf_counter() - t1
    summary = "demo failed (exit %d)" % demo.returncode
    if (out / "report.json").is_file():
        rep = json.loads((out / "report.json").read_text())
        summary = (f"demo bf16 on {rep['runtime'].get('device_name')}: budget {'ok' if rep['budget']['ok'] else 'FAILED'}, "
                   f"parity {'ok' if rep['onnx']['parity']['ok'] else 'FAILED'}, student test acc "
                   f"{100 * (rep['student']['accuracy']['test'] or 0):.2f}%, demo wall {demo_s:.0f} s")
    ok = tests.returncode == 0 and demo.returncode == 0
    print(f"gpu-check: {'PASSED' if ok else 'FAILED'} on {name}: gpu tests {m.group(1) if m else 0} passed"
          f"{', ' + f.group(1) + ' failed' if f else ''}; {summary}; total {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
