"""The app process's DuckDB access and background jobs: reads while an in-process job writes, "busy" while
another process writes, progress visible without DuckDB, failures recorded."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, TinyModel
from workbench import WorkbenchError
from workbench.config import load_settings
from workbench.ingest.traffic import ingest
from workbench.ops.access import AccessDenied, Identity, Role
from workbench.ops.background import BackgroundJobs, ReplayJob, SharedDatabase
from workbench.ops.progress import ProgressFile, read_progress
from workbench.replay.pipeline import ReplayOptions
from workbench.store import Store

OPERATOR = Identity("olga", "password", Role.OPERATOR)

N = 3000


class SlowModel(TinyModel):
    """A tiny model that takes a while per batch, so a test can look at a replay in flight."""

    def __init__(self, name, delay=0.02):
        super().__init__(name)
        self.delay = delay

    def predict(self, batch):
        time.sleep(self.delay)
        return super().predict(batch)


@pytest.fixture
def home(tmp_path):
    """A workbench home with traffic ``t`` (N rows of x, labelled)."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, N)
    pq.write_table(
        pa.table(
            {
                "request_id": np.char.add("r", np.arange(N).astype(str)),
                "event_time": np.datetime64("2013-07-01T00:00:00") + (np.arange(N) * 60).astype("timedelta64[s]"),
                "x": x,
                "label": (rng.random(N) < 1 / (1 + np.exp(-x))).astype(np.int32),
            }
        ),
        tmp_path / "t.parquet",
    )
    settings = load_settings(tmp_path / "home").ensure()
    with Store(settings.db_path) as store:
        ingest(store, tmp_path / "t.parquet", "t", label_col="label")
    return settings


