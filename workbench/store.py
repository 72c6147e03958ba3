"""DuckDB storage: the schema and every SQL statement of the workbench.

One :class:`Store` owns one connection; threads take their own cursor with :meth:`Store.cursor`.
Values always travel as parameters; identifiers (traffic tables, column names) are validated
and quoted with :func:`qident`, never formatted raw into SQL.
"""
from __future__ import annotations

import json
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
        status VARCHAR NOT NULL, rows_total BIGINT, rows_done BIGINT, batch_size INTEGER, device VARCHAR,
        mode VARCHAR, meta JSON, started_at TIMESTAMP, finished_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS run_batches (
        run_id VARCHAR NOT NULL, batch_no INTEGER NOT NULL, first_row BIGINT NOT NULL, rows INTEGER NOT NULL,
        seconds DOUBLE, committed_at TIMESTAMP, PRIMARY KEY (run_id, batch_no))""",
    """CREATE TABLE IF NOT EXISTS predictions (
        run_id VARCHAR NOT NULL, request_id VARCHAR NOT NULL, role VARCHAR NOT NULL, score DOUBLE,
        pred_class INTEGER, latency_ms DOUBLE, error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS evaluations (
        run_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, params JSON, result JSON NOT NULL)""",
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


def traffic_table(name: str) -> str:
    return qident("traffic_" + check_name(name, "traffic name"))


class Store:
    """The workbench's DuckDB database. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path = ":memory:", read_only: bool = False, wait_s: float = 10.0):
        self.path = str(path)
        self._local = threading.local()
        self.con = self._connect(read_only, wait_s)
        self.con.execute("SET TimeZone = 'UTC'")
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

    def traffic_batches(self, name: str, columns: list[str], batch_size: int, after_row: int = -1
                        ) -> pa.RecordBatchReader:
        """Stream ``columns`` of a traffic set in ingest order, starting after ``after_row``."""
        cols = ", ".join(["_row", "request_id"] + [qident(c) for c in columns if c not in ("_row", "request_id")])
        cur = self.con.cursor()
        return cur.sql(f"SELECT {cols} FROM {traffic_table(name)} WHERE _row > ? ORDER BY _row",
                       params=[after_row]).to_arrow_reader(batch_size)

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
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", [run_id])
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
                          "finished_at FROM runs ORDER BY started_at DESC")

    def create_run(self, *, run_id, traffic, baseline: dict, candidate: dict, rows_total, batch_size, device,
                   mode, meta: dict) -> None:
        self.cursor().execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, 'running', ?, 0, ?, ?, ?, ?, ?, NULL)",
            [run_id, traffic, json.dumps(baseline), json.dumps(candidate), rows_total, batch_size, device, mode,
             json.dumps(meta), utcnow()])

    def last_committed_row(self, run_id: str) -> int:
        """The traffic ``_row`` of the last row of the last committed batch (-1 when none)."""
        r = self.cursor().execute(
            "SELECT max(first_row + rows - 1), count(*) FROM run_batches WHERE run_id = ?", [run_id]).fetchall()[0]
        return -1 if r[1] == 0 else int(r[0])

    def next_batch_no(self, run_id: str) -> int:
        r = self.cursor().execute("SELECT coalesce(max(batch_no) + 1, 0) FROM run_batches WHERE run_id = ?",
                                  [run_id]).fetchall()[0]
        return int(r[0])

    def commit_batch(self, run_id: str, batch_no: int, first_row: int, rows: int, seconds: float,
                     predictions: pa.Table, last_row: int) -> None:
        """Store one batch's predictions and mark it committed, atomically."""
        with self.transaction() as cur:
            self.append_arrow(cur, "predictions", predictions)
            cur.execute("INSERT INTO run_batches VALUES (?, ?, ?, ?, ?, ?)",
                        [run_id, batch_no, first_row, last_row - first_row + 1, seconds, utcnow()])
            cur.execute("UPDATE runs SET rows_done = rows_done + ? WHERE run_id = ?", [rows, run_id])

    def finish_run(self, run_id: str, meta: dict) -> None:
        self.cursor().execute("UPDATE runs SET status = 'finished', finished_at = ?, meta = ? WHERE run_id = ?",
                              [utcnow(), json.dumps(meta), run_id])

    def run_error_counts(self, run_id: str) -> dict[str, int]:
        rows = self.cursor().execute(
            "SELECT role, count(*) FILTER (WHERE error IS NOT NULL) FROM predictions WHERE run_id = ? GROUP BY role",
            [run_id]).fetchall()
        return {role: int(n) for role, n in rows}

    def paired_labeled(self, run_id: str) -> pa.Table:
        """One row per labelled request of a run: label and each model's score, class and error."""
        run = self.require_run(run_id)
        return self.cursor().sql(
            """SELECT p.request_id, l.label,
                      max(p.score) FILTER (WHERE p.role = 'baseline') AS baseline_score,
                      max(p.pred_class) FILTER (WHERE p.role = 'baseline') AS baseline_class,
                      max(p.error) FILTER (WHERE p.role = 'baseline') AS baseline_error,
                      max(p.score) FILTER (WHERE p.role = 'candidate') AS candidate_score,
                      max(p.pred_class) FILTER (WHERE p.role = 'candidate') AS candidate_class,
                      max(p.error) FILTER (WHERE p.role = 'candidate') AS candidate_error
               FROM predictions p JOIN labels l ON l.traffic = ? AND l.request_id = p.request_id
               WHERE p.run_id = ? GROUP BY p.request_id, l.label ORDER BY p.request_id""",
            params=[run["traffic"], run_id]).to_arrow_table()

    def save_evaluation(self, run_id: str, params: dict, result: dict) -> None:
        self.cursor().execute("INSERT INTO evaluations VALUES (?, ?, ?, ?)",
                              [run_id, utcnow(), json.dumps(params), json.dumps(result)])

    def latest_evaluation(self, run_id: str) -> dict[str, Any] | None:
        rows = self.cursor().execute("SELECT result FROM evaluations WHERE run_id = ? ORDER BY created_at DESC LIMIT 1",
                                     [run_id]).fetchall()
        return json.loads(rows[0][0]) if rows else None

    # -- evaluation (issue 4): labelled paired rows, latency samples, error counts --------------------
    EVALUATION_MEMORY_LIMIT = "768MB"

    @contextmanager
    def memory_limit(self, limit: str) -> Iterator[None]:
        """Cap DuckDB's memory for the block (larger joins spill to disk), then restore the setting."""
        cur = self.cursor()
        before = cur.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        cur.execute("SET memory_limit = ?", [limit])
        try:
            yield
        finally:
            cur.execute("SET memory_limit = ?", [before])

    def evaluation_rows(self, run_id: str, *, segment: str | None = None, window: str | None = None) -> pa.Table:
        """One row per labelled request of a run, in no particular order: ``label``, ``baseline_score``
        and ``candidate_score`` (null where that model failed), plus ``segment`` (the traffic column
        ``segment`` as text) and ``window_start`` (the event time truncated to ``window``) on request."""
        run = self.require_run(run_id)
        info = self.require_traffic(run["traffic"])
        select = ["l.label",
                  "CASE WHEN b.error IS NULL THEN b.score END AS baseline_score",
                  "CASE WHEN c.error IS NULL THEN c.score END AS candidate_score"]
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
        join_traffic = (f"JOIN {traffic_table(run['traffic'])} t ON t.request_id = b.request_id"
                        if segment is not None or window is not None else "")
        sql = f"""SELECT {', '.join(select)}
                  FROM predictions b
                  JOIN predictions c ON c.run_id = b.run_id AND c.request_id = b.request_id AND c.role = 'candidate'
                  JOIN labels l ON l.traffic = ? AND l.request_id = b.request_id
                  {join_traffic}
                  WHERE b.run_id = ? AND b.role = 'baseline'"""
        with self.memory_limit(self.EVALUATION_MEMORY_LIMIT):
            return self.cursor().sql(sql, params=[*params, run["traffic"], run_id]).to_arrow_table()

    def latency_sample(self, run_id: str, role: str) -> pa.ChunkedArray:
        """Latencies (ms) of the rows ``role`` scored without error."""
        return self.cursor().sql(
            "SELECT latency_ms FROM predictions WHERE run_id = ? AND role = ? AND error IS NULL "
            "AND latency_ms IS NOT NULL", params=[run_id, role]).to_arrow_table().column(0)

    def prediction_counts(self, run_id: str) -> dict[str, dict[str, int]]:
        """Rows replayed and rows failed per role: ``{role: {"rows", "errors"}}``."""
        rows = self.cursor().execute(
            "SELECT role, count(*), count(*) FILTER (WHERE error IS NOT NULL) FROM predictions WHERE run_id = ? "
            "GROUP BY role", [run_id]).fetchall()
        return {role: {"rows": int(n), "errors": int(e)} for role, n, e in rows}
