"""DuckDB storage: the schema and every SQL statement of the workbench.

One :class:`Store` owns one connection; threads take their own cursor with :meth:`Store.cursor`.
Values always travel as parameters; identifiers (traffic tables, column names) are validated
and quoted with :func:`qident`, never formatted raw into SQL.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pyarrow as pa

from . import WorkbenchError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS traffic_sets (
        name VARCHAR PRIMARY KEY, table_name VARCHAR NOT NULL, id_col VARCHAR, time_col VARCHAR,
        entity_col VARCHAR, columns JSON NOT NULL, fingerprint VARCHAR NOT NULL, rows BIGINT NOT NULL,
        quarantined BIGINT NOT NULL, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ingests (
        ingest_id VARCHAR PRIMARY KEY, traffic VARCHAR NOT NULL, kind VARCHAR NOT NULL, source VARCHAR,
        file_sha256 VARCHAR, rows_read BIGINT, rows_ingested BIGINT, rows_quarantined BIGINT, ingested_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        traffic VARCHAR NOT NULL, ingest_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, source_row BIGINT,
        request_id VARCHAR, reason VARCHAR NOT NULL, raw VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS labels (
        traffic VARCHAR NOT NULL, request_id VARCHAR NOT NULL, label INTEGER NOT NULL,
        label_time TIMESTAMP, PRIMARY KEY (traffic, request_id))""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY, traffic VARCHAR NOT NULL, baseline JSON NOT NULL, candidate JSON NOT NULL,
        status VARCHAR NOT NULL, rows_total BIGINT, batch_size INTEGER, device VARCHAR,
        mode VARCHAR, meta JSON, started_at TIMESTAMP, finished_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS run_batches (
        run_id VARCHAR NOT NULL, batch_no INTEGER NOT NULL, first_row BIGINT NOT NULL, span INTEGER NOT NULL,
        rows INTEGER NOT NULL, seconds DOUBLE, committed_at TIMESTAMP, PRIMARY KEY (run_id, batch_no))""",
    # paired results: one row per request, both models side by side
    """CREATE TABLE IF NOT EXISTS predictions (
        run_id VARCHAR NOT NULL, request_id VARCHAR NOT NULL,
        baseline_score DOUBLE, baseline_class INTEGER, baseline_latency_ms DOUBLE, baseline_error VARCHAR,
        candidate_score DOUBLE, candidate_class INTEGER, candidate_latency_ms DOUBLE, candidate_error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS evaluations (
        run_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, params JSON, result JSON NOT NULL)""",
    # decisions, canary weight and jobs (policy / signing / canary / service)
    """CREATE TABLE IF NOT EXISTS decisions (
        decision_id VARCHAR PRIMARY KEY, model VARCHAR NOT NULL, kind VARCHAR NOT NULL, run_id VARCHAR,
        verdict VARCHAR NOT NULL, weight_before INTEGER NOT NULL, weight_after INTEGER NOT NULL,
        record VARCHAR NOT NULL, record_hash VARCHAR NOT NULL, signature VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL, mlflow_run_id VARCHAR, pending_sync BOOLEAN NOT NULL DEFAULT FALSE,
        sync_error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS canary_chain (
        model VARCHAR NOT NULL, sequence INTEGER NOT NULL, decision_id VARCHAR NOT NULL UNIQUE,
        record_hash VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL, PRIMARY KEY (model, sequence))""",
    """CREATE TABLE IF NOT EXISTS canary_state (
        model VARCHAR PRIMARY KEY, baseline_version VARCHAR, candidate_version VARCHAR, weight INTEGER NOT NULL,
        decision_id VARCHAR NOT NULL, record_hash VARCHAR NOT NULL, killed BOOLEAN NOT NULL,
        updated_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, delivery_id VARCHAR UNIQUE, event VARCHAR,
        params JSON NOT NULL, status VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, started_at TIMESTAMP,
        finished_at TIMESTAMP, error VARCHAR, result JSON)""",
]


def utcnow() -> datetime:
    """Naive UTC now (DuckDB TIMESTAMP columns hold UTC)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def qident(name: str) -> str:
    """Quote any column name as a DuckDB identifier."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise WorkbenchError(f"invalid column name {name!r}")
    return '"' + name.replace('"', '""') + '"'


