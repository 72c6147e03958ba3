"""Approvals of stored decision records: who signs one off, what awaits approval, what each run's records say.

A decision whose quorum (:mod:`workbench.decide.signoff`) is more than its signer is stored, signed and not
applied: it awaits approval. Each further approver signs an approval statement over the record's hash
(:func:`approve`); once the quorum of distinct names has signed, the record may move the weight
(:func:`workbench.decide.canary.apply_decision` checks the quorum again, as does the chain's verification).
Nobody signs a record twice: the decision's signer cannot approve it, an approver cannot approve it again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from workbench import WorkbenchError
from workbench.clock import db_time, utc_now
from workbench.decide.canary import claimed_head
from workbench.decide.chain import check_shape, check_stored_copy, record_time
from workbench.decide.signing import SignatureError, SignedDecision, Signer, canonical_bytes, verify_signature
from workbench.decide.signoff import SignedApproval, SignOff, required_text, sign_approval, sign_off
from workbench.store import Store

RECENT = 50  # the latest decisions of a model (or run) looked at for what awaits approval


def stored_signed(store: Store, decision_id: str) -> tuple[SignedDecision, dict]:
    """A stored decision as a signed record, with its row; an unknown id is an error."""
    row = store.require_decision(decision_id)
    return SignedDecision(json.loads(row["record"]), row["signature"]), row


def approve(
    store: Store,
    decision_id: str,
    signer: Signer,
    justification: str | None,
    trusted: Mapping,
    *,
    now: datetime | None = None,
) -> tuple[SignedApproval, SignOff]:
    """Sign and store ``signer``'s approval of a stored decision that awaits approval; returns the approval
    and the record's sign-off with it. Refused with a blank justification, for a record that does not
    verify, is applied, stale or no longer extends its chain's head, whose quorum is already met, or that
    ``signer`` has signed or approved already (the error names them)."""
    now = now or utc_now()
    justification = required_text(justification, "justification")
    signed, row = stored_signed(store, decision_id)
    record = signed.record
    verify_signature(record, signed.signature, trusted)
    check_shape(record)
    check_stored_copy(store, signed)
    if row["applied_sequence"] is not None:
        raise WorkbenchError(f"decision {decision_id} is already applied: there is nothing to approve")
    if now > record_time(record["expires_at"]):
        raise WorkbenchError(f"decision {decision_id} expired at {record['expires_at']}: make a new decision")
    head = claimed_head(store, record["model"])
    if record["previous_hash"] != (None if head is None else head.record_hash):
        raise WorkbenchError(
            f"decision {decision_id} no longer extends the chain of {record['model']} (another record was applied "
            "since): make a new decision"
        )
    off = sign_off(record, store.approvals(decision_id), trusted)
    if signer.name in off.signers:
        what = "signed" if signer.name == record["signer"] else "approved"
        raise WorkbenchError(
            f"{signer.name} has already {what} decision {decision_id}: a second approver must sign it off"
        )
    if off.met:
        raise WorkbenchError(
            f"decision {decision_id} needs no more approvals ({len(off.signers)} of {off.quorum} signed): "
            f"apply it with `workbench canary apply {decision_id}`"
        )
    approval = sign_approval(record, signer, justification, now)
    store.save_approval(
        approval_id=approval.statement["approval_id"],
        decision_id=decision_id,
        approver=approval.approver,
        statement_text=canonical_bytes(approval.statement).decode("utf-8"),
        signature=approval.signature,
        created_at=db_time(now),
    )
    return approval, sign_off(record, store.approvals(decision_id), trusted)


@dataclass(frozen=True)
class RecordSignOff:
    """A stored decision record with who signed it off, whether it is applied, and whether it still awaits
    approval (its quorum not met while it could still apply: not stale, extending the chain's head)."""

    decision_id: str
    record: dict
    sign_off: SignOff | None
    applied: bool
    awaiting: bool
    problem: str | None

    def signed_by(self, name: str) -> bool:
        """Whether ``name`` signed the record or approved it."""
        return self.sign_off is not None and name in self.sign_off.signers

    def to_dict(self) -> dict:
        r = self.record
        return {
            "decision_id": self.decision_id,
            "verdict": r.get("verdict"),
            "weight_before": r.get("weight_before"),
            "weight_after": r.get("weight_after"),
            "signer": r.get("signer"),
            "created_at": r.get("created_at"),
            "justification": r.get("justification"),
            "override": r.get("override"),
            "applied": self.applied,
            "awaiting_approval": self.awaiting,
            **(self.sign_off.to_dict() if self.sign_off is not None else {}),
            "problem": self.problem,
        }


def sign_offs(
    store: Store,
    trusted: Mapping,
    *,
    model: str | None = None,
    run_id: str | None = None,
    now: datetime | None = None,
) -> list[RecordSignOff]:
    """The latest decision records of ``model`` and/or ``run_id``, newest first, with their sign-off."""
    now = now or utc_now()
    heads: dict[str, str | None] = {}
    out = []
    for d in store.list_decisions(model, RECENT, run_id=run_id):
        if d["kind"] != "decision":
            continue
        signed, row = stored_signed(store, d["decision_id"])
        record, applied = signed.record, row["applied_sequence"] is not None
        try:
            verify_signature(record, signed.signature, trusted)
            off: SignOff | None = sign_off(record, store.approvals(d["decision_id"]), trusted)
            problem = None
        except SignatureError as e:
            off, problem = None, str(e)
        if record["model"] not in heads:
            head = claimed_head(store, record["model"])
            heads[record["model"]] = None if head is None else head.record_hash
        open_ = (
            not applied
            and record["previous_hash"] == heads[record["model"]]
            and now <= record_time(record["expires_at"])
        )
        awaiting = open_ and off is not None and not off.met
        out.append(RecordSignOff(d["decision_id"], record, off, applied, awaiting, problem))
    return out


def awaiting(store: Store, model: str, trusted: Mapping, *, now: datetime | None = None) -> list[dict]:
    """The decisions of ``model`` that await approval (``canary status``), newest first."""
    return [s.to_dict() for s in sign_offs(store, trusted, model=model, now=now) if s.awaiting]
