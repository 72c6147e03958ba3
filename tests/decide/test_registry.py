"""MLflow as the system of record, against a real `mlflow server` on 127.0.0.1 (sqlite backend)."""

import json
import time
import uuid
import warnings
from datetime import UTC, datetime

import pytest
from mlflow import MlflowClient

from conftest import free_port, register_model, seed_run
from workbench import WorkbenchError
from workbench.decide.canary import Signer, apply_decision, build_decision, build_kill, sync
from workbench.decide.policy import Verdict, load_policy, parse_policy
from workbench.decide.registry import WEBHOOK_EVENTS, Registry
from workbench.decide.signing import canonical_bytes, init_keys, trusted_keys
from workbench.store import Store


@pytest.fixture
def env(mlflow_server, tmp_path):
    """A registered model with versions 1 (champion) and 2 on the server, a store and a signing key."""
    client = MlflowClient(mlflow_server, mlflow_server)
    name = register_model(mlflow_server, "m_")
    client.set_registered_model_alias(name, "champion", "1")
    init_keys(tmp_path / "keys")
    store = Store()
    yield {
        "client": client,
        "name": name,
        "store": store,
        "registry": Registry(mlflow_server),
        "signer": Signer.from_keys_dir(tmp_path / "keys", "tester"),
        "trusted": trusted_keys(tmp_path / "keys", tmp_path / "none"),
    }
    store.close()


def decide_and_publish(env, run_id, policy=None, quality="better"):
    """Seed ``run_id`` (a new run of the pair, unless it exists) of ``quality``, decide, apply and publish."""
    store = env["store"]
    if store.get_run(run_id) is None:
        seed_run(store, run_id, quality=quality, model=env["name"])
    signed, _ = build_decision(store, run_id, policy or load_policy(), env["signer"], justification="reviewed")
    apply_decision(store, signed, env["trusted"])
    run_id_ml, err = sync(store, signed, lambda s: env["registry"].publish(s, None, None))
    assert err is None, err
    return signed, run_id_ml


def test_decision_run_and_version_tags(env, tmp_path):
    client, name = env["client"], env["name"]
    signed, run_id = decide_and_publish(env, "run_a")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["canary.decision_id"] == signed.decision_id
    assert run.data.params["verdict"] == Verdict.PROMOTE and run.data.params["candidate_version"] == "2"
    assert run.data.params["policy_hash"] == signed.record["policy_hash"]
    assert run.data.metrics["weight_after"] == 1 and run.data.metrics["checks_fail"] == 0
    auc = next(c for c in signed.record["scorecard"]["checks"] if c["gate"] == "metric.roc_auc.min_absolute_change")
    assert run.data.metrics["roc_auc_delta_ci_low"] == pytest.approx(auc["delta"]["ci_low"])
    files = {f.path for f in client.list_artifacts(run_id, "decision")}
    assert files == {f"decision/{f}" for f in ("decision.json", "record.bin", "record.sig", "scorecard.json")}
    local = client.download_artifacts(run_id, "decision", str(tmp_path))
    assert json.loads(open(f"{local}/decision.json").read()) == signed.to_dict()
    assert open(f"{local}/record.bin", "rb").read() == canonical_bytes(signed.record)

    tags = client.get_model_version(name, "2").tags
    assert tags["canary.verdict"] == Verdict.PROMOTE and tags["canary.weight"] == "1"
    assert tags["canary.decision_id"] == signed.decision_id and tags["canary.signature"] == signed.signature
    assert tags["canary.decision_run_id"] == run_id
    model_tags = client.get_registered_model(name).tags
    assert model_tags["canary.weight"] == "1" and model_tags["canary.candidate_version"] == "2"
    assert env["store"].get_decision(signed.decision_id)["mlflow_run_id"] == run_id
    assert not env["store"].get_decision(signed.decision_id)["pending_sync"]


def test_full_promotion_moves_champion_and_rollback_hands_it_back(env):
    client, name = env["client"], env["name"]
    decide_and_publish(env, "run_a", parse_policy({"ramp": [50, 100]}))
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    decide_and_publish(env, "run_b", parse_policy({"ramp": [50, 100]}))  # new evidence moves the ramp on
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert client.get_model_version_by_alias(name, "previous").version == "1"

    signed, _ = decide_and_publish(env, "run_bad", quality="bad")
    assert signed.record["verdict"] == Verdict.ROLLBACK and signed.record["weight_after"] == 0
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    tags = client.get_model_version(name, "2").tags
    assert tags["canary.weight"] == "0" and tags["canary.verdict"] == Verdict.ROLLBACK
    assert "metric.roc_auc.min_absolute_change" in tags["canary.reason"]


def test_kill_switch_tags_the_version(env):
    client, name = env["client"], env["name"]
    decide_and_publish(env, "run_a")
    kill = build_kill(env["store"], name, "error budget burnt", env["signer"], load_policy())
    apply_decision(env["store"], kill, env["trusted"])
    assert sync(env["store"], kill, env["registry"].publish)[1] is None
    tags = client.get_model_version(name, "2").tags
    assert tags["canary.weight"] == "0" and tags["canary.reason"] == "kill switch: error budget burnt"
    assert tags["canary.decision_id"] == kill.decision_id


def test_optional_stage_transitions(env):
    client, name = env["client"], env["name"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated in MLflow 3, kept for teams using them
        client.transition_model_version_stage(name, "1", "Production")
        policy = parse_policy({"ramp": [50, 100], "registry": {"stage_transitions": True}})
        decide_and_publish(env, "run_a", policy)
        assert client.get_model_version(name, "2").current_stage == "Staging"
        decide_and_publish(env, "run_b", policy)
        assert client.get_model_version(name, "2").current_stage == "Production"
        assert client.get_model_version(name, "1").current_stage == "Archived"


def test_unreachable_mlflow_keeps_the_signed_decision_pending(tmp_path):
    init_keys(tmp_path / "keys")
    signer = Signer.from_keys_dir(tmp_path / "keys", "tester")
    with Store() as store:
        seed_run(store, "run_a")
        signed, _ = build_decision(store, "run_a", load_policy(), signer, justification="reviewed")
        apply_decision(store, signed, trusted_keys(tmp_path / "keys", tmp_path / "none"))
        registry = Registry(f"http://127.0.0.1:{free_port()}")
        t = time.perf_counter()
        with pytest.raises(WorkbenchError, match="unreachable"):
            registry.check_reachable()
        run_id, err = sync(store, signed, registry.publish)
        assert time.perf_counter() - t < 30  # fails fast instead of MLflow's minutes of retries
        assert run_id is None and "unreachable" in err
        assert [p["decision_id"] for p in store.pending_sync()] == [signed.decision_id]
        assert store.canary_state("fraud")["weight"] == 1  # the verified decision still moved the weight


def test_webhook_registration_is_idempotent(mlflow_server):
    registry = Registry(mlflow_server)
    name = "wb_" + uuid.uuid4().hex[:6]
    first = registry.ensure_webhook("http://127.0.0.1:9/webhooks/mlflow", "s3cret", name=name)
    second = registry.ensure_webhook("http://127.0.0.1:10/webhooks/mlflow", "s3cret", name=name)
    hook = registry.client.get_webhook(first)
    assert first == second and hook.url.endswith(":10/webhooks/mlflow")
    assert sorted(str(e) for e in hook.events) == sorted(WEBHOOK_EVENTS)
    registry.client.delete_webhook(first)


def test_timestamps_are_utc_iso(env):
    signed, _ = decide_and_publish(env, "run_a")
    created = datetime.fromisoformat(signed.record["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo == UTC and signed.record["created_at"].endswith("Z")
