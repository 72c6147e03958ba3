"""Pause and abort from the app's library call: approvers only, with a reason; the chain records who and why."""

import json

import pytest

from conftest import free_port
from workbench import WorkbenchError
from workbench.config import load_settings
from workbench.decide.canary import apply_decision, build_decision
from workbench.decide.chain import status
from workbench.decide.policy import load_policy
from workbench.decide.signing import KeyRing
from workbench.ops.access import AccessDenied, Identity, Role
from workbench.ops.canary_control import control_canary
from workbench.store import Store

ALICE = Identity("alice", "password", Role.APPROVER)


@pytest.fixture
def ramping(seeded_home, monkeypatch):
    """The seeded home with fraud's canary at 1 % (MLflow unreachable: records stay local, pending sync)."""
    monkeypatch.setenv("WORKBENCH_HOME", str(seeded_home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    settings = load_settings(seeded_home)
    keys = KeyRing.from_settings(settings)
    with Store(settings.db_path) as store:
        signed, _ = build_decision(store, "run_a", load_policy(), keys.signer_as("ci"), justification="reviewed")
        assert apply_decision(store, signed, keys.trusted).weight == 1
        yield settings, store, keys


@pytest.mark.parametrize(
    "who, role",
    [(None, "viewers"), (Identity("olga", "password", Role.OPERATOR), "operators")],
    ids=["viewer", "operator"],
)
@pytest.mark.parametrize("action", ["pause", "abort"])
def test_only_approvers_pause_or_abort(ramping, who, role, action):
    settings, store, keys = ramping
    with pytest.raises(AccessDenied, match=f"{role} cannot {action} a canary: sign in as an approver"):
        control_canary(settings, store, keys, who, "fraud", action, "looks bad")
    assert status(store, "fraud", keys.trusted).weight == 1 and len(store.chain("fraud")) == 1


def test_a_reason_is_required(ramping):
    settings, store, keys = ramping
    with pytest.raises(WorkbenchError, match="a reason is required"):
        control_canary(settings, store, keys, ALICE, "fraud", "abort", "  ")
    with pytest.raises(WorkbenchError, match="unknown canary action 'stop'"):
        control_canary(settings, store, keys, ALICE, "fraud", "stop", "x")


def test_pause_then_abort_as_an_approver(ramping):
    settings, store, keys = ramping
    out = control_canary(settings, store, keys, ALICE, "fraud", "pause", "waiting for the on-call")
    assert out["weight"] == 1 and out["paused"] and out["verified"] and out["pending_sync"]
    out = control_canary(settings, store, keys, ALICE, "fraud", "abort", "error budget burnt")
    assert out["weight"] == 0 and out["killed"] and not out["paused"]
    head = json.loads(store.chain("fraud")[-1]["record"])
    assert (head["kind"], head["signer"], head["reason"]) == ("kill", "alice", "kill switch: error budget burnt")
