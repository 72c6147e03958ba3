"""The storage itself: connection, schema, transactions, cursors, DuckDB settings and the SQL helpers.

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

Values always travel as parameters; identifiers (traffic tables, column names) are validated and quoted
with :func:`qident`, never formatted raw into SQL.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.roles import ROLES
from workbench.store.object_store import connect_data_path, data_path_problem
from workbench.store.schema import ADDED_COLUMNS, SCHEMA
from workbench.tasks import MULTICLASS, REGRESSION

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT = "512MB"  # DuckDB buffer pool (override: $WORKBENCH_DUCKDB_MEMORY_LIMIT); it spills beyond
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")

LEGACY_FILE = "workbench.duckdb"  # a home's single DuckDB file before the lake; `workbench migrate` moves it
CATALOG_FILE = "catalog.sqlite"
DEFAULT_WRITE_WAIT_S = 120.0  # how long a writer waits for the lake's writer lock ($WORKBENCH_DB_WAIT_S)
INLINE_ROWS = 1000  # inserts up to this many rows stay in the catalog (jobs, decisions), not in a Parquet file
CATALOG_VAR = "WORKBENCH_CATALOG"  # a PostgreSQL catalog for the lake (unset: SQLite in the lake folder)
DATA_PATH_VAR = "WORKBENCH_DATA_PATH"  # where the lake's Parquet files go (unset: <lake>/data/)
# seconds libpq waits for a PostgreSQL catalog to answer before the command fails (a host that drops packets
# would hang it otherwise); a connect_timeout in $WORKBENCH_CATALOG or $PGCONNECT_TIMEOUT takes precedence
CONNECT_TIMEOUT_S = 5
# the writer lock with a PostgreSQL catalog: an advisory lock (its key spells "workbenc") of a transaction
TRY_LOCK_SQL = "SELECT * FROM postgres_query('{pg}', 'SELECT pg_try_advisory_xact_lock(8606223218466188899)')"


# what a write transaction raises when the engine refuses its commit (a write-write conflict): it rolled back
WRITE_CONFLICTS: tuple[type[Exception], ...] = (duckdb.ConstraintException, duckdb.TransactionException)


class DatabaseLocked(WorkbenchError):
    """Another writer held the storage's writer lock for longer than this writer would wait."""


