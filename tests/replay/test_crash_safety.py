"""Crash safety: SIGKILL at random points of ingest, replay, evaluate and decide, each a real
``python -m workbench.cli`` process on a copy of the small demo.

The kill delays come from seeded generators (21 kills in all for the reliability report, the first 9 of them
in the suite: see ``conftest.kills``). After every kill the storage opens, counts reconcile (traffic rows +
quarantined rows = rows read; predictions = committed batch rows, each ``_row`` once), every stored decision
verifies and the signed chain is intact, and the canary weight is the old or the new one. Then the
interrupted command (or, after an applied decision, ``workbench sync``) runs again and ends where an
uninterrupted run ends.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from conftest import REPO, cli, kills, seed_run
from reliability_log import record
from workbench.decide.chain import status as canary_status
from workbench.decide.chain import verify_chain
from workbench.decide.signing import PRIVATE_FILE, init_keys, trusted_keys, verify_signature
from workbench.evaluate.stored import evaluation_is_current
from workbench.ops.progress import progress_dir
from workbench.store import Store, traffic_table

MODEL = "flight-delay"
# the replay's progress bar, drawn once its run is open and before its first unit is scored ("replay" alone
# also matches the log line of a model loading without CUDA, seconds earlier)
REPLAY_BAR = "replay: "


@dataclass(frozen=True)
class Shot:
    """One CLI process, killed after ``delay`` seconds (from its start, or from an anchor: a text in its stderr,
    or a predicate on what it wrote, e.g. its progress file)."""

    killed: bool
    returncode: int
    seconds: float  # from the start of the process
    anchored: float | None  # when the anchor showed up, from the start
    stdout: str
    stderr: str


def shoot(
    args: list[str],
    home: Path,
    delay: float,
    *,
    anchor: str | Callable[[], bool] | None = None,
    env: dict | None = None,
    timeout: float = 300,
) -> Shot:
    env = os.environ | {"WORKBENCH_HOME": str(home)} | (env or {})
    env.pop("MLFLOW_TRACKING_URI", None)
    out, err = home.parent / "shot.out", home.parent / "shot.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *args], env=env, cwd=REPO, stdout=fo, stderr=fe)
        t0 = start = time.monotonic()
        anchored = None
        if anchor is not None:  # a progress bar (the command's real work has begun) or a committed unit
            reached = anchor if callable(anchor) else lambda: anchor in err.read_text(errors="replace")
            while proc.poll() is None and not reached():
                if time.monotonic() - t0 > timeout:
                    break
                time.sleep(0.01)
            start = time.monotonic()
            anchored = start - t0
        try:
            proc.wait(timeout=max(0.0, start + delay - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return Shot(
        proc.returncode == -signal.SIGKILL,
        proc.returncode,
        time.monotonic() - t0,
        anchored,
        out.read_text(),
        err.read_text(errors="replace"),
    )


def complete(args: list[str], home: Path, anchor: str | None = None) -> Shot:
    shot = shoot(args, home, delay=600, anchor=anchor)
    assert shot.returncode == 0, shot.stderr[-3000:]
    return shot


def copy_demo(demo_home: Path, dest: Path) -> Path:
    shutil.copytree(demo_home, dest)
    return dest


# -- ingest --------------------------------------------------------------------------------------------------
def write_big_csv(path: Path, n: int = 300_000) -> int:
    """A traffic CSV large enough to take seconds to ingest, with bad rows (types, duplicates) to quarantine.
    Made with numpy and Arrow's CSV writer (pandas' date formatting and writer took seconds of the test)."""
    rng = np.random.default_rng(10)
    seconds = np.datetime64("2024-07-01T00:00:00", "s") + np.arange(n)
    cols = {
        "request_id": np.char.add("b", np.char.zfill(np.arange(n).astype(str), 7)),
        "event_time": np.char.add(np.datetime_as_string(seconds, unit="s"), "Z"),
        **{f"x{j}": rng.normal(size=n).round(6).astype(str) for j in range(4)},
        "seg": rng.choice(["a", "b", "c"], n),
    }
    bad = rng.choice(n, n // 100, replace=False)
    cols["x1"][bad] = "oops"
    cols["request_id"][bad[: len(bad) // 2] + 1] = cols["request_id"][bad[: len(bad) // 2]]
    table = pa.table({name: pa.array(values, pa.string()) for name, values in cols.items()})
    with open(path, "wb") as f:  # no name or value holds a comma or a quote: nothing quoted
        f.write((",".join(cols) + "\n").encode())
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return n


def ingest_state(store: Store, name: str, file_rows: int) -> dict:
    """Counts of a traffic set, checked: the set holds each id once, and what ingests read = kept + quarantined."""
    cur = store.cursor()
    ingests = cur.execute(
        "SELECT rows_read, rows_ingested, rows_quarantined FROM ingests WHERE traffic = ? AND kind = 'traffic'", [name]
    ).fetchall()
    quarantined = cur.execute("SELECT count(*) FROM quarantine WHERE traffic = ?", [name]).fetchall()[0][0]
    info = store.traffic_info(name)
    if info is None:
        assert ingests == [] and quarantined == 0
        return {"ingests": 0, "rows": 0, "quarantined": 0, "digest": None}
    n, ids, digest = cur.execute(
        f"SELECT count(*), count(DISTINCT request_id), bit_xor(hash(t)) FROM {traffic_table(name)} t"
    ).fetchall()[0]
    assert n == ids == info["rows"] and quarantined == info["quarantined"]
    assert all(r == file_rows and r == k + q for r, k, q in ingests)  # each ingest: the whole file or nothing
    assert n + quarantined == sum(r for r, _, _ in ingests)
    return {"ingests": len(ingests), "rows": n, "quarantined": quarantined, "digest": digest}


def test_ingest_killed_at_random_points(tmp_path, demo_home):
    rng = random.Random(1001)
    src = tmp_path / "big.csv"
    file_rows = write_big_csv(src)
    args = ["ingest", str(src), "--name", "big", "--json"]
    ref_home = copy_demo(demo_home, tmp_path / "ref" / "home")
    ref = complete(args, ref_home, anchor="ingest")  # the progress bar: the file is being read
    work = ref.seconds - ref.anchored
    with Store(ref_home / "lake") as store:
        want = ingest_state(store, "big", file_rows)
    home = copy_demo(demo_home, tmp_path / "crash" / "home")
    done, wanted = 0, kills(9, 3)
    while done < wanted:
        if done < 2:  # while the command starts (imports, opening the database)
            shot = shoot(args, home, rng.uniform(0.1, 1.0) * ref.anchored)
        else:  # while it reads, stages, commits and checkpoints
            shot = shoot(args, home, rng.uniform(0.0, 1.0) * work, anchor="ingest")
        assert shot.killed or shot.returncode == 0, shot.stderr[-2000:]
        with Store(home / "lake") as store:  # opens: the WAL is replayed or discarded
            got = ingest_state(store, "big", file_rows)
            assert store.traffic_count("flights") > 0  # what was there before is untouched
        assert got["digest"] in (None, want["digest"])
        if shot.killed:
            done += 1
            record(
                "crash",
                f"ingest 300k-row CSV, SIGKILL at {shot.seconds:.2f} s (reading began at "
                f"{shot.anchored if shot.anchored is not None else ref.anchored:.2f} s)",
                "committed before the kill" if got["ingests"] else "nothing written (one transaction)",
                traffic_rows=got["rows"],
                quarantined=got["quarantined"],
                rows_read=got["rows"] + got["quarantined"],
            )
    if got["ingests"] == 0:
        complete(args, home)
    with Store(home / "lake") as store:
        final = ingest_state(store, "big", file_rows)
    assert (final["rows"], final["digest"]) == (want["rows"], want["digest"])
    record(
        "crash",
        f"ingest rerun after {wanted} kills",
        "traffic table identical to an uninterrupted ingest",
        traffic_rows=final["rows"],
        quarantined=final["quarantined"],
        rows_read=final["rows"] + final["quarantined"],
        file_rows=file_rows,
    )


# -- replay --------------------------------------------------------------------------------------------------
def replay_state(store: Store, run_id: str, traffic_rows: int) -> dict:
    cur = store.cursor()
    committed = cur.execute(
        "SELECT coalesce(sum(rows), 0), count(*) FROM run_batches WHERE run_id = ?", [run_id]
    ).fetchall()[0]
    n, distinct, outside = cur.execute(
        f"""SELECT count(*), count(DISTINCT p._row), count(*) FILTER (WHERE t._row IS NULL)
            FROM predictions p LEFT JOIN {traffic_table("flights")} t USING (_row) WHERE p.run_id = ?""",
        [run_id],
    ).fetchall()[0]
    assert n == distinct == committed[0] and outside == 0  # each committed row once, nothing else
    covered = sum(b - a + 1 for a, b in store.committed_ranges(run_id))
    assert covered >= n and n <= traffic_rows
    run = store.get_run(run_id)
    return {"rows": n, "batches": committed[1], "status": run["status"] if run else None}


def test_replay_killed_at_random_points_resumes_to_the_same_result(tmp_path, demo_home):
    rng = random.Random(1002)
    home = copy_demo(demo_home, tmp_path / "crash" / "home")
    demo = json.loads((home / "demo.json").read_text())
    ref_run, total = demo["replay"]["run_id"], demo["replay"]["rows"]
    args = [
        "replay",
        "--baseline",
        f"models:/{MODEL}/1",
        "--candidate",
        f"models:/{MODEL}/2",
        "--traffic",
        "flights",
        "--run-id",
        "crash_run",
        "--batch-size",
        "4",
        "--writers",
        "2",
        "--json",
    ]
    done, wanted, seen = 0, kills(4, 2), []
    while done < wanted:
        shot = shoot(args, home, rng.uniform(0.0, 1.5), anchor=REPLAY_BAR)
        assert shot.killed, f"the replay finished before its kill: {shot.stdout}"
        done += 1
        with Store(home / "lake") as store:
            st = replay_state(store, "crash_run", total)
        assert st["status"] in (None, "running") and st["rows"] >= (seen[-1] if seen else 0)
        seen.append(st["rows"])
        record(
            "crash",
            f"replay (batch 4, 2 writers), SIGKILL at {shot.seconds:.2f} s (replay began at {shot.anchored:.2f} s)",
            f"{st['rows']} of {total} rows committed in {st['batches']} batches; resumed by the next run",
            predictions=st["rows"],
            distinct_rows=st["rows"],
            traffic_rows=total,
        )
    # the rest in batches of 64: the kills (in batches of 4, so that units commit while they land) are behind it,
    # and a batch's size changes no score; the scores are still compared with the demo's uninterrupted run
    resume = [a if a != "4" else "64" for a in args]
    last = complete(resume, home)
    assert f"resuming run crash_run after {seen[-1]} committed rows" in last.stderr
    out = json.loads(last.stdout)
    assert out["rows"] == total and out["status"] == "finished"
    with Store(home / "lake") as store:
        st = replay_state(store, "crash_run", total)
        diff = (
            store.cursor()
            .execute(
                """SELECT count(*), max(abs(a.baseline_score - b.baseline_score)),
                      max(abs(a.candidate_score - b.candidate_score)),
                      count(*) FILTER (WHERE a.baseline_class <> b.baseline_class
                                       OR a.candidate_class <> b.candidate_class
                                       OR coalesce(a.candidate_error, '') <> coalesce(b.candidate_error, ''))
               FROM predictions a JOIN predictions b USING (_row) WHERE a.run_id = 'crash_run' AND b.run_id = ?""",
                [ref_run],
            )
            .fetchall()[0]
        )
    assert st["rows"] == total and st["status"] == "finished"
    assert diff[0] == total and diff[1] < 1e-9 and diff[2] < 1e-5 and diff[3] == 0
    record(
        "crash",
        f"replay resumed after {wanted} kills",
        "every request exactly once; scores equal the demo's uninterrupted run",
        predictions=st["rows"],
        distinct_rows=st["rows"],
        traffic_rows=total,
        committed_before_final_run=seen[-1],
    )


def committed_rows(home: Path, run_id: str) -> int:
    """The committed rows a replay's progress file reports (0 until it exists): the replay writes it after each
    committed unit, replacing it whole."""
    try:
        return int(json.loads((progress_dir(home) / f"{run_id}.json").read_text())["rows_done"])
    except (OSError, ValueError):
        return 0


def test_an_interrupted_run_is_evaluated_only_when_asked_and_marked_partial(tmp_path, demo_home):
    home = copy_demo(demo_home, tmp_path / "crash" / "home")
    total = json.loads((home / "demo.json").read_text())["replay"]["rows"]
    replay = [
        "replay",
        *("--baseline", f"models:/{MODEL}/1", "--candidate", f"models:/{MODEL}/2", "--traffic", "flights"),
        *("--run-id", "cut_run", "--batch-size", "4", "--json"),
    ]
    # killed as soon as its progress file reports a committed unit (waiting on that, not on a guessed delay)
    shot = shoot(replay, home, 0.0, anchor=lambda: committed_rows(home, "cut_run") > 0)
    assert shot.killed, "the replay finished before its kill"
    with Store(home / "lake") as store:
        done = replay_state(store, "cut_run", total)["rows"]
    assert 0 < done < total
    # the refusals are real processes (their exit status is what a script sees); what the commands print and
    # store is checked in this process (workbench.cli.main, as `cli` runs it: no interpreter start-up each)
    refused = shoot(["evaluate", "cut_run", "--json"], home, 600)
    assert refused.returncode == 2 and refused.stdout == ""
    assert f"cut_run is running with {done:,} of {total:,} rows replayed" in refused.stderr
    assert "--partial" in refused.stderr and "Traceback" not in refused.stderr
    partial = json.loads(cli("evaluate", "cut_run", "--partial", "--json", home=home).stdout)
    cov = partial["coverage"]
    assert cov["complete"] is False and cov["rows_done"] == done and cov["rows_total"] == total
    assert "PARTIAL: run cut_run was running" in cli("evaluate", "cut_run", "--partial", home=home).stdout
    refused_decide = shoot(["decide", "cut_run", "--justification", "reviewed", "--json"], home, 600)
    assert refused_decide.returncode == 2 and "not finished" in refused_decide.stderr

    resume = [a if a != "4" else "1024" for a in replay]  # the rest in large batches: the kill is what matters
    assert json.loads(complete(resume, home).stdout)["status"] == "finished"
    with Store(home / "lake") as store:  # the partial evaluation no longer stands for the run
        stale = evaluation_is_current(store, store.latest_evaluation("cut_run"))
    assert stale == f"it covers {done:,} of {total:,} rows of a run that was running (a partial evaluation)"
    full = json.loads(cli("evaluate", "cut_run", "--json", home=home).stdout)
    assert full["coverage"]["complete"] and full["coverage"]["rows_done"] == total
    decided = json.loads(
        cli("decide", "cut_run", "--justification", "reviewed", "--no-apply", "--json", home=home).stdout
    )
    cited = decided["record"]["evidence"]
    assert (
        cited["rows"] == total and cited["labelled_rows"] == full["labeled_rows"] and len(cited["labels_digest"]) == 64
    )
    with Store(home / "lake") as store:
        assert evaluation_is_current(store, store.latest_evaluation("cut_run")) is None
        store.cursor().execute("DELETE FROM labels WHERE request_id = (SELECT min(request_id) FROM labels)")
        assert evaluation_is_current(store, store.latest_evaluation("cut_run")) == (
            "the run's labels changed since it was evaluated"
        )
    record(
        "crash",
        f"evaluate a replay run SIGKILLed at {done:,} of {total:,} rows",
        "refused (exit 2, names --partial); --partial marks coverage incomplete; stale once the run is resumed "
        "or its labels change; decide refuses the unfinished run and, once finished, cites every row",
        rows_done=done,
        traffic_rows=total,
    )


# -- evaluate ------------------------------------------------------------------------------------------------
def test_evaluate_killed_at_random_points_reruns_to_the_same_result(tmp_path, demo_home):
    rng = random.Random(1003)
    home = copy_demo(demo_home, tmp_path / "crash" / "home")
    run_id = json.loads((home / "demo.json").read_text())["replay"]["run_id"]
    # --recompute: each run evaluates and stores its result (without it, a run whose evaluation is stored only
    # looks that up, and the kills would land in lookups)
    args = ["evaluate", run_id, "--recompute", "--json"]
    ref = complete(args, home)
    want = json.loads(ref.stdout)
    span = ref.seconds  # how long an evaluate runs: the fastest seen (the first pays for cold caches)
    done, wanted = 0, kills(4, 2)
    while done < wanted:
        shot = shoot(args, home, rng.uniform(0.1, 1.0) * span)
        with Store(home / "lake") as store:
            stored = [
                json.loads(r[0])
                for r in store.cursor().execute("SELECT result FROM evaluations WHERE run_id = ?", [run_id]).fetchall()
            ]
            assert stored and all(s == want for s in stored)  # whole results only, each the same
        if shot.killed:
            done += 1
            record(
                "crash",
                f"evaluate, SIGKILL at {shot.seconds:.2f} s",
                "stored evaluations all complete and identical",
                evaluations=len(stored),
            )
        else:
            assert json.loads(shot.stdout) == want
            span = min(span, shot.seconds)
    assert json.loads(complete(args, home).stdout) == want
    record("crash", f"evaluate rerun after {wanted} kills", "same result as the uninterrupted run")


# -- decide (and the MLflow sync that completes it) ----------------------------------------------------------
def decision_state(home: Path, run_prefix: str) -> dict:
    """The canary of the model after a kill, checked: every stored record verifies, the chain is intact; the
    decisions on runs whose id starts with ``run_prefix``, applied ones in chain order."""
    trusted = trusted_keys(home / "keys", home / "keys" / "trusted")
    with Store(home / "lake") as store:
        for row in store.cursor().execute("SELECT record, signature FROM decisions").fetchall():
            verify_signature(json.loads(row[0]), row[1], trusted)  # no half-written record
        verify_chain(store, MODEL, trusted)
        st = canary_status(store, MODEL, trusted)
        applied = (
            store.cursor()
            .execute(
                "SELECT d.decision_id, d.pending_sync FROM decisions d JOIN canary_chain c USING (decision_id) "
                "WHERE d.run_id LIKE ? ORDER BY c.sequence",
                [run_prefix + "%"],
            )
            .fetchall()
        )
        unapplied = (
            store.cursor()
            .execute(
                "SELECT count(*) FROM decisions d ANTI JOIN canary_chain c USING (decision_id) WHERE d.run_id LIKE ?",
                [run_prefix + "%"],
            )
            .fetchall()[0][0]
        )
    return {
        "weight": st.weight,
        "verified": st.verified or st.decision_id is None,
        "applied": applied,
        "unapplied": unapplied,
    }


@functools.cache
def mlflow_client(home: Path):
    """One client per home: making one sets up MLflow's SQL store (seconds the first time, then still a
    fraction of one)."""
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


def mlflow_runs(home: Path, decision_id: str) -> list:
    from mlflow.entities import ViewType

    client = mlflow_client(home)
    exp = client.get_experiment_by_name("canary-decisions")
    return (
        []
        if exp is None
        else client.search_runs(
            [exp.experiment_id], f"tags.`canary.decision_id` = '{decision_id}'", run_view_type=ViewType.ACTIVE_ONLY
        )
    )


def test_decide_killed_at_random_points_is_applied_once_and_synced_once(tmp_path, demo_home):
    """Each cycle moves the weight one ramp step on a new run of the pair (a PROMOTE needs new evidence):
    decide (applied locally, then published), and after a kill the documented recovery: ``workbench sync``
    when the decision was applied, else decide again."""
    rng = random.Random(1004)
    homes = {}
    for name in ("ref", "crash"):
        home = copy_demo(demo_home, tmp_path / name / "home")
        if not (home / "keys" / PRIVATE_FILE).exists():  # the demo makes the key pair for its own decision
            init_keys(home / "keys")
        with Store(home / "lake") as store:
            seed_run(store, "run_syn", model=MODEL)  # synthetic evidence for the demo's pair
        homes[name] = home
    ref = complete(["decide", "run_syn", "--justification", "reviewed", "--json"], homes["ref"])
    want = json.loads(ref.stdout)
    ramp = [0, *want["record"]["ramp"]]
    base = ramp.index(want["weight_before"])  # the weight the demo's own decision left
    assert (want["verdict"], want["weight_after"], want["pending_sync"]) == ("PROMOTE", ramp[base + 1], False)
    ramp = ramp[base:]
    home = homes["crash"]
    done = cycle = 0  # cycle: decisions applied and in MLflow
    wanted = kills(4, 2)
    current = "run_syn"  # the run this cycle decides on
    st = decision_state(home, "run_syn")  # read again after each shot: only the shots change it
    while done < wanted:
        if len(st["applied"]) > cycle and not st["applied"][-1][1]:
            cycle += 1  # this step is complete: the next kills hit the next step, on new evidence
            current = f"run_syn{cycle}"
            with Store(home / "lake") as store:
                seed_run(store, current, model=MODEL)
            continue
        command = (
            ["sync", "--json"]
            if len(st["applied"]) > cycle
            else ["decide", current, "--justification", "reviewed", "--json"]
        )
        shot = shoot(command, home, rng.uniform(0.1, 1.0) * ref.seconds)
        assert shot.killed or shot.returncode == 0, shot.stderr[-2000:]
        st = decision_state(home, "run_syn")
        assert st["verified"] and len(st["applied"]) in (cycle, cycle + 1)
        assert st["weight"] == ramp[len(st["applied"])] and st["weight"] in (ramp[cycle], ramp[cycle + 1])
        assert all(len(mlflow_runs(home, d)) <= 1 for d, _ in st["applied"])
        if shot.killed:
            done += 1
            phase = (
                "not applied"
                if len(st["applied"]) == cycle
                else "applied, pending sync"
                if st["applied"][-1][1]
                else "applied and in MLflow"
            )
            record(
                "crash",
                f"{command[0]} (step {ramp[cycle]}% -> {ramp[cycle + 1]}%), SIGKILL at {shot.seconds:.2f} s",
                f"{phase}; weight {st['weight']}%",
                applied=len(st["applied"]),
                unapplied_records=st["unapplied"],
                weight=st["weight"],
            )
    if len(st["applied"]) == cycle:
        complete(["decide", current, "--justification", "reviewed", "--json"], home)
    complete(["sync", "--json"], home)
    st = decision_state(home, "run_syn")
    steps = len(st["applied"])
    assert steps in (cycle, cycle + 1) and st["weight"] == ramp[steps] and st["verified"]
    assert not any(pending for _, pending in st["applied"])
    for decision_id, _ in st["applied"]:
        [run] = mlflow_runs(home, decision_id)
        assert run.info.status == "FINISHED"
    tags = mlflow_client(home).get_model_version(MODEL, "2").tags
    assert tags["canary.decision_id"] == st["applied"][-1][0] and tags["canary.weight"] == str(ramp[steps])
    record(
        "crash",
        f"decide/sync completed after {wanted} kills",
        f"{steps} applied decision(s), weight {ramp[0]}% -> "
        f"{ramp[steps]}% one ramp step each, one MLflow run each, chain verified",
        applied=steps,
        mlflow_runs=steps,
        unapplied_records=st["unapplied"],
    )
