"""The scheduler: cron slots on an injected clock, recovery, and registry events from the webhook endpoint."""

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from conftest import write_spec
from workbench import WorkbenchError
from workbench.clock import iso
from workbench.config import Settings, load_settings
from workbench.live.service import create_app
from workbench.ops.jobs import JOB_KIND, JobRefused, JobResult
from workbench.ops.jobspec import load_spec
from workbench.ops.scheduler import Scheduler
from workbench.store import Store

SECRET = "whsec-jobs"
NOW = 1_800_000_000


class Clock:
    def __init__(self, t: datetime):
        self.t = t

    def __call__(self) -> datetime:
        return self.t


class Recorder:
    """A stand-in runner that records each call and reports the job finished."""

    def __init__(self):
        self.calls = []

    def __call__(self, settings, loaded, **kw):
        self.calls.append((loaded.name, kw))
        return JobResult(kw["job_id"], loaded.name, "finished", kw.get("triggered_by"), iso(kw.get("as_of")))


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def spec_file(tmp_path, name="nightly", schedule="0 9 * * *", model="fraud", **fields):
    path = tmp_path / f"{name}.yaml"
    import yaml

    path.write_text(
        yaml.safe_dump({"name": name, "model": model, "schedule": schedule, "traffic": {"path": "t.parquet"}} | fields)
    )
    return load_spec(path)


def test_a_scheduled_spec_fires_at_its_time(tmp_path, home):
    clock = Clock(datetime(2026, 11, 26, 8, 59, 30, tzinfo=UTC))
    run = Recorder()
    sched = Scheduler(Settings(home=home, mlflow_tracking_uri="unused"), [spec_file(tmp_path)], clock=clock, run=run)
    assert sched.next["nightly"] == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    assert sched.tick() == [] and run.calls == []  # 08:59:30: not yet

    clock.t = datetime(2026, 11, 26, 9, 0, 2, tzinfo=UTC)
    [outcome] = sched.tick()
    assert outcome == {
        "job_id": "job_nightly_20261126T0900",
        "spec": "nightly",
        "status": "finished",
        "already_complete": False,
    }
    assert run.calls == [
        (
            "nightly",
            {
                "job_id": "job_nightly_20261126T0900",
                "triggered_by": "schedule",
                "as_of": datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
            },
        )
    ]
    clock.t += timedelta(minutes=5)
    assert sched.tick() == []  # once per slot
    assert sched.next["nightly"] == datetime(2026, 11, 27, 9, 0, tzinfo=UTC)

    clock.t = datetime(2026, 11, 29, 10, 30, tzinfo=UTC)  # down for 2 days: the latest slot, once
    assert [o["job_id"] for o in sched.tick()] == ["job_nightly_20261129T0900"]
    assert run.calls[-1][1]["as_of"] == datetime(2026, 11, 29, 9, 0, tzinfo=UTC) and len(run.calls) == 2


def test_a_refused_run_is_reported_and_retried_at_the_next_tick(tmp_path, home, caplog):
    clock = Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    attempts = []

    def busy(settings, loaded, **kw):
        attempts.append(kw["job_id"])
        raise JobRefused("cannot start job spec nightly: it is already running: job job_x (pid 1 on h, since t)")

    sched = Scheduler(
        Settings(home=home, mlflow_tracking_uri="unused"),
        [spec_file(tmp_path, schedule="*/5 * * * *")],
        clock=clock,
        run=busy,
    )
    clock.t += timedelta(minutes=5)
    [outcome] = sched.tick()
    assert outcome["status"] == "refused" and "already running: job job_x" in outcome["reason"]
    assert "already running" in caplog.text


def test_run_forever_stops_on_the_event(tmp_path, home):
    start = datetime(2026, 11, 26, 8, 59, 59, tzinfo=UTC)
    ticks = []
    stop = threading.Event()

    def clock():  # every reading moves time on by 30 s; stop after 5 minutes
        t = start + timedelta(seconds=30 * len(ticks))
        ticks.append(t)
        if t > start + timedelta(minutes=5):
            stop.set()
        return t

    run = Recorder()
    sched = Scheduler(
        Settings(home=home, mlflow_tracking_uri="unused"),
        [spec_file(tmp_path, schedule="*/2 * * * *")],
        clock=clock,
        run=run,
    )
    counts = sched.run_forever(stop, poll_s=0.01)
    assert counts == {"finished": 3}  # 09:00, 09:02, 09:04
    assert [kw["as_of"].strftime("%H:%M") for _, kw in run.calls] == ["09:00", "09:02", "09:04"]


def test_recover_resumes_jobs_a_dead_process_left_running(tmp_path, home):
    settings = Settings(home=home, mlflow_tracking_uri="unused").ensure()
    with Store(settings.db_path) as store:
        store.job_begin(
            job_id="job_nightly_20261126T0900",
            kind=JOB_KIND,
            spec="nightly",
            triggered_by="schedule",
            params={"as_of": "2026-11-26T09:00:00Z"},
            pid=999999,
            host="gone",
        )
    run = Recorder()
    sched = Scheduler(settings, [spec_file(tmp_path)], clock=Clock(datetime(2026, 11, 26, 9, 7, tzinfo=UTC)), run=run)
    assert [o["job_id"] for o in sched.recover()] == ["job_nightly_20261126T0900"]
    assert run.calls[0][1]["triggered_by"] == "schedule"