class CatalogUnreachable(WorkbenchError):
    """The lake's PostgreSQL catalog does not answer (stopped, unreachable, refusing the connection)."""


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
    numeric labels of a regression run, the class labels (text) of a multi-class run."""
    if task == MULTICLASS:
        return ("label_classes", "label")
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


@dataclass(frozen=True)
class LakeTarget:
    """Where a lake lives: its folder (local state: the SQLite catalog and its writer lock), the PostgreSQL
    catalog's libpq connection string (None: SQLite) and the data files' path (a folder or URL; None: the one
    a PostgreSQL catalog recorded when it was made, ``<folder>/data/`` of the home that made it)."""

    folder: Path
    postgres: str | None
    data_path: str | None

    @classmethod
    def of(cls, folder: Path) -> LakeTarget:
        """The target of the lake in ``folder`` as ``$WORKBENCH_CATALOG`` and ``$WORKBENCH_DATA_PATH`` set it."""
        raw = os.environ.get(CATALOG_VAR, "").strip()
        if raw in ("", "sqlite"):
            postgres = None
        elif raw.startswith(("postgresql://", "postgres://")):
            postgres = raw  # a libpq URI
        elif raw.startswith("postgres:"):
            postgres = raw.removeprefix("postgres:").strip()  # a libpq key=value string, as DuckLake writes it
        else:
            raise WorkbenchError(
                f"${CATALOG_VAR} must be 'sqlite', 'postgres:<libpq key=value string>' or a postgresql:// URI, "
                f"not {redact(raw)!r}"
            )
        data = os.environ.get(DATA_PATH_VAR, "").strip()
        if not data:
            return cls(folder, postgres, None if postgres else str(folder / "data") + os.sep)
        return cls(folder, postgres, (data if is_url(data) else str(Path(data).resolve())).rstrip("/") + "/")

    @property
    def label(self) -> str:
        """How errors name the catalog (a password left out)."""
        if self.postgres is None:
            return f"the SQLite catalog {self.folder / CATALOG_FILE}"
        return f"the PostgreSQL catalog {redact(self.postgres)!r} (${CATALOG_VAR})"


def is_url(path: str) -> bool:
    """``path`` names an object store (``s3://``, ``gs://``, ``az://``, ...) rather than a folder."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def redact(conn: str) -> str:
    """A connection string with its password (``password=...`` or ``user:password@``) replaced by ``***``."""
    conn = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", conn, flags=re.I)
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", conn)


def with_connect_timeout(conn: str) -> str:
    """A libpq connection string (key=value or URI) with ``connect_timeout`` added, unless it or
    ``$PGCONNECT_TIMEOUT`` sets one already."""
    if os.environ.get("PGCONNECT_TIMEOUT") or re.search(r"connect_timeout\s*=", conn):
        return conn
    if conn.startswith(("postgresql://", "postgres://")):
        return conn + ("&" if "?" in conn else "?") + f"connect_timeout={CONNECT_TIMEOUT_S}"
    return f"{conn} connect_timeout={CONNECT_TIMEOUT_S}"


def storage_problem(exc: BaseException) -> str | None:
    """A one-line explanation when ``exc`` says a data file of the storage is gone (deleted or moved under
    the catalog), its PostgreSQL catalog cannot be reached or its object store refuses or does not answer;
    None for anything else."""
    text = str(exc)
    down = re.search(r'Unable to connect to Postgres at "([^"]*)": ([^\n]*)', text)
    if down is not None and isinstance(exc, duckdb.Error):
        return catalog_unreachable(down.group(1), down.group(2))
    gone = re.search(r"'([^']+\.parquet)'[^\n]*\(HTTP 404", text)  # an object store's data file
    if gone is not None and isinstance(exc, duckdb.Error):
        return _missing_file(gone.group(1), "the data path (or the bucket's earlier object versions)")
    data = os.environ.get(DATA_PATH_VAR, "").strip()
    if (store := data_path_problem(exc, data if is_url(data) else None)) is not None:
        return store
    if isinstance(exc, duckdb.Error) and (problem := _probe_catalog()) is not None:
        return problem  # a failure seen second-hand (a stream cut off mid-read) while the catalog is down
    m = re.search(r'Cannot open file "([^"]+\.parquet)"', text) if isinstance(exc, duckdb.IOException) else None
    return None if m is None else _missing_file(m.group(1), "the home")


def _missing_file(path: str, backup: str) -> str:
    return (
        f"the storage's data file {path} is missing (deleted or moved under the catalog); restore it "
        f"from a backup of {backup}"
    )


def _probe_catalog() -> str | None:
    """Why this process's PostgreSQL catalog (``$WORKBENCH_CATALOG``) does not answer now; None when it
    answers or the catalog is SQLite. Only asked after a storage error, so it costs nothing otherwise."""
    try:
        postgres = LakeTarget.of(Path(".")).postgres
    except WorkbenchError:
        return None
    if postgres is None:
        return None
    con = duckdb.connect()
    try:
        con.execute(f"LOAD {sql_literal(extension_file('postgres_scanner'))}")
        con.execute(f"ATTACH {sql_literal(with_connect_timeout(postgres))} AS probe (TYPE postgres, READ_ONLY)")
        con.execute("SELECT * FROM postgres_query('probe', 'SELECT 1')").fetchall()
    except duckdb.Error as e:
        down = re.search(r'Unable to connect to Postgres at "[^"]*": ([^\n]*)', str(e))
        return catalog_unreachable(postgres, down.group(1) if down else str(e).splitlines()[0])
    finally:
        con.close()
    return None


def catalog_unreachable(conn: str, reason: str) -> str:
    """The one-line error for a PostgreSQL catalog that does not answer."""
    conn = re.sub(rf"[ ?&]connect_timeout={CONNECT_TIMEOUT_S}$", "", conn)  # as the user wrote it
    return (
        f"the workbench's PostgreSQL catalog {redact(conn)!r} (${CATALOG_VAR}) cannot be reached "
        f"({reason.strip().rstrip('.')}); start it or fix ${CATALOG_VAR}, then run the command again: "
        "an interrupted job or replay resumes where its last commit ended"
    )


def change_marks(lake: Path) -> tuple[Path, ...]:
    """Files whose size or modification time changes with every commit to ``lake`` (and not with reads);
    none with a PostgreSQL catalog (its commits change no local file)."""
    if LakeTarget.of(lake).postgres is not None:
        return ()
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


def _check_lake(target: LakeTarget, read_only: bool) -> None:
    """Refuse an old single-file home (naming ``workbench migrate``) and a read of a lake not made yet."""
    lake = target.folder
    if lake.is_file():
        raise LegacyDatabase(
            f"{lake} is a workbench database in the old single-file format; "
            "move it into the shared storage with `workbench migrate`"
        )
    if target.postgres is not None:
        return  # the catalog is elsewhere: whether it holds a lake is known once attached
    catalog, legacy = lake / CATALOG_FILE, lake.parent / LEGACY_FILE
    if not catalog.exists() and legacy.is_file():
        raise LegacyDatabase(
            f"this home keeps its data in {legacy}, the old single-file format; "
            "move it into the shared storage with `workbench migrate`"
        )
    if read_only and not catalog.exists():
        raise WorkbenchError(f"no workbench storage at {lake} yet")


def _lake_options(data: str | None) -> str:
    """The DuckLake ATTACH options: inlining, and the data path when one is given (made when it is a folder)."""
    options = f"DATA_INLINING_ROW_LIMIT {INLINE_ROWS}"
    if data is None:
        return options
    if not is_url(data):
        Path(data).mkdir(parents=True, exist_ok=True)
    # data paths are kept relative to DATA_PATH: a moved or copied home works from its new place
    return f"{options}, DATA_PATH {sql_literal(data)}, OVERRIDE_DATA_PATH true"


class _Root:
    """The process's in-memory DuckDB: its extensions are loaded once (a load verifies tens of MB of
    signed code, most of a short command's time), and every lake the process opens is attached to it."""

    _by_pid: dict[int, _Root] = {}

    def __init__(self) -> None:
        self.con = duckdb.connect()
        self.spill = tempfile.mkdtemp(prefix="workbench-spill-")
        self.limits = _configure(self.con, self.spill)
        self.loaded: set[str] = set()
        self.attached = 0  # aliases made so far: lake_1, lake_2, ...

    @classmethod
    def of_process(cls) -> _Root:
        """This process's root (a forked child makes its own)."""
        root = cls._by_pid.get(os.getpid())
        if root is None:
            root = cls._by_pid[os.getpid()] = cls()
        return root

    def load(self, name: str) -> None:
        """Load a DuckDB extension from its PyPI package, once per process."""
        if name not in self.loaded:
            self.con.execute(f"LOAD {sql_literal(extension_file(name))}")
            self.loaded.add(name)


class _LakeInstance:
    """A lake attached to the process's DuckDB (:class:`_Root`) under its own alias, shared by the process's
    stores on that lake: attaching costs most of a short command's time, so it is done once."""

    _open: dict[tuple[int, LakeTarget], _LakeInstance] = {}
    _guard = threading.Lock()
    KEEP_IDLE = 1  # lakes kept attached with no store open on them (a catalog listing reads every attached lake)
    users: int  # stores open on it now

    def __init__(self, target: LakeTarget, writer: Callable[[], Any]):
        self.target = target
        base = _Root.of_process()
        if base.attached and not any(i.users for k, i in self._open.items() if k[0] == os.getpid()):
            base.limits = _configure(base.con, base.spill)  # nothing open: take this environment's limits
        base.attached += 1
        self.base, self.root, self.limits = base, base.con, base.limits
        self.alias, self.pg = f"lake_{base.attached}", f"workbench_pg_{base.attached}"
        self.users, self.schema_ready, self.used_at = 0, False, time.monotonic()
        try:
            self._attach(target, writer)
        except BaseException:
            self.close()
            raise

    def _attach(self, target: LakeTarget, writer: Callable[[], Any]) -> None:
        lake, postgres, data = target.folder, target.postgres, target.data_path
        for name in ("ducklake", "sqlite_scanner" if postgres is None else "postgres_scanner"):
            self.base.load(name)
        if data is not None and is_url(data):
            self._open_object_store(data)
        lake.mkdir(parents=True, exist_ok=True)
        if postgres is None:
            catalog = lake / CATALOG_FILE
            sql = f"ATTACH {sql_literal('ducklake:sqlite:' + str(catalog))} AS {self.alias} ({_lake_options(data)}, "
            sql += "META_JOURNAL_MODE 'WAL', META_BUSY_TIMEOUT 10000)"
            if catalog.exists():
                self.root.execute(sql)
            else:
                with writer():  # the first attach creates the catalog: one process at a time
                    self.root.execute(sql)
        else:
            self._attach_postgres(target, with_connect_timeout(postgres))
        # where the data files are: as configured, or as a PostgreSQL catalog recorded it when it was made
        settings = self.root.execute(f"SELECT data_path FROM ducklake_settings('{self.alias}')").fetchall()
        self.data_path: str = settings[0][0]

    def _recorded_data_path(self) -> str:
        """The data path a PostgreSQL catalog recorded when it was made."""
        sql = "SELECT value FROM ducklake_metadata WHERE key = ''data_path''"
        rows = self.root.execute(f"SELECT * FROM postgres_query('{self.pg}', '{sql}')").fetchall()
        return rows[0][0] if rows else ""

    def _open_object_store(self, data: str) -> None:
        """DuckDB's httpfs, the credentials for ``data`` (a secret of this lake's) and a check that the store
        answers there."""
        self.base.load("httpfs")
        connect_data_path(self.root, data, f"{self.alias}_data")

    def _attach_postgres(self, target: LakeTarget, postgres: str) -> None:
        data = target.data_path
        try:
            # the writer lock's own connection (a plain PostgreSQL attach: advisory locks, no DuckLake)
            self.root.execute(f"ATTACH {sql_literal(postgres)} AS {self.pg} (TYPE postgres)")
            made = f"SELECT * FROM postgres_query('{self.pg}', 'SELECT to_regclass(''ducklake_metadata'') IS NOT NULL')"
            sql = f"ATTACH {sql_literal('ducklake:postgres:' + postgres)} AS {self.alias} "
            if self.root.execute(made).fetchall()[0][0]:
                if data is None and is_url(recorded := self._recorded_data_path()):
                    self._open_object_store(recorded)  # attaching reads it
                self.root.execute(sql + f"({_lake_options(data)})")
            else:  # the first attach creates the catalog's tables: one process at a time
                release = self.advisory_lock(DEFAULT_WRITE_WAIT_S)
                try:
                    self.root.execute(sql + f"({_lake_options(data or str(target.folder / 'data') + os.sep)})")
                finally:
                    release()
        except duckdb.Error as e:
            problem = storage_problem(e)
            if problem is None:
                m = re.search(r"(?:failed|error)[^\n]*", str(e), flags=re.I)
                problem = catalog_unreachable(target.postgres or postgres, m.group(0) if m else type(e).__name__)
            raise CatalogUnreachable(problem) from None

    def advisory_lock(self, wait_s: float) -> Callable[[], None]:
        """Take the PostgreSQL catalog's writer lock, waiting up to ``wait_s``; returns its release. It is an
        advisory lock of a transaction on this instance's PostgreSQL connection: a process that dies releases
        it with its connection, so a killed writer never leaves the lake locked."""
        cur = self.root.cursor()
        cur.execute("BEGIN TRANSACTION")
        deadline = time.monotonic() + wait_s
        try:
            while not cur.execute(TRY_LOCK_SQL.format(pg=self.pg)).fetchall()[0][0]:
                if time.monotonic() >= deadline:
                    raise DatabaseLocked(
                        f"the workbench storage ({self.target.label}) is being written by another job; waited "
                        f"{wait_s:g} s for its writer lock (reads do not wait; set $WORKBENCH_DB_WAIT_S to wait longer)"
                    )
                time.sleep(0.05)
        except BaseException:
            with suppress(duckdb.Error):
                cur.execute("ROLLBACK")
            cur.close()
            raise

        def release() -> None:
            try:
                cur.execute("COMMIT")  # ends the transaction, and the lock with it
            except duckdb.Error as e:  # the connection is gone, and the lock with it
                log.warning("releasing the writer lock of %s: %s", self.target.label, str(e).splitlines()[0])
            finally:
                cur.close()

        return release

    @classmethod
    def acquire(cls, target: LakeTarget, writer: Callable[[], Any]) -> _LakeInstance:
        """The process's instance for ``target`` (attached now when there is none), with one more user."""
        key = (os.getpid(), target)  # a forked child attaches its own
        with cls._guard:
            inst = cls._open.get(key)
            if inst is None:
                # a lake deleted while idly attached would fail every catalog listing of the process's DuckDB
                # (information_schema reads every attached lake): detach those first
                for k, gone in list(cls._open.items()):
                    if gone.users == 0 and gone.target.postgres is None and not gone.catalog_file.exists():
                        cls._open.pop(k).close()
                inst = cls._open[key] = cls(target, writer)
            inst.users += 1
            return inst

    def release(self) -> None:
        """One user fewer; instances idle beyond ``KEEP_IDLE`` are closed, the least recently used first."""
        with self._guard:
            self.users -= 1
            self.used_at = time.monotonic()
            idle = sorted(((i.used_at, k) for k, i in self._open.items() if i.users == 0), key=lambda t: t[0])
            for _, key in idle[: max(0, len(idle) - self.KEEP_IDLE)]:
                self._open.pop(key).close()

    @property
    def catalog_file(self) -> Path:
        """The SQLite catalog's file (unused with a PostgreSQL catalog)."""
        return self.target.folder / CATALOG_FILE

    def close(self) -> None:
        """Detach the lake (and its lock connection) from the process's DuckDB."""
        for alias in (self.alias, self.pg):
            with suppress(duckdb.Error):
                self.root.execute(f"DETACH DATABASE IF EXISTS {alias}")
        with suppress(duckdb.Error):  # the object store's credentials, when it made them
            self.root.execute(f"DROP TEMPORARY SECRET IF EXISTS {self.alias}_data")


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
        self._instance: _LakeInstance | None = None
        self.target: LakeTarget | None = None
        if self.lake is None:
            self.con = duckdb.connect()
            self._spill = tempfile.mkdtemp(prefix="workbench-spill-")
            self._limits = _configure(self.con, self._spill)
            if not read_only:
                self._create_schema()
            return
        self.target = target or LakeTarget.of(self.lake)
        _check_lake(self.target, read_only)
        self._instance = _LakeInstance.acquire(self.target, self._writer)
        self._limits = self._instance.limits
        try:
            self.con = self._instance.root.cursor()
            self.con.execute(f"USE {self._instance.alias}")
            if not read_only and not self._instance.schema_ready:
                self._create_schema()
                self._instance.schema_ready = True
            elif read_only and not self._instance.schema_ready and not self._table_columns("runs"):
                raise WorkbenchError(f"no workbench storage in {self.target.label} yet")
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
