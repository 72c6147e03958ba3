"""DuckDB access and background jobs for a long-lived, multi-threaded process (the Streamlit app).

DuckDB allows one writing process per file, a read-only open fails while another process holds the
write lock, and inside one process every connection to a file must be opened in the same mode. So the
process reaches the file through one :class:`SharedDatabase`:

- while an in-process job writes (a replay, a drift report, a signed decision), one read-write
  :class:`~workbench.store.Store` is open and shared: readers use it too, each thread with its own cursor;
- otherwise every read opens a short read-only connection and closes it at once, so the process never
  holds the file between page loads and a job in another process can take the write lock;
- when another process holds the write lock, a read raises :class:`DatabaseBusy` at once, and the caller
  shows what it read before.

:class:`BackgroundJobs` runs replays (then the evaluation and the drift report) and drift reports in
threads of this process, writing a progress file per run (:mod:`workbench.ops.progress`) as they go.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from workbench import WorkbenchError
from workbench.config import Settings
from workbench.ops.access import Identity, Role, require_role
from workbench.ops.flow import Flow, FlowEvents, run_flow
from workbench.ops.progress import RUNNING, ProgressFile, read_progress
from workbench.replay.pipeline import ReplayOptions, new_run_id
from workbench.store import DatabaseLocked, Store, check_name

log = logging.getLogger(__name__)


class DatabaseBusy(WorkbenchError):
    """Another process holds the database's write lock right now."""


class SharedDatabase:
    """The process's way to the DuckDB file: a shared read-write store while a job writes, else short
    read-only connections (see the module docstring)."""

    def __init__(
        self, path: Path, *, read_wait_s: float = 0.3, write_wait_s: float = 10.0, read_memory_limit: str | None = None
    ):
        """``read_memory_limit``: DuckDB's buffer for the short read-only connections (their own instances;
        large aggregations spill less with more), e.g. ``"2GB"``; None keeps the store's default."""
        self.path = Path(path)
        self.read_wait_s, self.write_wait_s = read_wait_s, write_wait_s
        self.read_memory_limit = read_memory_limit
        self._cond = threading.Condition()
        self._readers = 0  # read-only connections open now
        self._shared: Store | None = None
        self._holders = 0  # users of the shared read-write store
        self._opening = False

    @property
    def exists(self) -> bool:
        return self.path.exists()

    @property
    def writing(self) -> bool:
        """True while this process holds the read-write store (an in-process job is writing)."""
        return self._shared is not None

    @contextmanager
    def read(self) -> Iterator[Store]:
        """A store to read from for the duration of the block; raises :class:`DatabaseBusy` when another
        process holds the write lock, :class:`WorkbenchError` when there is no database yet."""
        with self._cond:
            while self._opening:
                self._cond.wait()
            shared = self._shared
            if shared is not None:
                self._holders += 1
            else:
                self._readers += 1
        try:
            if shared is not None:
                yield shared
                return
            if not self.path.exists():
                raise WorkbenchError(f"no workbench database at {self.path} yet")
            try:
                store = Store(self.path, read_only=True, wait_s=self.read_wait_s)
            except DatabaseLocked:
                raise DatabaseBusy(f"database {self.path} is busy: another process is writing") from None
            try:
                if self.read_memory_limit:
                    store.con.execute("SET memory_limit = ?", [self.read_memory_limit])
                yield store
            finally:
                store.close()
        finally:
            if shared is not None:
                self.release()
            else:
                with self._cond:
                    self._readers -= 1
                    self._cond.notify_all()

    def hold(self, wait_s: float | None = None) -> Store:
        """Open (or share) the read-write store; pair with :meth:`release`. Waits for this process's readers
        to close and up to ``wait_s`` for another process's write lock (:class:`DatabaseBusy` after); readers
        are held back only while an open is tried, so they keep reading (or see busy) during the wait."""
        deadline = time.monotonic() + (self.write_wait_s if wait_s is None else wait_s)
        with self._cond:
            while self._shared is None:
                self._opening = True
                try:
                    while self._readers:
                        self._cond.wait()
                    try:
                        self._shared = Store(self.path)  # its writes wait for the writer lock
                    except DatabaseLocked:
                        if time.monotonic() >= deadline:
                            raise DatabaseBusy(
                                f"database {self.path} is busy: another process is writing; "
                                "try again when it has finished"
                            ) from None
                finally:
                    self._opening = False
                    self._cond.notify_all()
                if self._shared is None:
                    self._cond.wait(0.2)
            self._holders += 1
            return self._shared

    def release(self) -> None:
        with self._cond:
            self._holders -= 1
            if self._holders == 0 and self._shared is not None:
                self._shared.close()
                self._shared = None
            self._cond.notify_all()

    @contextmanager
    def write(self, wait_s: float | None = None) -> Iterator[Store]:
        """The read-write store for a short write (a signed decision); see :meth:`hold`."""
        store = self.hold(wait_s)
        try:
            yield store
        finally:
            self.release()


# -- background jobs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayJob:
    """A replay to run in the background, then (optionally) its evaluation and drift report."""

    traffic: str
    baseline: str
    candidate: str
    run_id: str | None = None
    options: ReplayOptions = field(default_factory=ReplayOptions)
    device: str = "auto"
    evaluate: bool = True
    drift: bool = True
    drift_html: bool = True


@dataclass(frozen=True)
class JobState:
    job_id: str
    kind: str
    run_id: str
    status: str
    started: float
    finished: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "run_id": self.run_id,
            "status": self.status,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
        }


