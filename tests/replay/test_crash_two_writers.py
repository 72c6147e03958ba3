"""Crash safety with two writers at once: two replays of one traffic set run side by side, on the embedded
SQLite catalog and on a PostgreSQL one, and each is SIGKILLed at seeded points while a reader watches.

Every read sees each run's predictions match its committed units exactly (nothing half-written visible);
after every kill each committed unit is there once; the reruns resume both runs to the same scores."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_crash_safety import copy_demo

from conftest import REPO, kills, run_cli
from reliability_log import record
from workbench.store import Store

MODEL = "flight-delay"
RUNS = ("two_a", "two_b")
UNITS_SQL = """SELECT (SELECT count(*) FROM predictions WHERE run_id = ?),
                      (SELECT count(DISTINCT _row) FROM predictions WHERE run_id = ?),
                      (SELECT coalesce(sum(rows), 0) FROM run_batches WHERE run_id = ?)"""


def replay_args(run_id: str) -> list[str]:
    return [
        *("replay", "--baseline", f"models:/{MODEL}/1", "--candidate", f"models:/{MODEL}/2", "--traffic", "flights"),
        *("--run-id", run_id, "--batch-size", "8", "--writers", "2", "--json"),
    ]


def race(home: Path, delays: list[float], env: dict, watch) -> tuple[list[bool], list[str]]:
    """Both replays at once, each SIGKILLed ``delays[i]`` s after its progress bar appears (unless it ends
    first); ``watch()`` reads between checks. Whether each was killed, and its stderr."""
    env = os.environ | {"WORKBENCH_HOME": str(home)} | env
    env.pop("MLFLOW_TRACKING_URI", None)
    errs = [home.parent / f"{run}.err" for run in RUNS]
    procs = []
    for run, err in zip(RUNS, errs, strict=True):
        with open(err, "w") as fe:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "workbench.cli", *replay_args(run)],
                    env=env,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=fe,
                )  # fmt: skip
            )
    anchors: list[float | None] = [None, None]
    killed = [False, False]
    t0 = time.monotonic()
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        assert now - t0 < 600, "the replays neither finished nor reached their kill"
        for i, p in enumerate(procs):
            if p.poll() is not None:
                continue
            if anchors[i] is None and "replay: " in errs[i].read_text(errors="replace"):
                anchors[i] = now
            if anchors[i] is not None and now - anchors[i] >= delays[i]:
                p.kill()
                p.wait()
                killed[i] = True
        watch()
        time.sleep(0.05)
    return killed, [e.read_text(errors="replace") for e in errs]


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_two_replays_killed_at_seeded_points_keep_every_unit_once(catalog, demo_home, tmp_path, request):
    env: dict[str, str] = {}
    home = copy_demo(demo_home, tmp_path / "crash2" / "home")
    total = json.loads((home / "demo.json").read_text())["replay"]["rows"]
    if catalog == "postgres":
        env["WORKBENCH_CATALOG"] = request.getfixturevalue("pg_catalog")  # for this process too
        out = run_cli("ingest", str(home / "data" / "traffic.parquet"), "--name", "flights", "--json", home=home)
        total = json.loads(out.stdout)["rows"]  # the lake on PostgreSQL starts empty: the demo's later traffic
    rng = random.Random(4004)
    reads, seen = 0, {run: 0 for run in RUNS}
    with Store(home / "lake", read_only=True) as reader:

        def watch() -> None:
            nonlocal reads
            for run in RUNS:  # one statement: one snapshot
                n, distinct, committed = reader.cursor().execute(UNITS_SQL, [run] * 3).fetchall()[0]
                assert n == distinct == committed, (run, n, distinct, committed)
            reads += 1

        for round_no in range(kills(3, 1)):
            delays = [rng.uniform(0.2, 2.5) for _ in RUNS]
            killed, errs = race(home, delays, env, watch)
            assert all(killed), [e[-1500:] for e in errs]
            for run in RUNS:
                n, distinct, committed = reader.cursor().execute(UNITS_SQL, [run] * 3).fetchall()[0]
                assert n == distinct == committed >= seen[run]  # units once, none lost
                seen[run] = n
            record(
                "crash",
                f"two replays at once ({catalog} catalog), SIGKILL at {delays[0]:.2f} s and {delays[1]:.2f} s "
                f"after their bars appeared (round {round_no + 1})",
                "each committed unit once in both runs; every read saw whole units",
                committed_a=seen["two_a"],
                committed_b=seen["two_b"],
                traffic_rows=total,
            )
        killed, errs = race(home, [1e9, 1e9], env, watch)  # the reruns resume both to the end
        assert killed == [False, False] and "Traceback" not in "".join(errs)
        cur = reader.cursor()
        for run in RUNS:
            assert cur.execute(UNITS_SQL, [run] * 3).fetchall()[0] == (total, total, total)
            assert cur.execute("SELECT status FROM runs WHERE run_id = ?", [run]).fetchall() == [("finished",)]
        diff = cur.execute(
            """SELECT count(*), max(abs(a.baseline_score - b.baseline_score)),
                      max(abs(a.candidate_score - b.candidate_score))
               FROM predictions a JOIN predictions b USING (_row) WHERE a.run_id = ? AND b.run_id = ?""",
            list(RUNS),
        ).fetchall()[0]
    assert diff[0] == total and diff[1] < 1e-9 and diff[2] < 1e-5 and reads > 0
