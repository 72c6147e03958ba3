"""The lake on a PostgreSQL catalog (``$WORKBENCH_CATALOG``), against a real throwaway PostgreSQL server:
the store's round trip, two writer processes at once, no fork of a model's chain, and a catalog that stops
and comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from test_lake import WRITE_RUN

from conftest import REPO, free_port, fresh_run, make_evaluation, run_cli, seed_run
from workbench.errors import WorkbenchError
from workbench.store import Store
from workbench.store.lake import CATALOG_FILE, LakeTarget, redact


def dead_mlflow() -> dict:
    """An MLflow URI nothing answers on: decisions are recorded for a later ``workbench sync``."""
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}


def _python(code: str, *args) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True, stderr=subprocess.PIPE)


def test_the_catalog_setting_is_read_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_CATALOG", raising=False)
    monkeypatch.delenv("WORKBENCH_DATA_PATH", raising=False)
    assert LakeTarget.of(tmp_path) == LakeTarget(tmp_path, None, str(tmp_path / "data") + "/")
    monkeypatch.setenv("WORKBENCH_CATALOG", "postgresql://wb:s3cret@db:5432/lake")
    monkeypatch.setenv("WORKBENCH_DATA_PATH", "s3://bucket/lake")
    t = LakeTarget.of(tmp_path)
    assert (t.postgres, t.data_path) == ("postgresql://wb:s3cret@db:5432/lake", "s3://bucket/lake/")
    assert "s3cret" not in t.label and "postgresql://wb:***@db:5432/lake" in t.label
    monkeypatch.setenv("WORKBENCH_CATALOG", "postgres:dbname=lake host=db password=s3cret")
    assert LakeTarget.of(tmp_path).postgres == "dbname=lake host=db password=s3cret"
    assert redact("dbname=lake password='a b' host=db") == "dbname=lake password=*** host=db"
    monkeypatch.setenv("WORKBENCH_CATALOG", "mysql://wb:s3cret@db/lake")
    with pytest.raises(WorkbenchError, match=r"WORKBENCH_CATALOG must be .* not 'mysql://wb:\*\*\*@db/lake'"):
        LakeTarget.of(tmp_path)


def test_round_trip_on_a_postgres_catalog_with_a_shared_data_path(pg_catalog, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("WORKBENCH_DATA_PATH", str(shared))
    lake = tmp_path / "home" / "lake"
    with Store(lake) as s:
        s.create_run(run_id="r", traffic="t", baseline={"v": 1}, candidate={"v": 2}, rows_total=3000,
                     batch_size=1500, device="cpu", mode="batch", meta={})  # fmt: skip
        for b in range(2):
            rows = pa.array(range(b * 1500, (b + 1) * 1500), pa.int64())
            s.commit_batch(
                "r", b, b * 1500, b * 1500 + 1499, 1500, 0.1, pa.table({"_row": rows, "baseline_score": rows})
            )
        with pytest.raises(WorkbenchError, match="batch 1 of run r is already committed"):
            s.commit_batch("r", 1, 0, 0, 1, 0.0, pa.table({"_row": pa.array([0], pa.int64())}))
        s.finish_run("r")
    assert not (lake / CATALOG_FILE).exists()  # the catalog is PostgreSQL's
    assert list(shared.rglob("*.parquet"))  # the data files are on the data path
    other = tmp_path / "elsewhere" / "lake"  # another machine's home on the same catalog and data path
    with Store(other, read_only=True) as s:
        assert s.run_counts("r").rows == 3000 and s.committed_ranges("r") == [(0, 2999)]
        assert s.cursor().execute("SELECT sum(baseline_score) FROM predictions").fetchall() == [(sum(range(3000)),)]
        assert s.get_run("r")["baseline"] == {"v": 1}
        assert s._tables_without_stats() == []  # the empty tables got their statistics (reading PostgreSQL's catalog)
        assert s.chain("m") == [] and s.cursor().execute("SELECT count(*) FROM decisions").fetchall() == [(0,)]


def test_two_processes_write_different_runs_at_once_on_postgres(pg_catalog, tmp_path):
    lake = tmp_path / "lake"
    Store(lake).close()
    barrier = tmp_path / "ready"
    barrier.mkdir()  # each writer commits its first batch, then waits for the other's: a per-run lock would hang here
    procs = [
        _python(WRITE_RUN, tmp_path / f"host_{run}" / "lake", run, 10, 3_000, barrier) for run in ("run_a", "run_b")
    ]
    results = [(p.wait(timeout=240), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    with Store(lake, read_only=True) as s:
        for run in ("run_a", "run_b"):
            assert s.cursor().execute(
                "SELECT count(*), count(DISTINCT _row) FROM predictions WHERE run_id = ?", [run]
            ).fetchall() == [(30_000, 30_000)]
            assert s.run_counts(run).rows == 30_000
        # the two writers' commits interleaved (neither waited for the other to finish its run)
        spans = (
            s.cursor()
            .execute(
                "SELECT run_id, min(committed_at), max(committed_at) FROM run_batches GROUP BY run_id ORDER BY run_id"
            )
            .fetchall()
        )
        assert spans[0][1] < spans[1][2] and spans[1][1] < spans[0][2], spans


def test_the_writer_lock_is_one_across_processes_and_dies_with_its_holder(pg_catalog, tmp_path):
    hold = """
