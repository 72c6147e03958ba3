"""The HTTP service: MLflow webhook signatures, replay protection, the idempotent job queue, health."""
import json
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from conftest import free_port
from workbench.config import Settings
from workbench.registry import Registry
from workbench.service import JOB_KIND, create_app
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
    body = json.dumps({"entity": entity, "action": action, "timestamp": "2027-01-15T08:00:00+00:00",
                       "data": data or {"name": "fraud", "version": "7", "source": "models:/x", "run_id": "r",
                                        "tags": {}, "description": None}})
    did = delivery_id or str(uuid.uuid4())
    headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": did, "X-MLflow-Timestamp": str(ts),
               "X-MLflow-Signature": _generate_hmac_signature(secret, did, str(ts), body)}
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
    assert job["params"] == {"model": "fraud", "version": "7", "alias": None, "candidate_uri": "models:/fraud/7",
                             "baseline_uri": "models:/fraud@champion"}


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


@pytest.mark.parametrize("tamper", ["body", "secret", "delivery-id", "timestamp-old", "timestamp-future",
                                    "missing-signature", "not-a-time"])
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
    headers = {"X-MLflow-Delivery-Id": did, "X-MLflow-Timestamp": str(NOW),
               "X-MLflow-Signature": _generate_hmac_signature(SECRET, did, str(NOW), "not json")}
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
        name = "hooked_" + uuid.uuid4().hex[:6]
        client.create_registered_model(name)
        exp = client.get_experiment_by_name("models") or client.get_experiment(client.create_experiment("models"))
        run = client.create_run(exp.experiment_id)
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        client.set_registered_model_alias(name, "challenger", "1")
        found = wait_for_jobs(settings, 3)
        mine = [j for j in found if j["params"]["model"] == name]
        assert {j["event"] for j in mine} == {"model_version.created", "model_version_alias.created"}
        assert all(j["params"]["version"] == "1" and j["params"]["candidate_uri"] == f"models:/{name}/1" for j in mine)
        assert len({j["delivery_id"] for j in found}) == len(found)
    finally:
        registry.client.delete_webhook(hook_id)
