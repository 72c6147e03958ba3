"""Deciding and auditing as the app does it: preview, sign and apply, per-record chain verification."""

import json

import pytest

from conftest import seed_run
from workbench import WorkbenchError
from workbench.config import load_settings
from workbench.decide.canary import build_decision, preview_decision
from workbench.decide.chain import verify_chain
from workbench.decide.decisions import audit, decide
from workbench.decide.policy import Verdict, load_policy, parse_policy
from workbench.decide.signing import KeyRing, SignatureError
from workbench.store import Store


@pytest.fixture
def env(seeded_home, monkeypatch):
    from conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens: MLflow is down
    monkeypatch.setenv("WORKBENCH_SIGNER", "alice@example.com")
    settings = load_settings(seeded_home)
    store = Store(settings.db_path)
    yield settings, store, KeyRing.from_settings(settings)
    store.close()


def test_preview_is_what_a_signed_decision_says(env):
    settings, store, keys = env
    policy = load_policy()
    p = preview_decision(store, "run_a", policy)
    assert (p.verdict, p.model, p.weight_before, p.weight_after) == (Verdict.PROMOTE, "fraud", 0, 1)
    assert store.list_decisions() == []  # a preview signs and stores nothing
    signed, card = build_decision(store, "run_a", policy, keys.signer, justification="reviewed")
    assert (signed.record["verdict"], signed.record["weight_after"]) == (p.verdict, p.weight_after)
    assert card.to_dict() == p.scorecard.to_dict()


def test_decide_signs_applies_and_audit_verifies_each_record(env):
    settings, store, keys = env
    policy = load_policy()
    out = decide(settings, store, keys, "run_a", policy, justification="reviewed")
    assert out["applied"] and (out["verdict"], out["weight_before"], out["weight_after"]) == (Verdict.PROMOTE, 0, 1)
    assert out["record"]["signer"] == "alice@example.com"  # the ring's signer: WORKBENCH_SIGNER
    # MLflow is down: the record is applied and stays stored locally, pending sync
    assert out["pending_sync"] is True and out["mlflow_run_id"] is None and "unreachable" in out["sync_error"]
    seed_run(store, "run_b")
    second = decide(
        settings, store, keys, "run_b", policy, keys.signer_as("bob@example.com"), justification="ok"
    )  # an approver
    assert (second["weight_before"], second["weight_after"]) == (1, 5)
    assert second["record"]["signer"] == "bob@example.com"
    seed_run(store, "run_c", labelled=0.0)  # new requests, no labels yet: no new evidence
    unapplied = decide(settings, store, keys, "run_c", policy, apply=False, justification="ok")
    assert unapplied["verdict"] == Verdict.HOLD and not unapplied["applied"]
    entries = audit(store, "fraud", keys.trusted)
    by_id = {e.decision_id: e for e in entries}
    assert [by_id[d["decision_id"]].sequence for d in (out, second, unapplied)] == [1, 2, None]
    assert all(e.verified and e.problem is None for e in entries)
    assert entries[0].decision_id == unapplied["decision_id"]  # newest first
    assert by_id[out["decision_id"]].pending_sync and by_id[out["decision_id"]].record == out["record"]

    # tamper with the first applied record's stored text: that record breaks, the one after still verifies
    row = store.get_decision(out["decision_id"])
    text = row["record"].replace('"verdict":"PROMOTE"', '"verdict":"HOLD"')
    store.cursor().execute("UPDATE decisions SET record = ? WHERE decision_id = ?", [text, out["decision_id"]])
    entries = {e.decision_id: e for e in audit(store, "fraud", keys.trusted)}
    assert not entries[out["decision_id"]].verified and "altered" in entries[out["decision_id"]].problem
    assert entries[second["decision_id"]].verified and entries[unapplied["decision_id"]].verified
    with pytest.raises(SignatureError, match="altered"):
        verify_chain(store, "fraud", keys.trusted)  # the all-or-nothing check agrees


def test_unapplied_record_with_a_bad_signature_is_flagged(env):
    settings, store, keys = env
    out = decide(settings, store, keys, "run_a", load_policy(), apply=False, justification="ok")
    store.cursor().execute(
        "UPDATE decisions SET signature = ? WHERE decision_id = ?", ["AAAA" + out["signature"][4:], out["decision_id"]]
    )
    [entry] = audit(store, "fraud", keys.trusted)
    assert entry.sequence is None and not entry.verified and "does not match" in entry.problem
    assert json.loads(json.dumps(entry.to_dict()))["decision_id"] == out["decision_id"]


def test_preview_refuses_unfinished_runs(env):
    settings, store, keys = env
    store.create_run(
        run_id="run_live",
        traffic="syn_traffic",
        baseline={"uri": "models:/fraud/1", "name": "fraud", "version": "1"},
        candidate={"uri": "models:/fraud/2", "name": "fraud", "version": "2"},
        rows_total=10,
        batch_size=10,
        device="cpu",
        mode="throughput",
        meta={},
    )
    with pytest.raises(WorkbenchError, match="not finished"):
        preview_decision(store, "run_live", load_policy())


def test_a_second_approver_applies_a_decision_that_awaits_approval(env):
    from workbench.decide.decisions import approve

    settings, store, keys = env
    policy = parse_policy({"approvals": {"quorum": 2}})
    out = decide(settings, store, keys, "run_a", policy, justification="scorecard reviewed")
    assert out["awaiting_approval"] and not out["applied"] and out["quorum"] == 2
    assert out["signed_by"] == ["alice@example.com"] and out["justification"] == "scorecard reviewed"
    with pytest.raises(WorkbenchError, match="alice@example.com has already signed"):
        approve(settings, store, keys, out["decision_id"], "me again", keys.signer)
    done = approve(settings, store, keys, out["decision_id"], "segments fine", keys.signer_as("bob@example.com"))
    assert done["applied"] and done["weight"] == 1 and done["signed_by"] == ["alice@example.com", "bob@example.com"]
    [entry] = audit(store, "fraud", keys.trusted)
    assert entry.verified and entry.signed_by == ("alice@example.com", "bob@example.com") and entry.quorum == 2
