"""What each model costs to run, measured during a replay: load, memory, CPU, GPU and throughput.

- **Load** (:func:`measure_load`, around ``load_predictor``): wall seconds from resolving the artifact to a
  warmed-up predictor (download, deserialization, a torch model's warm-up calls), the artifact's size on disk
  and the process's resident memory added meanwhile (``/proc/self/statm`` before and after; the flavor's
  library is imported before the first reading, so torch or scikit-learn itself is not counted; glibc's free
  heap is handed back first, or a model that reuses memory freed earlier in the process would add none).
- **Calls** (:class:`ModelMeter`, around every scoring call of a model): wall seconds, rows, CPU seconds and
  the first call's duration. In process the CPU is the calling thread's (``time.thread_time``): a model's own
  intra-op or OpenMP threads are not counted, so it is a lower bound; an isolated model (``--isolate``)
  reports its worker process's CPU (``time.process_time`` in the worker), every thread included.
- **GPU** (a model on CUDA): the peak memory its calls allocated (``torch.cuda`` peak counters reset before
  each call) and its busy seconds (CUDA events on the shared-transfer path, else the synchronized call time).

A measurement is two clock readings per call (four on CUDA): a few syscalls per batch
(``benchmarks/replay.py`` shows the replay with measurements on and off).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

MB = float(1 << 20)
T = TypeVar("T")


@dataclass(frozen=True)
class LoadStats:
    """What loading one model cost: seconds, artifact bytes on disk, resident bytes added (None: unknown)."""

    load_s: float
    artifact_bytes: int | None
    rss_bytes: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def rss_bytes() -> int | None:
    """This process's resident memory in bytes (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def dir_bytes(path: str) -> int | None:
    """Total size of the files under ``path`` (a file's own size; None when it does not exist)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    if not os.path.isdir(path):
        return None
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def release_free_heap() -> None:
    """Hand glibc's free heap pages back to the system (``malloc_trim``; nothing elsewhere), so that the resident
    memory a later allocation adds is counted even where it reuses memory freed earlier in the process."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def measure_load(load: Callable[[], tuple[T, str | None]]) -> tuple[T, LoadStats]:
    """Call ``load()`` (returning the model and its local artifact folder) and measure it."""
    release_free_heap()
    before = rss_bytes()
    t0 = time.perf_counter()
    model, local = load()
    seconds = time.perf_counter() - t0
    after = rss_bytes()
    rss = None if before is None or after is None else max(0, after - before)
    return model, LoadStats(seconds, dir_bytes(local) if local else None, rss)


class ModelMeter:
    """Accumulates one model's scoring calls: rows, wall and CPU seconds, first call, GPU peak and busy time."""

    def __init__(self, device: str = "cpu"):
        self.cuda = device.startswith("cuda")
        self.calls = 0
        self.rows = 0
        self.busy_s = 0.0
        self.cpu_s = 0.0
        self.cpu_scope = "thread"
        self.first_call_s: float | None = None
        self.gpu_peak_bytes = 0
        self.gpu_busy_s = 0.0
        self._torch: Any = None

    def gpu_start(self) -> None:
        """Reset the CUDA peak-memory counter before one of this model's calls (no-op off CUDA)."""
        if self.cuda:
            if self._torch is None:
                import torch

                self._torch = torch
            self._torch.cuda.reset_peak_memory_stats()

    def gpu_stop(self, busy_s: float) -> None:
        """Read the peak memory of the call that :meth:`gpu_start` began; ``busy_s``: its GPU seconds."""
        if self.cuda:
            self.gpu_peak_bytes = max(self.gpu_peak_bytes, int(self._torch.cuda.max_memory_allocated()))
            self.gpu_busy_s += busy_s

    def add(self, rows: int, seconds: float, cpu_s: float | None, scope: str = "thread") -> None:
        """Count one successful call of ``rows`` rows that took ``seconds`` (and ``cpu_s`` CPU seconds)."""
        if self.first_call_s is None:
            self.first_call_s = seconds
        self.calls += 1
        self.rows += rows
        self.busy_s += seconds
        if cpu_s is not None:
            self.cpu_s += cpu_s
            self.cpu_scope = scope


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def model_resources(load: LoadStats | None, meter: ModelMeter | None, wall_s: float) -> dict:
    """One model's measurements as stored with the run (``None`` where not measured)."""
    out: dict[str, Any] = {
        "load_s": _r(load.load_s) if load else None,
        "artifact_mb": _r(load.artifact_bytes / MB, 3) if load and load.artifact_bytes is not None else None,
        "rss_mb": _r(load.rss_bytes / MB, 3) if load and load.rss_bytes is not None else None,
    }
    if meter is None or not meter.calls:
        return out | {"first_call_s": None, "cold_start_s": None, "rows": 0}
    first = meter.first_call_s
    out |= {
        "first_call_s": _r(first),
        "cold_start_s": _r(load.load_s + first) if load and first is not None else None,
        "calls": meter.calls,
        "rows": meter.rows,
        "busy_s": _r(meter.busy_s),
        "cpu_s": _r(meter.cpu_s),
        "cpu_scope": meter.cpu_scope,
        "cpu_s_per_1k": _r(meter.cpu_s * 1000.0 / meter.rows) if meter.rows else None,
        "throughput_rps": _r(meter.rows / meter.busy_s, 3) if meter.busy_s > 0 else None,
    }
    if meter.cuda:
        out["gpu_peak_mb"] = _r(meter.gpu_peak_bytes / MB, 3)
        out["gpu_busy_s"] = _r(meter.gpu_busy_s)
        out["gpu_busy_share"] = _r(meter.gpu_busy_s / wall_s) if wall_s > 0 else None
    return out


def run_resources(
    loads: Mapping[str, LoadStats | None],
    meters: Mapping[str, ModelMeter] | None,
    devices: Mapping[str, str],
    mode: str,
    wall_s: float,
) -> dict:
    """What a replay stores in its run's ``meta.resources``: per model, and how it was measured.

    ``concurrency`` is the requests one model has in flight: 1 in online mode (one request or micro-batch at
    a time), where ``throughput_rps`` is the sustained rate a single serving worker reaches."""
    return {
        "mode": mode,
        "concurrency": 1 if mode == "online" else None,
        "wall_s": _r(wall_s, 3),
        "devices": dict(devices),
        **{role: model_resources(loads.get(role), (meters or {}).get(role), wall_s) for role in devices},
    }
