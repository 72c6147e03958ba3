"""Decision integrity: only verified signed records move or show a weight.

Each test is an attack on what influences a weight (the kill switch, the ``canary_state`` cache, the
``decisions`` table's columns, the chain's head, the keys, the published weight document, MLflow's tags),
made the way an attacker would (SQL on the database file, files replaced in the home) and checked through the
real entry points: the ``workbench`` CLI's ``main`` (in this process, as a fresh process would run it: every
attack is on the files and tables the command reads; concurrent writers are real processes), the service's API
and ``/metrics``, the router's weight source, and a real ``mlflow server`` where the registry is the witness.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import conftest
from conftest import REPO, free_port, fresh_run, register_model, seed_run
from reliability_log import record
from workbench.config import Settings, load_settings
from workbench.decide.policy import load_policy
from workbench.decide.signing import KeyRing, SignedDecision
from workbench.decide.witness import WeightDocuments
from workbench.live.router import StoreWeights
from workbench.live.service import create_app
from workbench.store import Store

AREA = "integrity"
TOKEN = "tok-" + "y" * 20


def dead_mlflow() -> dict:
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}


def cli(home, *args, env=None, check=True):
    """Run ``workbench ARGS --json``: (exit code, the JSON object or None, stderr)."""
    proc = conftest.cli(*args, "--json", home=home, env=env, check=check)
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else None), proc.stderr


def sql(home, statement: str, params=None) -> list:
    with Store(home / "lake") as store:
        return store.cursor().execute(statement, params or []).fetchall()


def seed(home, fn, *args, **kw):
    with Store(home / "lake") as store:
        return fn(store, *args, **kw)


def chain_length(home, model="fraud") -> int:
    return sql(home, "SELECT count(*) FROM canary_chain WHERE model = ?", [model])[0][0]


def scrape(settings: Settings) -> dict:
    text = TestClient(create_app(settings)).get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@pytest.fixture
def home(seeded_home):
    """A home whose fraud canary (v1 -> v2) is at 1 % after one decision made by the CLI."""
    rc, out, err = cli(seeded_home, "decide", "run_a", "--justification", "reviewed", env=dead_mlflow())
    assert rc == 0 and out["weight_after"] == 1, err
    return seeded_home


# -- the kill switch -----------------------------------------------------------------------------------------
def test_a_kill_holds_through_other_runs_and_pairings_until_a_signed_resume(home):
    env = dead_mlflow()
    rc, killed, _ = cli(home, "canary", "kill", "fraud", "--reason", "bad canary", env=env)
    assert rc == 0 and killed["weight"] == 0 and killed["killed"]
    seed(home, seed_run, "run_b0", baseline_version="0")  # the same candidate v2 against baseline v0
    seed(home, fresh_run, 1)  # the same pair on a new run with new evidence
    for run_id, path in (("run_b0", "another baseline (v0 -> v2)"), ("run_a1", "another run of v1 -> v2")):
        rc, out, err = cli(home, "decide", run_id, "--justification", "reviewed", env=env)
        assert rc == 0 and out["verdict"] == "PROMOTE" and out["weight_after"] == 0, err
        _, st, _ = cli(home, "canary", "status", "fraud")
        assert st["weight"] == 0 and st["killed"] and st["verified"] and st["candidate_version"] == "2"
        record(AREA, f"kill bypass: a PROMOTE decision through {path}", "weight stays 0 (kill derived from chain)")
    rc, _, err = cli(home, "canary", "resume", "fraud", "--version", "2", "--reason", " ", env=env, check=False)
    assert rc != 0 and "--reason is required" in err and "Traceback" not in err
    rc, _, err = cli(home, "canary", "resume", "fraud", "--version", "7", "--reason", "x", env=env, check=False)
    assert rc != 0 and "not killed" in err
    rc, resumed, err = cli(home, "canary", "resume", "fraud", "--version", "2", "--reason", "root cause fixed", env=env)
    assert rc == 0 and resumed["weight"] == 0 and not resumed["killed"] and resumed["verified"], err
    kinds = [r[0] for r in sql(home, "SELECT kind FROM canary_chain JOIN decisions USING (decision_id) ORDER BY 1")]
    assert kinds.count("resume") == 1
    rc, v, _ = cli(home, "decision", "verify", resumed["decision_id"])
    assert rc == 0 and v["verified"] and v["applied"]
    seed(home, fresh_run, 2)
    rc, out, _ = cli(home, "decide", "run_a2", "--justification", "reviewed", env=env)
    assert out["weight_after"] == 1  # released: new evidence ramps it again
    record(AREA, "resume without a reason, or of a version not killed", "refused (exit 2)")
    record(AREA, "signed resume by the signer", "a chained 'resume' record; weight 0, then new decisions ramp it")


def test_the_api_resume_needs_the_token(home):
    cli(home, "canary", "kill", "fraud", "--reason", "pager", env=dead_mlflow())
    settings = Settings(home=home, mlflow_tracking_uri=dead_mlflow()["MLFLOW_TRACKING_URI"], api_token=TOKEN)
    client = TestClient(create_app(settings))
    body = {"version": "2", "reason": "fixed"}
    assert client.post("/v1/canary/fraud/resume", json=body).status_code == 401
    bad = client.post(
        "/v1/canary/fraud/resume", json=body | {"reason": ""}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert bad.status_code == 409 and "--reason is required" in bad.json()["error"]
    ok = client.post("/v1/canary/fraud/resume", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and not ok.json()["killed"] and ok.json()["weight"] == 0 and ok.json()["verified"]
    record(AREA, "resume through the API without the bearer token", "401; with it, a signed resume record")


# -- the cache and the table's columns ------------------------------------------------------------------------
def test_editing_the_killed_flag_is_reported_and_moves_nothing(home):
    env = dead_mlflow()
    cli(home, "canary", "kill", "fraud", "--reason", "pager", env=env)
    sql(home, "UPDATE canary_state SET killed = false")
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert not st["verified"] and st["weight"] == 0 and "killed differs" in st["problem"]
    seed(home, fresh_run, 1)
    rc, out, _ = cli(home, "decide", "run_a1", "--justification", "reviewed", env=env)
    assert rc == 0 and out["weight_after"] == 0  # the kill is in the signed chain, not in the flag
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert st["verified"] and st["weight"] == 0 and st["killed"]
    record(AREA, "canary_state.killed set to false after a kill", "status unverified (cache differs); next decision 0%")


def test_editing_the_decisions_columns_shows_nothing_of_it(home):
    env = dead_mlflow()
    _, kill, _ = cli(home, "canary", "kill", "fraud", "--reason", "pager", env=env)
    did = kill["decision_id"]
    sql(
        home,
        "UPDATE decisions SET verdict = 'PROMOTE', kind = 'decision', weight_after = 100 WHERE decision_id = ?",
        [did],
    )
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert not st["verified"] and st["weight"] == 0 and "edited columns" in st["problem"]
    settings = Settings(home=home, mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"], api_token=TOKEN)
    client = TestClient(create_app(settings))
    d = client.get(f"/v1/decisions/{did}").json()
    assert (d["verdict"], d["kind"], d["weight_after"], d["verified"]) == ("ROLLBACK", "kill", 0, False)
    view = client.get("/v1/canary/fraud").json()
    assert view["weight"] == 0 and not view["verified"] and view["verdict"] == "unverified"
    m = scrape(settings)
    assert m[("workbench_canary_weight_percent", (("model", "fraud"),))] == 0
    assert m[("workbench_canary_verified", (("model", "fraud"),))] == 0
    assert m[("workbench_canary_last_verdict", (("model", "fraud"), ("verdict", "PROMOTE")))] == 0
    record(
        AREA,
        "decisions.verdict/kind/weight_after edited on the head record",
        "status, API, /metrics show the signed record's values, unverified (edited columns), weight 0",
    )


# -- the head: deleted, rewound, replaced ------------------------------------------------------------------
def rewind(home, model="fraud") -> str:
    """Delete the head of ``model``'s chain (link and record) and point canary_state at the previous record,
    as an attacker with the database file would; returns the deleted decision id."""
    (n,) = sql(home, "SELECT max(sequence) FROM canary_chain WHERE model = ?", [model])[0]
    head = sql(home, "SELECT decision_id FROM canary_chain WHERE model = ? AND sequence = ?", [model, n])[0][0]
    prev, prev_hash, rec = sql(
        home,
        "SELECT decision_id, c.record_hash, record FROM canary_chain c JOIN decisions USING (decision_id) "
        "WHERE c.model = ? AND sequence = ?",
        [model, n - 1],
    )[0]
    weight = json.loads(rec)["weight_after"]
    sql(home, "DELETE FROM canary_chain WHERE decision_id = ?", [head])
    sql(home, "DELETE FROM decisions WHERE decision_id = ?", [head])
    sql(
        home,
        "UPDATE canary_state SET decision_id = ?, record_hash = ?, weight = ?, killed = false WHERE model = ?",
        [prev, prev_hash, weight, model],
    )
    return head


def test_deleting_the_head_and_rewinding_the_state_is_caught_by_the_document(home):
    env = dead_mlflow()
    seed(home, fresh_run, 1)
    cli(home, "decide", "run_a1", "--justification", "reviewed", env=env)  # 5 %
    settings = load_settings(home)
    doc = json.loads(WeightDocuments(settings.published_dir).path("fraud").read_text())
    assert (doc["sequence"], doc["weight"]) == (2, 5) and doc["signature"]
    rewind(home)
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert not st["verified"] and st["weight"] == 0
    assert st["problem"].startswith("the chain was rewound: the published document head is sequence 2")
    keys = KeyRing.from_settings(settings)
    live = StoreWeights(settings, "fraud", load_policy(), keys=keys, publish=False).read()
    assert not live.verified and "rewound" in live.problem
    view = TestClient(create_app(settings)).get("/v1/canary/fraud").json()
    assert view["weight"] == 0 and not view["verified"]
    seed(home, fresh_run, 2)
    rc, _, err = cli(home, "decide", "run_a2", "--justification", "reviewed", env=env, check=False)
    assert rc != 0 and "cannot apply: the chain was rewound" in err
    assert chain_length(home) == 1  # no fork at sequence 2
    record(
        AREA,
        "head record and link deleted, canary_state rewound to the previous record",
        "status, router, API: unverified (rewound: published document at sequence 2), weight 0; decide refused",
    )
    sql(home, "DELETE FROM canary_chain")
    sql(home, "DELETE FROM canary_state")
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert not st["verified"] and "ends at sequence 0" in st["problem"]
    record(AREA, "every chain and state row of the model deleted", "unverified (rewound to sequence 0), weight 0")


def test_forged_and_deleted_weight_documents(home):
    settings = load_settings(home)
    path = WeightDocuments(settings.published_dir).path("fraud")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(doc | {"sequence": 9}))
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert not st["verified"] and st["weight"] == 0 and "does not match the signed record" in st["problem"]
    forged = doc | {"record": doc["record"] | {"sequence": 9}, "sequence": 9}
    path.write_text(json.dumps(forged))
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert not st["verified"] and "does not verify" in st["problem"]
    record(AREA, "published weight document edited (later sequence, unsigned)", "unverified, weight 0")
    path.unlink()
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert st["verified"] and st["witnesses"]["published document"] == "none yet"
    seed(home, fresh_run, 1)
    cli(home, "decide", "run_a1", "--justification", "reviewed", env=dead_mlflow())
    assert json.loads(path.read_text())["sequence"] == 2
    record(
        AREA,
        "published weight document deleted (alone)",
        "no weight moves; status says 'none yet' and the next applied record writes it again",
    )


def test_a_rewind_of_the_database_and_the_document_is_caught_by_mlflow(seeded_home, mlflow_server):
    home = seeded_home
    name = register_model(mlflow_server, "integrity_", versions=2)
    seed(home, seed_run, "run_m", model=name)
    seed(home, seed_run, "run_m1", model=name)
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    for run_id in ("run_m", "run_m1"):
        rc, out, err = cli(home, "decide", run_id, "--justification", "reviewed", env=env)
        assert rc == 0 and not out["pending_sync"], err
    _, st, _ = cli(home, "canary", "status", name, env=env)
    assert st["verified"] and st["witnesses"] == {
        "published document": "sequence 2 (the head)",
        "MLflow": "sequence 2 (the head)",
    }
    settings = load_settings(home)
    docs = WeightDocuments(settings.published_dir)
    rewind(home, name)
    docs.path(name).unlink()  # the attacker rewinds the document too: it names sequence 1 again
    with Store(home / "lake") as store:
        row = store.chain(name)[0]
        docs.publish(
            SignedDecision(json.loads(row["record"]), row["signature"]), 1, [], KeyRing.from_settings(settings).trusted
        )
    _, st, _ = cli(home, "canary", "status", name, env=env)
    assert not st["verified"] and st["weight"] == 0
    assert st["problem"].startswith("the chain was rewound: the MLflow head is sequence 2")
    seed(home, seed_run, "run_m2", model=name)
    rc, _, err = cli(home, "decide", "run_m2", "--justification", "reviewed", env=env, check=False)
    assert rc != 0 and "rewound" in err and chain_length(home, name) == 1
    record(
        AREA,
        "database head deleted and rewound, and the weight document rewound with it",
        "MLflow's canary.sequence tag (2) is ahead: unverified, weight 0; decide refused (no fork)",
    )


# -- keys and records --------------------------------------------------------------------------------------
def test_a_swapped_key_pair_verifies_nothing_and_signs_nothing_that_applies(home, tmp_path):
    shutil.rmtree(home / "keys")
    rc, _, _ = cli(home, "keys", "init")
    assert rc == 0
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert not st["verified"] and st["weight"] == 0
    seed(home, fresh_run, 1)
    rc, _, err = cli(home, "decide", "run_a1", "--justification", "reviewed", env=dead_mlflow(), check=False)
    assert rc != 0 and "does not verify" in err
    record(AREA, "the home's key pair replaced by the attacker's", "status unverified, weight 0; new records refused")


def test_a_replayed_record_is_refused(home, tmp_path):
    seed(home, fresh_run, 1)
    _, out, _ = cli(home, "decide", "run_a1", "--justification", "reviewed", "--no-apply")
    saved = tmp_path / "decision.json"
    saved.write_text(json.dumps(out))
    env = dead_mlflow()
    rc, applied, _ = cli(home, "canary", "apply", str(saved), env=env)
    assert rc == 0 and applied["weight"] == 5
    rc, _, err = cli(home, "canary", "apply", str(saved), env=env, check=False)
    assert rc != 0 and "already applied" in err
    cli(home, "canary", "kill", "fraud", "--reason", "pager", env=env)
    rc, _, err = cli(home, "canary", "apply", str(saved), env=env, check=False)
    assert rc != 0 and "already applied" in err
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert st["weight"] == 0 and st["verified"]
    record(AREA, "an applied PROMOTE record replayed after a kill", "refused (already applied); weight stays 0")


def test_editing_a_record_text_is_detected(home):
    sql(home, "UPDATE decisions SET record = replace(record, '\"weight_after\":1', '\"weight_after\":50')")
    _, st, _ = cli(home, "canary", "status", "fraud")
    assert not st["verified"] and st["weight"] == 0 and "hash mismatch" in st["problem"]
    record(AREA, "the stored record's JSON edited (weight 1 -> 50)", "unverified (hash mismatch), weight 0")


# -- concurrent writers on one model -------------------------------------------------------------------------
def test_two_concurrent_decides_and_a_kill_never_fork_the_chain(home):
    """Two ``decide`` processes on runs of the same model and a ``canary kill``, started together: each one
    either extends the chain's head as it finds it or fails with a one-line error; the chain verifies after."""
    seed(home, fresh_run, 1)
    seed(home, fresh_run, 2)
    env = {"WORKBENCH_HOME": str(home)} | dead_mlflow()
    commands = [
        ["decide", "run_a1", "--justification", "reviewed", "--json"],
        ["decide", "run_a2", "--justification", "reviewed", "--json"],
        ["canary", "kill", "fraud", "--reason", "race", "--json"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "workbench.cli", *c],
            env=os.environ | env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in commands
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    applied = []
    for (rc, out, err), c in zip(results, commands, strict=True):
        if rc == 0:
            applied.append(json.loads(out)["decision_id"])
        else:  # refused whole: a clear error, nothing half-applied
            assert rc == 2 and "Traceback" not in err and err.strip().count("\n") == 0, (c, err)
    assert applied, [r[2][-500:] for r in results]
    rows = sql(home, "SELECT sequence, decision_id FROM canary_chain WHERE model = 'fraud' ORDER BY sequence")
    assert [s for s, _ in rows] == list(range(1, len(rows) + 1))  # no sequence twice: no fork
    assert {d for _, d in rows} >= set(applied)
    rc, st, _ = cli(home, "canary", "status", "fraud")
    assert st["verified"] and st["sequence"] == len(rows)
    for did in applied:
        rc, v, _ = cli(home, "decision", "verify", did)
        assert rc == 0 and v["verified"] and v["applied"]
    record(
        AREA,
        "two decide processes and a kill on one model at once",
        f"{len(applied)} of 3 applied in turn"
        + ("" if len(applied) == 3 else " (the others refused with a one-line error)")
        + f"; the chain has sequences 1..{len(rows)} once each and verifies",
    )
