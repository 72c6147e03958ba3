"""The database itself: connection, schema, transactions, cursors, DuckDB settings and the SQL helpers.

Values always travel as parameters; identifiers (traffic tables, column names) are validated and quoted
with :func:`qident`, never formatted raw into SQL.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.roles import ROLES

DEFAULT_MEMORY_LIMIT = "512MB"  # DuckDB buffer pool (override: $WORKBENCH_DUCKDB_MEMORY_LIMIT); it spills beyond
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")

# Tables in data-flow order: traffic and labels, runs and their paired results, evaluations, drift, decisions
# and the canary, jobs. Columns added to a table after its first release follow as ALTERs, so older
# database files gain them when opened.
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS traffic_sets (
        name VARCHAR PRIMARY KEY, table_name VARCHAR NOT NULL, id_col VARCHAR, time_col VARCHAR,
        entity_col VARCHAR, columns JSON NOT NULL, fingerprint VARCHAR NOT NULL, rows BIGINT NOT NULL,
        quarantined BIGINT NOT NULL, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL)""",
    # the columns a traffic set declares as segments: decisions gate the candidate on each of their values
    """CREATE TABLE IF NOT EXISTS traffic_segments (
        traffic VARCHAR NOT NULL, column_name VARCHAR NOT NULL, PRIMARY KEY (traffic, column_name))""",
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
    # drift: reference sketches (one row per reference and column, value counts when lossless), stored
    # scores of references that a run did not replay, and the reports
    """CREATE TABLE IF NOT EXISTS drift_sketches (
        key VARCHAR NOT NULL, column_name VARCHAR NOT NULL, sketch JSON NOT NULL, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (key, column_name))""",
    """CREATE TABLE IF NOT EXISTS drift_sketch_values (
        key VARCHAR NOT NULL, column_name VARCHAR NOT NULL, num_value DOUBLE, str_value VARCHAR, n BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS drift_ref_scores (
        key VARCHAR NOT NULL, role VARCHAR NOT NULL, _row BIGINT NOT NULL, score DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS drift_reports (
        run_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, params JSON, result JSON NOT NULL)""",
    # signed decisions, each model's hash chain of applied records and its canary state
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
    # signed approvals of stored decisions: one per approver and decision, checked by the writer (no constraint)
    """CREATE TABLE IF NOT EXISTS approvals (
        approval_id VARCHAR NOT NULL, decision_id VARCHAR NOT NULL, approver VARCHAR NOT NULL,
        statement VARCHAR NOT NULL, signature VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)""",
    # jobs: the queue and the job history (spec, trigger, current stage, the process that runs it);
    # job_stages keeps each stage's state so a rerun skips finished stages
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, delivery_id VARCHAR UNIQUE, event VARCHAR,
        params JSON NOT NULL, status VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, started_at TIMESTAMP,
        finished_at TIMESTAMP, error VARCHAR, result JSON)""",
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


# what a write transaction raises when a concurrent one of this process changed the same rows first (a
# duplicate chain sequence, a write-write conflict): the loser rolled back and may retry on fresh state
WRITE_CONFLICTS: tuple[type[Exception], ...] = (duckdb.ConstraintException, duckdb.TransactionException)


class DatabaseLocked(WorkbenchError):
    """Another process holds the database file's write lock (DuckDB allows one writing process per file)."""


def qident(name: str) -> str:
    """Quote any column name as a DuckDB identifier."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise WorkbenchError(f"invalid column name {name!r}")
    return '"' + name.replace('"', '""') + '"'


def name_problem(name: str) -> str | None:
    """What makes ``name`` unfit as a name, whatever else it may hold: whitespace or a control character at
    either end, or a control character (a line break included) anywhere; None when there is none."""
    if not name:
        return "it is empty"
    for where, ch in (("starts", name[0]), ("ends", name[-1])):
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return f"it {where} with whitespace or a control character (U+{ord(ch):04X})"
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        return f"it holds a control character (U+{ord(bad):04X})"
    return None


def check_name(name: str, what: str = "name") -> str:
    """Validate a user-chosen object name (traffic name, run id): the whole name must match, so a trailing
    line break is refused, not ignored."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        problem = name_problem(name) if isinstance(name, str) else None
        raise WorkbenchError(
            f"invalid {what} {name!r}: "
            + (f"{problem}; " if problem else "")
            + "use a letter followed by letters, digits or '_' (at most 63)"
        )
    return name


