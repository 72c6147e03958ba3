"""Pausing a canary: a signed record that holds the pair at its weight until a resume; a kill still wins."""

from datetime import UTC, datetime

import pytest

from conftest import fresh_run, seed_run
from workbench import WorkbenchError
from workbench.decide.canary import (
    Signer,
    apply_decision,
    build_decision,
    build_kill,
    build_pause,
    build_resume,
    next_weight,
)
from workbench.decide.chain import live_view, status, verify_chain
from workbench.decide.policy import Verdict, load_policy
from workbench.decide.signing import SignatureError, init_keys, trusted_keys
from workbench.store import Store

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def ctx(tmp_path):
    init_keys(tmp_path / "keys")
    store = Store()
    seed_run(store, "run_a")
    yield store, Signer.from_keys_dir(tmp_path / "keys", "tester"), trusted_keys(tmp_path / "keys", tmp_path / "none")
    store.close()


def decide(store, signer, trusted, run_id):
    signed, _ = build_decision(store, run_id, load_policy(), signer, now=T0, justification="reviewed")
    return signed, apply_decision(store, signed, trusted, now=T0)


def pause(store, signer, trusted, reason="p99 creeping up"):
    signed = build_pause(store, "fraud", reason, signer, load_policy(), now=T0)
    return signed, apply_decision(store, signed, trusted, now=T0)


def test_a_paused_canary_keeps_its_weight_until_resumed(ctx):
    store, signer, trusted = ctx
    decide(store, signer, trusted, "run_a")
    decide(store, signer, trusted, fresh_run(store, 1))
    signed, st = pause(store, signer, trusted)
    r = signed.record
    assert (r["kind"], r["verdict"], r["weight_before"], r["weight_after"]) == ("pause", Verdict.HOLD, 5, 5)
    assert r["reason"] == "pause: p99 creeping up" and r["justification"] == "p99 creeping up"
    assert st.weight == 5 and st.paused and st.verified and not st.killed
    assert live_view(store, "fraud", trusted)["paused"] is True
    # the gates pass on new evidence, but the paused canary stays at 5 %
    promoted, st = decide(store, signer, trusted, fresh_run(store, 2))
    assert promoted.record["verdict"] == Verdict.PROMOTE and promoted.record["weight_after"] == 5 and st.weight == 5
    assert "paused at 5% by tester (p99 creeping up)" in promoted.record["reason"] and st.paused
    resume = build_resume(store, "fraud", "2", "latency back to normal", signer, load_policy(), now=T0)
    assert (resume.record["kind"], resume.record["weight_after"]) == ("resume", 5)
    st = apply_decision(store, resume, trusted, now=T0)
    assert st.weight == 5 and not st.paused
    _, st = decide(store, signer, trusted, fresh_run(store, 3))
    assert st.weight == 25 and verify_chain(store, "fraud", trusted) == 6


def test_pause_needs_a_reason_a_canary_and_nothing_holding_it(ctx):
    store, signer, trusted = ctx
    with pytest.raises(WorkbenchError, match="nothing to pause"):
        build_pause(store, "fraud", "x", signer, load_policy())
    decide(store, signer, trusted, "run_a")
    with pytest.raises(WorkbenchError, match="--reason is required"):
        build_pause(store, "fraud", "  ", signer, load_policy())
    pause(store, signer, trusted)
    with pytest.raises(WorkbenchError, match="already paused at 1%"):
        build_pause(store, "fraud", "again", signer, load_policy())


def test_a_kill_ends_a_pause_and_sets_zero(ctx):
    store, signer, trusted = ctx
    decide(store, signer, trusted, "run_a")
    pause(store, signer, trusted)
    st = apply_decision(store, build_kill(store, "fraud", "pager", signer, load_policy(), now=T0), trusted, now=T0)
    assert st.weight == 0 and st.killed and not st.paused
    with pytest.raises(WorkbenchError, match="is killed"):
        build_pause(store, "fraud", "x", signer, load_policy())


def test_a_rollback_still_applies_while_paused():
    assert next_weight(Verdict.ROLLBACK, 25, (1, 5, 25), paused=True) == 0
    assert next_weight(Verdict.PROMOTE, 25, (1, 5, 25, 50), paused=True) == 25


def test_a_forged_promote_past_a_pause_is_refused(ctx):
    store, signer, trusted = ctx
    decide(store, signer, trusted, "run_a")
    pause(store, signer, trusted)
    # a PROMOTE signed by hand that claims the next step past the pause
    forged, _ = build_decision(store, fresh_run(store, 1), load_policy(), signer, now=T0, justification="reviewed")
    claims = signer.sign(forged.record | {"weight_after": 5, "decision_id": "dec_f1"})
    with pytest.raises(SignatureError, match="must give 1%"):
        apply_decision(store, claims, trusted, now=T0)
    head = status(store, "fraud", trusted)
    assert head.paused and head.weight == 1
