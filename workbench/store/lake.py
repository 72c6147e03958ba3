"""Where a home's lake lives and how a process attaches it: the target (folder, catalog, data path), the
process's one in-memory DuckDB with its extensions, each lake attached to it under its own alias, the
PostgreSQL catalog's writer lock, and one-line explanations of storage failures (a missing data file, a catalog
or object store that does not answer)."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from workbench.errors import WorkbenchError
from workbench.store.names import sql_literal
from workbench.store.object_store import connect_data_path, data_path_problem

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT = "512MB"  # DuckDB buffer pool (override: $WORKBENCH_DUCKDB_MEMORY_LIMIT); it spills beyond
LEGACY_FILE = "workbench.duckdb"  # a home's single DuckDB file before the lake; `workbench migrate` moves it
CATALOG_FILE = "catalog.sqlite"
DEFAULT_WRITE_WAIT_S = 120.0  # how long a writer waits for the lake's writer lock ($WORKBENCH_DB_WAIT_S)
INLINE_ROWS = 1000  # inserts up to this many rows stay in the catalog (jobs, decisions), not in a Parquet file
CATALOG_VAR = "WORKBENCH_CATALOG"  # a PostgreSQL catalog for the lake (unset: SQLite in the lake folder)
DATA_PATH_VAR = "WORKBENCH_DATA_PATH"  # where the lake's Parquet files go (unset: <lake>/data/)
# seconds libpq waits for a PostgreSQL catalog to answer before the command fails (a host that drops packets
# would hang it otherwise); a connect_timeout in $WORKBENCH_CATALOG or $PGCONNECT_TIMEOUT takes precedence
CONNECT_TIMEOUT_S = 5
# SQLite's busy handler in DuckDB's sqlite_scanner build sleeps whole seconds (it has no usleep): the catalog
# is attached with no busy wait, and a statement that finds it locked is retried after a few milliseconds
# (:func:`retry_locked`) for up to this long; the lock is held for a connection's first read while another
# closes or checkpoints, for milliseconds
CATALOG_LOCKED_WAIT_S = 10.0
# the writer lock with a PostgreSQL catalog: an advisory lock (its key spells "workbenc") of a transaction
TRY_LOCK_SQL = "SELECT * FROM postgres_query('{pg}', 'SELECT pg_try_advisory_xact_lock(8606223218466188899)')"


def catalog_locked(exc: BaseException) -> bool:
    """Whether a DuckDB error is the SQLite catalog's "database is locked": the statement did not run, or its
    autocommit transaction rolled back."""
    return isinstance(exc, duckdb.Error) and "database is locked" in str(exc)


def retry_locked(fn: Callable[[], Any], con: duckdb.DuckDBPyConnection | None = None) -> Any:
    """``fn()``, called again after 2, 4, ... 50 ms while it fails on a locked SQLite catalog, for up to
    :data:`CATALOG_LOCKED_WAIT_S`, then :class:`DatabaseLocked`. ``fn`` must be safe to repeat after such a
    failure (one statement, or a transaction's start) on ``con``: a failed catalog read can leave ``con`` in an
    aborted transaction (DuckDB then refuses every statement, and a read would keep its old snapshot), so it is
    rolled back before the next try."""
    deadline, pause = time.monotonic() + CATALOG_LOCKED_WAIT_S, 0.002
    while True:
        try:
            return fn()
        except duckdb.Error as e:
            if not catalog_locked(e):
                raise
            if con is not None:
                with suppress(duckdb.Error):  # none open: nothing to roll back
                    con.execute("ROLLBACK")
            if time.monotonic() >= deadline:
                raise DatabaseLocked(
                    f"the lake's SQLite catalog stayed locked for {CATALOG_LOCKED_WAIT_S:g} s (another process "
                    f"held it): {str(e).splitlines()[0]}"
                ) from None
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


# a process that holds a connection to an SQLite catalog open until its stdin closes (its parent ended the block
# or died); Python's own sqlite3, in a process of its own: two SQLite libraries in one process would drop each
# other's file locks
_KEEPER = """import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("open", flush=True)
sys.stdin.read()
"""


@contextmanager
def catalog_kept_open(catalog: Path) -> Iterator[None]:
    """Hold a connection to the SQLite ``catalog`` open for the block, in a helper process, so that no other
    connection is ever its last one. DuckLake opens a catalog connection per transaction, and SQLite makes the
    last connection that closes checkpoint the WAL into the database and sync it, under a lock that stops every
    new connection: during a replay, whose data files fill the page cache, that sync took about a second, and
    the reads of every process waited for it (P99 over 1 s). With a connection kept open the writer's own
    checkpoints run beside the readers. The helper ends with the block, or with this process."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _KEEPER, str(catalog)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "open":  # it failed: the block runs as it would without it
            log.warning("could not keep a connection to %s open (exit %s)", catalog, proc.wait())
        yield
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        with suppress(OSError):
            proc.stdin.close()
        proc.stdout.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def configure(con: duckdb.DuckDBPyConnection, spill: str) -> dict[str, str | int | None]:
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


def check_lake(target: LakeTarget, read_only: bool) -> None:
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
        self.limits = configure(self.con, self.spill)
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


class LakeInstance:
    """A lake attached to the process's DuckDB (:class:`_Root`) under its own alias, shared by the process's
    stores on that lake: attaching costs most of a short command's time, so it is done once."""

    _open: dict[tuple[int, LakeTarget], LakeInstance] = {}
    _guard = threading.Lock()
    KEEP_IDLE = 1  # lakes kept attached with no store open on them (a catalog listing reads every attached lake)
    users: int  # stores open on it now

    def __init__(self, target: LakeTarget, writer: Callable[[], Any]):
        self.target = target
        base = _Root.of_process()
        if base.attached and not any(i.users for k, i in self._open.items() if k[0] == os.getpid()):
            base.limits = configure(base.con, base.spill)  # nothing open: take this environment's limits
        base.attached += 1
        self.base, self.root, self.limits = base, base.con, base.limits
        self.alias, self.pg = f"lake_{base.attached}", f"workbench_pg_{base.attached}"
        self.users, self.schema_ready, self.used_at = 0, False, time.monotonic()
        self.schema_seen = False  # a read-only store found the schema (it may lack what a writer adds)
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
            sql += "META_JOURNAL_MODE 'WAL', META_BUSY_TIMEOUT 0)"  # no whole-second sleeps: retry_locked
            if catalog.exists():
                retry_locked(lambda: self.root.execute(sql), self.root)
            else:
                with writer():  # the first attach creates the catalog: one process at a time
                    retry_locked(lambda: self.root.execute(sql), self.root)
        else:
            self._attach_postgres(target, with_connect_timeout(postgres))
        # where the data files are: as configured, or as a PostgreSQL catalog recorded it when it was made
        settings = retry_locked(
            lambda: self.root.execute(f"SELECT data_path FROM ducklake_settings('{self.alias}')").fetchall(), self.root
        )
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
    def acquire(cls, target: LakeTarget, writer: Callable[[], Any]) -> LakeInstance:
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
