"""The live traffic log: every routed request, with each arm's answer, latency and error, in rotated Parquet.

The router hands each finished request to :meth:`TrafficLog.append` (a queue put, nothing else on the
request path); a writer thread parses the request and the answers and writes row groups. A file is written
as ``live-<utc>-<seq>.parquet.partial`` and renamed to ``.parquet`` when it is rotated or the log closes, so
``workbench ingest 'DIR/*.parquet'`` only ever reads complete files.

One row per input row of a request (MLflow scoring protocol: ``dataframe_records``, ``dataframe_split``,
``instances``/``inputs``, or CSV): ``request_id`` (the request's id; ``<id>:<i>`` for row ``i`` of a
multi-row request), ``event_time`` (arrival, naive UTC), ``entity_key``, the request's feature columns, and
the router's columns, all named ``live_*`` so one ``--nullable 'live_*'`` covers them at ingest:
``live_routed_arm``, ``live_served_arm`` (the baseline when a failed candidate request was retried on it),
``live_reason``, ``live_weight``, ``live_decision_id``, ``live_mirrored`` and per arm ``live_<arm>_status``,
``live_<arm>_score``, ``live_<arm>_latency_ms``, ``live_<arm>_error`` (null when that arm did not get it).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.roles import ROLES as ARMS  # the live arms are the two model roles

log = logging.getLogger(__name__)
RESERVED = ("request_id", "event_time", "entity_key")
PREFIX = "live_"
PARTIAL = ".partial"
ERROR_MAX_CHARS = 500


@dataclass(frozen=True)
class Outcome:
    """One upstream call: HTTP status (None when no answer came), body, latency and transport error."""

    status: int | None
    body: bytes
    latency_ms: float
    error: str | None = None
    content_type: str = "application/json"

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    def error_text(self) -> str | None:
        if self.error is not None:
            return self.error
        if self.ok:
            return None
        return f"HTTP {self.status}: {self.body[:ERROR_MAX_CHARS].decode('utf-8', 'replace')}"


@dataclass
class LiveRecord:
    """A routed request as the router saw it; ``outcomes`` fill in as the arms answer."""

    request_id: str
    event_time: datetime
    entity: str | None
    routed: str
    reason: str
    weight: int
    decision_id: str | None
    body: bytes
    content_type: str
    served: str | None = None
    mirrored: bool = False
    outcomes: dict[str, Outcome] = field(default_factory=dict)


# -- parsing the scoring protocol ---------------------------------------------------------------------
def request_rows(body: bytes, content_type: str) -> list[dict]:
    """The input rows of an MLflow scoring request (records); one empty row when they cannot be read."""
    mime = content_type.split(";")[0].strip().lower()
    try:
        if mime == "text/csv":
            return list(csv.DictReader(io.StringIO(body.decode("utf-8")))) or [{}]
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return [{}]
    rows = _json_rows(data)
    return rows if rows else [{}]


def _json_rows(data) -> list[dict]:
    if not isinstance(data, dict):
        return []
    if isinstance(data.get("dataframe_records"), list):
        return [r for r in data["dataframe_records"] if isinstance(r, dict)]
    split = data.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("columns"), list) and isinstance(split.get("data"), list):
        cols = split["columns"]
        # a row longer or shorter than the columns is read as far as both go (these rows only route and log)
        return [dict(zip(cols, r, strict=False)) for r in split["data"] if isinstance(r, list)]
    for key in ("instances", "inputs"):
        v = data.get(key)
        if isinstance(v, list):
            return [r for r in v if isinstance(r, dict)]
        if isinstance(v, dict) and v and all(isinstance(c, list) for c in v.values()):
            n = min(len(c) for c in v.values())
            return [{k: c[i] for k, c in v.items()} for i in range(n)]
    return []


def _score(p) -> float | None:
    if isinstance(p, bool):
        return float(p)
    if isinstance(p, (int, float)):
        return float(p)
    if isinstance(p, list) and len(p) in (1, 2) and all(isinstance(x, (int, float)) for x in p):
        return float(p[-1])  # [p] or [p0, p1]: the positive class, as predict_proba[:, 1]
    return None


def response_scores(outcome: Outcome, n: int) -> tuple[list[float | None], str | None]:
    """Per-row scores of an answer, and the arm's error for the log (one error for all rows)."""
    err = outcome.error_text()
    if err is not None:
        return [None] * n, err
    try:
        preds = json.loads(outcome.body)
        preds = preds.get("predictions") if isinstance(preds, dict) else preds
    except ValueError:
        return [None] * n, "bad response: not JSON"
    if not isinstance(preds, list) or len(preds) != n:
        got = len(preds) if isinstance(preds, list) else type(preds).__name__
        return [None] * n, f"bad response: expected {n} predictions, got {got}"
    return [_score(p) for p in preds], None


