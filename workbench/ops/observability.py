"""Observability: structured JSON logs with job and run ids, and the Prometheus metrics of the service.

Logs: :class:`JsonFormatter` writes one JSON object per line (``time``, ``level``, ``logger``, ``message``,
the ids bound with :func:`log_context` such as ``job_id``, ``run_id``, ``spec``, ``stage``, and any
``extra={...}`` fields of the call).

Metrics: ``GET /metrics`` (:func:`metrics_router`) exports two kinds of series.

- Read from DuckDB at each scrape (:class:`StoreCollector`), so they are right whichever process ran the
  job: job counts by spec and status, job and stage durations, the last success per spec, the latest replay's
  rows/s per model, and per model the canary weight, killed flag, verification and head verdict, all derived
  from the verified signed chain (:mod:`workbench.decide.chain`). When another process holds the
  database's write lock the scrape reports ``workbench_store_up 0`` instead of failing.
- Updated in-process by the router that serves live traffic (:func:`observe_arm`): requests, errors,
  latency and the rolling error rate of each arm (baseline or candidate) of each model.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily

from workbench import WorkbenchError
from workbench.clock import parse_time
from workbench.config import Settings
from workbench.decide.policy import Verdict

ERROR_RATE_WINDOW = 1000  # requests per arm behind workbench_arm_error_rate
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# -- structured logs -------------------------------------------------------------------------------
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("workbench_log_context", default=MappingProxyType({}))
_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


@contextmanager
def log_context(**ids) -> Iterator[None]:
    """Bind ids (``job_id``, ``run_id``, ``spec``, ``stage``...) to every log line written inside the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO-8601 UTC), level, logger, message, bound ids, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_CONTEXT.get())
        out.update({k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS and not k.startswith("_")})
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def use_json_logs(level: int = logging.INFO) -> None:
    """Switch the root logger's handlers to JSON lines."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level)
    root.setLevel(level)
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())


# -- live arm metrics (updated by the router) -----------------------------------------------------
ARM_REQUESTS = Counter(
    "workbench_arm_requests", "Requests served by each arm of a model's canary", ["model", "arm"], registry=None
)
ARM_ERRORS = Counter("workbench_arm_errors", "Requests that failed, per arm", ["model", "arm"], registry=None)
ARM_LATENCY = Histogram(
    "workbench_arm_latency_seconds",
    "Latency of requests served by each arm",
    ["model", "arm"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)
ARM_ERROR_RATE = Gauge(
    "workbench_arm_error_rate",
    f"Share of failed requests among the last {ERROR_RATE_WINDOW} of each arm",
    ["model", "arm"],
    registry=None,
)
_windows: dict[tuple[str, str], deque] = {}
_windows_lock = threading.Lock()


def observe_arm(model: str, arm: str, latency_s: float, error: bool = False) -> None:
    """Record one live request served by ``arm`` (``baseline`` or ``candidate``) of ``model``."""
    ARM_REQUESTS.labels(model, arm).inc()
    if error:
        ARM_ERRORS.labels(model, arm).inc()
    ARM_LATENCY.labels(model, arm).observe(latency_s)
    with _windows_lock:
        window = _windows.setdefault((model, arm), deque(maxlen=ERROR_RATE_WINDOW))
        window.append(bool(error))
        rate = sum(window) / len(window)
    ARM_ERROR_RATE.labels(model, arm).set(rate)


def reset_arms() -> None:
    """Forget every arm's series (a router that stops serving a model calls this; tests too)."""
    with _windows_lock:
        _windows.clear()
    for metric in (ARM_REQUESTS, ARM_ERRORS, ARM_LATENCY, ARM_ERROR_RATE):
        metric.clear()


# -- series read from the store at each scrape ----------------------------------------------------
class StoreCollector:
    """Prometheus collector over the workbench's DuckDB (opened briefly at each scrape)."""

    def __init__(self, settings: Settings, trusted: Mapping, wait_s: float = 1.0):
        self.settings, self.trusted = settings, trusted
        self.wait_s = wait_s

    def describe(self):
        return []  # the series depend on the data: no describe-time registration checks

    def collect(self):
        from workbench.store import Store

        up = GaugeMetricFamily("workbench_store_up", "1 when the DuckDB store could be read for this scrape")
        try:
            with Store(self.settings.db_path, wait_s=self.wait_s) as store, store.snapshot():
                snap: dict[str, list] = {**store.metrics_snapshot(), "canaries": self._canaries(store)}
        except WorkbenchError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _families(snap)

    def _canaries(self, store) -> list[dict]:
        """Each model's canary from its verified chain (never from the ``canary_state`` cache's columns)."""
        from workbench.decide.chain import live_view
        from workbench.decide.decisions import witnesses

        witness = witnesses(self.settings)
        return [live_view(store, model, self.trusted, witness) for model in store.chain_models()]