def check_role(role: str) -> str:
    """Validate a model role (it names prediction columns: ``baseline_score``, ``candidate_error``, ...)."""
    if role not in ROLES:
        raise WorkbenchError(f"unknown model role {role!r}")
    return role


def traffic_table(name: str) -> str:
    """The quoted table that holds the rows of traffic set ``name``."""
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


class StoreBase:
    """One DuckDB connection with the workbench's schema; the concerns of :class:`~workbench.store.Store`
    build on it. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path = ":memory:", read_only: bool = False, wait_s: float | None = None):
        """``wait_s``: how long to wait for another process's lock on the file (default
        ``$WORKBENCH_DB_WAIT_S`` or 10 s), then fail with a clear error."""
        self.path = str(path)
        self._local = threading.local()
        self.con = self._connect(
            read_only, float(os.environ.get("WORKBENCH_DB_WAIT_S", "10")) if wait_s is None else wait_s
        )
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")  # DuckDB's bar would print into logs and pipes
        # a bounded buffer pool keeps long replays and big evaluations in constant memory (DuckDB spills)
        # (kept as configured, not as DuckDB prints them back: "488.2 MiB" would be set back as 488.1 MiB)
        self._limits: dict[str, str | int | None] = {
            "memory_limit": os.environ.get("WORKBENCH_DUCKDB_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT),
            "threads": int(os.environ.get("WORKBENCH_DUCKDB_THREADS") or 0) or None,
        }  # None: per core
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
                        "(DuckDB allows one writing process per file)"
                    ) from None
                time.sleep(0.2)

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
        """The calling thread's cursor inside one transaction, committed at the end, rolled back on error."""
        cur = self.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    def settings(self, *names: str) -> dict:
        """Current values of DuckDB settings, as DuckDB reports them."""
        cur = self.cursor()
        return {n: cur.execute("SELECT current_setting(?)", [n]).fetchall()[0][0] for n in names}

    @contextmanager
    def limits(self, memory: str | None = None, threads: int | None = None) -> Iterator[None]:
        """DuckDB's memory limit and thread count for the block (``None``: unchanged), then restored.

        Both are settings of the whole database instance: other cursors of this store see them too."""
        cur = self.cursor()
        wanted: dict[str, str | int | None] = {
            k: v for k, v in (("memory_limit", memory), ("threads", threads)) if v is not None
        }
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

    def _rows(self, sql: str, params: list | tuple = ()) -> list[dict[str, Any]]:
        cur = self.cursor().execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def _table_columns(self, table_name: str) -> dict[str, str]:
        """Column types of a table (unquoted name), in column order; empty when it does not exist."""
        rows = (
            self.cursor()
            .execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ? ORDER BY ordinal_position",
                [table_name],
            )
            .fetchall()
        )
        return dict(rows)

    def _save_report(
        self, table: str, run_id: str, params: dict, result: dict, default: Callable[[Any], Any] | None = None
    ) -> None:
        """Append a run's report to ``table`` (evaluations, drift reports): ``params`` and ``result`` as JSON,
        with ``default`` for values JSON has no form for."""
        self.cursor().execute(
            f"INSERT INTO {qident(table)} VALUES (?, ?, ?, ?)",
            [run_id, db_time(utc_now()), json.dumps(params, default=default), json.dumps(result, default=default)],
        )

    def _latest_report(self, table: str, run_id: str) -> dict[str, Any] | None:
        """The result of a run's latest report in ``table``."""
        rows = (
            self.cursor()
            .execute(f"SELECT result FROM {qident(table)} WHERE run_id = ? ORDER BY created_at DESC LIMIT 1", [run_id])
            .fetchall()
        )
        return json.loads(rows[0][0]) if rows else None
