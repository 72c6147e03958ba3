"""Security: what must not be trusted is refused, and nothing gets in or out that should not.

Signed records (tampered, wrong keys, replayed, reordered, stale), webhook signatures, the service's
state-changing endpoints and bind address, hostile names in SQL, paths that try to leave the home, and
the private key, which must never appear in logs, DuckDB, MLflow or error messages.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from conftest import REPO, LakeConnection, free_port, fresh_run, run_cli, seed_run
from reliability_log import record
from workbench import WorkbenchError
from workbench.cli import build_parser
from workbench.clock import utc_now
from workbench.config import Settings, load_settings
from workbench.decide.canary import SignedDecision, Signer, apply_decision, build_decision, sync
from workbench.decide.chain import status, verify_chain
from workbench.decide.policy import load_policy, parse_policy
from workbench.decide.registry import Registry
from workbench.decide.signing import SignatureError, init_keys, load_private_key, sign, trusted_keys
from workbench.drift.report import drift_run
from workbench.evaluate.evaluation import evaluate_run
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.live.service import create_app
from workbench.paths import within
from workbench.replay.models import ModelRef
from workbench.replay.pipeline import replay
from workbench.store import Store

HOSTILE = [
    'x"; DROP TABLE runs; --',
    "x'); DROP TABLE predictions; --",
    "1 OR 1=1",
    '名前 "quoted"',
    "a`b",
    "../../etc/passwd",
    "x\\y",
]


def db_digest(cur) -> dict:
    """Every table of a DuckDB database with its row count and a hash of its content."""
    tables = [
        r[0]
        for r in cur.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT temporary AND database_name = current_database() "
            "ORDER BY 1"
        ).fetchall()
    ]
    return {t: cur.execute(f'SELECT count(*), bit_xor(hash(x)) FROM "{t}" x').fetchall()[0] for t in tables}


# -- signed records --------------------------------------------------------------------------------------
@pytest.fixture
def keyring(tmp_path):
    init_keys(tmp_path / "keys")
    other = Ed25519PrivateKey.generate()
    return {
        "signer": Signer.from_keys_dir(tmp_path / "keys", "tester"),
        "trusted": trusted_keys(tmp_path / "keys", tmp_path / "none"),
        "intruder": Signer("intruder", "ed25519:" + "0" * 64, other),
        "other_key": other,
    }


def fresh_store() -> Store:
    store = Store()
    seed_run(store, "run_a")
    return store


def resign(signed: SignedDecision, key, **changes) -> SignedDecision:
    record_ = signed.record | changes
    return SignedDecision(record_, sign(key, record_))


def test_untrustworthy_records_are_refused_and_change_nothing(keyring):
    signer, trusted = keyring["signer"], keyring["trusted"]
    policy = load_policy()
    store = fresh_store()
    d1, _ = build_decision(store, "run_a", policy, signer, justification="reviewed")
    twin, _ = build_decision(store, "run_a", policy, signer, justification="reviewed")  # the same step, made twice
    stale, _ = build_decision(
        store, "run_a", policy, signer, now=utc_now() - timedelta(hours=25), justification="reviewed"
    )
    future, _ = build_decision(
        store, "run_a", policy, signer, now=utc_now() + timedelta(hours=1), justification="reviewed"
    )
    foreign = resign(d1, keyring["other_key"], key_fingerprint="ed25519:" + "f" * 64)
    forged = resign(d1, keyring["other_key"])  # claims the trusted key's fingerprint
    raw = bytearray(base64.b64decode(d1.signature))
    raw[0] ^= 1
    cases = {
        "tampered weight": SignedDecision(d1.record | {"weight_after": 100}, d1.signature),
        "tampered verdict": SignedDecision(d1.record | {"verdict": "ROLLBACK", "weight_after": 0}, d1.signature),
        "flipped signature bit": SignedDecision(d1.record, base64.b64encode(bytes(raw)).decode()),
        "unsigned": SignedDecision(d1.record, None),
        "signature not base64": SignedDecision(d1.record, "not*base64"),
        "signed by an untrusted key": foreign,
        "another key claiming the trusted fingerprint": forged,
        "stale (older than max_age_hours)": stale,
        "dated in the future": future,
    }
    expect = {
        "tampered weight": "does not match",
        "tampered verdict": "does not match",
        "flipped signature bit": "does not match",
        "unsigned": "unsigned",
        "signature not base64": "not valid base64",
        "signed by an untrusted key": "not trusted",
        "another key claiming the trusted fingerprint": "does not match",
        "stale (older than max_age_hours)": "is stale",
        "dated in the future": "dated in the future",
    }
    before = db_digest(store.cursor())
    for name, signed in cases.items():
        with pytest.raises(SignatureError, match=expect[name]):
            apply_decision(store, signed, trusted)
        assert db_digest(store.cursor()) == before, name
        assert status(store, "fraud", trusted).weight == 0
        record("security", f"decision record: {name}", f"refused ({expect[name]}); weight still 0%")
    apply_decision(store, d1, trusted)
    with pytest.raises(SignatureError, match="already applied"):
        apply_decision(store, d1, trusted)
    with pytest.raises(SignatureError, match="out of chain"):
        apply_decision(store, twin, trusted)  # a second record for the same step: the chain moved on
    record("security", "decision record: applied twice (replayed)", "refused (already applied)")
    record("security", "decision record: a second record for a step already taken", "refused (out of chain)")
    # reordered: a chain's second record offered to a store whose chain is empty
    d2, _ = build_decision(
        store, fresh_run(store, 1), policy, signer, justification="reviewed"
    )  # new evidence: the next step
    apply_decision(store, d2, trusted)
    other = fresh_store()
    with pytest.raises(SignatureError, match="out of chain"):
        apply_decision(other, d2, trusted)
    apply_decision(other, d1, trusted)
    apply_decision(other, d2, trusted)  # in order it is accepted
    assert status(other, "fraud", trusted).weight == status(store, "fraud", trusted).weight == 5
    record(
        "security",
        "decision records replayed out of order into another store",
        "refused until its predecessor is applied; then accepted in order",
    )


def test_tampering_with_the_stored_chain_is_detected(keyring):
    signer, trusted = keyring["signer"], keyring["trusted"]
    for attack in ("edit record", "edit signature", "delete link", "delete chain", "swap state"):
        store = fresh_store()
        for _ in range(2):
            signed, _ = build_decision(store, "run_a", load_policy(), signer, justification="reviewed")
            apply_decision(store, signed, trusted)
        cur = store.cursor()
        first = cur.execute(
            "SELECT decision_id, record FROM canary_chain JOIN decisions USING (decision_id) WHERE sequence = 1"
        ).fetchall()[0]
        if attack == "edit record":
            cur.execute(
                "UPDATE decisions SET record = ? WHERE decision_id = ?",
                [first[1].replace('"weight_after":1', '"weight_after":50'), first[0]],
            )
        elif attack == "edit signature":
            cur.execute(
                "UPDATE decisions SET signature = ? WHERE decision_id = ?",
                [base64.b64encode(b"\0" * 64).decode(), first[0]],
            )
        elif attack == "delete link":
            cur.execute("DELETE FROM canary_chain WHERE sequence = 1")
        elif attack == "delete chain":  # the state is left with no signed record behind it
            cur.execute("DELETE FROM canary_chain")
        else:
            cur.execute("UPDATE canary_state SET weight = 100")
        st = status(store, "fraud", trusted)
        assert not st.verified and st.problem, attack
        record("security", f"stored chain: {attack}", f"canary status unverified ({st.problem[:90]})")
        if attack not in ("swap state", "delete chain"):  # (an empty chain has nothing to verify)
            with pytest.raises(SignatureError):
                verify_chain(store, "fraud", trusted)


# -- webhooks -----------------------------------------------------------------------------------------------
SECRET = "whsec-security"
NOW = 1_800_000_000


def delivery(*, ts=NOW, secret=SECRET, delivery_id=None, body=None, model="fraud"):
    body = body or json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "timestamp": "2027-01-15T08:00:00Z",
            "data": {"name": model, "version": "7", "source": "models:/x", "run_id": "r"},
        }
    )
    did = delivery_id or str(uuid.uuid4())
    return body, {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": str(ts),
        "X-MLflow-Signature": _generate_hmac_signature(secret, did, str(ts), body),
    }


@pytest.fixture
def service(tmp_path):
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri="unused", webhook_secret=SECRET)
    return TestClient(create_app(settings, clock=lambda: NOW)), settings


def test_webhooks_with_bad_or_old_signatures_get_401_and_change_nothing(service):
    client, settings = service
    body, good = delivery()
    tampered_body = body.replace('"7"', '"8"')
    other_id = delivery()[1]["X-MLflow-Delivery-Id"]
    cases = {
        "no signature headers": (body, {"Content-Type": "application/json"}),
        "wrong secret": delivery(secret="guess"),
        "body changed after signing": (tampered_body, good),
        "signature of another delivery id": (body, good | {"X-MLflow-Delivery-Id": other_id}),
        "timestamp 301 s old (replay)": delivery(ts=NOW - 301),
        "timestamp 301 s ahead": delivery(ts=NOW + 301),
        "timestamp not a number": (body, good | {"X-MLflow-Timestamp": "yesterday"}),
        "signature scheme v0": (body, good | {"X-MLflow-Signature": good["X-MLflow-Signature"].replace("v1,", "v0,")}),
        "empty signature": (body, good | {"X-MLflow-Signature": ""}),
    }
    client.get("/healthz")
    with Store(settings.db_path) as store:
        before = db_digest(store.cursor())
    for name, (b, headers) in cases.items():
        r = client.post("/webhooks/mlflow", content=b, headers=headers)
        assert r.status_code == 401, (name, r.status_code, r.text)
        with Store(settings.db_path) as store:
            assert db_digest(store.cursor()) == before, name
        record("security", f"webhook: {name}", "401, nothing queued")
    r = client.post("/webhooks/mlflow", content=body, headers=good)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    again = client.post("/webhooks/mlflow", content=body, headers=good)  # the same delivery, replayed in time
    assert again.status_code == 202 and again.json()["status"] == "duplicate"
    with Store(settings.db_path) as store:
        assert len(store.list_jobs()) == 1
    record(
        "security",
        "webhook: a valid delivery, then the same delivery again",
        "202 queued once; the replay is answered 'duplicate' and queues nothing",
        jobs=1,
    )


READ_ONLY_POSTS = {"/v1/flagger/{model}/{hook}"}  # Flagger's gate webhooks: POST by protocol, change nothing


def test_every_state_changing_endpoint_refuses_an_unauthenticated_request(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WORKBENCH_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("WORKBENCH_API_TOKEN", "token-" + uuid.uuid4().hex)
    settings = load_settings()
    client = TestClient(create_app(settings))
    client.get("/healthz")
    routes = [
        (m.upper(), path)
        for path, ops in client.app.openapi()["paths"].items()
        for m in sorted(ops)
        if m.upper() not in ("GET", "HEAD", "OPTIONS")
    ]
    assert ("POST", "/webhooks/mlflow") in routes
    with Store(settings.db_path) as store:
        before = db_digest(store.cursor())
    for method, path in routes:
        url = path.replace("{", "").replace("}", "")  # every path parameter gets its own name as value
        r = client.request(
            method, url, json={"reason": "x", "record": {}, "signature": "x"}, headers={"Authorization": "Bearer wrong"}
        )
        if path in READ_ONLY_POSTS:
            assert r.status_code < 500
        else:
            assert r.status_code in (401, 403), (method, path, r.status_code, r.text)
        with Store(settings.db_path) as store:
            assert db_digest(store.cursor()) == before, (method, path)
        record("security", f"unauthenticated {method} {path}", f"{r.status_code}; nothing changed")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr)
    return found


def test_the_service_binds_loopback_unless_told_otherwise(tmp_path):
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
    port = free_port()
    env = os.environ | {"WORKBENCH_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    record("security", "`workbench serve` without --host", "listens on 127.0.0.1 only")


# -- hostile names ---------------------------------------------------------------------------------------------
class Hostile:
    """A predictor whose features have hostile names."""

    def __init__(self, name: str, features: tuple[str, ...]):
        self.ref = ModelRef(
            uri=f"test:{name}", name=name, version="1", run_id=None, flavor="test", features=features, threshold=0.5
        )
        self.device = "cpu"

    def predict(self, batch):
        return 1 / (1 + np.exp(-batch.column(self.ref.features[0]).to_numpy()))


def test_hostile_names_cannot_inject_sql(tmp_path):
    num, cat = HOSTILE[0], HOSTILE[1]
    n = 300
    rng = np.random.default_rng(7)
    pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "event_time": pd.date_range("2024-01-01", periods=n, freq="h"),
            num: rng.normal(size=n),
            cat: rng.choice(["a", "b"], n),
            **{h: rng.normal(size=n) for h in HOSTILE[2:]},
        }
    ).to_parquet(tmp_path / "t.parquet")
    pd.DataFrame({"request_id": [f"r{i}" for i in range(n)], "label": rng.integers(0, 2, n)}).to_parquet(
        tmp_path / "labels.parquet"
    )
    with Store(":memory:") as store:
        ingest(store, tmp_path / "t.parquet", "t", nullable=HOSTILE[2:])
        ingest_labels(store, tmp_path / "labels.parquet", "t")
        model = Hostile("h", (num, cat, *HOSTILE[2:]))
        replay(store, "t", model, Hostile("g", (num, cat)), run_id="r")
        before = db_digest(store.cursor())
        assert store.require_traffic("t")["columns"] == [num, cat, *HOSTILE[2:]]
        rep = drift_run(store, "r", tests={num: "ks", cat: "chisquare"}, thresholds={num: 0.5}).to_dict()
        assert set(rep["features"]) >= {num, cat} and rep["features"][num]["test"] == "ks"
        for col in HOSTILE:  # evaluation segments by each hostile column: its values, not its name, are the keys
            segments = evaluate_run(store, "r", segment=col).to_dict()["segments"]
            assert list(segments) == [col] and sum(v["rows"] for v in segments[col].values()) == n
        refused = []
        for h in HOSTILE:
            for call, what in (
                (lambda h=h: ingest(store, tmp_path / "t.parquet", h), "traffic name"),
                (lambda h=h: replay(store, h, model, model), "traffic name"),
                (lambda h=h: replay(store, "t", model, model, run_id=h), "run id"),
                (lambda h=h: drift_run(store, "r", reference=h), "drift reference"),
                (lambda h=h: evaluate_run(store, h), "run id (evaluate)"),
                (lambda h=h: evaluate_run(store, "r", segment=h + "'"), "evaluation segment"),
                (lambda h=h: evaluate_run(store, "r", window=h), "evaluation window"),
                (lambda h=h: drift_run(store, "r", tests={h + "'": "ks"}), "drift column"),
            ):
                with pytest.raises(WorkbenchError):
                    call()
                refused.append(what)
            assert status(store, h, {}).decision_id is None  # a hostile model name is only ever a parameter
        after = db_digest(store.cursor())  # drift reports and evaluations were added; nothing else moved
        assert {t: v for t, v in after.items() if not t.startswith("drift") and t != "evaluations"} == {
            t: v for t, v in before.items() if not t.startswith("drift") and t != "evaluations"
        }
    record(
        "security",
        f"{len(HOSTILE)} hostile names ({', '.join(repr(h) for h in HOSTILE[:3])}, ...) as column "
        "names through ingest, replay, drift and evaluation segments",
        "stored, compared and segmented by verbatim as quoted identifiers; no statement injected",
        columns=len(HOSTILE),
    )
    record(
        "security",
        "the same names as traffic names, run ids, drift references, drift columns, evaluation "
        "segments (unknown columns) and windows",
        "each refused with a one-line error; every table unchanged",
        refusals=len(refused),
    )


def test_hostile_names_through_the_webhook_are_only_data(service):
    client, settings = service
    for h in HOSTILE:
        body, headers = delivery(model=h)
        r = client.post("/webhooks/mlflow", content=body, headers=headers)
        assert r.status_code == 202
    with Store(settings.db_path) as store:
        assert sorted(j["params"]["model"] for j in store.list_jobs()) == sorted(HOSTILE)
        assert {"runs", "predictions", "jobs"} <= set(db_digest(store.cursor()))
    record(
        "security",
        "hostile model names in signed webhook payloads",
        "queued as data (JSON parameters); tables intact",
        jobs=len(HOSTILE),
    )


# -- paths ---------------------------------------------------------------------------------------------------
def test_paths_cannot_leave_their_folders(tmp_path):
    root = tmp_path / "home" / "reports"
    root.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "inner").mkdir()
    (root / "link_in").symlink_to(root / "inner")
    (root / "link_out").symlink_to(outside)
    assert within(root, "inner/r.html") == (root / "inner" / "r.html").resolve()
    assert within(root, "link_in/r.html") == (root / "inner" / "r.html").resolve()
    for bad in ("../x", "a/../../x", str(outside / "x"), "link_out/r.html", "link_out", "/etc/passwd", "x\x00y"):
        with pytest.raises(WorkbenchError):
            within(root, bad)
    record("security", "path helper: '..', absolute paths, symlinks out, NUL", "refused; symlinks inside allowed")


@pytest.mark.parametrize("folder", ["mlartifacts", "reports", "keys"])
def test_home_folders_that_are_symlinks_out_are_refused(tmp_path, folder):
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (home / folder).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(WorkbenchError, match="leads outside"):
        load_settings(home).ensure()
    proc = run_cli("keys", "init", home=home, check=False)
    assert proc.returncode == 2 and "leads outside" in proc.stderr and proc.stderr.count("\n") == 1
    assert list((tmp_path / "elsewhere").iterdir()) == []
    record(
        "security",
        f"$WORKBENCH_HOME/{folder} is a symlink out of the home",
        "every command refuses it; nothing written there",
    )


def test_keys_that_are_symlinks_out_are_refused(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys)
    stolen = tmp_path / "elsewhere.pem"
    shutil.move(keys / "ed25519.pem", stolen)
    (keys / "ed25519.pem").symlink_to(stolen)
    with pytest.raises(WorkbenchError, match="leads outside"):
        load_private_key(keys)
    other = Ed25519PrivateKey.generate().public_key()
    planted = tmp_path / "planted.pem"
    planted.write_bytes(other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (keys / "trusted").mkdir()
    (keys / "trusted" / "planted.pem").symlink_to(planted)
    with pytest.raises(WorkbenchError, match="leads outside"):
        trusted_keys(keys, keys / "trusted")
    record(
        "security",
        "private key file, and a trusted public key, symlinked from outside the keys folder",
        "refused: neither used to sign nor trusted",
    )


def test_a_policy_cannot_send_decision_artifacts_outside_the_home(tmp_path):
    home = tmp_path / "home"
    init_keys(home / "keys")
    settings = load_settings(home).ensure()
    policy = parse_policy({"registry": {"experiment": "../../escaped"}})
    trusted = trusted_keys(settings.keys_dir, settings.trusted_keys_dir)
    with Store(settings.db_path) as store:
        seed_run(store, "run_a")
        signed, _ = build_decision(
            store, "run_a", policy, Signer.from_keys_dir(settings.keys_dir, "t"), justification="reviewed"
        )
        apply_decision(store, signed, trusted)
        registry = Registry(settings.mlflow_tracking_uri, settings.artifacts_dir)
        run_id, err = sync(store, signed, registry.publish)
        assert run_id is None and "leads outside" in err and store.get_decision(signed.decision_id)["pending_sync"]
    assert not (tmp_path / "escaped").exists()
    record(
        "security",
        "policy with registry.experiment = '../../escaped'",
        "publishing refused (kept pending); nothing written outside the artifacts folder",
    )


# -- the private key never leaves its file -------------------------------------------------------------------
def secret_forms(key_file: Path) -> list[bytes]:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    body = b"".join(key_file.read_bytes().splitlines()[1:-1])
    return [
        raw,
        der,
        body,
        raw.hex().encode(),
        raw.hex().upper().encode(),
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        base64.b64encode(raw).rstrip(b"="),
    ]


def test_the_private_key_appears_nowhere(demo_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)  # the demo made the key pair and signed its first decision with it
    outputs = [run_cli("keys", "export", "--json", home=home)]
    with Store(home / "lake") as store:
        seed_run(store, "run_syn", model="flight-delay")
    outputs.append(run_cli("decide", "run_syn", "--justification", "reviewed", "--json", home=home))
    decision = json.loads(outputs[-1].stdout)
    assert decision["mlflow_run_id"] and not decision["pending_sync"]
    for args in (
        ["canary", "status", "flight-delay", "--json"],
        ["decision", "verify", decision["decision_id"]],
        ["sync", "--json"],
        ["keys", "export"],
        ["runs"],
    ):
        outputs.append(run_cli(*args, home=home))
    key_file = home / "keys" / "ed25519.pem"
    secrets = secret_forms(key_file)
    # error messages: a key readable by others, a corrupted key, a tampered record
    os.chmod(key_file, 0o644)
    outputs.append(run_cli("decide", "run_syn", "--justification", "reviewed", home=home, check=False))
    os.chmod(key_file, 0o600)
    good_pem = key_file.read_bytes()
    key_file.write_bytes(good_pem[:-40] + b"garbage\n-----END PRIVATE KEY-----\n")
    outputs.append(run_cli("decide", "run_syn", "--justification", "reviewed", home=home, check=False))
    key_file.write_bytes(good_pem)
    tampered = tmp_path / "tampered.json"
    tampered.write_text(
        json.dumps({"record": decision["record"] | {"weight_after": 100}, "signature": decision["signature"]})
    )
    outputs.append(run_cli("decision", "verify", str(tampered), home=home, check=False))
    failures = [p for p in outputs if p.returncode != 0]
    assert len(failures) == 3 and all(p.stderr.startswith("error: ") and "Traceback" not in p.stderr for p in failures)
    text = "".join(p.stdout + p.stderr for p in outputs).encode()
    assert not any(s in text for s in secrets), "the key is in a command's output"
    # every file of the home but the key itself: DuckDB, its WAL, MLflow's database and artifacts, reports
    scanned = 0
    for path in home.rglob("*"):
        if path.is_file() and path != key_file:
            data = path.read_bytes()
            assert not any(s in data for s in secrets), path
            scanned += 1
    # DuckDB, row by row as text
    con = LakeConnection(home / "lake")
    dumped = "".join(str(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in db_digest(con)).encode()
    con.close()
    assert not any(s in dumped for s in secrets)
    # MLflow: the decision run's params, tags, metrics and artifacts; the version's and the model's tags
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(decision["mlflow_run_id"])
    artifacts = Path(client.download_artifacts(run.info.run_id, "decision", str(tmp_path / "artifacts")))
    blobs = [
        json.dumps(run.data.params),
        json.dumps(run.data.tags),
        json.dumps(run.data.metrics),
        json.dumps(client.get_model_version("flight-delay", "2").tags),
        json.dumps(client.get_registered_model("flight-delay").tags),
    ]
    mlflow_text = "".join(blobs).encode() + b"".join(p.read_bytes() for p in artifacts.rglob("*") if p.is_file())
    assert not any(s in mlflow_text for s in secrets)
    assert decision["signature"] in "".join(blobs)  # the signature is published, the key is not
    record(
        "security",
        "private key searched (raw, hex, base64, PEM body, PKCS#8 DER) after demo + decide + sync",
        "found only in keys/ed25519.pem: not in command output or error messages, files, DuckDB rows or "
        "MLflow params/tags/artifacts",
        files_scanned=scanned,
        commands=len(outputs),
    )
