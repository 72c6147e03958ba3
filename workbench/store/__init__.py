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

from workbench import WorkbenchError

DEFAULT_MEMORY_LIMIT = "512MB"   # DuckDB buffer pool (override: $WORKBENCH_DUCKDB_MEMORY_LIMIT); it spills beyond
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
    # one label per (traffic, request_id), kept by upsert_labels: no primary key, whose in-memory index
    # would not fit DuckDB's memory limit at 10M labels
    """CREATE TABLE IF NOT EXISTS labels (
        traffic VARCHAR NOT NULL, request_id VARCHAR NOT NULL, label INTEGER NOT NULL, label_time TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY, traffic VARCHAR NOT NULL, baseline JSON NOT NULL, candidate JSON NOT NULL,
        status VARCHAR NOT NULL, rows_total BIGINT, batch_size INTEGER, device VARCHAR,
        mode VARCHAR, meta JSON, started_at TIMESTAMP, finished_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS run_batches (
        run_id VARCHAR NOT NULL, batch_no INTEGER NOT NULL, first_row BIGINT NOT NULL, span INTEGER NOT NULL,
        rows INTEGER NOT NULL, seconds DOUBLE, committed_at TIMESTAMP, PRIMARY KEY (run_id, batch_no))""",
    # paired results: one row per request, both models side by side; ``_row`` is the request's row in its
    # traffic table (join it for request_id and features: a number is 3x cheaper to write than the id)
    """CREATE TABLE IF NOT EXISTS predictions (
        run_id VARCHAR NOT NULL, _row BIGINT NOT NULL,
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
    # drift (issue 5): reference sketches (one row per reference and column, value counts when lossless),
    # stored scores of references that a run did not replay, and the reports
    """CREATE TABLE IF NOT EXISTS drift_sketches (
        key VARCHAR NOT NULL, column_name VARCHAR NOT NULL, sketch JSON NOT NULL, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (key, column_name))""",
    """CREATE TABLE IF NOT EXISTS drift_sketch_values (
        key VARCHAR NOT NULL, column_name VARCHAR NOT NULL, num_value DOUBLE, str_value VARCHAR, n BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS drift_ref_scores (
        key VARCHAR NOT NULL, role VARCHAR NOT NULL, _row BIGINT NOT NULL, score DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS drift_reports (
        run_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, params JSON, result JSON NOT NULL)""",
    # scheduled jobs (issue 9): the jobs table doubles as the job history (spec, trigger, current stage, the
    # process that runs it); job_stages keeps each stage's state so a rerun skips finished stages
    "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS spec VARCHAR",
    "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS triggered_by VARCHAR",
    "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS stage VARCHAR",
    "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS pid INTEGER",
    "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS host VARCHAR",
    """CREATE TABLE IF NOT EXISTS job_stages (
        job_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, status VARCHAR NOT NULL, attempts INTEGER NOT NULL,
        started_at TIMESTAMP, finished_at TIMESTAMP, seconds DOUBLE, result JSON, error VARCHAR,
        PRIMARY KEY (job_id, stage))""",
]


class DatabaseLocked(WorkbenchError):
    """Another process holds the database file's write lock (DuckDB allows one writing process per file)."""


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


def sql_literal(value: str) -> str:
    """A SQL string literal (for statements that cannot take parameters, such as :meth:`ArrowView.execute`)."""
    return "'" + value.replace("'", "''") + "'"


class ArrowView:
    """An Arrow table that statements on a cursor see as table ``name``, for use inside long transactions.

    ``cursor.register`` would keep every table registered in a transaction alive until the transaction
    ends: an ingest staging 10M rows batch by batch held all of them (1.2 GB) until its commit. A
    relation's ``query`` binds the name for one statement only. Statements take no parameters here.
    """

    def __init__(self, cur: duckdb.DuckDBPyConnection, name: str, data: pa.Table):
        self.name = name
        self._rel = cur.from_arrow(data)

    def execute(self, sql: str) -> duckdb.DuckDBPyRelation | None:
        """Run ``sql`` (it may reference ``name``); a query's relation, or None for other statements."""
        return self._rel.query(self.name, sql)


class Store:
    """The workbench's DuckDB database. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path = ":memory:", read_only: bool = False, wait_s: float | None = None):
        """``wait_s``: how long to wait for another process's lock on the file (default
        ``$WORKBENCH_DB_WAIT_S`` or 10 s), then fail with a clear error."""
        self.path = str(path)
        self._local = threading.local()
        self.con = self._connect(read_only, float(os.environ.get("WORKBENCH_DB_WAIT_S", "10")) if wait_s is None
                                 else wait_s)
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")  # DuckDB's bar would print into logs and pipes
        # a bounded buffer pool keeps long replays and big evaluations in constant memory (DuckDB spills)
        # (kept as configured, not as DuckDB prints them back: "488.2 MiB" would be set back as 488.1 MiB)
        self._limits = {"memory_limit": os.environ.get("WORKBENCH_DUCKDB_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT),
                        "threads": int(os.environ.get("WORKBENCH_DUCKDB_THREADS") or 0) or None}   # None: per core
        for k, v in self._limits.items():
            if v is not None:
                self.con.execute(f"SET {k} = ?", [v])
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
                    raise DatabaseLocked(
                        f"database {self.path} is locked by another process; waited {wait_s:g} s "
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
        cols = ", ".join(["_row"] + [qident(c) for c in columns if c != "_row"])
        cur = self.con.cursor()
        return cur.sql(f"SELECT {cols} FROM {traffic_table(name)} WHERE {_skip_sql(skip)}").to_arrow_reader(batch_size)

    def export_traffic_parquet(self, name: str, columns: list[str], skip: list[tuple[int, int]], path: Path,
                               row_group_rows: int) -> None:
        """Write ``_row`` and ``columns`` of rows outside ``skip`` to one Parquet file, in order."""
        cols = ", ".join(["_row"] + [qident(c) for c in columns])
        target = "'" + str(path).replace("'", "''") + "'"
        self.cursor().execute(
            f"COPY (SELECT {cols} FROM {traffic_table(name)} WHERE {_skip_sql(skip)} ORDER BY _row) "
            f"TO {target} (FORMAT parquet, ROW_GROUP_SIZE {int(row_group_rows)})")

    # -- labels --------------------------------------------------------------------------------
    def upsert_labels(self, cur, traffic: str, data: pa.Table) -> None:
        """Insert labels (traffic, request_id, label, label_time); a later label for an id replaces it."""
        view = ArrowView(cur, "_wb_labels", data)
        view.execute(f"DELETE FROM labels WHERE traffic = {sql_literal(traffic)} "
                     "AND request_id IN (SELECT request_id FROM _wb_labels)")
        view.execute(f"INSERT INTO labels SELECT {sql_literal(traffic)}, request_id, label, label_time FROM _wb_labels")

    def count_unmatched_labels(self, cur, traffic: str, ids: pa.Array) -> int:
        view = ArrowView(cur, "_wb_ids", pa.table({"request_id": ids}))
        return int(view.execute(f"SELECT count(*) FROM _wb_ids i ANTI JOIN {traffic_table(traffic)} t "
                                "USING (request_id)").fetchall()[0][0])

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
        self.checkpoint()

    def checkpoint(self) -> None:
        """Write the WAL into the database file (the threshold is large, so big loads end with this).

        Best effort: while another write transaction of this process is active, DuckDB refuses, and the
        data stays safe in the WAL until a later checkpoint.
        """
        if self.path == ":memory:":
            return
        try:
            self.cursor().execute("CHECKPOINT")
        except duckdb.TransactionException:
            pass

    def run_error_counts(self, run_id: str) -> dict[str, int]:
        b, c = self.cursor().execute("SELECT count(baseline_error), count(candidate_error) FROM predictions "
                                     "WHERE run_id = ?", [run_id]).fetchall()[0]
        return {"baseline": int(b), "candidate": int(c)}

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
    # -- drift (issue 5): row sets, reference sketches, drift statistics in SQL, reports ---------------
    # A RowSet (workbench.drift.sketch) names the rows drift reads: a traffic set (optionally only the rows a run
    # replayed, within ranges of (event_time, _row)) or a stored reference table; with ``role`` set it names
    # those rows' scores by that model. A ColumnSource names one column of a RowSet (raw rows) or the stored
    # value counts of a lossless sketch; both are read as a weighted relation (v, w).
    def _drift_from(self, rs, joins: str = "", join_params: list | None = None) -> tuple[str, list]:
        """``FROM ... WHERE ...`` over a RowSet (alias ``t``; with a role, its scores as ``s.score``), with
        optional extra ``joins`` (and their parameters) placed before the conditions."""
        params: list = []
        if rs.kind == "table":
            src = qident(check_name(rs.source, "table name"))
        else:
            src = traffic_table(rs.source)
        sql = f"FROM {src} t"
        if rs.role is not None:
            if rs.run_id is not None:
                if rs.role not in ("baseline", "candidate"):
                    raise WorkbenchError(f"unknown model role {rs.role!r}")
                sql += (f" JOIN (SELECT _row, {rs.role}_score AS score FROM predictions WHERE run_id = ? "
                        f"AND {rs.role}_error IS NULL) s ON s._row = t._row")
                params += [rs.run_id]
            else:
                sql += (" JOIN (SELECT _row, score FROM drift_ref_scores WHERE key = ? AND role = ? "
                        "AND score IS NOT NULL) s ON s._row = t._row")
                params += [rs.score_key, rs.role]
        sql += joins
        params += join_params or []
        conds: list[str] = []
        if rs.max_row is not None:
            conds.append("t._row <= ?")
            params.append(rs.max_row)
        ors = []
        for lo, hi in rs.ranges:
            parts = []
            if lo is not None:
                parts.append("(t.event_time > ? OR (t.event_time = ? AND t._row > ?))")
                params += [lo[0], lo[0], lo[1]]
            if hi is not None:
                parts.append("(t.event_time < ? OR (t.event_time = ? AND t._row <= ?))")
                params += [hi[0], hi[0], hi[1]]
            ors.append("(" + (" AND ".join(parts) or "TRUE") + ")")
        if ors:
            conds.append("(" + " OR ".join(ors) + ")")
        sql += " WHERE " + (" AND ".join(conds) or "TRUE")
        return sql, params

    def _drift_col(self, rs, column: str) -> str:
        return "s.score" if rs.role is not None and column == "score" else "t." + qident(column)

    def _drift_weighted(self, src) -> tuple[str, list]:
        """A relation ``(v, w)`` of the finite, non-null values of a ColumnSource with their weights."""
        if src.key is not None:
            col = "num_value" if src.domain == "num" else "str_value"
            return (f"SELECT {col} AS v, n AS w FROM drift_sketch_values WHERE key = ? AND column_name = ?",
                    [src.key, src.column])
        frm, params = self._drift_from(src.rows)
        if src.domain == "num":
            v = f"CAST({self._drift_col(src.rows, src.column)} AS DOUBLE)"
            return f"SELECT {v} AS v, 1 AS w {frm} AND isfinite({v})", params
        v = f"CAST({self._drift_col(src.rows, src.column)} AS VARCHAR)"
        return f"SELECT {v} AS v, 1 AS w {frm} AND {v} IS NOT NULL", params

    def drift_column_types(self, rs, columns: list[str]) -> dict[str, str]:
        """DuckDB type of each column of a RowSet."""
        frm, params = self._drift_from(rs)
        cols = ", ".join(f"{self._drift_col(rs, c)} AS {qident(c)}" for c in columns)
        rows = self.cursor().execute(f"DESCRIBE SELECT {cols} {frm}", params).fetchall()
        return {r[0]: r[1] for r in rows}

    def drift_table_columns(self, name: str) -> dict[str, str] | None:
        """Column types of a stored reference table, or None when it does not exist."""
        rows = self.cursor().execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position", [check_name(name, "table name")]).fetchall()
        return {c: t for c, t in rows} or None

    def drift_import_table(self, name: str, data: pa.Table) -> None:
        """Store a reference dataset as table ``name`` with a ``_row`` number (replaces an older copy)."""
        with self.transaction() as cur:
            cur.register("_wb_ref", data)
            cur.execute(f"CREATE OR REPLACE TABLE {qident(check_name(name, 'table name'))} AS "
                        "SELECT (row_number() OVER () - 1) AS _row, * FROM _wb_ref")
            cur.unregister("_wb_ref")

    def drift_profile(self, rs, domains: dict[str, str], bounds: dict[str, tuple[float, float]] | None = None
                      ) -> tuple[int, dict[str, dict]]:
        """One pass over a RowSet: rows, and per column the finite count, missing (null or NaN), non-finite,
        min, max, mean, population std, approximate distinct count and (with ``bounds``) the count outside.

        Non-finite values become NULL in a subquery first: aggregates with FILTER clauses cost ~10x more.
        """
        bounds = bounds or {}
        frm, params = self._drift_from(rs)
        inner, sel, bparams = [], ["count(*)"], []
        for i, (c, dom) in enumerate(domains.items()):
            x = self._drift_col(rs, c)
            if dom == "num":
                inner += [f"CAST({x} AS DOUBLE) AS r{i}",
                          f"CASE WHEN isfinite(CAST({x} AS DOUBLE)) THEN CAST({x} AS DOUBLE) END AS f{i}"]
                oor = "NULL"
                if c in bounds:
                    oor = f"sum(CASE WHEN f{i} < ? OR f{i} > ? THEN 1 ELSE 0 END)"
                    bparams += [float(bounds[c][0]), float(bounds[c][1])]
                sel += [f"count(f{i})", f"count(*) - count(f{i}) - sum(CASE WHEN isinf(r{i}) THEN 1 ELSE 0 END)",
                        f"sum(CASE WHEN isinf(r{i}) THEN 1 ELSE 0 END)", f"min(f{i})", f"max(f{i})", f"avg(f{i})",
                        f"stddev_pop(f{i})", f"approx_count_distinct(f{i})", oor]
            else:
                inner.append(f"{x} AS f{i}")
                sel += [f"count(f{i})", f"count(*) - count(f{i})", "0", "NULL", "NULL", "NULL", "NULL",
                        f"approx_count_distinct(f{i})", "NULL"]
        row = self.cursor().execute(f"SELECT {', '.join(sel)} FROM (SELECT {', '.join(inner) or '1'} {frm})",
                                    bparams + params).fetchall()[0]
        keys = ("n", "missing", "nonfinite", "min", "max", "mean", "std", "approx_unique", "out_of_range")
        return int(row[0]), {c: dict(zip(keys, row[1 + 9 * i: 10 + 9 * i])) for i, c in enumerate(domains)}

    def drift_approx_quantiles(self, rs, columns: list[str], probs: list[float]) -> dict[str, list[float]]:
        """Approximate quantiles (DuckDB's t-digest ``approx_quantile``) of the finite values of numeric columns,
        in one pass (an exact ``quantile_cont`` sorts every column)."""
        if not columns:
            return {}
        frm, params = self._drift_from(rs)
        inner = [f"CASE WHEN isfinite(CAST({self._drift_col(rs, c)} AS DOUBLE)) "
                 f"THEN CAST({self._drift_col(rs, c)} AS DOUBLE) END AS f{i}" for i, c in enumerate(columns)]
        sel = [f"approx_quantile(f{i}, CAST(? AS FLOAT[]))" for i in range(len(columns))]
        row = self.cursor().execute(f"SELECT {', '.join(sel)} FROM (SELECT {', '.join(inner)} {frm})",
                                    [list(probs)] * len(columns) + params).fetchall()[0]
        return dict(zip(columns, row))

    def drift_sketch_load(self, key: str) -> dict[str, dict]:
        rows = self.cursor().execute("SELECT column_name, sketch FROM drift_sketches WHERE key = ?", [key]).fetchall()
        return {c: json.loads(s) for c, s in rows}

    def drift_store_values(self, key: str, column: str, values, cap: int) -> int | None:
        """Store the value counts of a raw ColumnSource under sketch ``key``; kept (and their number returned)
        only when there are at most ``cap`` distinct values, else None."""
        rel, params = self._drift_weighted(values)
        num, txt = ("v", "NULL") if values.domain == "num" else ("NULL", "v")
        with self.transaction() as cur:
            cur.execute("DELETE FROM drift_sketch_values WHERE key = ? AND column_name = ?", [key, column])
            cur.execute(f"INSERT INTO drift_sketch_values SELECT ?, ?, {num}, {txt}, sum(w) FROM ({rel}) GROUP BY v",
                        [key, column] + params)
            n = int(cur.execute("SELECT count(*) FROM drift_sketch_values WHERE key = ? AND column_name = ?",
                                [key, column]).fetchall()[0][0])
            if n > cap:
                cur.execute("DELETE FROM drift_sketch_values WHERE key = ? AND column_name = ?", [key, column])
                return None
        return n

    def drift_sketch_save(self, key: str, column: str, sketch: dict) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM drift_sketches WHERE key = ? AND column_name = ?", [key, column])
            cur.execute("INSERT INTO drift_sketches VALUES (?, ?, ?, ?)", [key, column, json.dumps(sketch), utcnow()])

    def drift_counts(self, src) -> list[tuple[Any, int]]:
        """Value counts of a ColumnSource."""
        rel, params = self._drift_weighted(src)
        return [(v, int(n)) for v, n in
                self.cursor().execute(f"SELECT v, sum(w) FROM ({rel}) GROUP BY v", params).fetchall()]

    def drift_weights(self, src) -> tuple[list, list]:
        """(values, weights) of a ColumnSource, values sorted."""
        rel, params = self._drift_weighted(src)
        rows = self.cursor().execute(f"SELECT v, sum(w) FROM ({rel}) GROUP BY v ORDER BY v", params).fetchall()
        return [r[0] for r in rows], [int(r[1]) for r in rows]

    def drift_unseen(self, cur, key: str) -> list[tuple[Any, int]]:
        """Values of a ColumnSource (with counts, most frequent first) that the sketch ``key`` never saw."""
        rel, params = self._drift_weighted(cur)
        col = "num_value" if cur.domain == "num" else "str_value"
        return [(v, int(n)) for v, n in self.cursor().execute(
            f"""SELECT v, sum(w) FROM ({rel}) WHERE v NOT IN (SELECT {col} FROM drift_sketch_values
                WHERE key = ? AND column_name = ? AND {col} IS NOT NULL) GROUP BY v ORDER BY 2 DESC, 1""",
            params + [key, cur.column]).fetchall()]

    def drift_distinct_union(self, a, b) -> int:
        """Number of distinct values in two ColumnSources together."""
        ra, pa_ = self._drift_weighted(a)
        rb, pb = self._drift_weighted(b)
        return int(self.cursor().execute(f"SELECT count(*) FROM (SELECT v FROM ({ra}) UNION SELECT v FROM ({rb}))",
                                         pa_ + pb).fetchall()[0][0])

    def drift_ecdf(self, ref, cur, n_ref: int, n_cur: int) -> tuple[float, float, float]:
        """Exact distances between the empirical CDFs of two numeric ColumnSources, in one sort:
        (max |F_r - F_c|, integral |F_r - F_c| dx, integral (F_r - F_c)^2 dx)."""
        rr, pr = self._drift_weighted(ref)
        rc, pc = self._drift_weighted(cur)
        row = self.cursor().execute(
            f"""WITH u AS (SELECT v, w * ? AS w FROM ({rr}) UNION ALL SELECT v, -w * ? FROM ({rc})),
                s AS (SELECT v, sum(w) OVER o AS cw, lead(v) OVER o AS nv FROM u
                      WINDOW o AS (ORDER BY v ROWS UNBOUNDED PRECEDING)),
                d AS (SELECT cw / ? AS d, nv - v AS dx FROM s WHERE nv IS NULL OR nv <> v)
                SELECT max(abs(d)), sum(abs(d) * dx), sum(d * d * dx) FROM d""",
            [n_cur] + pr + [n_ref] + pc + [float(n_ref) * float(n_cur)]).fetchall()[0]
        return float(row[0]), float(row[1] or 0.0), float(row[2] or 0.0)

    def drift_histogram(self, src, edges: list[float]) -> list[int]:
        """Counts per bin with numpy's ``histogram`` semantics for the given increasing edges: bins
        ``[e_i, e_i+1)``, the last one closed, values outside ignored."""
        rel, params = self._drift_weighted(src)
        nb = len(edges) - 1
        guess = (f"least(greatest(CAST(floor((v - ?) / ? * {nb}) AS BIGINT), 0), {nb - 1})")
        rows = self.cursor().execute(
            f"""WITH g AS (SELECT v, w, {guess} AS i FROM ({rel}) WHERE v >= ? AND v <= ?),
                b AS (SELECT w, CASE WHEN v < list_extract(CAST(? AS DOUBLE[]), i + 1) THEN i - 1
                                     WHEN i < {nb - 1} AND v >= list_extract(CAST(? AS DOUBLE[]), i + 2) THEN i + 1
                                     ELSE i END AS i FROM g)
                SELECT i, sum(w) FROM b GROUP BY i""",
            [edges[0], edges[-1] - edges[0]] + params + [edges[0], edges[-1], edges, edges]).fetchall()
        out = [0] * nb
        for i, n in rows:
            out[int(i)] = int(n)
        return out

    def drift_rank_bound(self, traffic: str, max_row: int, k: int) -> tuple[datetime, int]:
        """(event_time, _row) of the k-th row (1-based) of a traffic set in event-time order, up to ``max_row``."""
        r = self.cursor().execute(f"SELECT event_time, _row FROM {traffic_table(traffic)} WHERE _row <= ? "
                                  "ORDER BY event_time, _row LIMIT 1 OFFSET ?", [max_row, k - 1]).fetchall()
        if not r:
            raise WorkbenchError(f"traffic {traffic!r} has fewer than {k} rows")
        return r[0][0], int(r[0][1])

    def drift_describe(self, rs) -> dict[str, Any]:
        """Rows of a RowSet and, for traffic, its first and last event time (``first_event``, ``last_event``)."""
        frm, params = self._drift_from(rs)
        if rs.kind == "table":
            return {"rows": int(self.cursor().execute(f"SELECT count(*) {frm}", params).fetchall()[0][0])}
        n, lo, hi = self.cursor().execute(f"SELECT count(*), min(t.event_time), max(t.event_time) {frm}",
                                          params).fetchall()[0]
        return {"rows": int(n), "first_event": lo, "last_event": hi}

    def drift_batches(self, rs, columns: list[str], batch_size: int) -> pa.RecordBatchReader:
        """Stream ``_row`` and ``columns`` of a RowSet in ``_row`` order."""
        frm, params = self._drift_from(rs)
        cols = ", ".join(["t._row"] + [f"t.{qident(c)}" for c in columns])
        return self.con.cursor().sql(f"SELECT {cols} {frm} ORDER BY t._row", params=params
                                     ).to_arrow_reader(batch_size)

    def drift_frame(self, rs, columns: list[str]) -> pa.Table:
        """``columns`` of a RowSet as one Arrow table (for reports that need the rows themselves)."""
        frm, params = self._drift_from(rs)
        cols = ", ".join(f"{self._drift_col(rs, c)} AS {qident(c)}" for c in columns)
        return self.cursor().sql(f"SELECT {cols} {frm} ORDER BY t._row", params=params).to_arrow_table()

    def drift_ref_scores_count(self, key: str, role: str) -> int:
        return int(self.cursor().execute("SELECT count(*) FROM drift_ref_scores WHERE key = ? AND role = ?",
                                         [key, role]).fetchall()[0][0])

    def drift_save_ref_scores(self, key: str, role: str, data: pa.Table) -> None:
        """Store a reference's scores by one model (``_row``, ``score``), replacing earlier ones."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM drift_ref_scores WHERE key = ? AND role = ?", [key, role])
            cur.register("_wb_scores", data)
            cur.execute("INSERT INTO drift_ref_scores SELECT ?, ?, _row, score FROM _wb_scores", [key, role])
            cur.unregister("_wb_scores")

    def drift_scored(self, rs, as_of: datetime | None = None) -> pa.Table:
        """Scored rows of a RowSet with a role, in event-time order: ``event_time``, ``score``, ``label`` (null
        when none exists) and ``label_known`` (the label had arrived by ``as_of``; always, without it)."""
        if rs.kind == "table":
            has_label = "label" in (self.drift_table_columns(rs.source) or {})
            frm, params = self._drift_from(rs)
            lab = "CAST(t.label AS INTEGER)" if has_label else "CAST(NULL AS INTEGER)"
            return self.cursor().sql(
                f"SELECT CAST(NULL AS TIMESTAMP) AS event_time, s.score, {lab} AS label, "
                f"{lab} IS NOT NULL AS label_known {frm} ORDER BY t._row", params=params).to_arrow_table()
        frm, params = self._drift_from(
            rs, " LEFT JOIN labels l ON l.traffic = ? AND l.request_id = t.request_id", [rs.source])
        return self.cursor().sql(
            f"""SELECT t.event_time, s.score, l.label,
                       l.label IS NOT NULL AND (CAST(? AS TIMESTAMP) IS NULL OR l.label_time IS NULL
                                                OR l.label_time <= CAST(? AS TIMESTAMP)) AS label_known
                {frm} ORDER BY t.event_time, t._row""", params=[as_of, as_of] + params).to_arrow_table()

    def drift_paired(self, rs, thresholds: dict[str, float]) -> dict[str, Any]:
        """Baseline against candidate on the same rows of a run: rows both scored, mean |score difference|,
        share of rows whose predicted classes differ."""
        frm, params = self._drift_from(
            rs, " JOIN predictions p ON p.run_id = ? AND p._row = t._row "
                "AND p.baseline_error IS NULL AND p.candidate_error IS NULL", [rs.run_id])
        row = self.cursor().execute(
            f"""SELECT count(*), avg(abs(p.baseline_score - p.candidate_score)),
                       avg(CASE WHEN (p.baseline_score >= ?) <> (p.candidate_score >= ?) THEN 1.0 ELSE 0.0 END)
                {frm}""",
            [thresholds["baseline"], thresholds["candidate"]] + params).fetchall()[0]
        return {"rows": int(row[0]), "mean_abs_score_diff": row[1], "class_disagreement": row[2]}

    def drift_quarantine_counts(self, traffic: str) -> dict[str, int]:
        """Quarantined rows of a traffic set per column whose value broke its type (``type:``, ``nonfinite:``)."""
        rows = self.cursor().execute(
            "SELECT split_part(reason, ':', 2), count(*) FROM quarantine WHERE traffic = ? AND kind = 'traffic' "
            "AND (reason LIKE 'type:%' OR reason LIKE 'nonfinite:%') GROUP BY 1", [traffic]).fetchall()
        return {c: int(n) for c, n in rows}

    def save_drift(self, run_id: str, params: dict, result: dict) -> None:
        self.cursor().execute("INSERT INTO drift_reports VALUES (?, ?, ?, ?)",
                              [run_id, utcnow(), json.dumps(params, default=str), json.dumps(result, default=str)])

    def latest_drift(self, run_id: str) -> dict[str, Any] | None:
        """The latest drift report of a run, as the dict ``workbench drift --json`` printed."""
        rows = self.cursor().execute(
            "SELECT result FROM drift_reports WHERE run_id = ? ORDER BY created_at DESC LIMIT 1", [run_id]).fetchall()
        return json.loads(rows[0][0]) if rows else None

    # -- evaluation (issue 4): labelled paired rows, latency samples, error counts --------------------
    EVALUATION_MEMORY_LIMIT = "768MB"

    @contextmanager
    def memory_limit(self, limit: str) -> Iterator[None]:
        """Cap DuckDB's memory for the block (larger joins spill to disk), then restore the setting."""
        with self.limits(memory=limit):
            yield

    def settings(self, *names: str) -> dict:
        """Current values of DuckDB settings, as DuckDB reports them."""
        cur = self.cursor()
        return {n: cur.execute("SELECT current_setting(?)", [n]).fetchall()[0][0] for n in names}

    @contextmanager
    def limits(self, memory: str | None = None, threads: int | None = None) -> Iterator[None]:
        """DuckDB's memory limit and thread count for the block (``None``: unchanged), then restored.

        Both are settings of the whole database instance: other cursors of this store see them too."""
        cur = self.cursor()
        wanted = {k: v for k, v in (("memory_limit", memory), ("threads", threads)) if v is not None}
        before = dict(self._limits)
        if before["threads"] is None:
            before["threads"] = self.settings("threads")["threads"]
        for k, v in wanted.items():
            cur.execute(f"SET {k} = ?", [v])
        self._limits = before | wanted
        try:
            yield
        finally:
            for k in wanted:
                cur.execute(f"SET {k} = ?", [before[k]])
            self._limits = before

    def evaluation_rows(self, run_id: str, *, segment: str | None = None, window: str | None = None) -> pa.Table:
        """One row per labelled request of a run, in no particular order: ``label``, ``baseline_score``
        and ``candidate_score`` (null where that model failed), plus ``segment`` (the traffic column
        ``segment`` as text) and ``window_start`` (the event time truncated to ``window``) on request."""
        run = self.require_run(run_id)
        info = self.require_traffic(run["traffic"])
        select = ["l.label",
                  "CASE WHEN p.baseline_error IS NULL THEN p.baseline_score END AS baseline_score",
                  "CASE WHEN p.candidate_error IS NULL THEN p.candidate_score END AS candidate_score"]
        params: list = []
        if segment is not None:
            column = "entity_key" if segment == info["entity_col"] else segment
            if column != "entity_key" and segment not in info["columns"]:
                known = ", ".join(sorted([*info["columns"], *([info["entity_col"]] if info["entity_col"] else [])]))
                raise WorkbenchError(f"traffic {run['traffic']!r} has no column {segment!r} to segment by "
                                     f"(columns: {known})")
            select.append(f"CAST(t.{qident(column)} AS VARCHAR) AS segment")
        if window is not None:
            select.append("date_trunc(?, t.event_time) AS window_start")
            params.append(window)
        sql = f"""SELECT {', '.join(select)}
                  FROM predictions p
                  JOIN {traffic_table(run['traffic'])} t USING (_row)
                  JOIN labels l ON l.traffic = ? AND l.request_id = t.request_id
                  WHERE p.run_id = ?"""
        with self.memory_limit(self.EVALUATION_MEMORY_LIMIT):
            return self.cursor().sql(sql, params=[*params, run["traffic"], run_id]).to_arrow_table()

    def latency_sample(self, run_id: str, role: str) -> pa.ChunkedArray:
        """Latencies (ms) of the rows ``role`` scored without error."""
        if role not in ("baseline", "candidate"):
            raise WorkbenchError(f"unknown model role {role!r}")
        return self.cursor().sql(
            f"SELECT {role}_latency_ms FROM predictions WHERE run_id = ? AND {role}_error IS NULL "
            f"AND {role}_latency_ms IS NOT NULL", params=[run_id]).to_arrow_table().column(0)

    def prediction_counts(self, run_id: str) -> dict[str, dict[str, int]]:
        """Rows replayed and rows failed per role: ``{role: {"rows", "errors"}}``."""
        n, b, c = self.cursor().execute("SELECT count(*), count(baseline_error), count(candidate_error) "
                                        "FROM predictions WHERE run_id = ?", [run_id]).fetchall()[0]
        if not n:
            return {}
        return {"baseline": {"rows": int(n), "errors": int(b)}, "candidate": {"rows": int(n), "errors": int(c)}}

    # -- scheduled jobs (issue 9): job history, stage state, and the snapshot the service's /metrics reads ---
    # A job row (table ``jobs``) is queued by the webhook endpoint or created by the runner; the runner marks
    # it running/finished/failed/skipped/interrupted and records its spec, trigger, current stage and process.
    def _job_rows(self, where: str, params: list, limit: int | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT * FROM jobs WHERE {where} ORDER BY coalesce(started_at, created_at) DESC, job_id DESC"
        rows = self._rows(sql + (" LIMIT ?" if limit else ""), params + ([limit] if limit else []))
        for job in rows:
            job["params"] = json.loads(job["params"])
            job["result"] = json.loads(job["result"]) if job["result"] else None
        return rows

    def job_begin(self, *, job_id: str, kind: str, spec: str, triggered_by: str, params: dict, pid: int,
                  host: str) -> None:
        """Mark a job running, creating its row when new (a queued or interrupted row is taken over)."""
        now = utcnow()
        with self.transaction() as cur:
            if cur.execute("SELECT count(*) FROM jobs WHERE job_id = ?", [job_id]).fetchall()[0][0]:
                cur.execute("""UPDATE jobs SET params = ?, status = 'running', started_at = coalesce(started_at, ?),
                               finished_at = NULL, error = NULL, spec = ?, triggered_by = coalesce(triggered_by, ?),
                               pid = ?, host = ? WHERE job_id = ?""",
                            [json.dumps(params, default=str), now, spec, triggered_by, pid, host, job_id])
            else:
                cur.execute("""INSERT INTO jobs (job_id, kind, params, status, created_at, started_at, spec,
                               triggered_by, pid, host) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)""",
                            [job_id, kind, json.dumps(params, default=str), now, now, spec, triggered_by, pid, host])

    def job_end(self, job_id: str, status: str, *, error: str | None = None, result: dict | None = None,
                spec: str | None = None) -> None:
        """Close a job: finished, failed (with the traceback), skipped (with the reason) or interrupted."""
        self.cursor().execute(
            "UPDATE jobs SET status = ?, finished_at = ?, error = ?, result = ?, spec = coalesce(spec, ?) "
            "WHERE job_id = ?",
            [status, utcnow(), error, json.dumps(result, default=str) if result is not None else None, spec, job_id])

    def mark_interrupted(self, spec: str) -> list[str]:
        """Running jobs of ``spec`` left behind by a process that died (the caller holds the spec's lock)."""
        rows = self.cursor().execute("UPDATE jobs SET status = 'interrupted' WHERE spec = ? AND status = 'running' "
                                     "RETURNING job_id", [spec]).fetchall()
        return [r[0] for r in rows]

    def latest_job(self, spec: str, statuses: tuple[str, ...]) -> dict[str, Any] | None:
        """The most recent job of ``spec`` in one of ``statuses``."""
        rows = self._job_rows("spec = ? AND list_contains(?, status)", [spec, list(statuses)], limit=1)
        return rows[0] if rows else None

    def jobs_for_candidate(self, spec: str, candidate_version: str) -> list[dict[str, Any]]:
        """Jobs of ``spec`` that evaluated (or are evaluating) ``candidate_version``."""
        return self._job_rows("spec = ? AND status IN ('running', 'finished') AND job_id IN (SELECT job_id FROM "
                              "job_stages WHERE stage = 'resolve' AND status = 'finished' AND "
                              "json_extract_string(result, '$.candidate.version') = ?)", [spec, candidate_version])

    def stage_begin(self, job_id: str, stage: str) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE jobs SET stage = ? WHERE job_id = ?", [stage, job_id])
            cur.execute("""INSERT INTO job_stages VALUES (?, ?, 'running', 1, ?, NULL, NULL, NULL, NULL)
                           ON CONFLICT (job_id, stage) DO UPDATE SET status = 'running', attempts = attempts + 1,
                           started_at = excluded.started_at, finished_at = NULL, error = NULL""",
                        [job_id, stage, utcnow()])

    def stage_end(self, job_id: str, stage: str, status: str, seconds: float, *, result: dict | None = None,
                  error: str | None = None) -> None:
        self.cursor().execute(
            "UPDATE job_stages SET status = ?, finished_at = ?, seconds = ?, result = ?, error = ? "
            "WHERE job_id = ? AND stage = ?",
            [status, utcnow(), seconds, json.dumps(result, default=str) if result is not None else None, error,
             job_id, stage])

    def job_stages(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Each stage of a job by name, in the order they first started."""
        rows = self._rows("SELECT * FROM job_stages WHERE job_id = ? ORDER BY started_at NULLS LAST", [job_id])
        out = {}
        for r in rows:
            r["result"] = json.loads(r["result"]) if r["result"] else None
            out[r.pop("stage")] = r
        return out

    def job_history(self, spec: str | None = None, status: str | None = None, limit: int = 100
                    ) -> list[dict[str, Any]]:
        """Jobs, newest first, each with its stages (``stages``: {stage: {status, attempts, seconds, ...}})."""
        jobs = self._job_rows("(? IS NULL OR spec = ?) AND (? IS NULL OR status = ?)",
                              [spec, spec, status, status], limit=limit)
        for job in jobs:
            job["stages"] = self.job_stages(job["job_id"])
        return jobs

    def metrics_snapshot(self) -> dict[str, list[tuple]]:
        """What /metrics exports, read in one go: jobs per spec and status, durations of finished jobs and
        stages, the last success per spec, the latest finished replay per model, canary weights and the
        latest verdict per model."""
        cur = self.cursor()
        q = {
            "jobs": """SELECT coalesce(spec, 'unassigned'), status, count(*) FROM jobs GROUP BY 1, 2""",
            "job_durations": """SELECT spec, count(*), sum(epoch(finished_at) - epoch(started_at)),
                                       arg_max(epoch(finished_at) - epoch(started_at), finished_at),
                                       max(epoch(finished_at))
                                FROM jobs WHERE status = 'finished' AND spec IS NOT NULL GROUP BY spec""",
            "stage_durations": """SELECT j.spec, s.stage, count(*), sum(s.seconds) FROM job_stages s
                                  JOIN jobs j USING (job_id) WHERE s.status = 'finished' AND j.spec IS NOT NULL
                                  GROUP BY 1, 2""",
            "replays": """SELECT model, rows, seconds FROM (
                              SELECT json_extract_string(r.candidate, '$.name') AS model,
                                     coalesce(b.rows, 0) AS rows, epoch(r.finished_at) - epoch(r.started_at) AS seconds,
                                     row_number() OVER (PARTITION BY json_extract_string(r.candidate, '$.name')
                                                        ORDER BY r.finished_at DESC) AS k
                              FROM runs r LEFT JOIN (SELECT run_id, sum(rows) AS rows FROM run_batches
                                                     GROUP BY run_id) b USING (run_id)
                              WHERE r.status = 'finished' AND json_extract_string(r.candidate, '$.name') IS NOT NULL)
                          WHERE k = 1""",
            "weights": "SELECT model, weight, killed FROM canary_state",
            "verdicts": """SELECT model, arg_max(verdict, created_at), max(epoch(created_at)) FROM decisions
                           GROUP BY model""",
        }
        return {k: cur.execute(sql).fetchall() for k, sql in q.items()}
    # -- the app (issue 8): small aggregates the Streamlit workbench charts ---------------------------------
    # Large runs are reduced here, in DuckDB, to at most a few thousand numbers before anything reaches the
    # browser: score histograms per label, confusion counts, latency histograms and percentiles, breakdowns
    # per segment or time window, and a LIMITed sample of the rows where the two models disagree.
    _APP_DISCRETE = {"VARCHAR", "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                     "UINTEGER", "UBIGINT"}

    def app_runs(self) -> list[dict[str, Any]]:
        """Every run with its models, ``rows_done`` and ``data_at``, when its traffic or labels last changed."""
        rows = self._rows(
            f"""SELECT r.run_id, r.traffic, r.status, r.rows_total, r.rows_done, r.device, r.mode, r.started_at,
                       r.finished_at, r.baseline, r.candidate, i.data_at
                FROM ({self._RUNS}) r
                LEFT JOIN (SELECT traffic, max(ingested_at) AS data_at FROM ingests GROUP BY traffic) i USING (traffic)
                ORDER BY r.started_at DESC""")
        for r in rows:
            r["baseline"], r["candidate"] = json.loads(r["baseline"]), json.loads(r["candidate"])
        return rows

    def app_canary_states(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM canary_state ORDER BY model")

    def app_decided_models(self) -> list[str]:
        return [r[0] for r in self.cursor().execute("SELECT DISTINCT model FROM decisions ORDER BY 1").fetchall()]

    def _app_run(self, run_id: str) -> dict[str, Any]:
        run = self.require_run(run_id)
        self.require_traffic(run["traffic"])
        return run

    def app_score_summary(self, run_id: str, score_bins: int, latency_bins_per_decade: int) -> dict[str, list]:
        """One pass over a run's paired rows (labels joined), grouped several ways at once:

        ``scores``: (role, label, bin, rows, sum of scores) with bin = floor(score * score_bins), scored rows;
        ``pairs``: (label, baseline class, candidate class, rows), label null for unlabelled rows;
        ``latency``: (role, bin, rows) with bin = floor(log10(ms) * latency_bins_per_decade), ms >= 1e-6.
        """
        run = self._app_run(run_id)
        nb, kl = int(score_bins), int(latency_bins_per_decade)
        rows = self.cursor().execute(
            f"""WITH p AS (
                    SELECT l.label, p.baseline_class AS bc, p.candidate_class AS cc,
                           p.baseline_score AS bs, p.candidate_score AS cs,
                           {self._app_bin("p.baseline_score", nb)} AS bb, {self._app_bin("p.candidate_score", nb)} AS cb,
                           {self._app_log_bin("p.baseline_latency_ms", kl)} AS bl,
                           {self._app_log_bin("p.candidate_latency_ms", kl)} AS cl
                    FROM predictions p JOIN {traffic_table(run["traffic"])} t USING (_row)
                    LEFT JOIN labels l ON l.traffic = ? AND l.request_id = t.request_id
                    WHERE p.run_id = ?)
                SELECT grouping(label, bb, cb, bc, cc, bl, cl) AS g, label, bb, cb, bc, cc, bl, cl, count(*) AS n,
                       sum(bs) AS sb, sum(cs) AS sc
                FROM p GROUP BY GROUPING SETS ((label, bb), (label, cb), (label, bc, cc), (bl), (cl))""",
            [run["traffic"], run_id]).fetchall()
        out: dict[str, list] = {"scores": [], "pairs": [], "latency": []}
        for g, label, bb, cb, bc, cc, bl, cl, n, sb, sc in rows:
            n = int(n)
            if g == 0b0011111 and bb is not None and label is not None:
                out["scores"].append(("baseline", int(label), int(bb), n, float(sb)))
            elif g == 0b0101111 and cb is not None and label is not None:
                out["scores"].append(("candidate", int(label), int(cb), n, float(sc)))
            elif g == 0b0110011:
                out["pairs"].append((None if label is None else int(label), bc, cc, n))
            elif g == 0b1111101 and bl is not None:
                out["latency"].append(("baseline", int(bl), n))
            elif g == 0b1111110 and cl is not None:
                out["latency"].append(("candidate", int(cl), n))
        return out

    @staticmethod
    def _app_bin(x: str, bins: int) -> str:
        """floor(x * bins) clamped to [0, bins - 1]; NULL stays NULL (least/greatest would skip it)."""
        return f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} >= 1 THEN {bins - 1} WHEN {x} < 0 THEN 0 " \
               f"ELSE CAST(floor({x} * {bins}) AS INTEGER) END"

    @staticmethod
    def _app_log_bin(x: str, per_decade: int) -> str:
        """floor(log10(x) * per_decade) for x >= 1e-6 ms (smaller values share the lowest bin); NULL stays NULL."""
        return f"CASE WHEN {x} IS NULL THEN NULL ELSE CAST(floor(log10(greatest({x}, 1e-6)) * {per_decade}) " \
               "AS INTEGER) END"

    def app_latency_quantiles(self, run_id: str, probs: list[float]) -> dict[str, list[float | None]]:
        """Exact latency percentiles (ms) of each model over a run's rows."""
        row = self.cursor().execute(
            "SELECT quantile_cont(baseline_latency_ms, CAST(? AS DOUBLE[])), "
            "quantile_cont(candidate_latency_ms, CAST(? AS DOUBLE[])) FROM predictions WHERE run_id = ?",
            [list(probs), list(probs), run_id]).fetchall()[0]
        return {"baseline": list(row[0] or [None] * len(probs)), "candidate": list(row[1] or [None] * len(probs))}

    _APP_SUMS = {
        "rows": "count(*)", "labelled": "count(l.label)", "positives": "sum(l.label)",
        "baseline_correct": "sum(CASE WHEN p.baseline_class = l.label THEN 1 ELSE 0 END)",
        "candidate_correct": "sum(CASE WHEN p.candidate_class = l.label THEN 1 ELSE 0 END)",
        "baseline_errors": "count(p.baseline_error)", "candidate_errors": "count(p.candidate_error)",
        "disagree": "sum(CASE WHEN p.baseline_class <> p.candidate_class THEN 1 ELSE 0 END)",
        "baseline_scored": "count(p.baseline_score)", "candidate_scored": "count(p.candidate_score)",
        "baseline_score_sum": "sum(p.baseline_score)", "candidate_score_sum": "sum(p.candidate_score)",
        "baseline_latency_n": "count(p.baseline_latency_ms)", "candidate_latency_n": "count(p.candidate_latency_ms)",
        "baseline_latency_sum": "sum(p.baseline_latency_ms)", "candidate_latency_sum": "sum(p.candidate_latency_ms)",
    }

    def app_breakdowns(self, run_id: str, columns: list[str]) -> dict[str, list[dict[str, Any]]]:
        """In one pass over a run's rows (traffic and labels joined), sums per event-time day (key ``"day"``)
        and per value of each of ``columns``: rows, labelled rows, positives, each model's correct
        predictions, errors, scored rows, score sum and latency sum, and the rows whose classes differ."""
        run = self._app_run(run_id)
        known = self.require_traffic(run["traffic"])["columns"]
        bad = [c for c in columns if c not in known]
        if bad:
            raise WorkbenchError(f"traffic {run['traffic']!r} has no column(s) {', '.join(bad)}")
        dims = ["date_trunc('day', t.event_time)"] + [f"t.{qident(c)}" for c in columns]
        names = ["day"] + list(columns)
        sums = ", ".join(f"{v} AS {k}" for k, v in self._APP_SUMS.items())
        rows = self.cursor().execute(
            f"""SELECT grouping({', '.join(dims)}) AS g, {', '.join(dims)}, {sums}
                FROM predictions p JOIN {traffic_table(run["traffic"])} t USING (_row)
                LEFT JOIN labels l ON l.traffic = ? AND l.request_id = t.request_id
                WHERE p.run_id = ? GROUP BY GROUPING SETS ({', '.join(f'({d})' for d in dims)})""",
            [run["traffic"], run_id]).fetchall()
        full = (1 << len(dims)) - 1
        out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for row in rows:
            g = row[0]
            for i, n in enumerate(names):
                if g == full ^ (1 << (len(dims) - 1 - i)):
                    vals = row[1 + len(dims):]
                    out[n].append({"key": row[1 + i], **{k: (v or 0) for k, v in zip(self._APP_SUMS, vals)}})
        for n in names:
            out[n].sort(key=lambda r: (r["key"] is None, r["key"]))
        return out

    def app_disagreements(self, run_id: str, limit: int) -> pa.Table:
        """Up to ``limit`` rows where the two models' classes differ, the largest score gaps first, with their
        label, event time and every traffic column."""
        run = self._app_run(run_id)
        info = self.require_traffic(run["traffic"])
        feats = ", ".join(f"t.{qident(c)}" for c in info["columns"])
        return self.cursor().sql(
            f"""WITH d AS (SELECT _row, baseline_score, candidate_score, baseline_class, candidate_class
                           FROM predictions WHERE run_id = ? AND baseline_class <> candidate_class
                           ORDER BY abs(candidate_score - baseline_score) DESC, _row LIMIT ?)
                SELECT t.request_id, t.event_time, l.label, d.baseline_class, d.candidate_class, d.baseline_score,
                       d.candidate_score, {feats}
                FROM d JOIN {traffic_table(run["traffic"])} t USING (_row)
                LEFT JOIN labels l ON l.traffic = ? AND l.request_id = t.request_id
                ORDER BY abs(d.candidate_score - d.baseline_score) DESC, d._row""",
            params=[run_id, int(limit), run["traffic"]]).to_arrow_table()

    def app_segment_columns(self, traffic: str, max_values: int = 60) -> list[str]:
        """Traffic columns worth segmenting by: text, booleans and integers (with at most ``max_values``
        distinct values, approximately)."""
        info = self.require_traffic(traffic)
        types = {c: t for c, t in self.cursor().execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?",
            ["traffic_" + traffic]).fetchall()}
        cands = [c for c in info["columns"] if types.get(c) in self._APP_DISCRETE]
        if not cands:
            return []
        sel = ", ".join(f"approx_count_distinct({qident(c)})" for c in cands)
        counts = self.cursor().execute(f"SELECT {sel} FROM {traffic_table(traffic)}").fetchall()[0]
        return [c for c, n in zip(cands, counts) if n is not None and n <= max_values]

    # -- reliability (issue 10): decisions waiting for MLflow, in chain order --------------------------------
    def pending_sync_records(self) -> list[dict[str, Any]]:
        """Applied decisions not yet in MLflow, with their stored record and signature, per model in chain order."""
        return self._rows("""SELECT d.decision_id, d.model, d.record, d.signature, c.sequence, d.sync_error
                             FROM decisions d JOIN canary_chain c USING (decision_id)
                             WHERE d.pending_sync ORDER BY d.model, c.sequence""")
