"""Job specs, the resumable runner and the per-spec lock, on the demo's real models and data."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, cli, run_cli, write_spec
from workbench import WorkbenchError
from workbench.clock import parse_duration
from workbench.config import load_settings
from workbench.ops.jobs import STAGES, JobFailed, JobRefused, SpecLock, run_job
from workbench.ops.jobspec import last_fire, load_spec, load_specs, parse_spec, slot_job_id
from workbench.store import Store


# -- specs -----------------------------------------------------------------------------------------------
def test_shipped_spec_is_valid():
    [loaded] = load_specs([REPO / "pipelines" / "jobs"])
    spec = loaded.spec
    assert (spec.name, spec.model, spec.baseline, spec.candidate) == (
        "flight-delay",
        "flight-delay",
        "champion",
        "challenger",
    )
    assert spec.schedule == "0 * * * *" and spec.verdict == "record"
    assert parse_duration(spec.traffic.window) == timedelta(days=7)
    assert loaded.resolve(spec.traffic.path) == str(REPO / "data" / "traffic.parquet")


BASE = {"name": "x", "model": "m", "traffic": {"path": "t.parquet"}}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"traffic": {"path": "t.parquet", "windw": "1h"}}, "traffic.windw: unknown key"),
        ({"shedule": "0 * * * *"}, "shedule: unknown key"),
        ({"schedule": "61 * * * *"}, "schedule: '61 * * * *' is not a cron expression"),
        ({"traffic": {"path": "t.parquet", "window": "yesterday"}}, "traffic.window: window 'yesterday'"),
        ({"traffic": {"path": "t.parquet", "table": "t"}}, "traffic: give exactly one of path"),
        ({"traffic": {"table": "t", "window": "1h"}}, "traffic: a window cuts files by event time"),
        ({"traffic": {"path": "t.parquet", "anchor": "latest"}}, "anchor = 'latest' places a window"),
        ({"candidate": "@challenger"}, "candidate: '@challenger': use an alias"),
        ({"verdict": "promote"}, "verdict: Input should be 'record' or 'apply'"),
        ({"name": "has space"}, "name: 'has space'"),
        ({"replay": {"batch_size": 0}}, "replay.batch_size"),
    ],
    ids=[
        "unknown-nested-key",
        "unknown-top-key",
        "bad-cron",
        "bad-window",
        "two-sources",
        "window-on-table",
        "anchor-without-window",
        "bad-selector",
        "bad-verdict",
        "bad-name",
        "zero-batch",
    ],
)
def test_invalid_specs_name_the_problem(change, message):
    with pytest.raises(WorkbenchError, match="job spec spec.toml: .*" + _re(message)):
        parse_spec(BASE | change, Path("spec.toml"))


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_missing_required_key_and_version_selector():
    with pytest.raises(WorkbenchError, match="model: Field required"):
        parse_spec({"name": "x", "traffic": {"path": "t"}}, Path("s.yaml"))
    assert parse_spec(BASE | {"candidate": 3}, Path("s.toml")).spec.candidate == "3"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("24h", timedelta(hours=24)),
        ("last 24 h", timedelta(hours=24)),
        ("90 minutes", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("Last 1 hour", timedelta(hours=1)),
    ],
    ids=["24h", "last-24-h", "90-minutes", "7d", "2w", "last-1-hour"],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


def test_cron_slots():
    nine = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    assert last_fire("0 * * * *", nine) == nine  # a fire time is its own slot
    assert last_fire("0 * * * *", nine + timedelta(minutes=59)) == nine
    assert last_fire("0 9 * * *", nine - timedelta(seconds=1)) == nine - timedelta(days=1)
    assert slot_job_id("flight-delay", nine) == "job_flight_delay_20261126T0900"


def test_paths_expand_variables_and_resolve_against_the_spec(tmp_path, monkeypatch):
    spec = tmp_path / "jobs" / "s.toml"
    spec.parent.mkdir()
    spec.write_text(
        'name = "s"\nmodel = "m"\n[traffic]\npath = "${LOGS_ROOT}/t.parquet"\n[labels]\npath = "l.parquet"\n'
    )
    loaded = load_spec(spec)
    monkeypatch.setenv("LOGS_ROOT", "/srv/logs")
    assert loaded.resolve(loaded.spec.traffic.path) == "/srv/logs/t.parquet"
    assert loaded.resolve(loaded.spec.labels.path) == str(tmp_path / "jobs" / "l.parquet")
    monkeypatch.delenv("LOGS_ROOT")
    with pytest.raises(WorkbenchError, match="unset environment variable.*LOGS_ROOT"):
        loaded.resolve(loaded.spec.traffic.path)


# -- the runner on the demo ------------------------------------------------------------------------------
def window_truth(home: Path, days: int = 60) -> tuple[int, int]:
    """(traffic rows in the last ``days`` up to the newest flight, labels of those requests), by pandas."""
    t = pd.read_parquet(home / "data" / "traffic.parquet")
    end = t["event_time"].max()
    ids = set(t.loc[(t["event_time"] > end - pd.Timedelta(days=days)) & (t["event_time"] <= end), "request_id"])
    labels = pd.read_parquet(home / "data" / "labels.parquet")
    return len(ids), int(labels["request_id"].isin(ids).sum())


def test_job_end_to_end_on_the_demo(job_home):
    """`workbench jobs run` on the demo: one job id through every stage, JSON logs, a signed and applied decision,
    rerun is a no-op, the history and /metrics show it."""
    spec = job_home / "fd.toml"
    spec.write_text(
        'name = "fd-hourly"\nmodel = "flight-delay"\nschedule = "0 * * * *"\nverdict = "apply"\n'
        '[traffic]\npath = "${WORKBENCH_HOME}/data/traffic.parquet"\nwindow = "last 60 d"\n'
        'anchor = "latest"\nentity_col = "tail_number"\nnullable = ["wind_dir", "pressure"]\n'
        '[labels]\npath = "data/labels.parquet"\n'
    )
    # every run counts as large: the flow stores what the pages show of it
    proc = run_cli("jobs", "run", str(spec), "--json", home=job_home, env={"WORKBENCH_SUMMARY_MIN_ROWS": "0"})
    out = json.loads(proc.stdout)
    rows_read, labels = window_truth(job_home)
    now = datetime.now(UTC)
    assert out["status"] == "finished" and not out["already_complete"] and out["triggered_by"] == "manual"
    assert out["job_id"] in (
        slot_job_id("fd-hourly", last_fire("0 * * * *", now)),
        slot_job_id("fd-hourly", last_fire("0 * * * *", now - timedelta(minutes=2))),
    )
    assert list(out["stages"]) == list(STAGES)
    assert all(s["status"] == "finished" and s["attempts"] == 1 for s in out["stages"].values())
    ingest = out["stages"]["ingest"]["result"]
    assert ingest["rows_read"] == rows_read and ingest["rows"] + ingest["quarantined"] == rows_read
    assert ingest["labels"] == labels
    assert out["rows"] == ingest["rows"] == out["stages"]["replay"]["result"]["rows"]
    assert (out["baseline_version"], out["candidate_version"]) == ("1", "2")
    assert out["applied"] is True and out["weight_after"] == {"PROMOTE": 1, "HOLD": 0, "ROLLBACK": 0}[out["verdict"]]

    # structured logs: one JSON object per line, each with the job id; stage lines after resolve carry the run id
    logs = [json.loads(line) for line in proc.stderr.splitlines()]
    assert all(entry["job_id"] == out["job_id"] for entry in logs if entry["logger"].startswith("workbench"))
    finished = [e for e in logs if e.get("event") == "stage_finished"]
    assert [e["stage"] for e in finished] == list(STAGES)
    assert all(e["run_id"] == out["run_id"] for e in finished[1:])

    # the decision is a verified link of the model's chain, and the canary state is its weight
    from workbench.decide.canary import load_signed
    from workbench.decide.chain import status, verify_decision
    from workbench.decide.signing import trusted_keys

    settings = load_settings(job_home)
    trusted = trusted_keys(settings.keys_dir, settings.trusted_keys_dir)
    with Store(settings.db_path) as store:
        assert verify_decision(store, load_signed(store, out["decision_id"]), trusted).applied
        state = status(store, "flight-delay", trusted)
        stored = store.cursor().execute("SELECT DISTINCT name FROM run_summaries WHERE run_id = ?", [out["run_id"]])
        assert {r[0] for r in stored.fetchall()} == {
            "scores",
            "latency_quantiles",
            "segment_columns",
            "breakdowns",
            "evidence",
        }
    assert state.verified and state.weight == out["weight_after"] and state.decision_id == out["decision_id"]

    # rerunning the same slot does nothing (the command in this process: the job's own process is the one above)
    again = cli("jobs", "run", str(spec), "--job-id", out["job_id"], "--json", "--log-format", "text", home=job_home)
    again = json.loads(again.stdout)
    assert again["already_complete"] and again["status"] == "finished"
    assert all(s["attempts"] == 1 for s in again["stages"].values())

    listed = json.loads(cli("jobs", "list", "--json", home=job_home).stdout)["jobs"]
    [job] = [j for j in listed if j["job_id"] == out["job_id"]]
    assert job["spec"] == "fd-hourly" and job["status"] == "finished" and job["stage"] == "decide"
    assert job["started_at"] <= job["finished_at"] and job["error"] is None and set(job["stages"]) == set(STAGES)

    from fastapi.testclient import TestClient

    from workbench.live.service import create_app

    text = TestClient(create_app(load_settings(job_home))).get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("workbench_jobs", (("spec", "fd-hourly"), ("status", "finished")))] == 1
    assert samples[("workbench_job_duration_seconds_count", (("spec", "fd-hourly"),))] == 1
    assert samples[("workbench_replay_rows", (("model", "flight-delay"),))] == out["rows"]
    assert samples[("workbench_canary_weight_percent", (("model", "flight-delay"),))] == out["weight_after"]
    assert samples[("workbench_canary_last_verdict", (("model", "flight-delay"), ("verdict", out["verdict"])))] == 1


def stage_states(home: Path, job_id: str) -> dict:
    with Store(home / "lake") as store:
        return store.job_stages(job_id)


def test_a_failed_stage_is_recorded_and_a_rerun_resumes_after_the_finished_stages(job_home, tmp_path, monkeypatch):
    from workbench.ops import flow, jobs

    settings = load_settings(job_home)
    loaded = load_spec(write_spec(tmp_path / "fd.yaml", job_home))

    def broken(ctx):
        raise RuntimeError("drift backend unavailable")

    monkeypatch.setitem(flow.STAGE_FUNCS, "drift", broken)
    with pytest.raises(JobFailed, match="failed at stage drift: drift backend unavailable"):
        run_job(settings, loaded)
    with Store(settings.db_path) as store:
        [job] = jobs.job_history(store, "fd")
    assert (job["status"], job["stage"]) == ("failed", "drift")
    assert "Traceback" in job["error"] and "RuntimeError: drift backend unavailable" in job["error"]
    assert job["stages"]["drift"]["status"] == "failed" and "Traceback" in job["stages"]["drift"]["error"]
    assert [s for s, v in job["stages"].items() if v["status"] == "finished"] == [
        "resolve",
        "ingest",
        "replay",
        "evaluate",
    ]
    first = stage_states(job_home, job["job_id"])

    monkeypatch.undo()
    res = run_job(settings, loaded)  # an unscheduled spec resumes its pending job
    assert res.job_id == job["job_id"] and res.status == "finished"
    after = stage_states(job_home, res.job_id)
    for stage in ("resolve", "ingest", "replay", "evaluate"):
        assert after[stage]["attempts"] == 1 and after[stage]["finished_at"] == first[stage]["finished_at"]
    assert after["drift"]["attempts"] == 2 and after["decide"]["attempts"] == 1
    with Store(settings.db_path) as store:
        n, distinct = store.con.execute(
            "SELECT count(*), count(DISTINCT _row) FROM predictions WHERE run_id = ?", [res.summary["run_id"]]
        ).fetchall()[0]
        assert n == distinct == res.summary["rows"]
        assert len([d for d in store.list_decisions("flight-delay") if d["run_id"] == res.summary["run_id"]]) == 1


def test_sigkilled_job_resumes_with_the_same_job_id(job_home, tmp_path):
    """A real `workbench jobs run` killed during its replay; the rerun takes the stale lock and row over.
    Drift is off: the resumed stages and the job id are the point, not the stages after the replay (the
    end-to-end test runs them all)."""
    spec = write_spec(
        tmp_path / "fd.yaml",
        job_home,
        replay={"batch_size": 16, "mode": "online"},
        drift={"enabled": False},
        traffic={
            "path": str(job_home / "data" / "traffic.parquet"),
            "window": "15d",
            "anchor": "latest",
            "nullable": ["wind_dir", "pressure"],
        },
    )
    args = [sys.executable, "-m", "workbench.cli", "jobs", "run", str(spec), "--json"]
    env = os.environ | {"WORKBENCH_HOME": str(job_home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        entry = json.loads(line)
        job_id = job_id or entry.get("job_id")
        if entry.get("event") == "replay_progress":  # models loaded, the replay pipeline is running
            break
        assert time.monotonic() < deadline, "the job never reached its replay"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with Store(job_home / "lake") as store:
        assert store.get_job(job_id)["status"] == "running"  # left behind by the dead process
        assert store.job_stages(job_id)["replay"]["status"] == "running"

    out = run_cli("jobs", "run", str(spec), "--json", home=job_home)
    res = json.loads(out.stdout)
    assert res["job_id"] == job_id and res["status"] == "finished"
    assert res["stages"]["ingest"]["attempts"] == 1 and res["stages"]["replay"]["attempts"] == 2
    assert any(json.loads(line).get("event") == "job_interrupted" for line in out.stderr.splitlines())
    with Store(job_home / "lake") as store:
        n, distinct = store.con.execute(
            "SELECT count(*), count(DISTINCT _row) FROM predictions WHERE run_id = ?", [res["run_id"]]
        ).fetchall()[0]
        traffic_rows = store.require_traffic(res["traffic"])["rows"]
    assert n == distinct == traffic_rows == res["rows"]


def test_overlapping_runs_are_refused_and_say_why(job_home, tmp_path):
    spec = write_spec(tmp_path / "fd.yaml", job_home)
    lock = SpecLock(job_home, "fd")
    lock.acquire()
    try:
        lock.describe("job_fd_holder")
        proc = run_cli("jobs", "run", str(spec), "--json", home=job_home, check=False)
        assert proc.returncode == 2 and proc.stdout == ""
        assert (
            f"error: cannot start job spec fd: it is already running: job job_fd_holder (pid {os.getpid()}"
            in proc.stderr
        )
        with pytest.raises(JobRefused, match="already running: job job_fd_holder"):
            run_job(load_settings(job_home), load_spec(spec))  # another lock in this process is refused too
    finally:
        lock.release()
    with Store(job_home / "lake") as store:
        assert store.job_history("fd") == []  # a refused run leaves no job behind


def test_empty_window_skips_the_job_with_the_reason(job_home, tmp_path):
    settings = load_settings(job_home)
    loaded = load_spec(
        write_spec(
            tmp_path / "fd.yaml",
            job_home,
            schedule="0 9 * * *",
            traffic={"path": str(job_home / "data" / "traffic.parquet"), "window": "24h"},
        )
    )
    res = run_job(settings, loaded, as_of=datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    assert res.status == "skipped" and res.job_id == "job_fd_20261126T0900"
    assert res.summary["reason"].startswith("no traffic between 2026-11-25T09:00:00Z and 2026-11-26T09:00:00Z")
    assert res.stages["ingest"]["status"] == "skipped" and "replay" not in res.stages
    assert run_job(settings, loaded, as_of=datetime(2026, 11, 26, 9, 30, tzinfo=UTC)).already_complete  # same slot
    other = run_job(settings, loaded, as_of=datetime(2026, 11, 26, 9, 30, tzinfo=UTC), new=True)
    assert other.job_id.startswith("job_fd_20261126T093000_") and other.status == "skipped"


def test_a_job_needs_a_signing_key(demo_home, tmp_path):
    spec = write_spec(tmp_path / "fd.yaml", demo_home)
    home = tmp_path / "empty_home"
    with pytest.raises(JobRefused, match="cannot start job spec fd: no signing key .*workbench keys init"):
        run_job(load_settings(home), load_spec(spec))


# -- disabled stages and jobs that stop early -----------------------------------------------------------------
def test_a_disabled_drift_stage_is_skipped_and_the_job_still_decides(job_home, tmp_path):
    """`workbench jobs run` (in this process: the CLI's own process is the end-to-end test's) with drift off:
    drift is skipped with its reason, decide runs without a drift report (the gates after a change point are
    skipped, not failed; no drift context), the job finishes and the command returns 0."""
    spec = write_spec(tmp_path / "fd.yaml", job_home, drift={"enabled": False})
    proc = cli("jobs", "run", str(spec), "--json", "--log-format", "text", home=job_home)
    out = json.loads(proc.stdout)
    assert out["status"] == "finished" and list(out["stages"]) == list(STAGES)
    assert out["stages"]["drift"]["status"] == "skipped"
    assert out["stages"]["drift"]["result"] == {"reason": "drift is disabled"}
    decide = out["stages"]["decide"]
    assert decide["status"] == "finished" and decide["result"]["decision_id"] == out["decision_id"]
    assert out["verdict"] in ("PROMOTE", "HOLD", "ROLLBACK") and "unreached" not in out
    with Store(job_home / "lake") as store:
        assert store.latest_drift(out["run_id"]) is None  # no report was made
        record = json.loads(store.get_decision(out["decision_id"])["record"])
    assert record["drift_hash"] is None
    skipped = {s["gate"]: s["reason"] for s in record["scorecard"]["skipped"]}
    assert skipped["after_change.*"] == "the rows after the change point: no drift report for this run"
    assert record["scorecard"]["context"] == []
    assert not any(c["kind"] == "drift" for c in record["scorecard"]["checks"])


def test_a_job_that_stops_before_its_stages_does_not_exit_0(job_home, tmp_path):
    """An empty window ends the job `skipped`: the CLI prints its result, names the stages it did not reach on
    stderr in one line and exits 3; rerunning the slot reports the same (the command in this process)."""
    spec = write_spec(
        tmp_path / "fd.yaml",
        job_home,
        schedule="0 9 * * *",
        traffic={"path": str(job_home / "data" / "traffic.parquet"), "window": "24h"},
    )
    args = ("jobs", "run", str(spec), "--as-of", "2026-11-26T09:00:00Z", "--json")
    for proc in (  # a real process, then the rerun of its slot in this process
        run_cli(*args, home=job_home, check=False),
        cli(*args, "--log-format", "text", home=job_home, check=False),
    ):
        assert proc.returncode == 3, proc.stderr[-2000:]
        out = json.loads(proc.stdout)
        assert out["status"] == "skipped" and out["unreached"] == ["ingest", "replay", "evaluate", "drift", "decide"]
        assert out["reason"].startswith("no traffic between")
        [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert "without reaching stage(s) ingest, replay, evaluate, drift, decide: no traffic between" in error
        assert "Traceback" not in proc.stderr
    assert out["already_complete"]


def test_a_flow_that_ends_without_deciding_is_not_finished(job_home, tmp_path, monkeypatch):
    """Whatever makes the flow return early (here, a flow that forgets decide), a configured stage that did not
    run leaves the job `skipped` with the stages it did not reach, never `finished`."""
    from workbench.ops import jobs
    from workbench.ops.jobs import JobIncomplete, check_complete

    real = jobs.run_flow

    def without_decide(settings, flow, **kw):
        res = real(settings, flow, **kw)
        res.summaries.pop("decide", None)
        return res

    monkeypatch.setattr(jobs, "run_flow", without_decide)
    loaded = load_spec(write_spec(tmp_path / "fd.yaml", job_home, drift={"enabled": False}))
    res = run_job(load_settings(job_home), loaded)
    assert res.status == "skipped" and res.summary["unreached"] == ["decide"]
    assert "before stage(s) decide" in res.summary["reason"]
    with pytest.raises(JobIncomplete, match="without reaching stage\\(s\\) decide") as e:
        check_complete(res)
    assert e.value.exit_code == 3