def hold_lock_in_subprocess(db_path):
    """A process inside a write transaction (holding the storage's writer lock) until killed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from workbench.store import Store\n"
            "s = Store(sys.argv[1])\n"
            "with s.transaction():\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(120)\n",
            str(db_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_pages_read_while_an_in_process_replay_writes(home):
    db = SharedDatabase(home.db_path)
    loads = []
    jobs = BackgroundJobs(home, db, load_predictor=lambda uri, device: loads.append(uri) or SlowModel(uri))
    job = jobs.submit_replay(
        ReplayJob(
            traffic="t",
            baseline="test:b",
            candidate="test:c",
            run_id="run_bg",
            options=ReplayOptions(batch_size=100, writers=1),
            drift=False,
        ),
        by=OPERATOR,
    )
    seen_running = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and seen_running is None:
        with db.read() as store:  # the shared read-write store: no lock conflict, no "busy"
            run = store.get_run("run_bg")
        if run is not None and 0 < run["rows_done"] < N:
            seen_running = run
            assert db.writing
        time.sleep(0.02)
    assert seen_running is not None and seen_running["status"] == "running"
    [p] = [p for p in read_progress(home.home) if p.run_id == "run_bg"]
    assert p.status == "running" and p.source == "app replay"
    done = jobs.wait(job.job_id, 120)
    assert done.status == "finished", done.error
    assert loads == ["test:b", "test:c"] and not db.writing
    with db.read() as store:  # read-only again: the write lock is released between jobs
        assert store.get_run("run_bg")["rows_done"] == N
        assert store.latest_evaluation("run_bg")["labeled_rows"] == N
    [p] = [p for p in read_progress(home.home) if p.run_id == "run_bg"]
    assert (p.status, p.rows_done, p.rows_total) == ("finished", N, N) and p.rows_per_s > 0
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from workbench.store import Store; Store(sys.argv[1]).close()",
            str(home.db_path),
        ],
        cwd=REPO,
        check=True,
        timeout=60,
    )  # another process can write now


def test_two_jobs_and_readers_share_the_write_lock(home):
    db = SharedDatabase(home.db_path)
    jobs = BackgroundJobs(home, db, load_predictor=lambda uri, device: SlowModel(uri, 0.005))
    opts = ReplayOptions(batch_size=250, writers=1)
    a = jobs.submit_replay(ReplayJob("t", "test:b", "test:c", run_id="run_1", options=opts, drift=False), by=OPERATOR)
    b = jobs.submit_replay(
        ReplayJob("t", "test:b", "test:c", run_id="run_2", options=opts, evaluate=False, drift=False), by=OPERATOR
    )
    with pytest.raises(WorkbenchError, match="already has a job running"):
        jobs.submit_replay(ReplayJob("t", "test:b", "test:c", run_id="run_1", options=opts), by=OPERATOR)
    errors = []

    def reader():
        try:
            for _ in range(30):
                with db.read() as store:
                    store.app_runs()
                time.sleep(0.01)
        except Exception as e:  # collected for the assertion below
            errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    assert [jobs.wait(j.job_id, 120).status for j in (a, b)] == ["finished", "finished"]
    assert errors == []
    with db.read() as store:
        assert {r["run_id"]: r["rows_done"] for r in store.app_runs()} == {"run_1": N, "run_2": N}


def test_reads_answer_while_another_process_writes_and_a_blocked_job_fails_clearly(home, monkeypatch):
    proc = hold_lock_in_subprocess(home.db_path)
    try:
        db = SharedDatabase(home.db_path, read_wait_s=0.2)
        t = time.monotonic()
        with db.read() as store:  # reads never wait for a writer
            store.app_runs()
        assert time.monotonic() - t < 10
        monkeypatch.setenv("WORKBENCH_DB_WAIT_S", "0.5")  # a job's writes wait this long for the writer lock
        jobs = BackgroundJobs(home, db, load_predictor=lambda uri, device: TinyModel(uri))
        job = jobs.submit_replay(ReplayJob("t", "test:b", "test:c", run_id="run_busy", drift=False), by=OPERATOR)
        done = jobs.wait(job.job_id, 60)
        assert done.status == "failed" and "being written by another job" in done.error
        [p] = [p for p in read_progress(home.home) if p.run_id == "run_busy"]
        assert p.status == "failed" and "being written by another job" in p.error
    finally:
        proc.kill()
        proc.wait()
    with db.read() as store:
        assert store.get_run("run_busy") is None


def test_failures_are_recorded_and_running_runs_refused(home):
    db = SharedDatabase(home.db_path)

    def load(uri, device):
        raise WorkbenchError(f"no model at {uri}")

    jobs = BackgroundJobs(home, db, load_predictor=load)
    job = jobs.submit_replay(ReplayJob("t", "models:/nope/1", "test:c", run_id="run_f"), by=OPERATOR)
    done = jobs.wait(job.job_id, 60)
    assert done.status == "failed" and done.error == "no model at models:/nope/1"
    assert jobs.jobs()[0].to_dict()["error"] == done.error and not jobs.running()
    ProgressFile(home.home, "run_other", source="cli replay")  # a live replay elsewhere (this pid)
    with pytest.raises(WorkbenchError, match="is being replayed by process"):
        jobs.submit_replay(ReplayJob("t", "test:b", "test:c", run_id="run_other"), by=OPERATOR)
    with pytest.raises(WorkbenchError, match="invalid run id"):
        jobs.submit_replay(ReplayJob("t", "test:b", "test:c", run_id="bad id"), by=OPERATOR)


@pytest.mark.parametrize("who", [None, Identity("eve", "oidc", Role.VIEWER)], ids=["visitor", "viewer"])
def test_viewers_cannot_start_jobs(home, who):
    jobs = BackgroundJobs(home, SharedDatabase(home.db_path), load_predictor=lambda uri, device: TinyModel(uri))
    with pytest.raises(AccessDenied, match="viewers cannot start a replay: sign in as an operator or approver"):
        jobs.submit_replay(ReplayJob("t", "test:b", "test:c", run_id="run_v"), by=who)
    with pytest.raises(AccessDenied, match="viewers cannot recompute drift"):
        jobs.submit_drift("run_v", by=who)
    assert jobs.jobs() == [] and read_progress(home.home) == []


def test_cli_replay_progress_is_visible_without_duckdb(demo_home, tmp_path):
    """A replay in another process (the CLI) writes; its progress file shows it running, reads still answer, then
    finished."""
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    env = os.environ | {"WORKBENCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "replay",
            "--baseline",
            "models:/flight-delay@champion",
            "--candidate",
            "models:/flight-delay@challenger",
            "--traffic",
            "flights",
            "--run-id",
            "cli_slow",
            "--online",
            "--online-batch",
            "8",
            "--batch-size",
            "500",
            "--json",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    db = SharedDatabase(home / "lake", read_wait_s=0.1)
    seen = read = False
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            got = {p.run_id: p for p in read_progress(home)}.get("cli_slow")
            if got is not None and got.stage == "replaying":  # from here to the end it writes
                seen = True
                assert got.status == "running" and got.pid == proc.pid and got.source == "cli replay"
                with db.read() as store:  # the replay writes; reads still answer
                    read = any(r["run_id"] == "cli_slow" for r in store.app_runs())
                if read:
                    break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    assert seen and read
    [p] = [p for p in read_progress(home) if p.run_id == "cli_slow"]
    assert p.status == "finished" and p.rows_done == p.rows_total == json.loads(out)["rows"]