def check_name(name: str, what: str = "name") -> str:
    """Validate a user-chosen object name (traffic name, run id)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise WorkbenchError(
            f"invalid {what} {name!r}: use a letter followed by letters, digits or '_' (at most 63)")
    return name


def _skip_sql(skip: list[tuple[int, int]]) -> str:
    """A filter leaving out ``_row`` ranges (integers only, so they are safe to inline)."""
    return " AND ".join(["TRUE"] + [f"_row NOT BETWEEN {int(a)} AND {int(b)}" for a, b in skip])


def traffic_table(name: str) -> str:
    return qident("traffic_" + check_name(name, "traffic name"))


class Store:
    """The workbench's DuckDB database. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path = ":memory:", read_only: bool = False, wait_s: float = 10.0):
        self.path = str(path)
        self._local = threading.local()
        self.con = self._connect(read_only, wait_s)
        self.con.execute("SET TimeZone = 'UTC'")
        # a bounded buffer pool keeps long replays and big evaluations in constant memory (DuckDB spills)
        self.con.execute("SET memory_limit = ?", [os.environ.get("WORKBENCH_DUCKDB_MEMORY_LIMIT", "512MB")])
        # checkpoint in large steps: frequent checkpoints during a replay cost up to 3x its write rate
        self.con.execute("SET checkpoint_threshold = ?", [os.environ.get("WORKBENCH_DUCKDB_CHECKPOINT", "1GB")])
        if not read_only:
            for ddl in SCHEMA:
                self.con.execute(ddl)

    def _connect(self, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return duckdb.connect(self.path, read_only=read_only)
            except duckdb.IOException as e:
                if "lock" not in str(e).lower():
                    raise WorkbenchError(f"cannot open database {self.path}: {e}") from None
                if time.monotonic() >= deadline:
                    raise WorkbenchError(
                        f"database {self.path} is locked by another process; waited {wait_s:.0f}s "
                        "(DuckDB allows one writing process per file)") from None
                time.sleep(0.2)

    # -- connection handling -------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for the calling thread (DuckDB connections are not shared across threads)."""
        if threading.current_thread() is threading.main_thread():
            return self.con
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self.con.cursor()
        return cur

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _rows(self, sql: str, params: list | tuple = ()) -> list[dict[str, Any]]:
        cur = self.cursor().execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    # -- traffic -------------------------------------------------------------------------------
    def traffic_info(self, name: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM traffic_sets WHERE name = ?", [check_name(name, "traffic name")])
        if not rows:
            return None
        info = rows[0]
        info["columns"] = json.loads(info["columns"])
        return info

    def require_traffic(self, name: str) -> dict[str, Any]:
        info = self.traffic_info(name)
        if info is None:
            known = ", ".join(r["name"] for r in self.list_traffic()) or "none"
            raise WorkbenchError(f"unknown traffic {name!r} (known: {known})")
        return info

    def list_traffic(self) -> list[dict[str, Any]]:
        return self._rows("SELECT name, rows, quarantined, fingerprint, updated_at FROM traffic_sets ORDER BY name")

    def append_arrow(self, cur, table_sql: str, data: pa.Table) -> None:
        """Append an Arrow table to ``table_sql`` (an already-quoted table name), columns by name."""
        cur.register("_wb_append", data)
        cols = ", ".join(qident(c) for c in data.column_names)
        cur.execute(f"INSERT INTO {table_sql} ({cols}) SELECT {cols} FROM _wb_append")
        cur.unregister("_wb_append")

    def upsert_traffic_set(self, cur, name: str, *, id_col, time_col, entity_col, columns: list[str],
                           fingerprint: str, added_rows: int, added_quarantined: int) -> None:
        now = utcnow()
        existing = cur.execute("SELECT rows FROM traffic_sets WHERE name = ?", [name]).fetchall()
        if not existing:
            cur.execute(
                "INSERT INTO traffic_sets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [name, "traffic_" + name, id_col, time_col, entity_col, json.dumps(columns), fingerprint,
                 added_rows, added_quarantined, now, now])
        else:
            cur.execute(
                "UPDATE traffic_sets SET fingerprint = ?, rows = rows + ?, quarantined = quarantined + ?, "
                "updated_at = ? WHERE name = ?", [fingerprint, added_rows, added_quarantined, now, name])

    def record_ingest(self, cur, *, ingest_id, traffic, kind, source, file_sha256, rows_read, rows_ingested,
                      rows_quarantined) -> None:
        cur.execute("INSERT INTO ingests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [ingest_id, traffic, kind, source, file_sha256, rows_read, rows_ingested, rows_quarantined,
                     utcnow()])

    def quarantine_summary(self, traffic: str) -> dict[str, int]:
        rows = self.cursor().execute(
            "SELECT reason, count(*) FROM quarantine WHERE traffic = ? GROUP BY reason ORDER BY 2 DESC",
            [traffic]).fetchall()
        return {r: int(n) for r, n in rows}

    def traffic_count(self, name: str) -> int:
        return int(self.cursor().execute(f"SELECT count(*) FROM {traffic_table(name)}").fetchall()[0][0])

    def traffic_batches(self, name: str, columns: list[str], batch_size: int,
                        skip: list[tuple[int, int]] = ()) -> pa.RecordBatchReader:
        """Stream ``columns`` of a traffic set in ingest order, leaving out the ``_row`` ranges in ``skip``.

        Relies on DuckDB's ``preserve_insertion_order`` (on by default; ingest inserts in ``_row`` order)
        instead of an ORDER BY, which would cost a full sort; the replay checks the order as it reads.
        """
        cols = ", ".join(["_row", "request_id"] + [qident(c) for c in columns if c not in ("_row", "request_id")])
        cur = self.con.cursor()
        return cur.sql(f"SELECT {cols} FROM {traffic_table(name)} WHERE {_skip_sql(skip)}").to_arrow_reader(batch_size)

    def export_traffic_parquet(self, name: str, columns: list[str], skip: list[tuple[int, int]], path: Path,
                               row_group_rows: int) -> None:
        """Write ``_row``, ``request_id`` and ``columns`` of rows outside ``skip`` to one Parquet file, in order."""
        cols = ", ".join(["_row", "request_id"] + [qident(c) for c in columns])
        target = "'" + str(path).replace("'", "''") + "'"
        self.cursor().execute(
            f"COPY (SELECT {cols} FROM {traffic_table(name)} WHERE {_skip_sql(skip)} ORDER BY _row) "
            f"TO {target} (FORMAT parquet, ROW_GROUP_SIZE {int(row_group_rows)})")

    # -- labels --------------------------------------------------------------------------------
    def upsert_labels(self, cur, traffic: str, data: pa.Table) -> None:
        """Insert labels (traffic, request_id, label, label_time); a later label for an id replaces it."""
        cur.register("_wb_labels", data)
        cur.execute("""INSERT OR REPLACE INTO labels
                       SELECT ?, request_id, label, label_time FROM _wb_labels""", [traffic])
        cur.unregister("_wb_labels")

    def count_unmatched_labels(self, cur, traffic: str, ids: pa.Array) -> int:
        cur.register("_wb_ids", pa.table({"request_id": ids}))
        n = cur.execute(
            f"SELECT count(*) FROM _wb_ids i ANTI JOIN {traffic_table(traffic)} t USING (request_id)").fetchall()[0][0]
        cur.unregister("_wb_ids")
        return int(n)

    # -- runs ----------------------------------------------------------------------------------
    _RUNS = """SELECT r.*, coalesce(b.rows, 0) AS rows_done FROM runs r
               LEFT JOIN (SELECT run_id, sum(rows) AS rows FROM run_batches GROUP BY run_id) b USING (run_id)"""

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """A run with its model refs, metadata and ``rows_done`` (the rows of its committed batches)."""
        rows = self._rows(self._RUNS + " WHERE r.run_id = ?", [run_id])
        if not rows:
            return None
        run = rows[0]
        for k in ("baseline", "candidate", "meta"):
            run[k] = json.loads(run[k]) if run[k] else {}
        return run

    def require_run(self, run_id: str) -> dict[str, Any]:
        run = self.get_run(run_id)
        if run is None:
            raise WorkbenchError(f"unknown run {run_id!r}")
        return run

    def list_runs(self) -> list[dict[str, Any]]:
        return self._rows("SELECT run_id, traffic, status, rows_total, rows_done, device, mode, started_at, "
                          f"finished_at FROM ({self._RUNS}) ORDER BY started_at DESC")

    def create_run(self, *, run_id, traffic, baseline: dict, candidate: dict, rows_total, batch_size, device,
                   mode, meta: dict) -> None:
        self.cursor().execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, NULL)",
            [run_id, traffic, json.dumps(baseline), json.dumps(candidate), rows_total, batch_size, device, mode,
             json.dumps(meta), utcnow()])

    def committed_ranges(self, run_id: str) -> list[tuple[int, int]]:
        """The traffic ``_row`` ranges a run has committed, merged; every row in them is scored exactly once."""
        rows = self.cursor().execute("SELECT first_row, first_row + span - 1 FROM run_batches WHERE run_id = ? "
                                     "ORDER BY first_row", [run_id]).fetchall()
        merged: list[tuple[int, int]] = []
        for a, b in rows:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((int(a), int(b)))
        return merged

    def next_batch_no(self, run_id: str) -> int:
        r = self.cursor().execute("SELECT coalesce(max(batch_no) + 1, 0) FROM run_batches WHERE run_id = ?",
                                  [run_id]).fetchall()[0]
        return int(r[0])

    def commit_batch(self, run_id: str, batch_no: int, first_row: int, last_row: int, rows: int, seconds: float,
                     paired: pa.Table) -> None:
        """Store one batch's paired results and mark the batch committed, atomically."""
        with self.transaction() as cur:
            cur.register("_wb_paired", paired)
            cols = ", ".join(qident(c) for c in paired.column_names)
            cur.execute(f"INSERT INTO predictions (run_id, {cols}) SELECT ?, {cols} FROM _wb_paired", [run_id])
            cur.unregister("_wb_paired")
            cur.execute("INSERT INTO run_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [run_id, batch_no, first_row, last_row - first_row + 1, rows, seconds, utcnow()])

    def finish_run(self, run_id: str) -> None:
        """Mark a run finished and checkpoint, so its results are in the database file, not only the WAL."""
        self.cursor().execute("UPDATE runs SET status = 'finished', finished_at = ? WHERE run_id = ?",
                              [utcnow(), run_id])
        if self.path != ":memory:":
            self.cursor().execute("CHECKPOINT")

    def run_error_counts(self, run_id: str) -> dict[str, int]:
        b, c = self.cursor().execute("SELECT count(baseline_error), count(candidate_error) FROM predictions "
                                     "WHERE run_id = ?", [run_id]).fetchall()[0]
        return {"baseline": int(b), "candidate": int(c)}

    def paired_labeled(self, run_id: str) -> pa.Table:
        """One row per labelled request of a run: label and each model's score, class and error."""
        run = self.require_run(run_id)
        return self.cursor().sql(
            """SELECT p.request_id, l.label, p.baseline_score, p.baseline_class, p.baseline_error,
                      p.candidate_score, p.candidate_class, p.candidate_error
               FROM predictions p JOIN labels l ON l.traffic = ? AND l.request_id = p.request_id
               WHERE p.run_id = ? ORDER BY p.request_id""", params=[run["traffic"], run_id]).to_arrow_table()

    def save_evaluation(self, run_id: str, params: dict, result: dict) -> None:
        self.cursor().execute("INSERT INTO evaluations VALUES (?, ?, ?, ?)",
                              [run_id, utcnow(), json.dumps(params), json.dumps(result)])

    def latest_evaluation(self, run_id: str) -> dict[str, Any] | None:
        rows = self.cursor().execute("SELECT result FROM evaluations WHERE run_id = ? ORDER BY created_at DESC LIMIT 1",
                                     [run_id]).fetchall()
        return json.loads(rows[0][0]) if rows else None

    # -- decisions, canary weight and jobs (policy / signing / canary / service) -------------------
    def save_decision(self, cur, *, decision_id: str, model: str, kind: str, run_id: str | None, verdict: str,
                      weight_before: int, weight_after: int, record_text: str, record_hash: str, signature: str,
                      created_at: datetime) -> None:
        """Store a signed record (its canonical text, byte for byte); a known decision id is left as is."""
        cur.execute("INSERT INTO decisions (decision_id, model, kind, run_id, verdict, weight_before, weight_after, "
                    "record, record_hash, signature, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (decision_id) DO NOTHING",
                    [decision_id, model, kind, run_id, verdict, weight_before, weight_after, record_text,
                     record_hash, signature, created_at])

    def get_decision(self, decision_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            """SELECT d.*, c.sequence AS applied_sequence, c.applied_at FROM decisions d
               LEFT JOIN canary_chain c USING (decision_id) WHERE d.decision_id = ?""", [decision_id])
        return rows[0] if rows else None

    def list_decisions(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self._rows(
            """SELECT d.decision_id, d.model, d.kind, d.run_id, d.verdict, d.weight_before, d.weight_after,
                      d.created_at, c.sequence AS applied_sequence, d.mlflow_run_id, d.pending_sync
               FROM decisions d LEFT JOIN canary_chain c USING (decision_id)
               WHERE ? IS NULL OR d.model = ? ORDER BY d.created_at DESC LIMIT ?""", [model, model, limit])

    def chain(self, model: str) -> list[dict[str, Any]]:
        """The applied records of ``model`` in chain order, with their stored text and signature."""
        return self._rows(
            """SELECT c.sequence, c.decision_id, c.record_hash AS chain_hash, c.applied_at, d.record,
                      d.record_hash, d.signature
               FROM canary_chain c LEFT JOIN decisions d USING (decision_id)
               WHERE c.model = ? ORDER BY c.sequence""", [model])

    def chain_head(self, model: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT sequence, decision_id, record_hash FROM canary_chain WHERE model = ? "
                          "ORDER BY sequence DESC LIMIT 1", [model])
        return rows[0] if rows else None

    def canary_state(self, model: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM canary_state WHERE model = ?", [model])
        return rows[0] if rows else None

    def append_chain(self, cur, *, model: str, sequence: int, decision_id: str, record_hash: str,
                     baseline_version: str | None, candidate_version: str | None, weight: int,
                     killed: bool) -> None:
        """Link an applied record to its model's chain and move the model's canary state (in ``cur``'s transaction)."""
        now = utcnow()
        cur.execute("INSERT INTO canary_chain VALUES (?, ?, ?, ?, ?)", [model, sequence, decision_id, record_hash, now])
        cur.execute("""INSERT INTO canary_state VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model) DO UPDATE SET
                       baseline_version = excluded.baseline_version, candidate_version = excluded.candidate_version,
                       weight = excluded.weight, decision_id = excluded.decision_id,
                       record_hash = excluded.record_hash, killed = excluded.killed,
                       updated_at = excluded.updated_at""",
                    [model, baseline_version, candidate_version, weight, decision_id, record_hash, killed, now])
        cur.execute("UPDATE decisions SET pending_sync = TRUE WHERE decision_id = ?", [decision_id])

    def mark_synced(self, decision_id: str, mlflow_run_id: str | None) -> None:
        self.cursor().execute("UPDATE decisions SET pending_sync = FALSE, mlflow_run_id = ?, sync_error = NULL "
                              "WHERE decision_id = ?", [mlflow_run_id, decision_id])

    def mark_sync_failed(self, decision_id: str, error: str) -> None:
        self.cursor().execute("UPDATE decisions SET pending_sync = TRUE, sync_error = ? WHERE decision_id = ?",
                              [error[:2000], decision_id])

    def pending_sync(self) -> list[dict[str, Any]]:
        return self._rows("SELECT decision_id, model, created_at, sync_error FROM decisions "
                          "WHERE pending_sync ORDER BY created_at")

    def enqueue_job(self, *, job_id: str, kind: str, delivery_id: str | None, event: str | None,
                    params: dict) -> tuple[dict[str, Any], bool]:
        """Queue a job; a delivery id seen before returns the existing job and False (idempotent)."""
        cur = self.cursor()
        try:
            cur.execute("INSERT INTO jobs (job_id, kind, delivery_id, event, params, status, created_at) "
                        "VALUES (?, ?, ?, ?, ?, 'queued', ?) ON CONFLICT DO NOTHING",
                        [job_id, kind, delivery_id, event, json.dumps(params), utcnow()])
        except (duckdb.ConstraintException, duckdb.TransactionException):
            pass  # a concurrent insert of the same delivery won: it is read back below
        stored = job_id
        if delivery_id is not None:
            stored = cur.execute("SELECT job_id FROM jobs WHERE delivery_id = ?", [delivery_id]).fetchall()[0][0]
        return self.get_job(stored), stored == job_id

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM jobs WHERE job_id = ?", [job_id])
        if not rows:
            return None
        job = rows[0]
        job["params"] = json.loads(job["params"])
        job["result"] = json.loads(job["result"]) if job["result"] else None
        return job

    def list_jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM jobs WHERE ? IS NULL OR status = ? ORDER BY created_at, job_id",
                          [status, status])
        for job in rows:
            job["params"] = json.loads(job["params"])
            job["result"] = json.loads(job["result"]) if job["result"] else None
        return rows