def _families(snap: dict[str, list]):
    jobs = GaugeMetricFamily("workbench_jobs", "Jobs in the history, by spec and status", labels=["spec", "status"])
    for spec, status, n in snap["jobs"]:
        jobs.add_metric([spec, status], n)
    dur = SummaryMetricFamily(
        "workbench_job_duration_seconds", "Wall time of finished jobs (first start to end)", labels=["spec"]
    )
    last = GaugeMetricFamily(
        "workbench_job_last_duration_seconds", "Wall time of the latest finished job", labels=["spec"]
    )
    ok = GaugeMetricFamily(
        "workbench_job_last_success_timestamp_seconds", "When the latest job finished", labels=["spec"]
    )
    for spec, n, total, latest, at in snap["job_durations"]:
        dur.add_metric([spec], n, total or 0.0)
        last.add_metric([spec], latest or 0.0)
        ok.add_metric([spec], at or 0.0)
    stages = SummaryMetricFamily(
        "workbench_job_stage_duration_seconds", "Time spent in finished job stages", labels=["spec", "stage"]
    )
    for spec, stage, n, total in snap["stage_durations"]:
        stages.add_metric([spec, stage], n, total or 0.0)
    rate = GaugeMetricFamily(
        "workbench_replay_rows_per_second",
        "Rows/s of the latest finished replay of a model (rows over its wall time)",
        labels=["model"],
    )
    rows = GaugeMetricFamily("workbench_replay_rows", "Rows of the latest finished replay of a model", labels=["model"])
    for model, n, seconds in snap["replays"]:
        rows.add_metric([model], n)
        if seconds and seconds > 0:
            rate.add_metric([model], n / seconds)
    weight = GaugeMetricFamily(
        "workbench_canary_weight_percent", "Percent of live traffic on the candidate", labels=["model"]
    )
    killed = GaugeMetricFamily(
        "workbench_canary_killed", "1 when the kill switch holds the candidate at 0", labels=["model"]
    )
    verified = GaugeMetricFamily(
        "workbench_canary_verified",
        "1 when the model's signed chain verifies, its cached state is the head and no witness contradicts it",
        labels=["model"],
    )
    verdict = GaugeMetricFamily(
        "workbench_canary_last_verdict",
        "1 for the verdict of the head of the model's verified chain, 0 for the others (all 0 when unverified)",
        labels=["model", "verdict"],
    )
    when = GaugeMetricFamily(
        "workbench_canary_last_decision_timestamp_seconds",
        "When the head of the model's verified chain was made",
        labels=["model"],
    )
    for view in snap["canaries"]:
        model = view["model"]
        weight.add_metric([model], view["weight"])
        killed.add_metric([model], 1 if view["killed"] else 0)
        verified.add_metric([model], 1 if view["verified"] else 0)
        for name in Verdict:
            verdict.add_metric([model, name.value], 1 if view["verified"] and view["verdict"] == name.lower() else 0)
        if view["verified"] and view.get("created_at"):
            when.add_metric([model], parse_time(view["created_at"]).timestamp())
    yield from (jobs, dur, last, ok, stages, rate, rows, weight, killed, verified, verdict, when)


def metrics_registry(settings: Settings, trusted: Mapping) -> CollectorRegistry:
    """A registry with the store's series (canaries verified under ``trusted``) and the live arm metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(settings, trusted))
    for metric in (ARM_REQUESTS, ARM_ERRORS, ARM_LATENCY, ARM_ERROR_RATE):
        registry.register(metric)
    return registry


def metrics_router(settings: Settings, trusted: Mapping) -> APIRouter:
    """``GET /metrics`` in the Prometheus text format."""
    router = APIRouter()
    registry = metrics_registry(settings, trusted)

    @router.get("/metrics", include_in_schema=False)
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