import sys, time
from workbench.store import Store
with Store(sys.argv[1]) as s, s.transaction() as cur:
    cur.execute("INSERT INTO jobs (job_id, kind, params, status, created_at) VALUES ('held', 'x', '{}', 'q', now())")
    print("holding", flush=True)
    time.sleep(60)
"""
    lake = tmp_path / "lake"
    Store(lake).close()
    env = os.environ | {"PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "b" / "lake")], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "holding"
        with Store(lake, read_only=True) as reader:
            assert reader.list_jobs() == []  # reads do not wait, and see nothing uncommitted
        with Store(lake, wait_s=0.5) as blocked, pytest.raises(WorkbenchError, match="being written by another job"):
            blocked.write("DELETE FROM jobs")
    finally:
        writer.kill()
        writer.wait()
    with Store(lake, wait_s=30) as s:  # the killed holder's connection closed, and its lock with it
        s.write("DELETE FROM jobs")
        assert s.list_jobs() == []


@pytest.fixture
def pg_home(pg_catalog, tmp_path) -> Path:
    """:func:`seeded_home` on a PostgreSQL catalog."""
    from workbench.decide.signing import init_keys

    home = tmp_path / "home"
    init_keys(home / "keys")
    with Store(home / "lake") as store:
        seed_run(store, "run_a", make_evaluation("run_a"))
        fresh_run(store, 1)
    return home


def test_two_concurrent_decides_never_fork_the_chain_on_postgres(pg_home):
    free_mlflow = dead_mlflow()
    env = os.environ | {"WORKBENCH_HOME": str(pg_home)} | free_mlflow
    commands = [["decide", run, "--justification", "reviewed", "--json"] for run in ("run_a", "run_a1")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "workbench.cli", *c],
            env=env,
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for c in commands
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    applied = [json.loads(out)["decision_id"] for rc, out, _ in results if rc == 0]
    for rc, _, err in results:
        assert rc == 0 or (rc == 2 and err.strip().count("\n") == 0), err[-2000:]
    assert applied, [r[2][-500:] for r in results]
    with Store(pg_home / "lake", read_only=True) as s:
        rows = (
            s.cursor()
            .execute("SELECT sequence, decision_id FROM canary_chain WHERE model = 'fraud' ORDER BY sequence")
            .fetchall()
        )
    assert [q for q, _ in rows] == list(range(1, len(rows) + 1)) and {d for _, d in rows} == set(applied)
    st = json.loads(run_cli("canary", "status", "fraud", "--json", home=pg_home, env=free_mlflow).stdout)
    assert st["verified"] and st["sequence"] == len(rows)


def test_a_stopped_catalog_is_named_in_one_line_and_work_resumes_when_it_returns(pg_catalog, postgres_server, tmp_path):
    free_mlflow = dead_mlflow()
    home = tmp_path / "home"
    with Store(home / "lake") as store:
        seed_run(store, "run_a", make_evaluation("run_a"))
    postgres_server.stop()
    try:
        out = run_cli("runs", "--json", home=home, env=free_mlflow, check=False)
    finally:
        postgres_server.start()
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert (
        "PostgreSQL catalog" in out.stderr and "cannot be reached" in out.stderr and "WORKBENCH_CATALOG" in out.stderr
    )
    assert "run_a" in run_cli("runs", "--json", home=home, env=free_mlflow).stdout
