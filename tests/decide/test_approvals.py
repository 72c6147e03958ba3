"""Sign-offs with real Ed25519 keys: justifications in the signed record, the two-person rule, overrides."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from conftest import fresh_run, seed_run
from workbench import WorkbenchError
from workbench.decide.approvals import approve, awaiting, sign_offs
from workbench.decide.canary import Signer, apply_decision, build_decision, load_signed
from workbench.decide.chain import status, verify_decision
from workbench.decide.decisions import audit
from workbench.decide.policy import Verdict, load_policy, parse_policy
from workbench.decide.signing import SignatureError, init_keys, trusted_keys
from workbench.store import Store

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
TWO = parse_policy({"approvals": {"quorum": 2}})


@pytest.fixture
def ctx(tmp_path):
    """A store with the finished run ``run_a`` (its candidate passes the default policy), a key pair, the
    signers alice, bob and carol (the same key, as the app signs for each approver), and the trusted keys."""
    init_keys(tmp_path / "keys")
    store = Store()
    seed_run(store, "run_a")
    signer = Signer.from_keys_dir(tmp_path / "keys", "alice")
    people = {name: Signer(name, signer.fingerprint, signer._key) for name in ("alice", "bob", "carol")}
    yield store, people, trusted_keys(tmp_path / "keys", tmp_path / "none")
    store.close()


def sign(store, signer, policy=None, run_id="run_a", **kw):
    kw.setdefault("justification", "scorecard reviewed")
    signed, _ = build_decision(store, run_id, policy or load_policy(), signer, now=T0, **kw)
    return signed


@pytest.mark.parametrize("text", [None, "", "   \n\t"], ids=["missing", "empty", "whitespace"])
def test_a_blank_justification_is_refused(ctx, text):
    store, people, _ = ctx
    with pytest.raises(WorkbenchError, match="a justification is required"):
        sign(store, people["alice"], justification=text)
    assert store.list_decisions() == []  # nothing signed, nothing stored


def test_the_justification_is_signed_into_the_record(ctx):
    store, people, trusted = ctx
    signed = sign(store, people["alice"], justification="  AUC up, errors flat  ")
    assert signed.record["justification"] == "AUC up, errors flat" and signed.record["quorum"] == 1
    st = apply_decision(store, signed, trusted, now=T0)
    assert st.verified and st.weight == 1
    v = verify_decision(store, load_signed(store, signed.decision_id), trusted).to_dict()
    assert v["justification"] == "AUC up, errors flat" and v["signed_by"] == ["alice"] and not v["awaiting_approval"]


def test_tampering_with_the_justification_fails_verification(ctx):
    store, people, trusted = ctx
    signed = sign(store, people["alice"])
    apply_decision(store, signed, trusted, now=T0)
    forged = dict(signed.record, justification="approved by the CTO")
    text = json.dumps(forged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    store.cursor().execute("UPDATE decisions SET record = ? WHERE decision_id = ?", [text, signed.decision_id])
    with pytest.raises(SignatureError, match="signature does not match the record"):
        verify_decision(store, load_signed(store, signed.decision_id), trusted)
    st = status(store, "fraud", trusted)
    assert not st.verified and st.weight == 0 and "hash mismatch" in st.problem


def test_quorum_two_needs_a_second_approver_before_the_weight_moves(ctx):
    store, people, trusted = ctx
    signed = sign(store, people["alice"], TWO)
    assert (signed.record["verdict"], signed.record["weight_after"], signed.record["quorum"]) == ("PROMOTE", 1, 2)
    with pytest.raises(SignatureError, match=r"awaits approval: 1 of 2 distinct approvers signed \(alice\)"):
        apply_decision(store, signed, trusted, now=T0)
    assert status(store, "fraud", trusted).weight == 0 and store.chain("fraud") == []
    [pending] = awaiting(store, "fraud", trusted, now=T0)
    assert pending["decision_id"] == signed.decision_id and pending["signed_by"] == ["alice"]
    assert pending["quorum"] == 2 and pending["justification"] == "scorecard reviewed"
    v = verify_decision(store, signed, trusted).to_dict()
    assert v["awaiting_approval"] and "awaits approval" in v["note"]

    approval, off = approve(store, signed.decision_id, people["bob"], "checked the segments", trusted, now=T0)
    assert off.met and off.signers == ("alice", "bob")
    s = approval.statement
    assert (s["approver"], s["justification"], s["decision_id"]) == ("bob", "checked the segments", signed.decision_id)
    assert s["created_at"] == "2026-11-02T09:00:00Z" and s["key_fingerprint"] == people["bob"].fingerprint
    st = apply_decision(store, signed, trusted, now=T0)
    assert st.verified and st.weight == 1
    v = verify_decision(store, load_signed(store, signed.decision_id), trusted).to_dict()
    assert v["applied"] and v["signed_by"] == ["alice", "bob"] and v["quorum"] == 2
    assert [a["approver"] for a in v["approvals"]] == ["bob"] and awaiting(store, "fraud", trusted, now=T0) == []


def test_quorum_applies_only_at_the_steps_the_policy_names(ctx):
    store, people, trusted = ctx
    at_five = parse_policy({"approvals": {"quorum_at": {"5": 2}}})
    first = sign(store, people["alice"], at_five)
    assert first.record["quorum"] == 1  # the step to 1 % needs one
    apply_decision(store, first, trusted, now=T0)
    second = sign(store, people["alice"], at_five, fresh_run(store, 1))
    assert (second.record["weight_after"], second.record["quorum"]) == (5, 2)


@pytest.mark.parametrize("who", ["alice", "bob"], ids=["the-signer", "an-approver"])
def test_nobody_signs_a_record_twice(ctx, who):
    store, people, trusted = ctx
    signed = sign(store, people["alice"], parse_policy({"approvals": {"quorum": 3}}))
    approve(store, signed.decision_id, people["bob"], "fine", trusted, now=T0)
    with pytest.raises(WorkbenchError, match=f"{who} has already (signed|approved) decision {signed.decision_id}"):
        approve(store, signed.decision_id, people[who], "again", trusted, now=T0)
    [pending] = awaiting(store, "fraud", trusted, now=T0)
    assert pending["signed_by"] == ["alice", "bob"]  # still 2 of 3


def test_the_store_refuses_a_second_approval_by_the_same_name(ctx):
    store, _, _ = ctx
    row = dict(approval_id="apr_1", decision_id="dec_1", approver="bob", statement_text="{}", signature="x")
    store.save_approval(**row, created_at=T0.replace(tzinfo=None))
    with pytest.raises(WorkbenchError, match="bob has already approved decision dec_1"):
        store.save_approval(**(row | {"approval_id": "apr_2"}), created_at=T0.replace(tzinfo=None))
    assert [r["approval_id"] for r in store.approvals("dec_1")] == ["apr_1"]


def test_an_approval_needs_a_justification_and_an_open_record(ctx):
    store, people, trusted = ctx
    signed = sign(store, people["alice"], TWO)
    with pytest.raises(WorkbenchError, match="a justification is required"):
        approve(store, signed.decision_id, people["bob"], " ", trusted, now=T0)
    with pytest.raises(WorkbenchError, match="expired"):
        approve(store, signed.decision_id, people["bob"], "late", trusted, now=T0 + timedelta(hours=25))
    quick = sign(store, people["alice"])  # a quorum of one: applied at once, nothing to approve
    apply_decision(store, quick, trusted, now=T0)
    with pytest.raises(WorkbenchError, match="already applied"):
        approve(store, quick.decision_id, people["bob"], "late", trusted, now=T0)
    with pytest.raises(WorkbenchError, match="no longer extends the chain"):
        approve(store, signed.decision_id, people["bob"], "late", trusted, now=T0)


def test_tampered_or_deleted_approvals_fail_verification(ctx):
    store, people, trusted = ctx
    signed = sign(store, people["alice"], TWO)
    approve(store, signed.decision_id, people["bob"], "checked", trusted, now=T0)
    apply_decision(store, signed, trusted, now=T0)
    [row] = store.approvals(signed.decision_id)
    forged = json.loads(row["statement"]) | {"justification": "rubber stamp"}
    text = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    cur = store.cursor()
    cur.execute("UPDATE approvals SET statement = ? WHERE approval_id = ?", [text, row["approval_id"]])
    with pytest.raises(SignatureError, match="approval .* by bob .*: signature does not match"):
        verify_decision(store, signed, trusted)
    assert not status(store, "fraud", trusted).verified
    cur.execute("DELETE FROM approvals")
    st = status(store, "fraud", trusted)
    assert not st.verified and st.weight == 0 and "applied with 1 of the 2 distinct approvers" in st.problem


@pytest.mark.parametrize(
    "quality, policy_says, override, weight_after",
    [("same", Verdict.HOLD, Verdict.PROMOTE, 1), (None, Verdict.PROMOTE, Verdict.HOLD, 0)],
    ids=["hold-to-promote", "promote-to-hold"],
)
def test_an_override_is_recorded_next_to_the_policys_verdict_and_verifies(
    ctx, quality, policy_says, override, weight_after
):
    store, people, trusted = ctx
    run_id = "run_a"  # its candidate passes the default policy
    if quality is not None:
        run_id = "run_o"
        seed_run(store, run_id, quality=quality, candidate_version="3")
    signed = sign(
        store, people["alice"], run_id=run_id, override=override.value.lower(), override_reason="pager quiet all week"
    )
    r = signed.record
    assert r["verdict"] == override and r["scorecard"]["verdict"] == policy_says
    assert r["override"] == {"verdict": policy_says, "reason": "pager quiet all week"}
    assert r["weight_after"] == weight_after and r["reason"].startswith(f"override of {policy_says} by alice")
    st = apply_decision(store, signed, trusted, now=T0)
    assert st.verified and st.weight == weight_after
    v = verify_decision(store, load_signed(store, signed.decision_id), trusted).to_dict()
    assert v["verdict"] == override and v["override"]["verdict"] == policy_says
    [entry] = audit(store, "fraud", trusted)
    assert entry.verified and entry.override_of == policy_says and entry.verdict == override


@pytest.mark.parametrize(
    "override, reason, message",
    [
        ("PROMOTE", "  ", "a reason for the override is required"),
        ("PROMOTE", None, "a reason for the override is required"),
        ("SHIP", "why not", "unknown override verdict 'SHIP'"),
        ("promote", "why", "already PROMOTE: there is nothing to override"),
        (None, "a reason alone", "needs the verdict it overrides with"),
    ],
    ids=["blank-reason", "no-reason", "unknown-verdict", "same-verdict", "reason-without-verdict"],
)
def test_a_malformed_override_is_refused(ctx, override, reason, message):
    store, people, _ = ctx
    with pytest.raises(WorkbenchError, match=message):
        sign(store, people["alice"], override=override, override_reason=reason)


def test_sign_offs_of_a_run_say_who_signed(ctx):
    store, people, trusted = ctx
    signed = sign(store, people["alice"], TWO)
    [mine] = sign_offs(store, trusted, run_id="run_a", now=T0)
    assert mine.awaiting and mine.signed_by("alice") and not mine.signed_by("bob")
    approve(store, signed.decision_id, people["bob"], "ok", trusted, now=T0)
    [mine] = sign_offs(store, trusted, run_id="run_a", now=T0)
    assert not mine.awaiting and mine.signed_by("bob") and mine.to_dict()["approvals"][0]["justification"] == "ok"


@pytest.mark.parametrize(
    "section, message",
    [
        ({"quorum": 0}, "approvals.quorum"),
        ({"quorum_at": {"7": 2}}, "approvals.quorum_at names weight 7, which is not a step of the ramp"),
        ({"quorum_at": {"100": 0}}, "quorum_at values are approver counts in 1..20, not 0"),
        ({"quorum": 2, "quorom_at": {}}, "approvals.quorom_at: unknown key"),
    ],
    ids=["zero-quorum", "off-ramp-step", "zero-at-a-step", "typo"],
)
def test_a_bad_approvals_section_is_refused(section, message):
    with pytest.raises(WorkbenchError, match=message):
        parse_policy({"approvals": section})


def test_quorum_at_reads_toml_steps():
    import tomllib

    policy = parse_policy(tomllib.loads("[approvals]\nquorum_at = {100 = 2}\n"))
    assert [policy.approvals.quorum_for(w) for w in policy.ramp] == [1, 1, 1, 1, 2]
    assert policy.hash != load_policy().hash and "approvals" in policy.to_dict()
