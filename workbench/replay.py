"""Shadow replay: every request of a traffic set goes through the baseline and the candidate.

Traffic is streamed from DuckDB in Arrow batches (constant memory, whatever its size) through a
three-stage pipeline: a reader thread decodes the next batches (and lays out features for the GPU),
the main thread scores them with both models (:mod:`workbench.scoring`), and a writer thread commits
each batch's paired results together with the batch's marker in one transaction. An interrupted run
therefore resumes after its last committed batch and holds each request exactly once; a finished run
is immutable.
"""
from __future__ import annotations

import logging
import os
import platform
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, Protocol

import numpy as np
import pyarrow as pa

from . import WorkbenchError
from .models import Predictor
from .scoring import PairScorer, Scored, ScoringOptions
from .store import Store, check_name

log = logging.getLogger(__name__)
ROLES = ("baseline", "candidate")
_END = object()


@dataclass(frozen=True)
class ReplayOptions:
    batch_size: int = 8192
    mode: str = "throughput"
    online_batch: int = 1
    model_timeout: float | None = None
    prefetch: int = 2
    writers: int = field(default_factory=lambda: min(4, max(1, (os.cpu_count() or 1) // 4)))
    isolate: bool = False                     # each model in worker processes (workbench.isolation)
    worker_memory_mb: float | None = 4096.0   # an isolated worker above this resident size is replaced

    def __post_init__(self):
        if self.batch_size < 1:
            raise WorkbenchError("--batch-size must be at least 1")
        if self.writers < 1:
            raise WorkbenchError("--writers must be at least 1")
        if self.worker_memory_mb is not None and self.worker_memory_mb <= 0:
            raise WorkbenchError("--worker-memory must be positive")
        self.scoring()   # validates the scoring fields

    def scoring(self) -> ScoringOptions:
        return ScoringOptions(self.mode, self.online_batch, self.model_timeout)


@dataclass(frozen=True)
class ReplayResult:
    run_id: str
    rows: int
    baseline_errors: int
    candidate_errors: int
    seconds: float
    status: str

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "rows": self.rows, "baseline_errors": self.baseline_errors,
                "candidate_errors": self.candidate_errors, "seconds": round(self.seconds, 3), "status": self.status}


def new_run_id() -> str:
    return "run_" + datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S") + "_" + uuid.uuid4().hex[:6]


def paired_table(rows: pa.Array, scored: dict[str, Scored], thresholds: dict[str, float]) -> pa.Table:
    """The wide, paired result rows of one batch (one row per request, both models side by side)."""
    n = len(rows)
    cols: dict[str, pa.Array] = {"_row": rows}
    for role in ROLES:
        s = scored[role]
        ok = np.isfinite(s.scores)
        all_ok = bool(ok.all())
        classes = (s.scores >= thresholds[role]).astype(np.int32)
        cols[f"{role}_score"] = pa.array(s.scores, from_pandas=True)   # NaN (an error) becomes null
        cols[f"{role}_class"] = pa.array(classes) if all_ok else pa.array(classes, mask=~ok)
        cols[f"{role}_latency_ms"] = pa.array(s.latency_ms)
        cols[f"{role}_error"] = pa.nulls(n, pa.string()) if all_ok else pa.array(s.errors, pa.string())
    return pa.table(cols)


def _environment(models: dict[str, Predictor], options: ReplayOptions) -> dict:
    import duckdb
    import sklearn

    env = {"host": platform.node(), "python": platform.python_version(), "duckdb": duckdb.__version__,
           "sklearn": sklearn.__version__, "devices": {r: m.device for r, m in models.items()},
           "options": asdict(options)}
    if any(m.ref.flavor == "pytorch" for m in models.values()):
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    return env


class Executor(Protocol):
    """Runs the scoring of a run's remaining traffic and commits it batch by batch."""

    def run(self, store: Store, run_id: str, traffic: str, models: dict[str, Predictor],
            options: ReplayOptions, done: int, total: int, progress) -> None: ...


def replay(store: Store, traffic: str, baseline: Predictor, candidate: Predictor, run_id: str | None = None,
           options: ReplayOptions = ReplayOptions(),
           progress: Callable[[int, int], None] | None = None, executor: "Executor | None" = None) -> ReplayResult:
    """Replay traffic through both models; resume an interrupted run; a finished run is left untouched.

    ``progress(done_rows, total_rows)`` is called after each committed batch (from the writer thread).
    ``executor`` defaults to the in-process pipeline (:class:`LocalExecutor`); see ``workbench.replay_ray``.
    """
    run_id = check_name(run_id, "run id") if run_id else new_run_id()
    info = store.require_traffic(traffic)
    models = {"baseline": baseline, "candidate": candidate}
    refs = {r: m.ref.to_dict() for r, m in models.items()}
    _check_features(info["columns"], models)
    run = store.get_run(run_id)
    started = time.perf_counter()
    if run is not None:
        _check_same_run(run, traffic, refs)
        if run["status"] == "finished":
            errs = store.run_error_counts(run_id)
            return ReplayResult(run_id, int(run["rows_done"]), errs["baseline"], errs["candidate"], 0.0,
                                "already_complete")
        log.info("resuming run %s after %s committed rows", run_id, run["rows_done"])
    else:
        store.create_run(run_id=run_id, traffic=traffic, baseline=refs["baseline"], candidate=refs["candidate"],
                         rows_total=store.traffic_count(traffic), batch_size=options.batch_size,
                         device=",".join(sorted({m.device for m in models.values()})), mode=options.mode,
                         meta={"environment": _environment(models, options)})
    total = store.traffic_count(traffic)
    done = int(store.require_run(run_id)["rows_done"])
    if progress:
        progress(done, total)
    (executor or LocalExecutor()).run(store, run_id, traffic, models, options, done, total, progress)
    store.finish_run(run_id)
    errs = store.run_error_counts(run_id)
    return ReplayResult(run_id, int(store.require_run(run_id)["rows_done"]), errs["baseline"], errs["candidate"],
                        time.perf_counter() - started, "finished")


class LocalExecutor:
    """In-process pipeline: reader thread -> scoring on the calling thread -> writer thread.

    With ``options.isolate`` the models score in worker processes (:mod:`workbench.isolation`)."""

    def run(self, store: Store, run_id: str, traffic: str, models: dict[str, Predictor], options: ReplayOptions,
            done: int, total: int, progress) -> None:
        thresholds = {r: m.ref.threshold for r, m in models.items()}
        if not options.isolate:
            scorer = PairScorer(models, options.scoring())
            _run_pipeline(store, run_id, traffic, scorer, thresholds, options, done, total, progress)
            return
        from .isolation import IsolationOptions, isolated

        with isolated(models, IsolationOptions(memory_limit_mb=options.worker_memory_mb)) as workers:
            scorer = PairScorer(workers, options.scoring())
            _run_pipeline(store, run_id, traffic, scorer, thresholds, options, done, total, progress)


def _run_pipeline(store: Store, run_id: str, traffic: str, scorer: PairScorer, thresholds: dict,
                  options: ReplayOptions, done: int, total: int, progress) -> None:
    """Reader thread -> scoring on this thread -> writer threads, with bounded queues in between.

    Several writers commit batches concurrently (each DuckDB commit is single-threaded and waits on its
    WAL flush); each batch records the ``_row`` range it covers, so a resume skips exactly the committed
    ranges even when they were committed out of order.
    """
    skip = store.committed_ranges(run_id)
    reader = store.traffic_batches(traffic, scorer.features, options.batch_size, skip)
    inbox: queue.Queue = queue.Queue(maxsize=options.prefetch)
    outbox: queue.Queue = queue.Queue(maxsize=max(2, options.writers))
    stop = threading.Event()
    failure: list[BaseException] = []
    lock = threading.Lock()

    def read():
        last = -1
        try:
            for rb in reader:
                if stop.is_set():
                    return
                batch = pa.Table.from_batches([rb])
                rows = batch.column("_row").to_numpy()
                if rows[0] <= last or (len(rows) > 1 and np.any(np.diff(rows) <= 0)):
                    raise WorkbenchError("traffic scan order was not preserved; cannot replay resumably")
                last = int(rows[-1])
                inbox.put((batch, scorer.prepare(batch)))
        except BaseException as e:  # handed to the main thread
            inbox.put(e)
            return
        inbox.put(_END)

    def write():
        nonlocal done
        try:
            while (item := outbox.get()) is not _END:
                batch_no, first, last, n, seconds, table = item
                store.commit_batch(run_id, batch_no, first, last, n, seconds, table)
                with lock:
                    done += n
                    if progress:
                        progress(done, total)
        except BaseException as e:
            failure.append(e)
            stop.set()
            while outbox.get() is not _END:   # unblock the scorer
                pass

    reader_thread = threading.Thread(target=read, name="replay-reader", daemon=True)
    writers = [threading.Thread(target=write, name=f"replay-writer-{i}", daemon=True) for i in range(options.writers)]
    reader_thread.start()
    for t in writers:
        t.start()
    batch_no = store.next_batch_no(run_id)
    try:
        while not stop.is_set() and (item := inbox.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            batch, prepared = item
            t0 = time.perf_counter()
            scored = scorer.score(prepared)
            rows = batch.column("_row")
            table = paired_table(rows.combine_chunks(), scored, thresholds)
            outbox.put((batch_no, rows[0].as_py(), rows[-1].as_py(), batch.num_rows, time.perf_counter() - t0,
                        table))
            batch_no += 1
    finally:
        stop.set()
        for _ in writers:
            outbox.put(_END)
        for t in writers:
            t.join()
        while reader_thread.is_alive():   # let the reader see the stop flag
            try:
                inbox.get(timeout=0.1)
            except queue.Empty:
                pass
    if failure:
        raise failure[0]


def _check_same_run(run: dict, traffic: str, refs: dict) -> None:
    if run["traffic"] != traffic:
        raise WorkbenchError(f"run {run['run_id']} replays traffic {run['traffic']!r}, not {traffic!r}")
    for role in ROLES:
        was, now = run[role], refs[role]
        if (was.get("uri"), was.get("version")) != (now["uri"], now["version"]):
            raise WorkbenchError(f"run {run['run_id']} was started with {role} {was.get('uri')} version "
                                 f"{was.get('version')}; now it resolves to version {now['version']}. "
                                 "Use a new --run-id or pin the version")


def _check_features(columns: list[str], models: dict[str, Predictor]) -> None:
    for role, m in models.items():
        missing = [f for f in m.ref.features if f not in columns]
        if missing:
            raise WorkbenchError(f"the {role} model needs column(s) {', '.join(missing)} that the traffic lacks")
