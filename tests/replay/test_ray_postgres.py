"""Ray replays on a PostgreSQL catalog: the actors commit their units straight into the lake (the driver only
counts them) and its data files on an object store (the actors reach it with the driver's credentials), a replay
killed at seeded points resumes with every request exactly once, and the progress bar moves as a local replay's
does. Against a real PostgreSQL server, moto's S3 server and the module's local Ray cluster (conftest's
``ray_cluster``: three logical CPUs, two actors and one for reading the traffic), started before the test sets the
AWS variables."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from test_crash_safety import shoot

from conftest import REPO, kills, run_cli
from workbench.replay.ray_executor import contiguous_units
from workbench.store import Store
from workbench.store.lake import LakeTarget

ray = pytest.importorskip("ray", reason="Ray is an optional extra")
MODEL = "flight-delay"


def scores(store: Store, traffic: str, run_id: str) -> dict[str, tuple]:
    """request id -> (baseline score, candidate score, baseline class, candidate class, candidate error)."""
    rows = (
        store.cursor()
        .execute(
            f"""SELECT t.request_id, p.baseline_score, p.candidate_score, p.baseline_class, p.candidate_class,
                       p.candidate_error
                FROM predictions p JOIN traffic_{traffic} t USING (_row) WHERE p.run_id = ?""",
            [run_id],
        )
        .fetchall()
    )
    return {r[0]: r[1:] for r in rows}


def test_ray_actors_write_into_a_postgres_lake_on_s3_and_a_killed_replay_resumes_exactly_once(
    pg_catalog, s3_data_path, demo_home, ray_cluster, tmp_path
):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    demo = json.loads((home / "demo.json").read_text())
    out = run_cli("ingest", str(home / "data" / "traffic.parquet"), "--name", "pgflights", "--json", home=home)
    total = json.loads(out.stdout)["rows"]
    local_files = sorted(tmp_path.rglob("*.parquet"))  # the demo's own: nothing the replay writes lands here
    args = [
        *("replay", "--baseline", f"models:/{MODEL}/1", "--candidate", f"models:/{MODEL}/2"),
        *("--traffic", "pgflights", "--run-id", "ray_pg", "--batch-size", "50", "--json"),
        *("--executor", "ray", "--ray-actors", "2", "--ray-address", ray_cluster),
    ]
    rng, seen = random.Random(3003), [0]
    env = os.environ | {"WORKBENCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    with Store(home / "lake", read_only=True) as s:
        for _ in range(kills(2, 1)):  # SIGKILLed at a seeded point after the actors' first commits
            err = tmp_path / "replay.err"
            with open(err, "w") as fe:
                proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *args], env=env, cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=fe)  # fmt: skip
            sql = "SELECT coalesce(sum(rows), 0) FROM run_batches WHERE run_id = 'ray_pg'"
            deadline = time.monotonic() + 300
            while s.cursor().execute(sql).fetchall()[0][0] <= seen[-1]:
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text(errors="replace")[-3000:]
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 0.5))
            proc.kill()
            proc.wait()
            n, distinct, committed = (
                s.cursor()
                .execute(
                    "SELECT count(*), count(DISTINCT _row), (SELECT sum(rows) FROM run_batches WHERE run_id = "
                    "'ray_pg') FROM predictions WHERE run_id = 'ray_pg'"
                )
                .fetchall()[0]
            )
            assert n == distinct == committed > seen[-1] and n < total  # each committed unit once, whole
            seen.append(n)
    # the resume scores what is left in batches of 500 (still inlined in the catalog): a resume may change the
    # batch size, and its batches are cut around the units the killed replay committed
    args[args.index("--batch-size") + 1] = "500"
    done = shoot(args, home, 600, env={"WORKBENCH_CATALOG": pg_catalog})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["rows"] == total
    assert "each committing into the lake" in done.stderr  # the actors wrote, not the driver
    assert "replay: " in done.stderr and "rows/s]" in done.stderr  # the progress bar of a local replay
    # the actors attached the lake on the bucket (a store that refuses them fails the replay); their units of at
    # most 500 rows stay in the catalog (DuckLake inlines them), so nothing lands on local disk
    assert sorted(tmp_path.rglob("*.parquet")) == local_files
    with Store(home / "lake", read_only=True) as s:
        assert s.data_path == s3_data_path
        assert s.cursor().execute(
            "SELECT count(*), count(DISTINCT _row), min(seconds) > 0 FROM predictions p "
            "JOIN run_batches b ON b.run_id = p.run_id AND p._row BETWEEN b.first_row AND b.first_row + b.span - 1 "
            "WHERE p.run_id = 'ray_pg'"
        ).fetchall() == [(total, total, True)]  # every row in exactly one unit, each unit timed by its actor
        # a unit is a whole batch (50 rows before the kill, 500 after) but where a resume or another batch holds
        # rows inside it: the rows the ingest quarantined (a gap in _row every few rows of the demo's traffic) do
        # not cut it (the resume's batches are cut at most once around each unit committed before the kill)
        units = s.cursor().execute("SELECT count(*) FROM run_batches WHERE run_id = 'ray_pg'").fetchall()[0][0]
        before = -(-seen[-1] // 50)
        assert units <= 2 * before + -(-total // 500) + 20, (units, seen, total)
        got = scores(s, "pgflights", "ray_pg")
    sqlite = home / "lake"
    with Store(sqlite, read_only=True, target=LakeTarget(sqlite, None, str(sqlite / "data") + os.sep)) as s:
        want = scores(s, "flights", demo["replay"]["run_id"])  # the demo's local replay, in its SQLite lake
    common = got.keys() & want.keys()  # the demo replayed its own traffic set: the requests both hold
    assert len(got) == total and len(common) >= total // 2, (len(got), len(common))
    for rid in common:
        (bs, cs, bc, cc, ce), g = want[rid], got[rid]
        assert abs(g[0] - bs) < 1e-9 and abs(g[1] - cs) < 1e-5 and g[2:] == (bc, cc, ce), rid


def test_a_replay_cut_off_by_a_stopped_catalog_names_it_and_resumes(pg_catalog, postgres_server, demo_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    out = run_cli("ingest", str(home / "data" / "traffic.parquet"), "--name", "pgflights", "--json", home=home)
    total = json.loads(out.stdout)["rows"]
    replay = ("replay", "--baseline", f"models:/{MODEL}/1", "--candidate", f"models:/{MODEL}/2")
    args = [*replay, "--traffic", "pgflights", "--run-id", "cut", "--json"]
    env = os.environ | {"WORKBENCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    err = tmp_path / "replay.err"
    with open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *args, "--batch-size", "8"], env=env,
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=fe)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "replay: " not in err.read_text(errors="replace"):  # rows are being committed
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-2000:]
            time.sleep(0.05)
        postgres_server.stop()
        rc = proc.wait(timeout=120)  # fails, rather than hanging on the catalog
    finally:
        if proc.poll() is None:
            proc.kill()
        postgres_server.start()
    last = err.read_text(errors="replace").strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err.read_text(), err.read_text()[-2000:]
    assert last.startswith("error: the workbench's PostgreSQL catalog 'dbname=") and "cannot be reached" in last
    # the catalog is back: the run resumes, committing what is left in batches of 1000 (a resume may change the
    # batch size; the 8 above only make sure the catalog stops mid-run)
    done = run_cli(*args, "--batch-size", "1000", home=home, timeout=600)
    assert json.loads(done.stdout)["rows"] == total and "resuming run cut after" in done.stderr
    with Store(home / "lake", read_only=True) as s:
        assert s.cursor().execute(
            "SELECT count(*), count(DISTINCT _row) FROM predictions WHERE run_id = 'cut'"
        ).fetchall() == [(total, total)]


def test_a_commit_unit_is_cut_only_where_the_traffic_holds_rows_inside_it():
    rows = np.array([1, 2, 4, 5, 9, 10])  # _row 3 was quarantined; 6-8 were committed before a resume
    assert contiguous_units(rows, np.array([0, 1, 2, 4, 8, 9])) == [(0, 4), (4, 6)]
    assert contiguous_units(rows, np.array([-1, 1, 2, 4, 5, 9])) == [(0, 6)]  # nothing between: one unit
    assert contiguous_units(np.array([7]), np.array([3])) == [(0, 1)]
