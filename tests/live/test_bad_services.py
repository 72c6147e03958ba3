"""Bad services: MLflow down or slow while a decision is recorded, and DuckDB locked by another process.

A decision made while MLflow cannot be reached is applied and stored locally, signed, with
``pending_sync``; ``workbench sync`` pushes it later, in chain order and exactly once per decision id
(a retry after a crash reuses the finished MLflow run and replaces an unfinished one). A DuckDB file
locked by another process gives a clear error after a bounded wait, and nothing is corrupted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from conftest import REPO, free_port, fresh_run, register_model, run_cli, seed_run
from reliability_log import record
from workbench import WorkbenchError
from workbench.decide.canary import Signer, apply_decision, build_decision
from workbench.decide.policy import load_policy
from workbench.decide.registry import Registry, sync_pending
from workbench.decide.signing import init_keys, trusted_keys
from workbench.store import Store


class SlowProxy:
    """A loopback TCP proxy that holds every connection ``delay`` seconds before forwarding it."""

    def __init__(self, target_port: int, delay: float):
        self.target, self.delay = target_port, delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        time.sleep(self.delay)
        try:
            up = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            conn.close()
            return
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def setup(mlflow_server, tmp_path):
    """A registered model (versions 1 and 2) on the real server, and a home with a key and a passing run."""
    client = MlflowClient(mlflow_server, mlflow_server)
    name = register_model(mlflow_server, "svc_")
    home = tmp_path / "home"
    init_keys(home / "keys")
    with Store(home / "lake") as store:
        seed_run(store, "run_a", model=name)
    return {"client": client, "name": name, "home": home, "url": mlflow_server}


def decision_runs(client: MlflowClient, decision_id: str, view=ViewType.ACTIVE_ONLY) -> list:
    exp = client.get_experiment_by_name("canary-decisions")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.`canary.decision_id` = '{decision_id}'", run_view_type=view)


def test_decisions_made_while_mlflow_is_down_or_slow_are_pushed_later_exactly_once(setup):
    client, name, home, url = setup["client"], setup["name"], setup["home"], setup["url"]
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    t0 = time.monotonic()
    first = json.loads(run_cli("decide", "run_a", "--justification", "reviewed", "--json", home=home, env=down).stdout)
    assert first["applied"] and first["pending_sync"] and "unreachable" in first["sync_error"]
    assert (first["weight_before"], first["weight_after"]) == (0, 1)
    down_s = time.monotonic() - t0

    with Store(home / "lake") as store:
        newer = fresh_run(store, 1, model=setup["name"])  # new evidence for the next step
    proxy = SlowProxy(int(url.rsplit(":", 1)[1]), delay=6.0)  # answers, but after the 3 s health timeout
    try:
        t0 = time.monotonic()
        second = json.loads(
            run_cli(
                "decide",
                newer,
                "--justification",
                "reviewed",
                "--json",
                home=home,
                env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{proxy.port}"},
            ).stdout
        )
        slow_s = time.monotonic() - t0
    finally:
        proxy.close()
    assert second["applied"] and second["pending_sync"] and "ReadTimeout" in second["sync_error"]
    assert (second["weight_before"], second["weight_after"]) == (1, 5)
    ids = [first["decision_id"], second["decision_id"]]
    assert all(decision_runs(client, d) == [] for d in ids)  # nothing reached MLflow

    out = json.loads(run_cli("sync", "--json", home=home, env={"MLFLOW_TRACKING_URI": url}).stdout)
    assert [d["decision_id"] for d in out["synced"]] == ids and out["failed"] == [] and out["pending"] == 0
    again = json.loads(run_cli("sync", "--json", home=home, env={"MLFLOW_TRACKING_URI": url}).stdout)
    assert again == {"synced": [], "failed": [], "pending": 0}
    runs = {d: decision_runs(client, d) for d in ids}
    assert all(len(r) == 1 and r[0].info.status == "FINISHED" for r in runs.values())
    tags = client.get_model_version(name, "2").tags
    assert tags["canary.decision_id"] == ids[1] and tags["canary.weight"] == "5"  # applied in chain order
    with Store(home / "lake", read_only=True) as store:
        assert store.pending_sync_records() == []
        assert [store.get_decision(d)["mlflow_run_id"] for d in ids] == [runs[d][0].info.run_id for d in ids]
    third = run_cli(
        "decide", "run_a", "--justification", "reviewed", "--json", home=home, env={"MLFLOW_TRACKING_URI": url}
    )
    assert third.stdout.count("\n") == 1 and "View run" in third.stderr  # MLflow's run links go to stderr
    assert json.loads(third.stdout)["pending_sync"] is False
    record(
        "bad services",
        "MLflow down (closed port) while deciding",
        f"applied, signed record stored with pending_sync (decide took {down_s:.1f} s)",
        decisions=1,
    )
    record(
        "bad services",
        "MLflow slow (every connection held 6 s) while deciding",
        f"applied, pending_sync after the 3 s health timeout (decide took {slow_s:.1f} s)",
        decisions=1,
    )
    record(
        "bad services",
        "`workbench sync` once MLflow answers, then again",
        "both decisions pushed in chain order; second sync found nothing; one MLflow run per decision",
        synced=2,
        mlflow_runs=sum(len(r) for r in runs.values()),
        pending=0,
    )


def test_sync_after_an_interrupted_publish_logs_nothing_twice(setup):
    client, home, url = setup["client"], setup["home"], setup["url"]
    trusted = trusted_keys(home / "keys", home / "keys" / "trusted")
    signer = Signer.from_keys_dir(home / "keys", "tester")
    registry = Registry(url)
    with Store(home / "lake") as store:
        signed = []
        for step in range(2):  # each step on new evidence
            run_id = "run_a" if step == 0 else fresh_run(store, step, model=setup["name"])
            s, _ = build_decision(store, run_id, load_policy(), signer, justification="reviewed")
            apply_decision(store, s, trusted)  # applied; MLflow not told yet: pending_sync
            signed.append(s)
        # 1: published, then the process died before it marked the decision synced
        done = registry.publish(signed[0])
        # 2: the publish died after creating its run (unfinished, no artifacts)
        exp = client.get_experiment_by_name("canary-decisions")
        partial = client.create_run(exp.experiment_id, tags={"canary.decision_id": signed[1].decision_id}).info.run_id
        res = sync_pending(store, registry.publish, trusted)
        assert [d["decision_id"] for d in res.synced] == [s.decision_id for s in signed] and res.failed == []
        assert res.synced[0]["mlflow_run_id"] == done  # reused, not logged again
        assert res.synced[1]["mlflow_run_id"] != partial
        assert client.get_run(partial).info.lifecycle_stage == "deleted"
        for s in signed:
            assert len(decision_runs(client, s.decision_id)) == 1
        assert store.pending_sync_records() == []
    record(
        "bad services",
        "sync after a publish that finished but was not marked, and after one that died mid-run",
        "finished MLflow run reused; unfinished run deleted and logged again; one active run per decision",
        decisions=2,
        mlflow_runs=2,
    )


def test_sync_never_pushes_a_tampered_record(setup):
    client, home, url = setup["client"], setup["home"], setup["url"]
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    out = json.loads(run_cli("decide", "run_a", "--justification", "reviewed", "--json", home=home, env=down).stdout)
    with Store(home / "lake") as store:
        record_text = store.get_decision(out["decision_id"])["record"]
        store.cursor().execute(
            "UPDATE decisions SET record = ? WHERE decision_id = ?",
            [record_text.replace('"weight_after":1', '"weight_after":100'), out["decision_id"]],
        )
    proc = run_cli("sync", "--json", home=home, env={"MLFLOW_TRACKING_URI": url}, check=False)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert "1 decision(s) still pending" in proc.stderr and "signature does not match" in proc.stderr
    assert decision_runs(client, out["decision_id"]) == []
    record(
        "bad services",
        "a pending record altered in DuckDB before `workbench sync`",
        "refused (signature does not match); nothing pushed to MLflow",
        mlflow_runs=0,
    )


# -- another process writing --------------------------------------------------------------------------------
HOLDER = """
import sys
from workbench.store import Store
store = Store(sys.argv[1])
store.write("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
store.write("INSERT INTO held VALUES (1)")
with store.transaction() as cur:
    cur.execute("INSERT INTO held SELECT range FROM range(100000)")   # uncommitted when it is killed
    print("held", flush=True)
    sys.stdin.read()
"""


def hold_lock(path: Path) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_writer_holding_the_lock_never_blocks_reads_and_a_killed_one_leaves_only_commits(tmp_path):
    home = tmp_path / "home"
    db = home / "lake"
    with Store(db) as store:
        seed_run(store, "run_a")
    holder = hold_lock(db)
    try:
        t0 = time.monotonic()
        with Store(db, read_only=True) as store:  # reads answer at once, from the last commit
            assert store.require_run("run_a")["status"] == "finished"
            assert store.cursor().execute("SELECT count(*) FROM held").fetchall() == [(1,)]
        read_s = time.monotonic() - t0
        proc = run_cli("runs", "--json", home=home, env={"WORKBENCH_DB_WAIT_S": "1"}, check=False)
        assert proc.returncode == 0 and "run_a" in proc.stdout
        t0 = time.monotonic()  # a write waits for the lock, then fails with one clear line
        with (
            Store(db, wait_s=1.0) as store,
            pytest.raises(WorkbenchError, match=r"being written by another job; waited 1 s"),
        ):
            store.write("INSERT INTO held VALUES (2)")
        waited = time.monotonic() - t0
        assert 1.0 <= waited < 10
        proc = run_cli("gc", "--dry-run", home=home, env={"WORKBENCH_DB_WAIT_S": "1"}, check=False)
        assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1
        assert "being written by another job" in proc.stderr and "Traceback" not in proc.stderr
        # the holder lets go while a writer waits: it gets in
        threading.Timer(1.0, holder.stdin.close).start()
        t0 = time.monotonic()
        with Store(db, wait_s=30.0) as store:
            store.write("INSERT INTO held VALUES (3)")
            assert store.cursor().execute("SELECT count(*) FROM held").fetchall() == [(100_002,)]
        assert time.monotonic() - t0 >= 0.5
    finally:
        holder.kill()
        holder.wait()
    # a holder killed in the middle of a transaction leaves storage that opens, with only committed data
    holder = hold_lock(db)
    holder.kill()
    holder.wait()
    with Store(db) as store:
        assert store.cursor().execute("SELECT count(*) FROM held").fetchall() == [(100_003,)]
        store.write("INSERT INTO held VALUES (4)")  # and it is writable: the lock went with the process
        assert store.require_run("run_a")["status"] == "finished"
    record(
        "bad services",
        "another process inside a write transaction (library and CLI, 1 s wait for writes)",
        f"reads answered in {read_s:.2f} s; a write failed with one clear line after {waited:.1f} s; "
        "it got in once the holder let go",
    )
    record(
        "bad services",
        "writer SIGKILLed inside an open transaction",
        "storage opens and is writable; committed rows kept, uncommitted ones gone",
        committed_rows=100_003,
    )
