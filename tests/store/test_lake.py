"""The shared storage with real processes: readers never wait for a writer, writers of different runs proceed
together and lose nothing, retention keeps what decisions cite, and an old single-file home migrates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from workbench.errors import WorkbenchError
from workbench.store import Store
from workbench.store.maintenance import collect

ROOT = Path(__file__).resolve().parents[2]
LEGACY = Path(sys.prefix) / "legacy-duckdb"

HOLD_WRITER = """
import sys, time
from workbench.errors import WorkbenchError
from workbench.store import Store
with Store(sys.argv[1]) as s, s.transaction() as cur:
    cur.execute("INSERT INTO jobs (job_id, kind, params, status, created_at) "
                "VALUES ('held', 'x', '{}', 'queued', now())")
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""

WRITE_RUN = """
import sys, time
from pathlib import Path
import pyarrow as pa
from workbench.errors import WorkbenchError
from workbench.store import Store
lake, run, batches, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
barrier = Path(sys.argv[5]) if len(sys.argv) > 5 else None  # writers that wait for each other's first commit
with Store(lake) as s:
    s.create_run(run_id=run, traffic="t", baseline={}, candidate={}, rows_total=batches * rows, batch_size=rows,
                 device="cpu", mode="batch", meta={})
    for b in range(batches):
        first = b * rows
        paired = pa.table({"_row": pa.array(range(first, first + rows), pa.int64()),
                           "baseline_score": pa.array([0.5] * rows), "candidate_score": pa.array([0.25] * rows)})
        s.commit_batch(run, b, first, first + rows - 1, rows, 0.0, paired)
        if barrier is not None and b == 0:
            (barrier / run).touch()
            deadline = time.monotonic() + 120
            while len(list(barrier.iterdir())) < 2:
                if time.monotonic() > deadline:
                    sys.exit("the other writer never committed its first batch while this one was mid-run")
                time.sleep(0.01)
    s.finish_run(run)
"""


def _python(code: str, *args, **kw) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True, **kw)


