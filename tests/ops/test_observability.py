"""Structured JSON logs and the Prometheus endpoint of the service."""

import json
import logging
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO
from workbench.config import Settings
from workbench.live.service import create_app
from workbench.ops import observability
from workbench.ops.jobs import JOB_KIND
from workbench.ops.observability import JsonFormatter, log_context, observe_arm
from workbench.store import Store


def scrape(home) -> dict:
    text = TestClient(create_app(Settings(home=home, mlflow_tracking_uri="unused"))).get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@pytest.fixture(autouse=True)
def fresh_arms():
    observability.reset_arms()
    yield
    observability.reset_arms()


def test_json_log_lines_carry_the_bound_ids_and_extra_fields():
    logger = logging.getLogger("workbench.test_json")
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(JsonFormatter().format(record))  # as a StreamHandler does
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with log_context(job_id="job_1", spec="fd"):
            with log_context(stage="replay", run_id="run_1"):
                logger.warning("stage %s started", "replay", extra={"event": "stage_started", "rows": 3})
            logger.info("outside the stage")
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second, third = map(json.loads, records)
    assert first | {"time": None} == {
        "time": None,
        "level": "WARNING",
        "logger": "workbench.test_json",
        "message": "stage replay started",
        "job_id": "job_1",
        "spec": "fd",
        "stage": "replay",
        "run_id": "run_1",
        "event": "stage_started",
        "rows": 3,
    }
    assert first["time"].endswith("Z") and "stage" not in second and second["job_id"] == "job_1"
    assert third["level"] == "ERROR" and "ValueError: boom" in third["traceback"]


def test_metrics_expose_the_named_series(seeded_home):
    """Jobs, stage durations, replay rows/s, the canary weight, the last verdict and live arm series."""
    from workbench.decide.canary import Signer, apply_decision, build_decision
    from workbench.decide.policy import load_policy
    from workbench.decide.signing import trusted_keys

    with Store(seeded_home / "lake") as store:
        signed, _ = build_decision(
            store, "run_a", load_policy(), Signer.from_keys_dir(seeded_home / "keys", "t"), justification="reviewed"
        )
        apply_decision(store, signed, trusted_keys(seeded_home / "keys", seeded_home / "keys" / "trusted"))
        for job_id, status in (("job_a", "finished"), ("job_b", "failed")):
            store.job_begin(
                job_id=job_id, kind=JOB_KIND, spec="fraud-hourly", triggered_by="schedule", params={}, pid=1, host="h"
            )
            store.stage_begin(job_id, "replay")
            store.stage_end(job_id, "replay", "finished", 2.5, result={"rows": 5000})
            store.job_end(job_id, status, error="Traceback ..." if status == "failed" else None)
        store.enqueue_job(
            job_id="job_q",
            kind=JOB_KIND,
            delivery_id="d1",
            event="model_version.created",
            params={"model": "fraud", "version": "3"},
        )
    observe_arm("fraud", "candidate", 0.004, error=True)
    observe_arm("fraud", "candidate", 0.012)
    observe_arm("fraud", "baseline", 0.003)

    m = scrape(seeded_home)
    assert m[("workbench_store_up", ())] == 1
    assert m[("workbench_jobs", (("spec", "fraud-hourly"), ("status", "finished")))] == 1
    assert m[("workbench_jobs", (("spec", "fraud-hourly"), ("status", "failed")))] == 1
    assert m[("workbench_jobs", (("spec", "unassigned"), ("status", "queued")))] == 1
    assert m[("workbench_job_duration_seconds_count", (("spec", "fraud-hourly"),))] == 1
    assert ("workbench_job_last_success_timestamp_seconds", (("spec", "fraud-hourly"),)) in m
    stage = (("spec", "fraud-hourly"), ("stage", "replay"))
    assert m[("workbench_job_stage_duration_seconds_count", stage)] == 2
    assert m[("workbench_job_stage_duration_seconds_sum", stage)] == 5.0
    assert ("workbench_replay_rows", (("model", "fraud"),)) in m
    assert m[("workbench_canary_weight_percent", (("model", "fraud"),))] == signed.record["weight_after"]
    assert m[("workbench_canary_killed", (("model", "fraud"),))] == 0
    verdicts = {
        v: m[("workbench_canary_last_verdict", (("model", "fraud"), ("verdict", v)))]
        for v in ("PROMOTE", "HOLD", "ROLLBACK")
    }
    assert verdicts == {v: int(v == signed.record["verdict"]) for v in verdicts}
    cand = (("arm", "candidate"), ("model", "fraud"))
    assert m[("workbench_arm_requests_total", cand)] == 2 and m[("workbench_arm_errors_total", cand)] == 1
    assert m[("workbench_arm_error_rate", cand)] == 0.5
    assert m[("workbench_arm_error_rate", (("arm", "baseline"), ("model", "fraud")))] == 0
    assert m[("workbench_arm_latency_seconds_count", cand)] == 2
    assert m[("workbench_arm_latency_seconds_bucket", tuple(sorted(cand + (("le", "0.005"),))))] == 1


def test_replay_rate_is_rows_over_the_runs_wall_time(tmp_path):
    from datetime import datetime

    import pyarrow as pa

    home = tmp_path / "home"
    with Store(home / "lake") as store:
        store.create_run(
            run_id="r1",
            traffic="t",
            baseline={"name": "m", "version": "1"},
            candidate={"name": "m", "version": "2"},
            rows_total=4000,
            batch_size=2000,
            device="cpu",
            mode="throughput",
            meta={},
        )
        for i in range(2):
            store.commit_batch("r1", i, 2000 * i, 2000 * i + 1999, 2000, 0.1, pa.table({"_row": [2000 * i]}))
        store.finish_run("r1")
        store.con.execute(
            "UPDATE runs SET started_at = ?, finished_at = ? WHERE run_id = 'r1'",
            [datetime(2026, 1, 1, 9, 0, 0), datetime(2026, 1, 1, 9, 0, 2)],
        )
    m = scrape(home)
    assert m[("workbench_replay_rows", (("model", "m"),))] == 4000
    assert m[("workbench_replay_rows_per_second", (("model", "m"),))] == 2000


def test_error_rate_covers_the_latest_requests_only(monkeypatch):
    monkeypatch.setattr(observability, "ERROR_RATE_WINDOW", 4)
    for error in (True, True, False, False, False, False):
        observe_arm("m", "candidate", 0.001, error=error)
    assert observability.ARM_ERROR_RATE.labels("m", "candidate")._value.get() == 0.0
    observe_arm("m", "candidate", 0.001, error=True)
    assert observability.ARM_ERROR_RATE.labels("m", "candidate")._value.get() == 0.25


def test_another_process_writing_does_not_take_the_store_down(tmp_path):
    """Another process inside a write transaction: the scrape still reads the last commit (store_up 1)."""
    home = tmp_path / "home"
    with Store(home / "lake"):
        pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from workbench.store import Store\n"
            "s = Store(sys.argv[1])\n"
            "with s.transaction() as cur:\n"
            '    cur.execute("INSERT INTO jobs (job_id, kind, params, status, created_at) '
            "VALUES ('j', 'x', '{}', 'running', now())\")\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n",
            str(home / "lake"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
    )
    try:
        assert holder.stdout.readline().strip() == "writing"
        m = scrape(home)
        assert m[("workbench_store_up", ())] == 1
    finally:
        holder.kill()
        holder.wait()
