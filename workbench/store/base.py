"""The storage itself: a store's connection, schema, transactions, cursors and writer lock (where the lake
lives and how a process attaches it: :mod:`~workbench.store.lake`; names in SQL: :mod:`~workbench.store.names`).

A home's storage is a DuckLake: a catalog database plus Parquet data files. The catalog is SQLite, embedded
in the lake folder, unless ``$WORKBENCH_CATALOG`` names a PostgreSQL database (several machines then share
one lake; ``$WORKBENCH_DATA_PATH`` puts the data files on a shared folder or an object store). Every process
attaches the lake through its own in-memory DuckDB; readers see the latest committed snapshot and never
wait. Write transactions take the lake's writer lock, so writers of different runs interleave commit by
commit: a file lock beside an SQLite catalog (DuckLake on SQLite fails the second of two overlapping write
transactions, "database is locked"), a PostgreSQL advisory lock with a PostgreSQL catalog (DuckLake on
PostgreSQL commits overlapping inserts, but two check-then-insert transactions both pass their check and a
delete or update conflicts with any other commit). Serialized commits make check-then-insert safe where
DuckLake has no keys. ``:memory:`` is a plain in-memory DuckDB with the same schema (tests, scratch work).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.store.lake import (
    DEFAULT_WRITE_WAIT_S,
    DatabaseLocked,
    LakeInstance,
    LakeTarget,
    catalog_kept_open,
    check_lake,
    configure,
    retry_locked,
)
from workbench.store.names import qident, sql_literal
from workbench.store.schema import ADDED_COLUMNS, SCHEMA

log = logging.getLogger(__name__)

# what a write transaction raises when the engine refuses its commit (a write-write conflict): it rolled back
WRITE_CONFLICTS: tuple[type[Exception], ...] = (duckdb.ConstraintException, duckdb.TransactionException)


# a value of each type a required column has, for the row :meth:`StoreBase._give_stats` inserts and deletes
_PLACEHOLDERS = {"VARCHAR": "''", "JSON": "'{}'", "TIMESTAMP": "TIMESTAMP '1970-01-01'", "BOOLEAN": "false"}


def _table_name(ddl: str) -> str:
    """The table a ``CREATE TABLE IF NOT EXISTS`` statement of :data:`SCHEMA` creates."""
    return ddl.split("EXISTS", 1)[1].split("(", 1)[0].strip()


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


class Cursor:
    """A store's DuckDB connection: a statement outside a transaction that finds the SQLite catalog locked is
    retried (:func:`~workbench.store.lake.retry_locked`: it did not run, or its autocommit rolled back), and
    :meth:`begin` opens the catalog with the transaction, so no statement inside meets the lock (DuckLake
    reads and commits a transaction's catalog on the one SQLite connection its first statement opens).
    Everything else is the connection's."""

    def __init__(self, con: duckdb.DuckDBPyConnection, lake: str | None):
        self._con, self._lake = con, lake
        self._in_transaction = False

    @classmethod
    def of(cls, con: duckdb.DuckDBPyConnection, lake: str | None) -> duckdb.DuckDBPyConnection:
        """``con`` wrapped, for ``lake`` (its alias; None: a plain DuckDB), typed as the connection it stands
        for (callers use it as one)."""
        return cast(duckdb.DuckDBPyConnection, cls(con, lake))

    def execute(self, sql: str, parameters: object = None) -> duckdb.DuckDBPyConnection:
        """The connection's ``execute``; returns this cursor for its results."""
        word = sql.lstrip()[:8].upper()
        if word.startswith(("BEGIN", "COMMIT", "ROLLBACK", "ABORT", "END")):
            raise WorkbenchError("transactions of a store's cursor go through begin(), commit() and rollback()")
        if self._in_transaction or self._lake is None:
            self._con.execute(sql, parameters)
        else:
            retry_locked(lambda: self._con.execute(sql, parameters), self._con)
        return cast(duckdb.DuckDBPyConnection, self)

    def begin(self) -> None:
        """Begin a transaction that has read the lake's catalog (so it holds its catalog connection)."""

        def begin() -> None:
            self._con.execute("BEGIN TRANSACTION")
            if self._lake is None:
                return
            self._con.execute(f"FROM ducklake_current_snapshot({sql_literal(self._lake)})").fetchall()

        try:
            retry_locked(begin, self._con)
        except BaseException:
            with suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
            raise
        self._in_transaction = True

    def commit(self) -> None:
        """Commit the open transaction."""
        self._in_transaction = False
        self._con.execute("COMMIT")

    def rollback(self) -> None:
        """Roll the open transaction back."""
        self._in_transaction = False
        self._con.execute("ROLLBACK")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the same database, retrying as this one does."""
        return Cursor.of(self._con.cursor(), self._lake)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


class StoreBase:
    """One DuckDB connection with the workbench's schema; the concerns of :class:`~workbench.store.Store`
    build on it. Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        read_only: bool = False,
        wait_s: float | None = None,
        target: LakeTarget | None = None,
    ):
        """``path``: the lake's folder (created with its catalog when missing), or ``:memory:``. ``wait_s``:
        how long a write waits for another writer's lock (default ``$WORKBENCH_DB_WAIT_S`` or 120 s), then
        fails with a clear error; reads never wait. ``target``: where the lake's catalog and data are
        (default: as this process's environment says, :meth:`LakeTarget.of`)."""
        self.path = str(path)
        self.lake = None if self.path == ":memory:" else Path(path)
        self.read_only = read_only
        self.wait_s = float(os.environ.get("WORKBENCH_DB_WAIT_S", DEFAULT_WRITE_WAIT_S)) if wait_s is None else wait_s
        self._local = threading.local()
        self._memory_lock = threading.Lock()
        self._instance: LakeInstance | None = None
        self.target: LakeTarget | None = None
        if self.lake is None:
            self.con = Cursor.of(duckdb.connect(), None)
            self._spill = tempfile.mkdtemp(prefix="workbench-spill-")
            self._limits = configure(self.con, self._spill)
            if not read_only:
                self._create_schema()
            return
        self.target = target or LakeTarget.of(self.lake)
        check_lake(self.target, read_only)
        self._instance = LakeInstance.acquire(self.target, self._writer)
        self._limits = self._instance.limits
        try:
            self.con = Cursor.of(self._instance.root.cursor(), self._instance.alias)
            self.con.execute(f"USE {self._instance.alias}")
            if not read_only and not self._instance.schema_ready:
                self._create_schema()
                self._instance.schema_ready = True
            elif read_only and not (self._instance.schema_ready or self._instance.schema_seen):
                if not self._table_columns("runs"):
                    raise WorkbenchError(f"no workbench storage in {self.target.label} yet")
                self._instance.schema_seen = True  # a storage does not go away under an attached lake
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
        tables = [ddl for ddl in SCHEMA if _table_name(ddl) not in have]
        columns = [a for a in ADDED_COLUMNS if a[0] in have and a[1] not in have[a[0]]]
        return tables, columns

    def _create_schema(self) -> None:
        """Create the tables a new (or older) storage lacks, and add the columns an older one lacks (filled by
        :meth:`_fill_added_columns`), in one commit: a DuckLake commit per table would cost a catalog
        transaction each (a new home's 20 tables took 1.8 s, one commit 0.2 s). Tables with no statistics
        get theirs in the same commit (:meth:`_tables_without_stats`)."""
        if not any(self._missing_schema()) and not self._tables_without_stats():
            return
        with self._writer():
            tables, columns = self._missing_schema()  # another process may have created them meanwhile
            if not tables and not columns and not self._tables_without_stats():
                return
            self.con.begin()
            try:
                for ddl in tables:
                    self.con.execute(ddl)
                for table, column, kind in columns:
                    self.con.execute(f"ALTER TABLE {qident(table)} ADD COLUMN {qident(column)} {kind}")
                if columns:
                    self._fill_added_columns(self.con)
                if self._instance is not None:  # a lake (a plain DuckDB has no such catalog)
                    for table in [_table_name(ddl) for ddl in tables] + self._tables_without_stats():
                        self._give_stats(table)
                self.con.commit()
            except BaseException:
                self.con.rollback()
                raise

    def _tables_without_stats(self) -> list[str]:
        """The schema's tables that have no statistics in the lake's catalog: those never written to.

        DuckLake 1.5.5 caches a table's statistics but not their absence, so every query of such a table read
        its catalog once per column it names (a chain read of an empty table took 60-100 ms, 5 ms once the
        table had statistics; fixed after that release, duckdb/ducklake#1313). A row inserted and deleted in
        one commit (:meth:`_give_stats`) records statistics of an empty table. Empty when the catalog cannot
        be read that way (a layout this release does not have): the tables then work as they are."""
        if self._instance is None or self.target is None:
            return []
        meta = f"__ducklake_metadata_{self._instance.alias}.{'main' if self.target.postgres is None else 'public'}"
        try:
            rows = self.con.execute(
                f"SELECT t.table_name FROM {meta}.ducklake_table t "
                f"LEFT JOIN {meta}.ducklake_table_stats s USING (table_id) "
                "WHERE t.end_snapshot IS NULL AND s.table_id IS NULL"
            ).fetchall()
        except duckdb.Error:
            return []
        ours = {_table_name(ddl) for ddl in SCHEMA}
        return sorted(r[0] for r in rows if r[0] in ours)

    def _give_stats(self, table: str) -> None:
        """Insert a row into empty ``table`` and delete it (in the open transaction): DuckLake records the
        table's statistics, and no row is left."""
        required = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = current_database() "
            "AND table_name = ? AND is_nullable = 'NO'",
            [table],
        ).fetchall()
        names = ", ".join(qident(c) for c, _ in required)
        values = ", ".join(_PLACEHOLDERS.get(kind, "0") for _, kind in required)
        self.con.execute(f"INSERT INTO {qident(table)} ({names}) VALUES ({values})")
        self.con.execute(f"DELETE FROM {qident(table)}")

    def _fill_added_columns(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Fill the :data:`ADDED_COLUMNS` just added to an older storage (inside the upgrade's transaction). They
        are the label tables' row numbers, so the traffic store, which owns those tables, overrides this; the base
        has none to fill."""

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
        if self.target is not None and self.target.postgres is not None and self._instance is not None:
            return self._instance.advisory_lock(self.wait_s)
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

    @property
    def catalog(self) -> str:
        """The name this store's lake is attached under in the process's DuckDB (``memory`` in memory)."""
        return "memory" if self._instance is None else self._instance.alias

    @property
    def data_path(self) -> str | None:
        """Where the lake's data files are (a folder or an object-store URL); None in memory."""
        return None if self._instance is None else self._instance.data_path

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
        if self._instance is not None:
            cur.execute(f"USE {self._instance.alias}")  # the default catalog is a setting of each connection
        return cur

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The calling thread's cursor inside one write transaction under the writer lock, committed at the
        end, rolled back on error. A transaction inside another of the same thread joins it."""
        if getattr(self._local, "in_transaction", False):
            yield self.cursor()
            return
        if getattr(self._local, "reading", False):
            raise WorkbenchError("a write inside a read snapshot (Store.snapshot): end the snapshot first")
        if self.read_only:
            raise WorkbenchError(f"the store at {self.path} was opened read-only; it cannot write")
        with self._writer():
            cur = self.cursor()
            cur.begin()
            self._local.in_transaction = True
            try:
                yield cur
            except BaseException:
                cur.rollback()
                raise
            finally:
                self._local.in_transaction = False
            cur.commit()

    @contextmanager
    def snapshot(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The calling thread's cursor inside one read transaction: the block's statements read one snapshot of
        the lake, and share what DuckLake reads of its catalog (five reads of small tables took 66 ms, not 99 ms
        one by one). Joins a transaction of the thread that is already open; a write inside it is refused."""
        if getattr(self._local, "in_transaction", False) or getattr(self._local, "reading", False):
            yield self.cursor()
            return
        cur = self.cursor()
        cur.begin()
        self._local.reading = True
        try:
            yield cur
        finally:
            self._local.reading = False
            cur.rollback()

    @contextmanager
    def catalog_kept_open(self) -> Iterator[None]:
        """For a block that commits many times (a replay): a connection to the lake's SQLite catalog is held
        open meanwhile, so that no reader's connection is its last one and checkpoints it on closing
        (:func:`~workbench.store.lake.catalog_kept_open`). Nothing to hold in memory or with PostgreSQL."""
        if self._instance is None or self.target is None or self.target.postgres is not None:
            yield
            return
        with catalog_kept_open(self._instance.catalog_file):
            yield

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