def test_reads_answer_while_another_process_holds_a_write_transaction(tmp_path):
    lake = tmp_path / "lake"
    Store(lake).close()
    writer = _python(HOLD_WRITER, lake, 20, stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        with Store(lake, read_only=True) as reader:
            assert reader.list_jobs() == []  # the uncommitted row is not visible
        with Store(lake) as other:  # a read-write open (the app, a CLI command) answers reads as well
            assert other.list_runs() == []
        assert time.monotonic() - t0 < 10.0  # did not wait for the writer (it holds for 20 s); speed: benchmarks
        with Store(lake, wait_s=0.3) as blocked, pytest.raises(Exception, match="being written by another job"):
            blocked.write("DELETE FROM jobs")
    finally:
        writer.kill()
        writer.wait()
    with Store(lake, read_only=True) as reader:  # the killed writer's transaction left nothing behind
        assert reader.list_jobs() == []


def test_two_processes_write_different_runs_at_once_and_every_row_is_kept(tmp_path):
    lake = tmp_path / "lake"
    Store(lake).close()
    procs = [_python(WRITE_RUN, lake, run, 12, 5_000) for run in ("run_a", "run_b")]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    with Store(lake, read_only=True) as s:
        for run in ("run_a", "run_b"):
            assert s.cursor().execute(
                "SELECT count(*), count(DISTINCT _row) FROM predictions WHERE run_id = ?", [run]
            ).fetchall() == [(60_000, 60_000)]
            assert s.run_counts(run).rows == 60_000


def test_a_batch_is_committed_once(tmp_path):
    with Store(tmp_path / "lake") as s:
        s.create_run(
            run_id="r",
            traffic="t",
            baseline={},
            candidate={},
            rows_total=2,
            batch_size=2,
            device="cpu",
            mode="batch",
            meta={},
        )
        paired = pa.table({"_row": pa.array([0, 1], pa.int64()), "baseline_score": [0.1, 0.2]})
        s.commit_batch("r", 0, 0, 1, 2, 0.0, paired)
        with pytest.raises(Exception, match="batch 0 of run r is already committed"):
            s.commit_batch("r", 0, 0, 1, 2, 0.0, paired)
        assert s.cursor().execute("SELECT count(*) FROM predictions").fetchall() == [(2,)]
        with pytest.raises(Exception, match="run 'r' already exists"):
            s.create_run(
                run_id="r",
                traffic="t",
                baseline={},
                candidate={},
                rows_total=2,
                batch_size=2,
                device="cpu",
                mode="batch",
                meta={},
            )


def _job_traffic(s: Store, name: str, runs: list[str], rows: int = 100) -> None:
    """A traffic set a job ingested for itself, with runs on it."""
    with s.transaction() as cur:
        cur.execute(
            f'CREATE TABLE "traffic_{name}" AS SELECT range AS _row, range::VARCHAR AS request_id FROM range(?)', [rows]
        )
        cur.execute(
            "INSERT INTO traffic_sets VALUES (?, ?, 'request_id', NULL, NULL, '[]', 'f', 100, 0, "
            "now() - INTERVAL 40 DAY, now() - INTERVAL 40 DAY)",
            [name, "traffic_" + name],
        )
        cur.execute(
            "INSERT INTO jobs (job_id, kind, params, status, created_at) VALUES (?, 'x', '{}', 'finished', now())",
            [name],
        )
        for run in runs:
            cur.execute(
                "INSERT INTO runs VALUES (?, ?, '{}', '{}', 'finished', 100, 100, 'cpu', 'batch', '{}', now(), now())",
                [run, name],
            )
            cur.execute(
                "INSERT INTO predictions (run_id, _row, baseline_score) SELECT ?, range, 0.5 FROM range(100)", [run]
            )


def test_retention_drops_old_job_data_and_keeps_what_a_decision_cites(tmp_path):
    with Store(tmp_path / "lake") as s:
        _job_traffic(s, "job_old", ["run_old"])
        _job_traffic(s, "job_cited", ["run_cited"])
        with s.transaction() as cur:
            cur.execute(
                "INSERT INTO decisions (decision_id, model, kind, run_id, verdict, weight_before, weight_after, "
                "record, record_hash, signature, created_at) VALUES ('d1', 'm', 'decision', 'run_cited', 'HOLD', "
                "0, 0, '{}', 'h', 's', now())"
            )
        dry = collect(s, 30, dry_run=True)
        assert dry.traffic_sets == ["job_old"] and dry.runs == ["run_old"]
        assert dry.rows["predictions"] == 100 and dry.rows["traffic rows"] == 100
        assert s.cursor().execute("SELECT count(*) FROM predictions").fetchall() == [(200,)]  # dry run: unchanged
        assert collect(s, 50).traffic_sets == []  # newer than the retention: kept
        rep = collect(s, 30).to_dict()
        assert rep["runs"] == ["run_old"] and rep["snapshots_expired"] >= 0
        assert s.cursor().execute("SELECT DISTINCT run_id FROM predictions").fetchall() == [("run_cited",)]
        assert [t["name"] for t in s.list_traffic()] == ["job_cited"]
        assert s.drift_table_columns("traffic_job_old") is None
        assert s.get_decision("d1") is not None


def test_an_old_single_file_home_is_refused_then_migrated_with_counts_checked(tmp_path):
    if not LEGACY.is_dir():
        pytest.fail(f"the DuckDB that wrote old homes is missing at {LEGACY}: run `make install`")
    make_old = (
        "import sys, duckdb\n"
        "from workbench.store.schema import SCHEMA\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "[con.execute(ddl) for ddl in SCHEMA]\n"
        "con.execute(\"INSERT INTO runs VALUES ('r1', 't', '{}', '{}', 'finished', 3, 8, 'cpu', 'batch', '{}', \"\n"
        '            "now(), now())")\n'
        'con.execute("INSERT INTO predictions (run_id, _row, baseline_score) "\n'
        "            \"SELECT 'r1', range, 0.1 FROM range(3)\")\n"
        'con.execute("CREATE TABLE traffic_t AS SELECT range AS _row, range::VARCHAR AS request_id FROM range(5)")\n'
        "con.execute(\"INSERT INTO traffic_sets VALUES ('t', 'traffic_t', 'request_id', NULL, NULL, '[]', 'f', 5, \"\n"
        '            "0, now(), now())")\n'
        'con.execute("ALTER TABLE labels DROP COLUMN _row")\n'  # labels as old homes kept them
        "con.execute(\"INSERT INTO labels VALUES ('t', '3', 1, NULL), ('t', 'gone', 0, NULL)\")\n"
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(LEGACY), str(ROOT)])}
    subprocess.run([sys.executable, "-c", make_old, str(tmp_path / "workbench.duckdb")], env=env, check=True)

    def cli(*args):
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        return subprocess.run(
            [sys.executable, "-m", "workbench.cli", *args, "--home", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
        )

    refused = cli("runs")
    assert refused.returncode == 2 and "workbench migrate" in refused.stderr and "old single-file" in refused.stderr
    moved = cli("migrate", "--json")
    assert moved.returncode == 0, moved.stderr
    out = json.loads(moved.stdout)
    assert out["tables"]["predictions"] == {"rows": 3} and out["tables"]["traffic_t"] == {"rows": 5}
    assert out["read_with"] == "2.0.1"
    assert (tmp_path / "workbench.duckdb.migrated").is_file() and not (tmp_path / "workbench.duckdb").exists()
    runs = cli("runs", "--json")
    assert runs.returncode == 0 and "r1" in runs.stdout
    with Store(tmp_path / "lake") as s:
        rows = s.cursor().execute("SELECT request_id, _row FROM labels ORDER BY request_id").fetchall()
    assert rows == [("3", 3), ("gone", None)]  # each label with its request's row, where there is one
    again = cli("migrate")
    assert again.returncode == 2 and "nothing to migrate" in again.stderr


def test_a_data_file_deleted_under_the_catalog_is_named_in_one_line(tmp_path):
    lake = tmp_path / "lake"
    with Store(lake) as s:
        _job_traffic(s, "job_a", ["run_a"], rows=5_000)
        s.write(
            "INSERT INTO predictions (run_id, _row, baseline_score) SELECT 'run_a', range, 0.5 FROM range(100, 5000)"
        )
    victim = next((lake / "data" / "main" / "predictions").glob("*.parquet"))  # evaluate reads it
    victim.unlink()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "evaluate", "run_a", "--home", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: the storage's data file {victim} is missing (deleted or moved under the catalog); "
        "restore it from a backup of the home"
    ]


