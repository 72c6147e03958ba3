"""The HTTP service: MLflow webhook signatures, replay protection, the idempotent job queue, health."""

import json
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from conftest import free_port, fresh_run, register_model
from workbench.config import Settings
from workbench.decide.registry import Registry
from workbench.live.service import JOB_KIND, create_app
from workbench.store import Store

SECRET = "whsec-test"
NOW = 1_800_000_000


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path / "home", mlflow_tracking_uri="unused", webhook_secret=SECRET)


@pytest.fixture
def client(settings):
    return TestClient(create_app(settings, clock=lambda: NOW))


def delivery(event="model_version.created", data=None, *, ts=NOW, delivery_id=None, secret=SECRET):
    """Body and headers exactly as MLflow's sender builds them (its own signing function)."""
    entity, action = event.rsplit(".", 1)
    body = json.dumps(
        {
            "entity": entity,
            "action": action,
            "timestamp": "2027-01-15T08:00:00+00:00",
            "data": data
            or {"name": "fraud", "version": "7", "source": "models:/x", "run_id": "r", "tags": {}, "description": None},
        }
    )
    did = delivery_id or str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": str(ts),
        "X-MLflow-Signature": _generate_hmac_signature(secret, did, str(ts), body),
    }
    return body, headers


def jobs(settings):
    with Store(settings.db_path) as store:
        return store.list_jobs()


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_valid_delivery_queues_one_job(client, settings):
    body, headers = delivery()
    r = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    [job] = jobs(settings)
    assert job["kind"] == JOB_KIND and job["status"] == "queued" and job["job_id"] == r.json()["job_id"]
    assert job["delivery_id"] == headers["X-MLflow-Delivery-Id"] and job["event"] == "model_version.created"
    assert job["params"] == {
        "model": "fraud",
        "version": "7",
        "alias": None,
        "candidate_uri": "models:/fraud/7",
        "baseline_uri": "models:/fraud@champion",
    }


def test_the_same_delivery_twice_is_one_job(client, settings):
    body, headers = delivery()
    first = client.post("/webhooks/mlflow", content=body, headers=headers).json()
    again = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert again.status_code == 202 and again.json()["status"] == "duplicate"
    assert again.json()["job_id"] == first["job_id"] and len(jobs(settings)) == 1


def test_alias_created_queues_and_workbench_aliases_are_ignored(client, settings):
    body, headers = delivery("model_version_alias.created", {"name": "fraud", "alias": "challenger", "version": "8"})
    assert client.post("/webhooks/mlflow", content=body, headers=headers).json()["status"] == "queued"
    body, headers = delivery("model_version_alias.created", {"name": "fraud", "alias": "champion", "version": "8"})
    assert client.post("/webhooks/mlflow", content=body, headers=headers).json()["status"] == "ignored"
    body, headers = delivery("registered_model.created", {"name": "fraud", "tags": {}, "description": None})
    assert client.post("/webhooks/mlflow", content=body, headers=headers).json()["status"] == "ignored"
    [job] = jobs(settings)
    assert job["params"]["alias"] == "challenger" and job["params"]["version"] == "8"


@pytest.mark.parametrize(
    "tamper", ["body", "secret", "delivery-id", "timestamp-old", "timestamp-future", "missing-signature", "not-a-time"]
)
def test_bad_deliveries_get_401_and_change_nothing(client, settings, tamper):
    body, headers = delivery()
    if tamper == "body":
        body = body.replace('"7"', '"9"')
    elif tamper == "secret":
        body, headers = delivery(secret="guess")
    elif tamper == "delivery-id":
        headers["X-MLflow-Delivery-Id"] = "other"
    elif tamper == "timestamp-old":
        body, headers = delivery(ts=NOW - 301)
    elif tamper == "timestamp-future":
        body, headers = delivery(ts=NOW + 301)
    elif tamper == "missing-signature":
        del headers["X-MLflow-Signature"]
    else:
        headers["X-MLflow-Timestamp"] = "yesterday"
    r = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert r.status_code == 401 and r.json()["error"]
    assert jobs(settings) == []


def test_within_tolerance_is_accepted(client):
    body, headers = delivery(ts=NOW - 299)
    assert client.post("/webhooks/mlflow", content=body, headers=headers).status_code == 202


def test_no_secret_configured_refuses(tmp_path):
    app = create_app(Settings(home=tmp_path / "h", mlflow_tracking_uri="unused"), clock=lambda: NOW)
    body, headers = delivery()
    assert TestClient(app).post("/webhooks/mlflow", content=body, headers=headers).status_code == 503


def test_signed_garbage_is_400(client, settings):
    did = "d1"
    headers = {
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": str(NOW),
        "X-MLflow-Signature": _generate_hmac_signature(SECRET, did, str(NOW), "not json"),
    }
    assert client.post("/webhooks/mlflow", content="not json", headers=headers).status_code == 400
    assert jobs(settings) == []