# -- rows to Arrow ----------------------------------------------------------------------------------
def _feature_name(name: str) -> str:
    """Request fields keep their names, except those the log itself uses (prefixed ``input_``)."""
    return f"input_{name}" if name in RESERVED or name.startswith(PREFIX) else name


def _column(values: list) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if all(isinstance(v, str) for v in present):
        return pa.array(values, pa.string())
    return pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values], pa.string())


def to_table(records: list[LiveRecord]) -> pa.Table:
    """The log rows of finished requests (see the module docstring for the columns)."""
    meta: dict[str, list] = {k: [] for k in ("request_id", "event_time", "entity_key")}
    live: dict[str, list] = {
        f"{PREFIX}{k}": [] for k in ("routed_arm", "served_arm", "reason", "weight", "decision_id", "mirrored")
    }
    arms: dict[str, list] = {f"{PREFIX}{a}_{k}": [] for a in ARMS for k in ("status", "score", "latency_ms", "error")}
    features: dict[str, list] = {}
    n_rows = 0
    for rec in records:
        rows = request_rows(rec.body, rec.content_type)
        n = len(rows)
        per_arm = {a: response_scores(rec.outcomes[a], n) for a in ARMS if a in rec.outcomes}
        for i, row in enumerate(rows):
            meta["request_id"].append(rec.request_id if n == 1 else f"{rec.request_id}:{i}")
            meta["event_time"].append(rec.event_time.replace(tzinfo=None))
            meta["entity_key"].append(rec.entity)
            for k, v in (
                ("routed_arm", rec.routed),
                ("served_arm", rec.served),
                ("reason", rec.reason),
                ("weight", rec.weight),
                ("decision_id", rec.decision_id),
                ("mirrored", rec.mirrored),
            ):
                live[PREFIX + k].append(v)
            for a in ARMS:
                o, answer = rec.outcomes.get(a), per_arm.get(a)  # answer: present exactly when o is
                arms[f"{PREFIX}{a}_status"].append(o.status if o else None)
                arms[f"{PREFIX}{a}_score"].append(answer[0][i] if answer else None)
                arms[f"{PREFIX}{a}_latency_ms"].append(o.latency_ms if o else None)
                arms[f"{PREFIX}{a}_error"].append(answer[1] if answer else None)
            for name, v in row.items():
                col = features.setdefault(_feature_name(str(name)), [None] * n_rows)
                col.append(v)
            n_rows += 1
            for col in features.values():
                if len(col) < n_rows:
                    col.append(None)
    types = {
        "request_id": pa.string(),
        "event_time": pa.timestamp("us"),
        "entity_key": pa.string(),
        f"{PREFIX}routed_arm": pa.string(),
        f"{PREFIX}served_arm": pa.string(),
        f"{PREFIX}reason": pa.string(),
        f"{PREFIX}weight": pa.int32(),
        f"{PREFIX}decision_id": pa.string(),
        f"{PREFIX}mirrored": pa.bool_(),
    }
    for a in ARMS:
        types |= {
            f"{PREFIX}{a}_status": pa.int32(),
            f"{PREFIX}{a}_score": pa.float64(),
            f"{PREFIX}{a}_latency_ms": pa.float64(),
            f"{PREFIX}{a}_error": pa.string(),
        }
    cols = {k: pa.array(v, types[k]) for k, v in meta.items()}
    cols |= {k: _column(v) for k, v in features.items()}
    cols |= {k: pa.array(v, types[k]) for k, v in (live | arms).items()}
    return pa.table(cols)