def drift_html_path(settings: Settings, run_id: str) -> Path:
    """Where background jobs write a run's Evidently HTML report."""
    return settings.reports_dir / f"{check_name(run_id, 'run id')}_drift.html"


class BackgroundJobs:
    """Replay and drift jobs in threads of this process, sharing one :class:`SharedDatabase`.

    ``load_predictor`` (default: :func:`workbench.replay.models.load_predictor`) is injected so tests can hand
    in tiny models. Model loading happens before the job takes the write lock.
    """

    def __init__(
        self, settings: Settings, db: SharedDatabase, load_predictor: Callable[[str, str], object] | None = None
    ):
        self.settings, self.db = settings, db
        self._load = load_predictor
        self._lock = threading.Lock()
        self._jobs: dict[str, JobState] = {}
        self._threads: dict[str, threading.Thread] = {}

    # -- submit ---------------------------------------------------------------------------------------
    def submit_replay(self, job: ReplayJob, *, by: Identity | None) -> JobState:
        """Start a replay job for ``by`` (an operator or approver); returns its state at once. A run already
        running (here or, by its progress file, in another process) is refused."""
        require_role(by, Role.OPERATOR, "start a replay")
        run_id = check_name(job.run_id, "run id") if job.run_id else new_run_id()
        job = replace(job, run_id=run_id)
        check_name(job.traffic, "traffic name")
        return self._start(
            "replay",
            run_id,
            lambda prog: self._replay(job, prog),
            dict(traffic=job.traffic, baseline=job.baseline, candidate=job.candidate),
        )

    def submit_drift(self, run_id: str, *, by: Identity | None, html: bool = True) -> JobState:
        """Compute a run's drift report (and Evidently's HTML report) in the background, for an operator or
        approver."""
        require_role(by, Role.OPERATOR, "recompute drift")
        return self._start("drift", check_name(run_id, "run id"), lambda prog: self._drift(run_id, html, prog), {})

    def _start(self, kind: str, run_id: str, body: Callable[[ProgressFile], None], meta: dict) -> JobState:
        with self._lock:
            if any(s.run_id == run_id and s.status == RUNNING for s in self._jobs.values()):
                raise WorkbenchError(f"run {run_id} already has a job running in this app")
            for p in read_progress(self.settings.home):
                if p.run_id == run_id and p.status == RUNNING:
                    raise WorkbenchError(
                        f"run {run_id} is being replayed by process {p.pid} on {p.host} "
                        f"({p.source}); wait for it to finish"
                    )
            job_id = f"{kind}_{uuid.uuid4().hex[:8]}"
            state = JobState(job_id, kind, run_id, RUNNING, time.time())
            self._jobs[job_id] = state
            prog = ProgressFile(self.settings.home, run_id, source=f"app {kind}", **meta)
            t = threading.Thread(target=self._run, args=(job_id, body, prog), name=f"workbench-{job_id}", daemon=True)
            self._threads[job_id] = t
        t.start()
        return state

    def _run(self, job_id: str, body: Callable[[ProgressFile], None], prog: ProgressFile) -> None:
        error = None
        try:
            body(prog)
        except WorkbenchError as e:
            error = str(e)
        except Exception as e:  # a background thread has no caller: the failure is recorded, with its trace logged
            error = f"{type(e).__name__}: {e}"
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        prog.finish(error)
        with self._lock:
            self._jobs[job_id] = replace(
                self._jobs[job_id], status="failed" if error else "finished", finished=time.time(), error=error
            )

    # -- job bodies -----------------------------------------------------------------------------------
    def _replay(self, job: ReplayJob, prog: ProgressFile) -> None:
        assert job.run_id is not None  # submit_replay names the run
        flow = Flow(
            traffic=job.traffic,
            baseline=job.baseline,
            candidate=job.candidate,
            run_id=job.run_id,
            replay=job.options,
            device=job.device,
            evaluate=job.evaluate,
            drift=job.drift,
            drift_html=drift_html_path(self.settings, job.run_id) if job.drift_html else None,
        )
        prog.stage("loading models")
        run_flow(self.settings, flow, store=self.db.write, load=self._load, events=_ProgressEvents(prog))

    def _drift(self, run_id: str, html: bool, prog: ProgressFile) -> None:
        from workbench.drift.report import drift_run

        with self.db.write() as store:
            run = store.require_run(run_id)
            prog(int(run["rows_done"]), int(run["rows_done"]))
            prog.stage("drift")
            if html:
                self.settings.ensure()
            drift_run(store, run_id, html=drift_html_path(self.settings, run_id) if html else None)

    # -- state ----------------------------------------------------------------------------------------
    def jobs(self) -> list[JobState]:
        """This process's jobs, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda s: s.started, reverse=True)

    def running(self) -> bool:
        with self._lock:
            return any(s.status == RUNNING for s in self._jobs.values())

    def wait(self, job_id: str, timeout: float | None = None) -> JobState:
        """Block until a job ends (tests, scripts); returns its final state."""
        self._threads[job_id].join(timeout)
        with self._lock:
            return self._jobs[job_id]


class _ProgressEvents(FlowEvents):
    """Report a background flow's stages and replay progress in the run's progress file."""

    LABELS = {"replay": "replaying", "evaluate": "evaluating", "drift": "drift"}

    def __init__(self, prog: ProgressFile):
        self.prog = prog

    def begin(self, stage: str) -> None:
        self.prog.stage(self.LABELS.get(stage, stage))

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage == "replay":
            self.prog(done, total or done)
