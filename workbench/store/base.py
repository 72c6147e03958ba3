"""The storage itself: connection, schema, transactions, cursors, DuckDB settings and the SQL helpers.

A home's storage is a DuckLake: a catalog database (SQLite, embedded) plus Parquet data files. Every process
attaches it through its own in-memory DuckDB; readers see the latest committed snapshot and never wait. Write
transactions take the lake's writer lock (a file lock), so writers of different runs interleave commit by
commit: DuckLake 0.x on an SQLite catalog fails the second of two overlapping write transactions
("database is locked"), and serialized commits also make check-then-insert safe where DuckLake has no keys.
``:memory:`` is a plain in-memory DuckDB with the same schema (tests, scratch work).

Values always travel as parameters; identifiers (traffic tables, column names) are validated and quoted
with :func:`qident`, never formatted raw into SQL.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import tempfile
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
from workbench.tasks import REGRESSION

DEFAULT_MEMORY_LIMIT = "512MB"  # DuckDB buffer pool (override: $WORKBENCH_DUCKDB_MEMORY_LIMIT); it spills beyond
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")

LEGACY_FILE = "workbench.duckdb"  # a home's single DuckDB file before the lake; `workbench migrate` moves it
CATALOG_FILE = "catalog.sqlite"
DEFAULT_WRITE_WAIT_S = 120.0  # how long a writer waits for the lake's writer lock ($WORKBENCH_DB_WAIT_S)
INLINE_ROWS = 1000  # inserts up to this many rows stay in the catalog (jobs, decisions), not in a Parquet file

# Tables in data-flow order: traffic and labels, runs and their paired results, evaluations, drift, decisions
# and the canary, jobs. DuckLake has no keys: uniqueness is checked inside the writer's transaction.
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS traffic_sets (
        name VARCHAR NOT NULL, table_name VARCHAR NOT NULL, id_col VARCHAR, time_col VARCHAR,
        entity_col VARCHAR, columns JSON NOT NULL, fingerprint VARCHAR NOT NULL, rows BIGINT NOT NULL,
        quarantined BIGINT NOT NULL, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL)""",
    # the columns a traffic set declares as segments: decisions gate the candidate on each of their values
    """CREATE TABLE IF NOT EXISTS traffic_segments (
        traffic VARCHAR NOT NULL, column_name VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ingests (
        ingest_id VARCHAR NOT NULL, traffic VARCHAR NOT NULL, kind VARCHAR NOT NULL, source VARCHAR,
        file_sha256 VARCHAR, rows_read BIGINT, rows_ingested BIGINT, rows_quarantined BIGINT, ingested_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        traffic VARCHAR NOT NULL, ingest_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, source_row BIGINT,
        request_id VARCHAR, reason VARCHAR NOT NULL, raw VARCHAR)""",
    # one label per (traffic, request_id), kept by upsert_labels; ``_row`` is the request's row in its traffic
    # table (evaluations join on it: a join on it costs a third of one on the id), null while the traffic
    # set does not hold the request
    """CREATE TABLE IF NOT EXISTS labels (
        traffic VARCHAR NOT NULL, request_id VARCHAR NOT NULL, label INTEGER NOT NULL, label_time TIMESTAMP,
        _row BIGINT)""",
    # numeric labels (the targets of regression runs): one per (traffic, request_id), kept by upsert_label_values
    """CREATE TABLE IF NOT EXISTS label_values (
        traffic VARCHAR NOT NULL, request_id VARCHAR NOT NULL, value DOUBLE NOT NULL, label_time TIMESTAMP,
        _row BIGINT)""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR NOT NULL, traffic VARCHAR NOT NULL, baseline JSON NOT NULL, candidate JSON NOT NULL,
        status VARCHAR NOT NULL, rows_total BIGINT, batch_size INTEGER, device VARCHAR,
        mode VARCHAR, meta JSON, started_at TIMESTAMP, finished_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS run_batches (
        run_id VARCHAR NOT NULL, batch_no INTEGER NOT NULL, first_row BIGINT NOT NULL, span INTEGER NOT NULL,
        rows INTEGER NOT NULL, seconds DOUBLE, committed_at TIMESTAMP)""",
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
        key VARCHAR NOT NULL, column_name VARCHAR NOT NULL, sketch JSON NOT NULL, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS drift_sketch_values (
        key VARCHAR NOT NULL, column_name VARCHAR NOT NULL, num_value DOUBLE, str_value VARCHAR, n BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS drift_ref_scores (
        key VARCHAR NOT NULL, role VARCHAR NOT NULL, _row BIGINT NOT NULL, score DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS drift_reports (
        run_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, params JSON, result JSON NOT NULL)""",
    # signed decisions, each model's hash chain of applied records and its canary state
    """CREATE TABLE IF NOT EXISTS decisions (
        decision_id VARCHAR NOT NULL, model VARCHAR NOT NULL, kind VARCHAR NOT NULL, run_id VARCHAR,
        verdict VARCHAR NOT NULL, weight_before INTEGER NOT NULL, weight_after INTEGER NOT NULL,
        record VARCHAR NOT NULL, record_hash VARCHAR NOT NULL, signature VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL, mlflow_run_id VARCHAR, pending_sync BOOLEAN NOT NULL DEFAULT FALSE,
        sync_error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS canary_chain (
        model VARCHAR NOT NULL, sequence INTEGER NOT NULL, decision_id VARCHAR NOT NULL,
        record_hash VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS canary_state (
        model VARCHAR NOT NULL, baseline_version VARCHAR, candidate_version VARCHAR, weight INTEGER NOT NULL,
        decision_id VARCHAR NOT NULL, record_hash VARCHAR NOT NULL, killed BOOLEAN NOT NULL,
        updated_at TIMESTAMP NOT NULL)""",
    # signed approvals of stored decisions: one per approver and decision, checked by the writer (no constraint)
    """CREATE TABLE IF NOT EXISTS approvals (
        approval_id VARCHAR NOT NULL, decision_id VARCHAR NOT NULL, approver VARCHAR NOT NULL,
        statement VARCHAR NOT NULL, signature VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)""",
    # jobs: the queue and the job history (spec, trigger, current stage, the process that runs it);
    # job_stages keeps each stage's state so a rerun skips finished stages
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, delivery_id VARCHAR, event VARCHAR,
        params JSON NOT NULL, status VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, started_at TIMESTAMP,
        finished_at TIMESTAMP, error VARCHAR, result JSON, spec VARCHAR, triggered_by VARCHAR, stage VARCHAR,
        pid INTEGER, host VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS job_stages (
        job_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, status VARCHAR NOT NULL, attempts INTEGER NOT NULL,
        started_at TIMESTAMP, finished_at TIMESTAMP, seconds DOUBLE, result JSON, error VARCHAR)""",
]


# columns added to the schema's tables after storages were made without them, (table, column, type): a storage
# that lacks one gets it when it is first opened for writing, and the store fills it in the same commit
ADDED_COLUMNS = [("labels", "_row", "BIGINT"), ("label_values", "_row", "BIGINT")]

# what a write transaction raises when the engine refuses its commit (a write-write conflict): it rolled back
WRITE_CONFLICTS: tuple[type[Exception], ...] = (duckdb.ConstraintException, duckdb.TransactionException)


class DatabaseLocked(WorkbenchError):
    """Another writer held the storage's writer lock for longer than this writer would wait."""


class LegacyDatabase(WorkbenchError):
    """The home holds a database in the old single-file format; ``workbench migrate`` moves it."""


def extension_file(name: str) -> str:
    """The DuckDB extension ``name`` from its PyPI package (``duckdb-extension-<name>``), built for the
    installed DuckDB; ``INSTALL`` by name would try DuckDB's download server."""
    package = "duckdb_extension_" + name
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WorkbenchError(
            f"the DuckDB extension {name!r} is missing: pip install "
            f"duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "extensions" / f"v{duckdb.__version__}"
    path = path / f"{name}.duckdb_extension"
    if not path.is_file():
        raise WorkbenchError(
            f"the installed {package} has no build for DuckDB {duckdb.__version__} (looked for {path}); "
            f"install duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}"
        )
    return str(path)


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


def label_source(task: str) -> tuple[str, str]:
    """(table, column) holding the labels a run of ``task`` is judged on: the 0/1 labels of a binary run, the
    numeric labels of a regression run."""
    return ("label_values", "value") if task == REGRESSION else ("labels", "label")


def traffic_table(name: str) -> str:
    """The quoted table that holds the rows of traffic set ``name``."""
    return qident("traffic_" + check_name(name, "traffic name"))


def sql_literal(value: str) -> str:
    """A SQL string literal (for statements that cannot take parameters, such as :meth:`ArrowView.execute`)."""
    return "'" + value.replace("'", "''") + "'"


class ArrowView:
    """An Arrow table that statements on a cursor see as table ``name``, for use inside long transactions.

    The batch is copied into a temporary table of that name (the previous one of the name is dropped), so
    DuckDB keeps no reference to the Arrow data: ``cursor.register`` and relation queries keep every table
    alive until the transaction ends (an ingest staging 10M rows batch by batch held 1.2 GB until its
    commit). Statements take no parameters here.
    """

    def __init__(self, cur: duckdb.DuckDBPyConnection, name: str, data: pa.Table):
        self.name, self._cur = name, cur
        rel = cur.from_arrow(data)
        cols = ", ".join(f"{qident(c)} {t}" for c, t in zip(rel.columns, rel.types, strict=True))
        cur.execute(f"DROP TABLE IF EXISTS temp.main.{qident(name)}")
        cur.execute(f"CREATE TEMP TABLE {qident(name)} ({cols})")
        rel.insert_into(f"temp.main.{qident(name)}")

    def execute(self, sql: str) -> duckdb.DuckDBPyConnection:
        """Run ``sql`` (it may reference ``name``) on the cursor."""
        return self._cur.execute(sql)

    def close(self) -> None:
        """Drop the copy."""
        self._cur.execute(f"DROP TABLE IF EXISTS temp.main.{qident(self.name)}")


def storage_problem(exc: BaseException) -> str | None:
    """A one-line explanation when ``exc`` says a data file of the storage is gone (deleted or moved under
    the catalog); None for anything else."""
    text = str(exc)
    m = re.search(r'Cannot open file "([^"]+\.parquet)"', text) if isinstance(exc, duckdb.IOException) else None
    if m is None:
        return None
    return (
        f"the storage's data file {m.group(1)} is missing (deleted or moved under the catalog); restore it "
        "from a backup of the home"
    )


def change_marks(lake: Path) -> tuple[Path, ...]:
    """Files whose size or modification time changes with every commit to ``lake`` (and not with reads)."""
    return (lake / CATALOG_FILE, lake / (CATALOG_FILE + "-wal"))


def _configure(con: duckdb.DuckDBPyConnection, spill: str) -> dict[str, str | int | None]:
    """Session settings of a new DuckDB instance; the memory and thread limits as configured."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")  # DuckDB's bar would print into logs and pipes
    con.execute("SET temp_directory = ?", [spill])  # per instance: in-memory spill files would collide
    # a bounded buffer pool keeps long replays and big evaluations in constant memory (DuckDB spills)
    # (kept as configured, not as DuckDB prints them back: "488.2 MiB" would be set back as 488.1 MiB)
    limits: dict[str, str | int | None] = {
        "memory_limit": os.environ.get("WORKBENCH_DUCKDB_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT),
        "threads": int(os.environ.get("WORKBENCH_DUCKDB_THREADS") or 0) or None,
    }  # None: per core
    for k, v in limits.items():
        if v is not None:
            con.execute(f"SET {k} = ?", [v])
    return limits


def _check_lake(lake: Path, read_only: bool) -> None:
    """Refuse an old single-file home (naming ``workbench migrate``) and a read of a lake not made yet."""
    if lake.is_file():
        raise LegacyDatabase(
            f"{lake} is a workbench database in the old single-file format; "
            "move it into the shared storage with `workbench migrate`"
        )
    catalog, legacy = lake / CATALOG_FILE, lake.parent / LEGACY_FILE
    if not catalog.exists() and legacy.is_file():
        raise LegacyDatabase(
            f"this home keeps its data in {legacy}, the old single-file format; "
            "move it into the shared storage with `workbench migrate`"
        )
    if read_only and not catalog.exists():
        raise WorkbenchError(f"no workbench storage at {lake} yet")


class _LakeInstance:
    """One in-memory DuckDB per process and lake with the lake attached, shared by the process's stores:
    loading the extensions and attaching costs most of a short command's time, so it is done once."""

    _open: dict[tuple[int, str], _LakeInstance] = {}
    _guard = threading.Lock()
    KEEP_IDLE = 4  # lakes kept attached with no store open on them

    def __init__(self, lake: Path, writer: Callable[[], Any]):
        self.root = duckdb.connect()
        self.spill = tempfile.mkdtemp(prefix="workbench-spill-")
        self.limits = _configure(self.root, self.spill)
        self.users, self.schema_ready, self.used_at = 0, False, time.monotonic()
        for name in ("ducklake", "sqlite_scanner"):
            self.root.execute(f"LOAD {sql_literal(extension_file(name))}")
        catalog = lake / CATALOG_FILE
        options = (
            f"DATA_PATH {sql_literal(str(lake / 'data') + os.sep)}, META_JOURNAL_MODE 'WAL', "
            f"META_BUSY_TIMEOUT 10000, DATA_INLINING_ROW_LIMIT {INLINE_ROWS}, OVERRIDE_DATA_PATH true"
        )  # data paths are kept relative to DATA_PATH: a moved or copied home works from its new place
        sql = f"ATTACH {sql_literal('ducklake:sqlite:' + str(catalog))} AS lake ({options})"
        if catalog.exists():
            self.root.execute(sql)
        else:
            lake.mkdir(parents=True, exist_ok=True)
            with writer():  # the first attach creates the catalog: one process at a time
                self.root.execute(sql)

    @classmethod
    def acquire(cls, lake: Path, writer: Callable[[], Any]) -> _LakeInstance:
        """The process's instance for ``lake`` (attached now when there is none), with one more user."""
        key = (os.getpid(), str(lake.resolve()))  # a forked child attaches its own
        with cls._guard:
            inst = cls._open.get(key)
            if inst is None:
                inst = cls._open[key] = cls(lake, writer)
            inst.users += 1
            return inst

    def release(self) -> None:
        """One user fewer; instances idle beyond ``KEEP_IDLE`` are closed, the least recently used first."""
        with self._guard:
            self.users -= 1
            self.used_at = time.monotonic()
            idle = sorted((i.used_at, k) for k, i in self._open.items() if i.users == 0)
            for _, key in idle[: max(0, len(idle) - self.KEEP_IDLE)]:
                self._open.pop(key).close()

    def close(self) -> None:
        self.root.close()
        shutil.rmtree(self.spill, ignore_errors=True)


class StoreBase:
    """One DuckDB connection with the workbench's schema; the concerns of :class:`~workbench.store.Store`
    build on it. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path = ":memory:", read_only: bool = False, wait_s: float | None = None):
        """``path``: the lake's folder (created with its catalog when missing), or ``:memory:``. ``wait_s``:
        how long a write waits for another writer's lock (default ``$WORKBENCH_DB_WAIT_S`` or 120 s), then
        fails with a clear error; reads never wait."""
        self.path = str(path)
        self.lake = None if self.path == ":memory:" else Path(path)
        self.read_only = read_only
        self.wait_s = float(os.environ.get("WORKBENCH_DB_WAIT_S", DEFAULT_WRITE_WAIT_S)) if wait_s is None else wait_s
        self._local = threading.local()
        self._memory_lock = threading.Lock()
        self._instance: _LakeInstance | None = None
        if self.lake is None:
            self.con = duckdb.connect()
            self._spill = tempfile.mkdtemp(prefix="workbench-spill-")
            self._limits = _configure(self.con, self._spill)
            if not read_only:
                self._create_schema()
            return
        _check_lake(self.lake, read_only)
        self._instance = _LakeInstance.acquire(self.lake, self._writer)
        self._limits = self._instance.limits
        try:
            self.con = self._instance.root.cursor()
            self.con.execute("USE lake")
            if not read_only and not self._instance.schema_ready:
                self._create_schema()
                self._instance.schema_ready = True
        except BaseException:
            self._instance.release()
            raise

    def _missing_schema(self) -> tuple[list[str], list[tuple[str, str, str]]]:
        """The schema's tables (their DDL) and :data:`ADDED_COLUMNS` the storage lacks."""
        have: dict[str, set[str]] = {}
        for table, column in self.con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_catalog = current_database()"
        ).fetchall():
            have.setdefault(table, set()).add(column)
        tables = [ddl for ddl in SCHEMA if ddl.split("EXISTS", 1)[1].split("(", 1)[0].strip() not in have]
        columns = [a for a in ADDED_COLUMNS if a[0] in have and a[1] not in have[a[0]]]
        return tables, columns

    def _create_schema(self) -> None:
        """Create the tables a new (or older) storage lacks, and add the columns an older one lacks (filled by
        :meth:`_fill_added_columns`), in one commit: a DuckLake commit per table would cost a catalog
        transaction each (a new home's 20 tables took 1.8 s, one commit 0.2 s)."""
        if not any(self._missing_schema()):
            return
        with self._writer():
            tables, columns = self._missing_schema()  # another process may have created them meanwhile
            if not tables and not columns:
                return
            self.con.execute("BEGIN")
            try:
                for ddl in tables:
                    self.con.execute(ddl)
                for table, column, kind in columns:
                    self.con.execute(f"ALTER TABLE {qident(table)} ADD COLUMN {qident(column)} {kind}")
                if columns:
                    self._fill_added_columns(self.con)
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise

    def _fill_added_columns(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Fill the :data:`ADDED_COLUMNS` just added to an older storage (inside the upgrade's transaction)."""
        raise NotImplementedError("the store that owns the tables fills their added columns")

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """Hold the storage's writer lock for the block (reentrant in a thread; other threads and processes
        wait up to ``wait_s``)."""
        if getattr(self._local, "writing", 0):
            self._local.writing += 1
            try:
                yield
            finally:
                self._local.writing -= 1
            return
        release = self._lock_writer()
        self._local.writing = 1
        try:
            yield
        finally:
            self._local.writing = 0
            release()

    def _lock_writer(self) -> Callable[[], None]:
        if self.lake is None:
            if not self._memory_lock.acquire(timeout=self.wait_s):
                raise DatabaseLocked(f"another thread held the in-memory store's writer lock for {self.wait_s:g} s")
            return self._memory_lock.release
        self.lake.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lake / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise DatabaseLocked(
                        f"the workbench storage at {self.lake} is being written by another job; waited "
                        f"{self.wait_s:g} s for its writer lock (reads do not wait; set $WORKBENCH_DB_WAIT_S "
                        "to wait longer)"
                    ) from None
                time.sleep(0.05)

        def release() -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        return release

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for the calling thread (DuckDB connections are not shared across threads)."""
        if threading.current_thread() is threading.main_thread():
            return self.con
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self.new_cursor()
        return cur

    def new_cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to this store's database (for a reader streaming beside other work)."""
        cur = self.con.cursor()
        if self.lake is not None:
            cur.execute("USE lake")  # the default catalog is a setting of each connection
        return cur

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The calling thread's cursor inside one write transaction under the writer lock, committed at the
        end, rolled back on error. A transaction inside another of the same thread joins it."""
        if getattr(self._local, "in_transaction", False):
            yield self.cursor()
            return
        if self.read_only:
            raise WorkbenchError(f"the store at {self.path} was opened read-only; it cannot write")
        with self._writer():
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION")
            self._local.in_transaction = True
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                self._local.in_transaction = False
            cur.execute("COMMIT")

    def write(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        """One write statement in its own transaction (under the writer lock); the rows it returns."""
        with self.transaction() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        """Close this store's connection (the process keeps its lake instance for the next store)."""
        self.con.close()
        if self._instance is not None:
            self._instance.release()
            self._instance = None
        else:
            shutil.rmtree(self._spill, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
                "WHERE table_catalog = current_database() AND table_name = ? ORDER BY ordinal_position",
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
        self.write(
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
