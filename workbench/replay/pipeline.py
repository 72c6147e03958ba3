"""Shadow replay: every request of a traffic set goes through the baseline and the candidate.

Traffic is streamed from DuckDB in Arrow batches (constant memory, whatever its size) through a pipeline
of threads (:func:`_run_pipeline`): a reader (the DuckDB scan), a preparer (the GPU feature layout), scoring
with both models on the main thread (:mod:`workbench.replay.scoring`), a builder (paired result rows, packed into
commit units of whole row groups) and writers that commit each unit together with the ``_row`` range it
covers in one transaction. An interrupted run therefore resumes after its committed ranges and holds
each request exactly once; a finished run is immutable.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pandas  # noqa: F401  pyarrow imports it at its first numpy conversion: not in a pipeline thread, GIL held
import pyarrow as pa

from workbench import WorkbenchError
from workbench.replay.models import Predictor
from workbench.replay.paired import (
    class_thresholds,
    model_classes,
    model_quantiles,
    paired_table,
    resolve_task,
    with_task,
)
from workbench.replay.resources import run_resources
from workbench.replay.scoring import PairScorer, ScoringOptions
from workbench.roles import ROLES
from workbench.store import RunState, Store, check_name
from workbench.tasks import check_task, run_classes, run_quantiles, run_task

log = logging.getLogger(__name__)
_END = object()


@dataclass(frozen=True)
class ReplayOptions:
    batch_size: int = 8192
    mode: str = "throughput"
    online_batch: int = 1
    model_timeout: float | None = None
    prefetch: int = 2
    writers: int = field(default_factory=lambda: min(8, max(1, (os.cpu_count() or 1) // 2)))
    isolate: bool = False  # each model in worker processes (workbench.replay.isolation)
    worker_memory_mb: float | None = 4096.0  # an isolated worker above this resident size is replaced
    measure: bool = True  # each model's CPU, GPU and throughput (workbench.replay.resources); off: load costs only
    task: str | None = None  # what both models predict (workbench.tasks); None: inferred from the models

    def __post_init__(self):
        if self.batch_size < 1:
            raise WorkbenchError("--batch-size must be at least 1")
        if self.writers < 1:
            raise WorkbenchError("--writers must be at least 1")
        if self.worker_memory_mb is not None and self.worker_memory_mb <= 0:
            raise WorkbenchError("--worker-memory must be positive")
        if self.task is not None:
            check_task(self.task)
        self.scoring()  # validates the scoring fields

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
    stages: dict = field(default_factory=dict)  # busy seconds per pipeline stage and which one bounds the run
    resources: dict = field(default_factory=dict)  # what each model cost to run (workbench.replay.resources)
    task: str = "binary"  # what both models predict (workbench.tasks)

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "task": self.task,
            "rows": self.rows,
            "baseline_errors": self.baseline_errors,
            "candidate_errors": self.candidate_errors,
            "seconds": round(self.seconds, 3),
            "status": self.status,
            "stages": self.stages,
            "resources": self.resources,
        }


def new_run_id() -> str:
    return "run_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S") + "_" + uuid.uuid4().hex[:6]


def _environment(models: dict[str, Predictor], options: ReplayOptions) -> dict:
    """Host, library versions, devices and options of a run. Versions come from the installed packages'
    metadata: importing scikit-learn just to read its version would cost the replay about a second."""
    env = {
        "host": platform.node(),
        "python": platform.python_version(),
        **{
            name: _version(dist)
            for name, dist in (("duckdb", "duckdb"), ("sklearn", "scikit-learn"), ("torch", "torch"))
        },
        "devices": {r: m.device for r, m in models.items()},
        "options": asdict(options),
    }
    if any(m.device.startswith("cuda") for m in models.values()):
        import torch

        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


MB = 1 << 20
REPLAY_THREADS = 8  # DuckDB threads during a replay (the scan needs few; each one costs memory)
REPLAY_MEMORY_FLOOR = 256 * MB  # DuckDB's buffer pool during a replay, unless the traffic is wide
SCAN_MB_PER_COLUMN_THREAD = 0.5  # measured ~0.4 MB: what one scan thread pins per column read
WRITER_MB = 16  # one writer's uncommitted unit (2 row groups of paired rows) in DuckDB


def duckdb_limits(columns: int, writers: int, cores: int | None = None) -> dict:
    """DuckDB's thread count and memory limit during a replay (``Store.limits`` arguments).

    Each row of the traffic is read once, yet DuckDB keeps what it read in its buffer pool up to the memory
    limit, and each scan thread holds a row group of its own: at the store's defaults (512 MB, one thread
    per core) that is most of a fast replay's memory, while the scan needs a few threads at most. A
    narrow traffic gets ``REPLAY_MEMORY_FLOOR``; a wide one gets what its scan threads pin (too little
    fails with DuckDB's out-of-memory error: 200 DOUBLE columns at 16 threads need over 1 GB). An explicit
    ``$WORKBENCH_DUCKDB_THREADS`` or ``$WORKBENCH_DUCKDB_MEMORY_LIMIT`` is left as it is.
    """
    threads = None if os.environ.get("WORKBENCH_DUCKDB_THREADS") else min(REPLAY_THREADS, cores or os.cpu_count() or 1)
    if os.environ.get("WORKBENCH_DUCKDB_MEMORY_LIMIT"):
        return {"threads": threads, "memory": None}
    scan_threads = threads or int(os.environ["WORKBENCH_DUCKDB_THREADS"])
    need = (SCAN_MB_PER_COLUMN_THREAD * scan_threads * (columns + 1) + WRITER_MB * writers) * MB
    return {"threads": threads, "memory": f"{max(REPLAY_MEMORY_FLOOR, int(need)) // MB}MiB"}


class Executor(Protocol):
    """Runs the scoring of a run's remaining traffic and commits it batch by batch."""

    def run(
        self, store: Store, run: RunState, models: dict[str, Predictor], options: ReplayOptions, progress
    ) -> dict | None:
        """Score the traffic outside ``run.committed`` and commit it, numbering units from ``run.next_batch``;
        may return the stages' busy seconds (see ``ReplayResult.stages``) and, under ``meters``, each model's
        :class:`~workbench.replay.resources.ModelMeter`."""


def replay(
    store: Store,
    traffic: str,
    baseline: Predictor,
    candidate: Predictor,
    run_id: str | None = None,
    options: ReplayOptions = ReplayOptions(),
    progress: Callable[[int, int], None] | None = None,
    executor: Executor | None = None,
) -> ReplayResult:
    """Replay traffic through both models; resume an interrupted run; a finished run is left untouched.

    ``progress(done_rows, total_rows)`` is called after each committed batch (from the writer thread).
    ``executor`` defaults to the in-process pipeline (:class:`LocalExecutor`); see ``workbench.replay.ray_executor``.
    """
    run_id = check_name(run_id, "run id") if run_id else new_run_id()
    info = store.require_traffic(traffic)
    models = {"baseline": baseline, "candidate": candidate}
    task = resolve_task(models, options.task)
    with_task(models, task)
    classes = model_classes(models, task)
    quantiles, skipped = model_quantiles(models, task)
    refs = {r: m.ref.to_dict() for r, m in models.items()}
    _check_features(info["columns"], models)
    started = time.perf_counter()
    run = store.open_run(
        run_id=run_id,
        traffic=traffic,
        baseline=refs["baseline"],
        candidate=refs["candidate"],
        batch_size=options.batch_size,
        device=",".join(sorted({m.device for m in models.values()})),
        mode=options.mode,
        meta={"environment": _environment(models, options), "task": task}
        | ({"classes": classes} if classes is not None else {})
        | ({"quantiles": quantiles} if quantiles is not None else {})
        | ({"quantiles_skipped": skipped} if skipped else {}),
    )
    if skipped:
        log.info("%s", skipped)
    if not run.created:
        _check_same_run(run, traffic, refs)
        was = run_task(store.require_run(run_id))
        if was != task:
            raise WorkbenchError(f"run {run_id} was replayed as a {was} run, not {task}: use a new --run-id")
        if classes is not None and run_classes(store.require_run(run_id)) != classes:
            raise WorkbenchError(f"run {run_id} was replayed with other classes than {classes}: use a new --run-id")
        if run_quantiles(store.require_run(run_id)) != (quantiles or []):
            raise WorkbenchError(
                f"run {run_id} was replayed with other quantile levels than {quantiles or []}: use a new --run-id"
            )
        if run.finished:
            done = store.run_counts(run_id).to_dict()
            return ReplayResult(**done, seconds=0.0, status="already_complete", task=task)
        log.info("resuming run %s after %s committed rows", run_id, run.rows_done)
    if progress:
        progress(run.rows_done, run.rows_total)
    limits = duckdb_limits(len({f for m in models.values() for f in m.ref.features}), options.writers)
    with store.limits(**limits), store.catalog_kept_open():
        t0 = time.perf_counter()
        stages = (executor or LocalExecutor()).run(store, run, models, options, progress) or {}
        loads = {r: getattr(m, "load_stats", None) for r, m in models.items()}
        devices = {r: m.device for r, m in models.items()}
        measured = run_resources(loads, stages.pop("meters", None), devices, options.mode, time.perf_counter() - t0)
        store.save_run_resources(run_id, measured)
        t0 = time.perf_counter()
        counts = store.finish_run(run_id)
        if stages:
            stages["finish_s"] = round(time.perf_counter() - t0, 3)
            stages["duckdb"] = store.settings("threads", "memory_limit")
    return ReplayResult(
        **counts.to_dict(),
        seconds=time.perf_counter() - started,
        status="finished",
        stages=stages,
        resources=measured,
        task=task,
    )


class LocalExecutor:
    """In-process pipeline: reader thread -> scoring on the calling thread -> writer thread.

    With ``options.isolate`` the models score in worker processes (:mod:`workbench.replay.isolation`)."""

    def run(self, store: Store, run: RunState, models: dict[str, Predictor], options: ReplayOptions, progress) -> dict:
        task = resolve_task(models, options.task)
        thresholds = class_thresholds(models, task)
        if not options.isolate:
            scorer = PairScorer(models, options.scoring(), options.measure)
            return _run_pipeline(store, run, scorer, thresholds, options, progress) | {"meters": scorer.meters}
        from workbench.replay.isolation import IsolationOptions, isolated

        with isolated(models, IsolationOptions(memory_limit_mb=options.worker_memory_mb)) as workers:
            scorer = PairScorer(workers, options.scoring(), options.measure)
            return _run_pipeline(store, run, scorer, thresholds, options, progress) | {"meters": scorer.meters}


ROW_GROUP = 122_880  # DuckDB's row group: commits in whole row groups need no rewrite at checkpoint
FLUSH_S = 1.0  # a partial unit waits at most this long for more rows (slow models, resumable progress)


class CommitPacker:
    """Cuts a stream of scored batch tables (in ``_row`` order) into commit units of whole row groups.

    A commit that ends in a partial row group leaves DuckDB a row group to merge and rewrite at the next
    checkpoint (a third of a fast replay's time at 262,144-row batches). Units are therefore multiples of
    ``row_group`` rows, except for what ``flush`` hands over: the rest of the run, or rows that waited
    ``FLUSH_S`` because the models are slow (then writes cost little anyway).
    """

    def __init__(self, row_group: int = ROW_GROUP, groups: int = 2):
        self.row_group = row_group
        self.unit = groups * row_group  # big units: DuckDB writes one insert's row groups in parallel
        self.pending: list[tuple[pa.Table, float]] = []  # (table, scoring seconds of its rows)
        self.rows = 0
        self.since: float | None = None

    def add(self, table: pa.Table, seconds: float, now: float) -> list[tuple[pa.Table, float]]:
        """Queue a batch; return a unit when ``groups`` row groups are pending."""
        if table.num_rows:
            self.pending.append((table, seconds))
            self.rows += table.num_rows
            self.since = now if self.since is None else self.since
        return self.whole() if self.rows >= self.unit else []

    def whole(self) -> list[tuple[pa.Table, float]]:
        """The pending whole row groups as one unit (for writers that are idle)."""
        n = (self.rows // self.row_group) * self.row_group
        return self._take(n) if n else []

    def due(self, now: float) -> bool:
        return self.since is not None and now - self.since >= FLUSH_S

    def flush(self) -> list[tuple[pa.Table, float]]:
        """Everything pending as one unit (none when nothing is pending)."""
        return self._take(self.rows) if self.rows else []

    def _take(self, n: int) -> list[tuple[pa.Table, float]]:
        parts, seconds, left = [], 0.0, n
        while left:
            table, sec = self.pending[0]
            if table.num_rows <= left:
                self.pending.pop(0)
                parts.append(table)
                seconds += sec
                left -= table.num_rows
            else:  # split the batch: its scoring time is shared by rows
                share = left / table.num_rows
                parts.append(table.slice(0, left))
                seconds += sec * share
                self.pending[0] = (table.slice(left), sec * (1 - share))
                left = 0
        self.rows -= n
        self.since = None if not self.rows else self.since
        # "permissive": GPU batches carry float32 scores, a batch that fell back to model-by-model float64
        unit = parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")
        return [(unit, seconds)]


def rebatch(reader: pa.RecordBatchReader, size: int):
    """Tables of exactly ``size`` rows (the last one shorter) from record batches of any size: DuckDB hands
    out at most a row group (122,880 rows) per batch, whatever batch size it is asked for. Zero-copy: a
    table's columns may have several chunks."""
    parts: list[pa.RecordBatch] = []
    rows = 0
    for rb in reader:
        while rb.num_rows:
            take = min(rb.num_rows, size - rows)
            parts.append(rb.slice(0, take))
            rows += take
            rb = rb.slice(take)
            if rows == size:
                yield pa.Table.from_batches(parts)
                parts, rows = [], 0
    if rows:
        yield pa.Table.from_batches(parts)


class _Stages:
    """Busy seconds per pipeline stage, to say what bounds a run (the slowest stage's share of the wall)."""

    def __init__(self):
        self.busy = {"read": 0.0, "prepare": 0.0, "score": 0.0, "build": 0.0, "write": 0.0}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.busy[stage] += seconds

    def report(self, wall: float, writers: int) -> dict:
        per_thread = dict(self.busy, write=self.busy["write"] / writers)
        bound = max(per_thread, key=per_thread.__getitem__)
        return {
            "wall_s": round(wall, 3),
            "busy_s": {k: round(v, 3) for k, v in self.busy.items()},
            "writers": writers,
            "bound": bound,
        }


def _run_pipeline(
    store: Store, run: RunState, scorer: PairScorer, thresholds: dict, options: ReplayOptions, progress
) -> dict:
    """Reader -> preparer -> scoring on this thread -> builder -> writers: threads with bounded queues between.

    The builder turns scores into paired result tables and packs them into commit units of whole row
    groups (:class:`CommitPacker`). Several writers commit units concurrently; each unit records the
    ``_row`` range it covers with its results in one transaction, so a resume skips exactly the committed
    ranges even when they were committed out of order. Returns the stages' busy seconds.
    """
    run_id, done, total = run.run_id, run.rows_done, run.rows_total
    task = resolve_task(dict(scorer.models))
    classes = model_classes(dict(scorer.models), task)
    n_classes = len(classes) if classes is not None else None
    quantiles = model_quantiles(dict(scorer.models), task)[0]
    n_quantiles = len(quantiles) if quantiles is not None else None
    # DuckDB hands out at most a row group per Arrow batch anyway, and each scan thread holds buffers for
    # the batch size it is asked for: asking for more costs memory and speed (measured: 262,144 rows
    # against 122,880: +20 MB at 8 threads, 16.5M rather than 20M rows/s); ``rebatch`` cuts the batches
    reader = store.traffic_batches(run.traffic, scorer.features, min(options.batch_size, ROW_GROUP), run.committed)
    fetched: queue.Queue = queue.Queue(maxsize=options.prefetch)
    inbox: queue.Queue = queue.Queue(maxsize=options.prefetch)
    built: queue.Queue = queue.Queue(maxsize=4)
    outbox: queue.Queue = queue.Queue(maxsize=2)  # units wait here only while every writer is busy
    stop = threading.Event()
    failure: list[BaseException] = []
    lock = threading.Lock()
    stages = _Stages()
    started = time.perf_counter()

    def put(q: queue.Queue, item) -> None:
        """Put unless the pipeline stopped (a failed stage must not leave the others blocked)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def get(q: queue.Queue):
        """The next item, or ``_END`` once the pipeline stopped."""
        while not stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                pass
        return _END

    def fail(e: BaseException) -> None:
        failure.append(e)
        stop.set()

    def read():
        last = -1
        try:
            t0 = time.perf_counter()
            for batch in rebatch(reader, options.batch_size):
                if stop.is_set():
                    return
                rows = batch.column("_row").combine_chunks()
                first, end = rows[0].as_py(), rows[-1].as_py()
                if first <= last or (len(rows) > 1 and np.any(np.diff(rows.to_numpy()) <= 0)):
                    raise WorkbenchError("traffic scan order was not preserved; cannot replay resumably")
                last = end
                stages.add("read", time.perf_counter() - t0)
                put(fetched, (batch, rows))
                t0 = time.perf_counter()
        except BaseException as e:  # handed to the main thread
            put(fetched, e)
            return
        put(fetched, _END)

    def prepare():  # its own thread: laying out a batch for the GPU costs as much as reading it
        while (item := get(fetched)) is not _END and not isinstance(item, BaseException):
            t0 = time.perf_counter()
            try:
                item = (item[1], scorer.prepare(item[0]))  # (rows, prepared): a GPU layout drops the batch
            except BaseException as e:
                item = e
            stages.add("prepare", time.perf_counter() - t0)
            put(inbox, item)
            if isinstance(item, BaseException):
                return
        put(inbox, item)

    def build():
        packer = CommitPacker()
        try:
            while True:
                try:
                    item = built.get(timeout=FLUSH_S / 2)
                except queue.Empty:
                    item = None
                t0 = time.perf_counter()
                if item is not None and item is not _END:
                    rows, scored, seconds = item
                    units = packer.add(paired_table(rows, scored, thresholds, n_classes, n_quantiles), seconds, t0)
                else:
                    units = []
                # idle writers get what is whole now, and a partial unit once it waited (slow models); busy
                # writers are never fed partial row groups
                if item is _END or (packer.due(t0) and outbox.empty()):
                    units += packer.flush()
                elif outbox.empty():
                    units += packer.whole()
                stages.add("build", time.perf_counter() - t0)
                for unit in units:
                    put(outbox, unit)
                if item is _END or stop.is_set():
                    break
        except BaseException as e:
            fail(e)
        for _ in range(options.writers):
            outbox.put(_END)

    def write():
        nonlocal done
        batch_no = None
        try:
            while (item := outbox.get()) is not _END:
                if failure:
                    continue  # drain: the run stops, nothing more is committed
                table, seconds = item
                t0 = time.perf_counter()
                # contiguous columns: DuckDB cuts row groups at chunk boundaries, and partial ones cost a
                # rewrite at the next checkpoint (done here, in parallel, rather than in the builder)
                item = None  # the chunked unit is freed as soon as it is combined
                table = table.combine_chunks()
                rows = table.column("_row")
                with lock:
                    batch_no = next_no[0]
                    next_no[0] += 1
                store.commit_batch(run_id, batch_no, rows[0].as_py(), rows[-1].as_py(), table.num_rows, seconds, table)
                stages.add("write", time.perf_counter() - t0)
                with lock:
                    done += table.num_rows
                    if progress:
                        progress(done, total)
        except BaseException as e:
            fail(e)
            while outbox.get() is not _END:  # unblock the builder
                pass

    next_no = [run.next_batch]
    threads = [
        threading.Thread(target=read, name="replay-reader", daemon=True),
        threading.Thread(target=prepare, name="replay-prepare", daemon=True),
        threading.Thread(target=build, name="replay-builder", daemon=True),
    ]
    builder = threads[2]
    writers = [threading.Thread(target=write, name=f"replay-writer-{i}", daemon=True) for i in range(options.writers)]
    for t in threads + writers:
        t.start()
    try:
        while not stop.is_set():
            try:
                item = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            rows, prepared = item
            for part_rows, part in _score_parts(rows, prepared, options.mode == "online"):
                t0 = time.perf_counter()
                scored = scorer.score(part)
                seconds = time.perf_counter() - t0
                stages.add("score", seconds)
                put(built, (part_rows, scored, seconds))
                if stop.is_set():
                    break
    finally:  # on an interruption here (Ctrl-C) what was scored is still committed; a failure of the builder
        # or a writer has set ``stop``, and the builder then stops by itself
        if not stop.is_set():
            put(built, _END)
        builder.join()
        for t in writers:
            t.join()
        stop.set()  # the reader and the preparer see it within 0.1 s
        for t in threads[:2]:
            t.join()
    if failure:
        raise failure[0]
    return stages.report(time.perf_counter() - started, options.writers)


ONLINE_SLICE_S = 0.25  # an online batch is scored in slices of about this many seconds, so progress moves


def _score_parts(rows: pa.Array, prepared: Any, online: bool):
    """``(rows, prepared)`` itself, or for an online replay (one request at a time: a batch can take minutes)
    slices of it sized to about :data:`ONLINE_SLICE_S` of scoring at the rate measured so far, so committed
    units, and the progress they report, follow at least every :data:`FLUSH_S` plus a slice."""
    if not online or not isinstance(prepared, pa.Table):
        yield rows, prepared
        return
    start, size, n = 0, 16, prepared.num_rows
    while start < n:
        t0 = time.perf_counter()
        yield rows.slice(start, size), prepared.slice(start, size)
        took = time.perf_counter() - t0  # the consumer scored the slice before asking for the next
        start += size
        size = int(min(max(16, size * ONLINE_SLICE_S / max(took, 1e-6)), 4 * size, 65_536))


def _check_same_run(run: RunState, traffic: str, refs: dict) -> None:
    if run.traffic != traffic:
        raise WorkbenchError(f"run {run.run_id} replays traffic {run.traffic!r}, not {traffic!r}")
    for role in ROLES:
        was, now = getattr(run, role), refs[role]
        registered = was.get("version") is not None and now.get("version") is not None
        if registered and (was.get("name"), str(was["version"])) == (now.get("name"), str(now["version"])):
            continue  # the same registered version, however it is addressed (an alias or a version URI)
        if (was.get("uri"), was.get("version")) != (now["uri"], now["version"]):
            raise WorkbenchError(
                f"run {run.run_id} was started with {role} {was.get('uri')} version "
                f"{was.get('version')}; now it resolves to version {now['version']}. "
                "Use a new --run-id or pin the version"
            )


def _check_features(columns: list[str], models: dict[str, Predictor]) -> None:
    for role, m in models.items():
        missing = [f for f in m.ref.features if f not in columns]
        if missing:
            raise WorkbenchError(f"the {role} model needs column(s) {', '.join(missing)} that the traffic lacks")