# -- a real MLflow server delivers the webhook ---------------------------------------------------------
@pytest.fixture
def live_service(settings):
    """The service under uvicorn on 127.0.0.1 (a thread), stopped at the end of the test."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def wait_for_jobs(settings, n, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = jobs(settings)
        if len(found) >= n:
            return found
        time.sleep(0.2)
    raise AssertionError(f"expected {n} jobs, found {jobs(settings)}")


def test_mlflow_server_delivers_new_versions(mlflow_server, live_service, settings):
    registry = Registry(mlflow_server)
    hook_name = "wb_" + uuid.uuid4().hex[:6]
    hook_id = registry.ensure_webhook(f"{live_service}/webhooks/mlflow", SECRET, name=hook_name)
    try:
        # MLflow's own test delivery passes our signature check
        result = registry.client.test_webhook(hook_id, "model_version.created")
        assert result.success and result.response_status == 202, result
        time.sleep(1.5)  # the server caches webhook lists for MLFLOW_WEBHOOK_CACHE_TTL=1 s
        client = MlflowClient(mlflow_server, mlflow_server)
        name = register_model(mlflow_server, "hooked_", versions=1)
        client.set_registered_model_alias(name, "challenger", "1")
        found = wait_for_jobs(settings, 3)
        mine = [j for j in found if j["params"]["model"] == name]
        assert {j["event"] for j in mine} == {"model_version.created", "model_version_alias.created"}
        assert all(j["params"]["version"] == "1" and j["params"]["candidate_uri"] == f"models:/{name}/1" for j in mine)
        assert len({j["delivery_id"] for j in found}) == len(found)
    finally:
        registry.client.delete_webhook(hook_id)


# -- the weight API ----------------------------------------------------------------------------
TOKEN = "tok-" + "x" * 20


@pytest.fixture
def weights_api(seeded_home):
    """The service on a home whose fraud canary is at 5 % (two PROMOTE records), MLflow unreachable."""
    from workbench.decide.canary import Signer, apply_decision, build_decision
    from workbench.decide.policy import load_policy
    from workbench.decide.signing import trusted_keys

    signer = Signer.from_keys_dir(seeded_home / "keys", "tester")
    with Store(seeded_home / "lake") as store:
        for step in range(2):  # each step on new evidence
            signed, _ = build_decision(
                store, "run_a" if step == 0 else fresh_run(store, step), load_policy(), signer, justification="reviewed"
            )
            apply_decision(store, signed, trusted_keys(seeded_home / "keys", seeded_home / "none"))
    settings = Settings(home=seeded_home, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", api_token=TOKEN)
    return TestClient(create_app(settings)), settings, signed


def hooks(client, model="fraud"):
    return {
        h: client.post(
            f"/v1/flagger/{model}/{h}", json={"name": model, "namespace": "ml", "phase": "Progressing"}
        ).status_code
        for h in ("confirm-traffic-increase", "confirm-promotion", "rollback")
    }


def test_canary_view_for_argo_and_routers(weights_api):
    client, _, signed = weights_api
    r = client.get("/v1/canary/fraud")
    assert r.status_code == 200
    assert r.json() == {
        "model": "fraud",
        "weight": 5,
        "baseline_version": "1",
        "candidate_version": "2",
        "decision_id": signed.decision_id,
        "signature": signed.signature,
        "verified": True,
        "verdict": "promote",
        "killed": False,
        "sequence": 2,
        "ramp": [1, 5, 25, 50, 100],
        "witnesses": {"published document": "none yet"},  # applied in-process here, without the document
        "problem": None,
    }
    assert client.get("/v1/canary/nobody").status_code == 404


def test_decision_record_and_verification(weights_api):
    client, _, signed = weights_api
    d = client.get(f"/v1/decisions/{signed.decision_id}").json()
    assert d["record"] == signed.record and d["signature"] == signed.signature
    assert d["verified"] and d["applied"] and d["sequence"] == 2 and d["verdict"] == "PROMOTE"
    assert (d["weight_before"], d["weight_after"]) == (1, 5)
    assert client.get("/v1/decisions/dec_nope").status_code == 404


def test_flagger_webhooks_follow_the_latest_verified_decision(weights_api):
    client, settings, _ = weights_api
    assert hooks(client) == {"confirm-traffic-increase": 200, "confirm-promotion": 412, "rollback": 412}
    r = client.post("/v1/flagger/fraud/confirm-promotion")
    assert r.json()["allowed"] is False and "PROMOTE at 5%" in r.json()["reason"]
    assert client.post("/v1/flagger/fraud/pre-rollout").status_code == 404
    assert client.post("/v1/flagger/nobody/rollback").status_code == 404
    with Store(settings.db_path) as store:
        store.cursor().execute("UPDATE canary_state SET weight = 100 WHERE model = 'fraud'")
    assert client.get("/v1/canary/fraud").json()["verdict"] == "unverified"
    assert hooks(client) == {"confirm-traffic-increase": 412, "confirm-promotion": 412, "rollback": 200}


@pytest.mark.parametrize(
    "auth, code",
    [(None, 401), ("Bearer wrong", 401), ("Basic " + TOKEN, 401), ("Bearer " + TOKEN, 200)],
    ids=["no-token", "wrong-token", "not-bearer", "token"],
)
def test_kill_needs_the_token(weights_api, auth, code):
    client, _, _ = weights_api
    r = client.post("/v1/canary/fraud/kill", json={"reason": "pager"}, headers={"Authorization": auth} if auth else {})
    assert r.status_code == code
    after = client.get("/v1/canary/fraud").json()
    if code == 401:
        assert r.headers["www-authenticate"] == "Bearer" and after["weight"] == 5
    else:
        assert r.json()["weight"] == 0 and r.json()["killed"] and after["verdict"] == "rollback"
        assert hooks(client) == {"confirm-traffic-increase": 412, "confirm-promotion": 412, "rollback": 200}


def test_state_changes_are_off_without_a_configured_token(seeded_home):
    client = TestClient(create_app(Settings(home=seeded_home, mlflow_tracking_uri="unused")))
    r = client.post("/v1/canary/fraud/kill", json={"reason": "x"}, headers={"Authorization": "Bearer anything"})
    assert r.status_code == 503 and "WORKBENCH_API_TOKEN" in r.json()["error"]


def test_apply_a_signed_record_over_the_api(weights_api):
    from workbench.decide.canary import Signer, build_decision
    from workbench.decide.policy import load_policy

    client, settings, _ = weights_api
    auth = {"Authorization": "Bearer " + TOKEN}
    with Store(settings.db_path) as store:
        pending, _ = build_decision(
            store,
            fresh_run(store, 5),
            load_policy(),
            Signer.from_keys_dir(settings.keys_dir, "ci"),
            justification="reviewed",
        )
    body = pending.to_dict()
    assert client.post("/v1/decisions", json=body).status_code == 401
    tampered = client.post(
        "/v1/decisions", json=body | {"record": body["record"] | {"weight_after": 100}}, headers=auth
    )
    assert tampered.status_code == 409 and "does not match" in tampered.json()["error"]
    r = client.post("/v1/decisions", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["weight"] == 25 and r.json()["decision_id"] == pending.decision_id
    again = client.post("/v1/decisions", json=body, headers=auth)
    assert again.status_code == 409 and "already applied" in again.json()["error"]
    with Store(settings.db_path) as store:  # MLflow was down: applied, kept for a later sync
        assert store.get_decision(pending.decision_id)["pending_sync"]


def test_the_service_reads_its_key_ring_at_start(weights_api, tmp_path):
    """Trusted keys are read once, when the app is made: a key trusted later counts after a restart."""
    import shutil

    from workbench.decide.canary import Signer, build_decision
    from workbench.decide.policy import load_policy
    from workbench.decide.signing import init_keys

    client, settings, _ = weights_api
    other = init_keys(tmp_path / "ci-keys")
    with Store(settings.db_path) as store:
        pending, _ = build_decision(
            store,
            fresh_run(store, 5),
            load_policy(),
            Signer.from_keys_dir(tmp_path / "ci-keys", "ci"),
            justification="reviewed",
        )
    settings.trusted_keys_dir.mkdir(exist_ok=True)
    shutil.copy(other.public_key_path, settings.trusted_keys_dir / "ci.pem")
    auth = {"Authorization": "Bearer " + TOKEN}
    r = client.post("/v1/decisions", json=pending.to_dict(), headers=auth)
    assert r.status_code == 409 and "not trusted" in r.json()["error"]
    assert client.get("/v1/canary/fraud").json()["weight"] == 5
    restarted = TestClient(create_app(settings))
    r = restarted.post("/v1/decisions", json=pending.to_dict(), headers=auth)
    assert r.status_code == 200 and r.json()["weight"] == 25 and r.json()["verified"]


def test_openapi_spec_describes_the_weight_api(weights_api):
    client, _, _ = weights_api
    spec = client.get("/openapi.json").json()
    assert {
        "/v1/canary/{model}",
        "/v1/decisions/{decision_id}",
        "/v1/flagger/{model}/{hook}",
        "/v1/canary/{model}/kill",
        "/v1/decisions",
        "/healthz",
    } <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/canary/{model}/kill"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/v1/canary/{model}"]["get"]
    assert "verdict" in spec["components"]["schemas"]["CanaryView"]["properties"]
