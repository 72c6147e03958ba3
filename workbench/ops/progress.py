"""Progress files of replay jobs: one small JSON file per run under ``$WORKBENCH_HOME/progress/``.

Whoever runs a replay (the ``workbench replay`` command, a scheduled job, the app's background jobs)
writes its progress there from the replay's progress callback, so a reader (the app) sees how far a
run is, its rate and ETA without opening DuckDB, whose file a writing process holds locked. Files are
replaced atomically (write, then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from workbench.clock import iso, parse_time
from workbench.store import check_name

PROGRESS_DIR = "progress"
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"


def _iso(t: float) -> str:
    return iso(datetime.fromtimestamp(t, UTC))


@dataclass(frozen=True)
class Progress:
    """What a progress file holds. ``rows_per_s`` counts the rows this process replayed (a resumed run's
    earlier rows do not inflate it); ``eta_s`` is the time left at that rate."""

    run_id: str
    status: str
    stage: str
    rows_done: int
    rows_total: int | None
    rows_per_s: float | None
    eta_s: float | None
    started_at: str
    updated_at: str
    source: str
    pid: int
    host: str
    traffic: str | None = None
    baseline: str | None = None
    candidate: str | None = None
    error: str | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.rows_done / self.rows_total) if self.rows_total else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def progress_dir(home: Path) -> Path:
    return Path(home) / PROGRESS_DIR


class ProgressFile:
    """The replay's ``progress(done, total)`` callback that keeps ``progress/<run_id>.json`` up to date.

    Thread-safe (the replay calls it from its writer threads); writes the first report, then at most every
    ``min_interval_s`` seconds and the last batch, and always on :meth:`stage` and :meth:`finish`.
    """

    def __init__(
        self,
        home: Path,
        run_id: str,
        *,
        source: str,
        traffic: str | None = None,
        baseline: str | None = None,
        candidate: str | None = None,
        min_interval_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ):
        self.path = progress_dir(home) / f"{check_name(run_id, 'run id')}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock, self._min_interval = clock, min_interval_s
        self._lock = threading.Lock()
        now = clock()
        self._first: tuple[float, int] | None = None  # (time, rows) of the first report: the rate's origin
        self._written = 0.0
        self.state = Progress(
            run_id=run_id,
            status=RUNNING,
            stage="starting",
            rows_done=0,
            rows_total=None,
            rows_per_s=None,
            eta_s=None,
            started_at=_iso(now),
            updated_at=_iso(now),
            source=source,
            pid=os.getpid(),
            host=platform.node(),
            traffic=traffic,
            baseline=baseline,
            candidate=candidate,
        )
        self._write()

    def __call__(self, done: int, total: int | None = None) -> None:
        with self._lock:
            now = self._clock()
            first = self._first is None
            if self._first is None:
                self._first = (now, done)
            t0, d0 = self._first
            rate = (done - d0) / (now - t0) if now > t0 and done > d0 else None
            left = (total - done) / rate if rate and total is not None else None
            self.state = replace(
                self.state, rows_done=int(done), rows_total=total, rows_per_s=rate, eta_s=left, updated_at=_iso(now)
            )
            if first or now - self._written >= self._min_interval or (total is not None and done >= total):
                self._write()

    def stage(self, name: str) -> None:
        """Name the step the job is in (loading models, replaying, evaluating, drift)."""
        with self._lock:
            self.state = replace(self.state, stage=name, updated_at=_iso(self._clock()))
            self._write()

    def finish(self, error: str | None = None) -> None:
        """Mark the job finished, or failed with ``error``."""
        with self._lock:
            self.state = replace(
                self.state,
                status=FAILED if error else FINISHED,
                stage="done",
                error=error,
                eta_s=None if error else 0.0,
                updated_at=_iso(self._clock()),
            )
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(self.state.to_dict()))
        os.replace(tmp, self.path)
        self._written = self._clock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_progress(home: Path) -> list[Progress]:
    """Every progress file under ``home``, newest first. A running job whose process is gone (on this host)
    is reported as interrupted; unreadable files are left out."""
    out = []
    folder = progress_dir(home)
    if not folder.is_dir():
        return []
    for path in folder.glob("*.json"):
        try:
            p = Progress(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if p.status == RUNNING and p.host == platform.node() and not _alive(p.pid):
            p = replace(p, status=INTERRUPTED, eta_s=None)
        out.append(p)
    return sorted(out, key=lambda p: parse_time(p.started_at), reverse=True)