def test_a_deleted_lake_does_not_break_the_next_one_in_the_same_process(tmp_path):
    """Lakes share the process's DuckDB, whose catalog listings read every attached lake: one deleted while
    idly attached (a test's temporary home) is detached before another opens."""
    import shutil

    for i in range(3):
        with Store(tmp_path / f"gone{i}" / "lake") as s:
            s.create_run(run_id="r", traffic="t", baseline={}, candidate={}, rows_total=1, batch_size=1,
                         device="cpu", mode="batch", meta={})  # fmt: skip
        shutil.rmtree(tmp_path / f"gone{i}")
    with Store(tmp_path / "next" / "lake") as s:
        assert s.list_runs() == []


def _catalog_queries(s: Store, read) -> list[str]:
    """The statements DuckLake sent to the lake's catalog while ``read`` ran (DuckDB's query log)."""
    cur = s.cursor()
    cur.execute("CALL enable_logging(level = 'debug')")
    cur.execute("CALL truncate_duckdb_logs()")
    try:
        read()
    finally:
        cur.execute("CALL disable_logging()")
    rows = cur.execute("SELECT message FROM duckdb_logs WHERE type = 'QueryLog'").fetchall()
    return [m for (m,) in rows if "__ducklake_metadata_" in m]


def _tables_without_stats(lake: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(f"file:{lake / 'catalog.sqlite'}?mode=ro", uri=True) as con:
        return [
            r[0]
            for r in con.execute(
                "SELECT t.table_name FROM ducklake_table t LEFT JOIN ducklake_table_stats s USING (table_id) "
                "WHERE t.end_snapshot IS NULL AND s.table_id IS NULL"
            )
        ]


def test_empty_tables_have_statistics_so_a_read_does_not_query_the_catalog_per_column(tmp_path):
    # DuckLake 1.5.5 re-reads the statistics of a table that has none once per column, on every query
    lake = tmp_path / "lake"
    Store(lake).close()
    assert _tables_without_stats(lake) == []
    with Store(lake, read_only=True) as s:
        assert all(s.cursor().execute(f"SELECT count(*) FROM {t}").fetchall() == [(0,)] for t in ("decisions", "jobs"))
        s.chain("m")  # the catalog's statistics are cached from here on
        queries = _catalog_queries(s, lambda: s.chain("m"))
        assert not [q for q in queries if "ducklake_table_stats" in q], queries


def test_a_home_whose_empty_tables_lack_statistics_gets_them_from_its_next_writer(tmp_path):
    import sqlite3

    lake = tmp_path / "lake"
    Store(lake).close()
    with sqlite3.connect(lake / "catalog.sqlite") as con:  # as a home made by an earlier release is
        con.execute(
            "DELETE FROM ducklake_table_stats WHERE table_id IN "
            "(SELECT table_id FROM ducklake_table WHERE table_name IN ('decisions', 'canary_chain'))"
        )
    assert sorted(_tables_without_stats(lake)) == ["canary_chain", "decisions"]
    with Store(lake, read_only=True) as s:  # a reader changes nothing
        assert s.chain("m") == []
    assert sorted(_tables_without_stats(lake)) == ["canary_chain", "decisions"]
    opener = _python("import sys\nfrom workbench.store import Store\nStore(sys.argv[1]).close()", lake)
    assert opener.wait(timeout=120) == 0  # the next process to open the home for writing
    assert _tables_without_stats(lake) == []
    with Store(lake, read_only=True) as s:
        assert s.chain("m") == [] and s.list_decisions() == []


def test_a_read_snapshot_sees_one_state_and_refuses_writes(tmp_path):
    lake = tmp_path / "lake"
    with Store(lake) as s:
        s.write("INSERT INTO jobs (job_id, kind, params, status, created_at) VALUES ('a', 'x', '{}', 'queued', now())")
        with s.snapshot() as cur:
            before = cur.execute("SELECT count(*) FROM jobs").fetchall()
            writer = _python(
                "import sys\nfrom workbench.store import Store\nwith Store(sys.argv[1]) as s:\n"
                '    s.write("INSERT INTO jobs (job_id, kind, params, status, created_at) '
                "VALUES ('b', 'x', '{}', 'queued', now())\")",
                lake,
            )
            assert writer.wait(timeout=120) == 0
            assert cur.execute("SELECT count(*) FROM jobs").fetchall() == before == [(1,)]
            with pytest.raises(WorkbenchError, match="inside a read snapshot"):
                s.write("DELETE FROM jobs")
        assert s.cursor().execute("SELECT count(*) FROM jobs").fetchall() == [(2,)]


# holds the lock SQLite takes on a WAL database to checkpoint it when its last connection closes (the "pending"
# byte): until it is released, a new connection cannot start its first read
HOLD_CATALOG = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0x40000000)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _while_catalog_held(lake: Path, hold_s: float, op) -> float:
    """Seconds ``op()`` took, started while another process holds the catalog's lock for ``hold_s``."""
    holder = _python(HOLD_CATALOG, lake / "catalog.sqlite", hold_s, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        op()
        return time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()


def test_a_locked_catalog_delays_a_statement_by_milliseconds_not_whole_seconds(tmp_path, monkeypatch):
    """The SQLite inside DuckDB's sqlite_scanner sleeps a whole second whenever a catalog is locked; the store
    waits in milliseconds instead. A store opened, a read, a read snapshot and a write, each started while
    another process holds the catalog's lock for 0.2 s, all wait for it and end well before the 1 s a single
    SQLite busy sleep takes; a lock held past the wait gives a clear error."""
    lake = tmp_path / "lake"
    insert = "INSERT INTO jobs (job_id, kind, params, status, created_at) VALUES (?, 'x', '{}', 'queued', now())"
    with Store(lake) as s:
        s.write(insert, ["a"])

    def snapshot_read() -> None:
        with s.snapshot() as cur:
            assert cur.execute("SELECT count(*) FROM jobs").fetchall()[0][0] >= 1

    with Store(lake) as s:
        took = {
            "open": _while_catalog_held(lake, 0.2, lambda: Store(lake, read_only=True).close()),
            "read": _while_catalog_held(lake, 0.2, lambda: s.list_jobs()),
            "snapshot": _while_catalog_held(lake, 0.2, snapshot_read),
            "write": _while_catalog_held(lake, 0.2, lambda: s.write(insert, ["b"])),
        }
        assert all(0.15 <= t < 0.9 for t in took.values()), took
        # a new process attaches the lake while the catalog is locked (its first attempt fails, the retry must
        # not find an aborted transaction)
        fresh = "import sys\nfrom workbench.store import Store\nStore(sys.argv[1], read_only=True).close()"
        exits: list[int] = []
        _while_catalog_held(lake, 3, lambda: exits.append(_python(fresh, lake, stderr=subprocess.PIPE).wait(120)))
        assert exits == [0]
        assert sorted(j["job_id"] for j in s.list_jobs()) == ["a", "b"]
        monkeypatch.setattr("workbench.store.lake.CATALOG_LOCKED_WAIT_S", 0.3)
        with pytest.raises(WorkbenchError, match="SQLite catalog stayed locked for 0.3 s"):
            _while_catalog_held(lake, 5, lambda: s.list_jobs())


def _keepers(catalog: Path) -> list[int]:
    """Processes holding ``catalog`` open for a store's catalog_kept_open (by their command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(catalog).encode() in args and b"-I" in args:
            found.append(int(proc.name))
    return found


def test_a_catalog_kept_open_is_never_checkpointed_by_a_readers_close(tmp_path):
    """While a store keeps its catalog open (a replay does), a reader process that opens, reads and closes the
    lake is not the catalog's last connection, so it does not checkpoint and delete the WAL on closing (the
    sync under a lock that held every reader for about a second during a replay); the helper holding it ends
    with the block, and with a writer that is SIGKILLed."""
    lake = tmp_path / "lake"
    catalog, wal = lake / "catalog.sqlite", lake / "catalog.sqlite-wal"
    insert = "INSERT INTO jobs (job_id, kind, params, status, created_at) VALUES (?, 'x', '{}', 'queued', now())"
    read = (
        "import sys\nfrom workbench.store import Store\n"
        "with Store(sys.argv[1], read_only=True) as s:\n    s.list_jobs()"
    )
    with Store(lake) as s:
        s.write(insert, ["a"])
        assert _python(read, lake).wait(timeout=120) == 0
        assert not wal.exists()  # the reader's connection was the last: it checkpointed the WAL away
        with s.catalog_kept_open():
            assert len(_keepers(catalog)) == 1
            s.write(insert, ["b"])
            assert _python(read, lake).wait(timeout=120) == 0
            assert wal.exists()
        assert _keepers(catalog) == [] and not wal.exists()  # the helper's close was the last
    hold = (
        "import sys, time\nfrom workbench.store import Store\n"
        "with Store(sys.argv[1]) as s, s.catalog_kept_open():\n    print('kept', flush=True)\n    time.sleep(60)"
    )
    writer = _python(hold, lake, stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "kept"
        assert len(_keepers(catalog)) == 1
    finally:
        writer.kill()
        writer.wait()
    deadline = time.monotonic() + 10
    while _keepers(catalog) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _keepers(catalog) == []
