"""Sign-off rules of decision records: justifications, overrides and approval statements (pure functions).

A decision record made since sign-offs exist carries its signer's ``justification`` (non-blank), the
``quorum`` of distinct approvers it needs before it may move the weight (the signer counts as the first),
and, when an approver overrode the policy's verdict, ``override``: ``{"verdict", "reason"}`` with the verdict
the policy gave (the record's ``verdict`` is the one signed). Records signed before carry none of these and
need no approval.

An approval is a signed statement of its own, over the canonical bytes of::

    {"schema": "canary-workbench/approval/v1", "approval_id", "decision_id", "model", "record_hash",
     "approver", "justification", "key_fingerprint", "created_at"}

``record_hash`` is the approved record's hash, so an approval covers exactly one record's bytes. The
signature, the key and the canonical form are those of decision records (:mod:`workbench.decide.signing`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from workbench import WorkbenchError
from workbench.clock import iso
from workbench.decide.policy import Verdict
from workbench.decide.signing import SignatureError, Signer, record_hash, verify_signature

APPROVAL_SCHEMA = "canary-workbench/approval/v1"
APPROVAL_FIELDS = (
    "schema",
    "approval_id",
    "decision_id",
    "model",
    "record_hash",
    "approver",
    "justification",
    "key_fingerprint",
    "created_at",
)


def required_text(text: str | None, what: str) -> str:
    """``text`` stripped; a missing or blank one is refused, naming ``what`` is needed."""
    if not isinstance(text, str) or not text.strip():
        raise WorkbenchError(f"a {what} is required: say why (it is signed into the record)")
    return text.strip()


def parse_verdict(value: str, what: str = "override") -> Verdict:
    """A verdict given by a person (any case); an unknown one is an error listing the valid ones."""
    try:
        return Verdict(str(value).strip().upper())
    except ValueError:
        raise WorkbenchError(
            f"unknown {what} verdict {value!r} (use one of {', '.join(v.value for v in Verdict)})"
        ) from None


def quorum_of(record: dict) -> int:
    """The distinct approvers a record needs, its signer included (1 for records without a quorum)."""
    return int(record.get("quorum") or 1)


def check_record(record: dict) -> None:
    """Refuse a record whose sign-off fields are malformed: a blank justification, a quorum below 1, an
    override without a reason or of a verdict into itself."""
    did = record.get("decision_id")
    if "justification" in record and not (isinstance(record["justification"], str) and record["justification"].strip()):
        raise SignatureError(f"decision {did}: the justification is blank")
    if "quorum" in record and not (isinstance(record["quorum"], int) and record["quorum"] >= 1):
        raise SignatureError(f"decision {did}: the quorum {record['quorum']!r} is not a count of approvers")
    override = record.get("override")
    if override is None:
        return
    if (
        not isinstance(override, dict)
        or override.get("verdict") not in tuple(Verdict)
        or override["verdict"] == record.get("verdict")
        or not str(override.get("reason") or "").strip()
    ):
        raise SignatureError(f"decision {did}: the override must name the policy's verdict and a reason")


# -- approval statements -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignedApproval:
    statement: dict
    signature: str

    @property
    def approver(self) -> str:
        return self.statement["approver"]

    def to_dict(self) -> dict:
        return {"statement": self.statement, "signature": self.signature}


def approval_statement(record: dict, signer: Signer, justification: str, now: datetime) -> dict:
    """The statement by which ``signer`` approves ``record`` (not yet signed)."""
    return {
        "schema": APPROVAL_SCHEMA,
        "approval_id": "apr_" + now.strftime("%Y%m%d_%H%M%S") + "_" + uuid.uuid4().hex[:8],
        "decision_id": record["decision_id"],
        "model": record["model"],
        "record_hash": record_hash(record),
        "approver": signer.name,
        "justification": required_text(justification, "justification"),
        "key_fingerprint": signer.fingerprint,
        "created_at": iso(now),
    }


def sign_approval(record: dict, signer: Signer, justification: str, now: datetime) -> SignedApproval:
    """``signer``'s signed approval of ``record``."""
    signed = signer.sign(approval_statement(record, signer, justification, now))
    return SignedApproval(signed.record, str(signed.signature))


def check_approval(row: dict, record: dict, trusted: Mapping) -> SignedApproval:
    """A stored approval of ``record``, verified: its signature by a trusted key over exactly the stored
    statement, which cites this record's hash, names the row's approver and has a justification. Raises
    :class:`SignatureError` naming the approval."""
    where = f"approval {row.get('approval_id')} by {row.get('approver')} of decision {record.get('decision_id')}"
    try:
        statement = json.loads(row["statement"])
    except (TypeError, ValueError):
        raise SignatureError(f"{where}: the stored statement is not JSON") from None
    if not isinstance(statement, dict) or any(k not in statement for k in APPROVAL_FIELDS):
        raise SignatureError(f"{where}: not an approval statement")
    try:
        verify_signature(statement, row["signature"], trusted)
    except SignatureError as e:
        raise SignatureError(f"{where}: {str(e).split(': ', 1)[-1]}") from None
    if statement["schema"] != APPROVAL_SCHEMA or statement["record_hash"] != record_hash(record):
        raise SignatureError(f"{where}: it approves other bytes than the record's (hash mismatch)")
    if (statement["decision_id"], statement["approver"], statement["approval_id"]) != (
        record["decision_id"],
        row["approver"],
        row["approval_id"],
    ):
        raise SignatureError(f"{where}: the approvals table disagrees with the signed statement (edited columns)")
    if not str(statement["justification"]).strip():
        raise SignatureError(f"{where}: the justification is blank")
    return SignedApproval(statement, row["signature"])


@dataclass(frozen=True)
class SignOff:
    """Who has signed a record off: its signer and the approvers whose approvals verify, against its quorum."""

    decision_id: str
    quorum: int
    signers: tuple[str, ...]  # distinct names, the record's signer first
    approvals: tuple[SignedApproval, ...]

    @property
    def met(self) -> bool:
        return len(self.signers) >= self.quorum

    @property
    def missing(self) -> int:
        return max(0, self.quorum - len(self.signers))

    def to_dict(self) -> dict:
        return {
            "quorum": self.quorum,
            "signed_by": list(self.signers),
            "met": self.met,
            "approvals": [
                {k: a.statement[k] for k in ("approval_id", "approver", "justification", "created_at")}
                for a in self.approvals
            ],
        }


def sign_off(record: dict, rows: list[dict], trusted: Mapping) -> SignOff:
    """The sign-off of ``record`` from its stored approval ``rows``; raises :class:`SignatureError` at the first
    approval that does not verify or that repeats a name (nobody signs a record twice)."""
    signers = [record["signer"]]
    approvals = []
    for row in rows:
        approval = check_approval(row, record, trusted)
        if approval.approver in signers:
            raise SignatureError(
                f"decision {record['decision_id']}: {approval.approver} signed it more than once (approval "
                f"{approval.statement['approval_id']})"
            )
        signers.append(approval.approver)
        approvals.append(approval)
    return SignOff(record["decision_id"], quorum_of(record), tuple(signers), tuple(approvals))


def awaiting_text(off: SignOff) -> str:
    """What a record still needs, for an error or a status line."""
    return (
        f"decision {off.decision_id} awaits approval: {len(off.signers)} of {off.quorum} distinct approvers "
        f"signed ({', '.join(off.signers)}); another approver runs "
        f"`workbench decision approve {off.decision_id} --justification TEXT`"
    )
