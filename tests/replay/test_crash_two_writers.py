"""Crash safety with two writers at once: two replays of one traffic set run side by side, on the embedded
SQLite catalog and on a PostgreSQL one, and each is SIGKILLed at seeded points while a reader watches.

Every read sees each run's predictions match its committed units exactly (nothing half-written visible);
after every kill each committed unit is there once; the reruns resume both runs to the same scores.

The killed replays score in batches of 8, so that units commit while the kills land; the reruns that finish
both runs score the rest in batches of 64 (the kills are behind them; a batch's size changes no score), still
side by side. The reader reads both runs in one statement (one snapshot) every ``READ_EVERY_S``: a read costs
tens of milliseconds of the two cores the replays need, up to a second on PostgreSQL."""

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
# per run: predictions, distinct _row values among them, rows of its committed units; both runs in one statement
UNITS_SQL = """WITH p AS (SELECT run_id, count(*) AS n, count(DISTINCT _row) AS d FROM predictions
                          WHERE run_id IN (?, ?) GROUP BY run_id),
                    b AS (SELECT run_id, sum(rows) AS c FROM run_batches WHERE run_id IN (?, ?) GROUP BY run_id)
               SELECT coalesce(p.n, 0), coalesce(p.d, 0), coalesce(b.c, 0)
               FROM (VALUES (?, 0), (?, 1)) r(run_id, i) LEFT JOIN p USING (run_id) LEFT JOIN b USING (run_id)
               ORDER BY r.i"""
READ_EVERY_S = 0.25


def units(reader) -> dict[str, tuple[int, int, int]]:
    """Each run's (predictions, distinct rows, committed unit rows), read in one snapshot."""
    rows = reader.cursor().execute(UNITS_SQL, [*RUNS] * 3).fetchall()
    return dict(zip(RUNS, rows, strict=True))


def replay_args(run_id: str, batch_size: int = 8) -> list[str]:
    return [
        *("replay", "--baseline", f"models:/{MODEL}/1", "--candidate", f"models:/{MODEL}/2", "--traffic", "flights"),
        *("--run-id", run_id, "--batch-size", str(batch_size), "--writers", "2", "--json"),
    ]


def race(home: Path, delays: list[float], env: dict, watch, batch_size: int = 8) -> tuple[list[bool], list[str]]:
    """Both replays at once, each SIGKILLed ``delays[i]`` s after its progress bar appears (unless it ends
    first); ``watch()`` reads every ``READ_EVERY_S`` in between. Whether each was killed, and its stderr."""
    env = os.environ | {"WORKBENCH_HOME": str(home)} | env
    env.pop("MLFLOW_TRACKING_URI", None)
    errs = [home.parent / f"{run}.err" for run in RUNS]
    procs = []
    for run, err in zip(RUNS, errs, strict=True):
        with open(err, "w") as fe:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "workbench.cli", *replay_args(run, batch_size)],
                    env=env,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=fe,
                )  # fmt: skip
            )
    anchors: list[float | None] = [None, None]
    killed = [False, False]
    t0 = read_at = time.monotonic()
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
        if now >= read_at:
            read_at = now + READ_EVERY_S
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
            for run, (n, distinct, committed) in units(reader).items():
                assert n == distinct == committed, (run, n, distinct, committed)
            reads += 1

        for round_no in range(kills(3, 1)):
            delays = [rng.uniform(0.2, 2.5) for _ in RUNS]
            killed, errs = race(home, delays, env, watch)
            assert all(killed), [e[-1500:] for e in errs]
            for run, (n, distinct, committed) in units(reader).items():
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
        killed, errs = race(home, [1e9, 1e9], env, watch, batch_size=64)  # the reruns resume both to the end
        assert killed == [False, False] and "Traceback" not in "".join(errs)
        assert all("resuming run" in err for err in errs)  # each went on from its committed units
        assert units(reader) == {run: (total, total, total) for run in RUNS}
        cur = reader.cursor()
        for run in RUNS:
            assert cur.execute("SELECT status FROM runs WHERE run_id = ?", [run]).fetchall() == [("finished",)]
        diff = cur.execute(
            """SELECT count(*), max(abs(a.baseline_score - b.baseline_score)),
                      max(abs(a.candidate_score - b.candidate_score))
               FROM predictions a JOIN predictions b USING (_row) WHERE a.run_id = ? AND b.run_id = ?""",
            list(RUNS),
        ).fetchall()[0]
    assert diff[0] == total and diff[1] < 1e-9 and diff[2] < 1e-5 and reads > 0