def test_two_specs_for_the_events_of_one_model_are_an_error(tmp_path, home):
    a, b = spec_file(tmp_path, "a"), spec_file(tmp_path, "b")
    with pytest.raises(WorkbenchError, match="both run on registry events of model fraud"):
        Scheduler(Settings(home=home, mlflow_tracking_uri="unused"), [a, b])
    quiet = spec_file(tmp_path, "c", triggers={"new_versions": False, "aliases": []})
    Scheduler(Settings(home=home, mlflow_tracking_uri="unused"), [a, quiet])


# -- the real thing: a scheduled fire and registry events on the demo's models -------------------------
def test_a_scheduled_job_runs_at_its_slot_on_the_demo(job_home, tmp_path):
    """Anchored at 'now', the window ends at the slot the clock reached, not at the wall clock."""
    loaded = load_spec(
        write_spec(
            tmp_path / "fd.yaml",
            job_home,
            name="fd-daily",
            schedule="0 0 * * *",
            traffic={
                "path": str(job_home / "data" / "traffic.parquet"),
                "window": "60d",
                "entity_col": "tail_number",
                "nullable": ["wind_dir", "pressure"],
            },
        )
    )
    clock = Clock(datetime(2013, 12, 31, 23, 59, 50, tzinfo=UTC))
    sched = Scheduler(load_settings(job_home), [loaded], clock=clock)
    assert sched.tick() == []
    clock.t = datetime(2014, 1, 1, 0, 0, 3, tzinfo=UTC)
    [outcome] = sched.tick()
    assert outcome["job_id"] == "job_fd_daily_20140101T0000" and outcome["status"] == "finished"
    with Store(job_home / "lake") as store:
        job = store.get_job(outcome["job_id"])
        stages = store.job_stages(outcome["job_id"])
    assert job["triggered_by"] == "schedule" and job["params"]["as_of"] == "2014-01-01T00:00:00Z"
    assert stages["resolve"]["result"]["window"] == {
        "start": "2013-11-02T00:00:00Z",
        "end": "2014-01-01T00:00:00Z",
        "anchor": "now",
    }
    assert stages["replay"]["result"]["rows"] > 500


def delivery(event, data, delivery_id=None):
    entity, action = event.rsplit(".", 1)
    body = json.dumps({"entity": entity, "action": action, "timestamp": "2027-01-15T08:00:00+00:00", "data": data})
    did = delivery_id or str(uuid.uuid4())
    return body, {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": str(NOW),
        "X-MLflow-Signature": _generate_hmac_signature(SECRET, did, str(NOW), body),
    }


def test_registry_events_enqueue_one_job_each_and_run_the_models_spec(job_home, tmp_path):
    settings = Settings(
        home=job_home,
        mlflow_tracking_uri=load_settings(job_home).mlflow_tracking_uri,
        signer="test@jobs",
        webhook_secret=SECRET,
    )
    client = TestClient(create_app(settings, clock=lambda: NOW))
    post = lambda body, headers: client.post("/webhooks/mlflow", content=body, headers=headers).json()  # noqa: E731

    new_version = delivery(
        "model_version.created",
        {"name": "flight-delay", "version": "2", "source": "s", "run_id": "r", "tags": {}, "description": None},
    )
    first, again = post(*new_version), post(*new_version)  # MLflow retried the same delivery
    assert first["status"] == "queued" and again == first | {"status": "duplicate"}
    with Store(settings.db_path) as store:
        [queued] = store.list_jobs("queued")
    assert queued["job_id"] == first["job_id"]

    loaded = load_spec(write_spec(tmp_path / "fd.yaml", job_home, name="fd-events", candidate="1"))
    sched = Scheduler(settings, [loaded], clock=Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC)))
    [outcome] = sched.tick()
    assert outcome == {"job_id": first["job_id"], "spec": "fd-events", "status": "finished", "already_complete": False}
    with Store(settings.db_path) as store:
        job = store.get_job(first["job_id"])
        stages = store.job_stages(first["job_id"])
    assert (job["triggered_by"], job["event"], job["spec"]) == ("webhook", "model_version.created", "fd-events")
    assert stages["resolve"]["result"]["candidate"]["version"] == "2"  # pinned to the event's version
    assert stages["decide"]["result"]["verdict"] in ("PROMOTE", "HOLD", "ROLLBACK")

    # the alias that follows the new version, an alias the spec does not follow, and another model: skipped
    alias = post(
        *delivery("model_version_alias.created", {"name": "flight-delay", "alias": "challenger", "version": "2"})
    )
    staging = post(
        *delivery("model_version_alias.created", {"name": "flight-delay", "alias": "staging", "version": "2"})
    )
    other = post(*delivery("model_version.created", {"name": "fraud", "version": "4"}))
    assert {alias["status"], staging["status"], other["status"]} == {"queued"}
    outcomes = {o["job_id"]: o for o in sched.tick()}
    assert {o["status"] for o in outcomes.values()} == {"skipped"}
    assert (
        outcomes[alias["job_id"]]["reason"]
        == f"version 2 of flight-delay is already evaluated by job {first['job_id']}"
    )
    assert outcomes[staging["job_id"]]["reason"] == "job spec fd-events follows aliases ['challenger'], not 'staging'"
    assert outcomes[other["job_id"]]["reason"] == "no job spec runs on registry events of model 'fraud'"
    with Store(settings.db_path) as store:
        assert store.list_jobs("queued") == []
        assert store.get_job(other["job_id"])["result"] == {"reason": outcomes[other["job_id"]]["reason"]}
    assert sched.tick() == []