# -- the writer -----------------------------------------------------------------------------------
class TrafficLog:
    """Rotated Parquet files under ``directory``, written by one background thread.

    :meth:`append` only puts the request on a deque (no lock, no wake-up: waking a thread per request costs
    the event loop the GIL); the writer takes what has queued every ``flush_s`` seconds and writes it as row
    groups of at most ``flush_rows`` requests. A file is closed (renamed from ``.partial``) after
    ``rotate_rows`` rows or ``rotate_s`` seconds, when the request fields change type or columns, and on
    :meth:`close`.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        prefix: str = "live",
        flush_s: float = 1.0,
        flush_rows: int = 5000,
        rotate_rows: int = 200_000,
        rotate_s: float = 600.0,
    ):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.flush_s, self.flush_rows = prefix, flush_s, flush_rows
        self.rotate_rows, self.rotate_s = rotate_rows, rotate_s
        self._pending: deque[LiveRecord] = deque()
        self._stop = threading.Event()
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._file_rows = 0
        self._seq = 0
        self.rows_written = 0
        self.requests_written = 0
        self.failed = 0
        self.files: list[str] = []
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()

    def append(self, record: LiveRecord) -> None:
        """Queue a finished request (never blocks)."""
        self._pending.append(record)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, close the current file and stop the writer."""
        self._stop.set()
        self._thread.join(timeout)

    # writer thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            stop = self._stop.wait(self.flush_s)
            while self._pending:
                n = min(len(self._pending), self.flush_rows)
                self._write([self._pending.popleft() for _ in range(n)])
                self._maybe_rotate()
            if stop:
                if self._writer is not None:
                    self._close_file()
                return
            self._maybe_rotate()

    def _maybe_rotate(self) -> None:
        if self._writer is not None and (
            self._file_rows >= self.rotate_rows or time.monotonic() - self._opened >= self.rotate_s
        ):
            self._close_file()

    def _write(self, records: list[LiveRecord]) -> None:
        try:
            table = to_table(records)
            writer = self._writer
            if writer is not None and not table.schema.equals(writer.schema):
                try:
                    table = table.cast(writer.schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                    self._close_file()  # the request fields changed: a new file with the new schema
                    writer = None
            if writer is None:
                writer = self._open_file(table.schema)
            writer.write_table(table)
            self._file_rows += table.num_rows
            self.rows_written += table.num_rows
            self.requests_written += len(records)
        except Exception:  # a log failure must never reach the routed requests: count it and go on
            self.failed += len(records)
            log.exception("traffic log: %d requests could not be written", len(records))

    def _open_file(self, schema: pa.Schema) -> pq.ParquetWriter:
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self._path = self.dir / f"{self.prefix}-{stamp}-{os.getpid()}-{self._seq:04d}.parquet"
        self._writer = pq.ParquetWriter(str(self._path) + PARTIAL, schema)
        self._opened = time.monotonic()
        self._file_rows = 0
        return self._writer

    def _close_file(self) -> None:
        writer, path = self._writer, self._path
        if writer is None or path is None:
            raise RuntimeError("traffic log: no file is open")
        self._writer = self._path = None
        try:
            writer.close()
            os.replace(str(path) + PARTIAL, path)
            self.files.append(str(path))
        except OSError:
            log.exception("traffic log: cannot close %s", path)
