"""Shared helpers for the benchmark scripts: timing, tables and JSON output.

Benchmarks measure torch3dv and its peers in the same process on the same inputs. They print a table and write
JSON next to the script (``benchmarks/results/<name>.json`` by default).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import kornia

        info["kornia"] = kornia.__version__
    except ImportError:
        pass
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    try:
        import poselib

        info["poselib"] = poselib.__version__
    except (ImportError, AttributeError):
        pass
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str = "cpu", min_time: float = 0.3, max_reps: int = 50,
              warmup: int = 1) -> float:
    """Median wall time (seconds) of ``fn()`` over repetitions lasting at least ``min_time`` in total."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > min_time and len(times) >= 3:
            break
    times.sort()
    return times[len(times) // 2]


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        if isinstance(v, float):
            if v != v:
                return "-"
            if abs(v) >= 1e4:
                return f"{v:,.0f}"
            if abs(v) >= 100:
                return f"{v:.0f}"
            if abs(v) >= 1:
                return f"{v:.2f}"
            return f"{v:.3g}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(cell[i]) for cell in cells)) for i, c in enumerate(columns)]
    line = " | ".join(c.ljust(w) for c, w in zip(columns, widths))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for cell in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(cell, widths)))


def write_json(name: str, payload: dict, out: str | None = None) -> Path:
    path = Path(out) if out else Path(__file__).resolve().parent / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
               **payload}
    path.write_text(json.dumps(payload, indent=2))
    return path


def env_threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
