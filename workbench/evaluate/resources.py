"""Comparing what the two models cost to run, and a cost per million requests (pure, on the dicts a replay stores;
what is measured and how: :mod:`workbench.replay.resources`).

Cost per million requests, for each model, from its own measurements and the prices (USD):

* CPU: ``cpu_s_per_1k x 1000 / 3600 x cpu_hour``;
* GPU: ``gpu_busy_s / rows x 1e6 / 3600 x gpu_hour`` (only when it ran on a GPU);
* memory: ``rss_mb / 1024 x (busy_s / rows x 1e6 / 3600) x memory_gb_hour``: the memory it holds, for as long
  as one replica takes to serve a million requests at its measured rate.

The assumptions: one fully busy replica (no idle time, no autoscaling headroom), the model's own calls only
(no request parsing, network or framework overhead), CPU as measured (the calling thread's in process: a lower
bound for multi-threaded models; the worker's whole process when isolated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

#: USD per CPU-hour, GPU-hour and GB-hour of memory: roughly on-demand cloud list prices (a vCPU, an H100)
DEFAULT_PRICES: dict[str, float] = {"cpu_hour": 0.04, "gpu_hour": 2.50, "memory_gb_hour": 0.005}
ASSUMPTIONS = (
    "one fully busy replica per model; the model's own calls only; CPU as measured "
    "(thread CPU in process is a lower bound for multi-threaded models)"
)
#: the measurements compared (lower is better for all but ``throughput_rps``)
METRICS = (
    "load_s",
    "cold_start_s",
    "artifact_mb",
    "rss_mb",
    "cpu_s_per_1k",
    "throughput_rps",
    "gpu_peak_mb",
    "gpu_busy_share",
    "cost_per_million",
)


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def cost_per_million(model: Mapping[str, Any], prices: Mapping[str, float]) -> dict[str, float | None]:
    """One model's cost per million requests (USD) by part (``cpu``, ``gpu``, ``memory``) and ``total``;
    a part is None when its measurement is missing (the total then counts the parts that are known)."""
    rows = _finite(model.get("rows")) or 0.0
    cpu_1k = _finite(model.get("cpu_s_per_1k"))
    cpu = None if cpu_1k is None else cpu_1k * 1000.0 / 3600.0 * prices["cpu_hour"]
    gpu_busy = _finite(model.get("gpu_busy_s"))
    gpu = gpu_busy / rows * 1e6 / 3600.0 * prices["gpu_hour"] if gpu_busy is not None and rows else None
    busy, rss = _finite(model.get("busy_s")), _finite(model.get("rss_mb"))
    memory = None
    if busy is not None and rss is not None and rows:
        memory = rss / 1024.0 * (busy / rows * 1e6 / 3600.0) * prices["memory_gb_hour"]
    parts = {"cpu": cpu, "gpu": gpu, "memory": memory}
    known = [v for v in parts.values() if v is not None]
    return {**parts, "total": sum(known) if known else None}


def _ratio(base: float | None, cand: float | None) -> float | None:
    if base is None or cand is None:
        return None
    if base == 0:
        return 1.0 if cand == 0 else None
    return cand / base


def compare_resources(
    measured: Mapping[str, Any] | None, prices: Mapping[str, float] | None = None, runs: Sequence[str] = ()
) -> dict[str, Any] | None:
    """Per metric ``{"baseline", "candidate", "ratio"}`` (candidate / baseline), how it was measured, and the
    cost per million requests by part with its prices and assumptions; None when nothing was measured."""
    if not measured or not isinstance(measured.get("baseline"), Mapping):
        return None
    prices = {**DEFAULT_PRICES, **(prices or {})}
    side = {r: dict(measured.get(r) or {}) for r in ("baseline", "candidate")}
    costs = {r: cost_per_million(side[r], prices) for r in side}
    for r in side:
        side[r]["cost_per_million"] = costs[r]["total"]
    metrics = {}
    for m in METRICS:
        b, c = _finite(side["baseline"].get(m)), _finite(side["candidate"].get(m))
        if b is None and c is None:
            continue
        metrics[m] = {"baseline": b, "candidate": c, "ratio": _ratio(b, c)}
    b_total, c_total = costs["baseline"]["total"], costs["candidate"]["total"]
    out: dict[str, Any] = {
        "mode": measured.get("mode"),
        "concurrency": measured.get("concurrency"),
        "devices": measured.get("devices"),
        "cpu_scope": {r: side[r].get("cpu_scope") for r in side},
        "metrics": metrics,
        "cost": {
            "currency": "USD",
            "per": "million requests",
            "prices": prices,
            "assumptions": ASSUMPTIONS,
            "baseline": costs["baseline"],
            "candidate": costs["candidate"],
            "difference": None if b_total is None or c_total is None else c_total - b_total,
        },
    }
    if runs:
        out["runs"] = list(runs)
    return out


def combine_runs(measured: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One measurement from several runs' (oldest first): per model and metric the median over the runs that
    measured it; the mode, concurrency and devices of the latest run. None when no run measured anything."""
    measured = [m for m in measured if m and isinstance(m.get("baseline"), Mapping)]
    if not measured:
        return None
    latest = measured[-1]
    out: dict[str, Any] = {k: latest.get(k) for k in ("mode", "concurrency", "devices")}
    for role in ("baseline", "candidate"):
        keys = {k for m in measured for k in (m.get(role) or {})}
        combined: dict[str, Any] = {}
        for k in sorted(keys):
            values = [(m.get(role) or {}).get(k) for m in measured]
            numbers = [x for x in map(_finite, values) if x is not None]
            if numbers:
                combined[k] = median(numbers)
            else:
                combined[k] = next((v for v in reversed(values) if v is not None), None)
        out[role] = combined
    return out
