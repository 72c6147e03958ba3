"""Decisions for a configured workbench: sign with the home's key, apply, publish to MLflow, audit.

The entry points (CLI, demo, jobs, app) use these so that the wiring of settings, keys, the canary chain
and the MLflow registry exists once. The rules themselves live in :mod:`workbench.decide.canary`,
:mod:`workbench.decide.policy` and :mod:`workbench.decide.scorecard`. Each caller hands in its
:class:`~workbench.decide.signing.KeyRing` (made once from the settings). The private key never leaves the
server: the ring reads it from the home's ``keys/`` folder in this process, and only the signed record is
returned.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from workbench.clock import EPOCH, parse_time
from workbench.config import Settings
from workbench.decide.chain import chain_report
from workbench.decide.policy import Policy
from workbench.decide.signing import KeyRing, SignatureError, Signer, record_hash, verify_signature
from workbench.decide.signoff import quorum_of, sign_off
from workbench.decide.witness import WeightDocuments, Witness, Witnesses
from workbench.store import Store


def mlflow_configured(settings: Settings) -> bool:
    """Whether the tracking URI names an MLflow that exists: a server, or a local store already created."""
    uri = settings.mlflow_tracking_uri
    for scheme in ("sqlite:///", "file://"):
        if uri.startswith(scheme):
            return Path(uri.removeprefix(scheme)).exists()
    return True


def witnesses(settings: Settings, *, mlflow: bool = False) -> Witnesses:
    """The chain-head witnesses of this workbench: its weight documents (``settings.published_dir``), and with
    ``mlflow`` the registered models' tags where MLflow is configured (a network call: the CLI and jobs ask
    for it; routers, scrapes and the app read the documents only)."""
    others: tuple[Witness, ...] = ()
    if mlflow and mlflow_configured(settings):
        from workbench.decide.registry import Registry, RegistryWitness

        others = (RegistryWitness(Registry(settings.mlflow_tracking_uri, settings.artifacts_dir)),)
    return Witnesses(WeightDocuments(settings.published_dir), others)


def publish(settings: Settings, store: Store, signed) -> dict:
    """Publish an applied record to MLflow, with the evaluation and drift report it was judged on.

    MLflow being down leaves the record stored locally with ``pending_sync`` set (see ``canary.sync``).
    """
    from workbench.decide.registry import publish_applied

    return publish_applied(store, signed, settings.mlflow_tracking_uri, settings.artifacts_dir)


def decide(
    settings: Settings,
    store: Store,
    keys: KeyRing,
    run_id: str,
    policy: Policy | str | None = None,
    signed_by: Signer | None = None,
    apply: bool = True,
    *,
    justification: str | None,
    override: str | None = None,
    override_reason: str | None = None,
) -> dict:
    """Judge a run under a policy (a Policy, a policy file, or the shipped default when None), sign the
    decision with its ``justification`` (as the ring's signer; ``signed_by`` names another, e.g. the approver
    in the app; ``override`` replaces the policy's verdict, with ``override_reason``), and with ``apply`` move
    the weight (if the ring trusts the signature and the policy's quorum of approvers has signed: else it
    awaits approval) and publish it. Returns the ``decide --json`` object."""
    from workbench.decide.canary import apply_decision, build_decision
    from workbench.decide.policy import policy_for_run

    if not isinstance(policy, Policy):
        policy = policy_for_run(policy, store.require_run(run_id))
    signed, card = build_decision(
        store,
        run_id,
        policy,
        signed_by or keys.signer,
        justification=justification,
        override=override,
        override_reason=override_reason,
    )
    r = signed.record
    card_d = card.to_dict()
    out = {
        "decision_id": signed.decision_id,
        "verdict": r["verdict"],
        "reason": r["reason"],
        "weight_before": r["weight_before"],
        "weight_after": r["weight_after"],
        "checks": card_d["checks"],
        "skipped": card_d["skipped"],
        "context": card_d["context"],
        "summary": card_d["summary"],
        "record": r,
        "signature": signed.signature,
        "applied": False,
        "justification": r["justification"],
        "override": r.get("override"),
        "quorum": quorum_of(r),
        "signed_by": [r["signer"]],
        "awaiting_approval": quorum_of(r) > 1,
    }
    if apply and quorum_of(r) == 1:
        apply_decision(store, signed, keys.trusted, witnesses=witnesses(settings, mlflow=True))
        out["applied"] = True
        out.update(publish(settings, store, signed))
    return out


def approve(
    settings: Settings, store: Store, keys: KeyRing, decision_id: str, justification: str | None, signer: Signer
) -> dict:
    """Sign ``signer``'s approval of a decision that awaits approval; once its quorum has signed, apply it and
    publish it. Returns the ``decision approve --json`` object."""
    from workbench.decide.approvals import approve as sign_approval
    from workbench.decide.approvals import stored_signed

    approval, off = sign_approval(store, decision_id, signer, justification, keys.trusted)
    out = {
        "decision_id": decision_id,
        "approval_id": approval.statement["approval_id"],
        "approver": approval.approver,
        "justification": approval.statement["justification"],
        "signature": approval.signature,
        **off.to_dict(),
        "awaiting_approval": not off.met,
        "applied": False,
    }
    if off.met:
        out.update(apply_and_publish(settings, store, keys, stored_signed(store, decision_id)[0]), applied=True)
    return out


def sync_pending(settings: Settings, store: Store, keys: KeyRing) -> dict:
    """Publish the applied decisions still marked ``pending_sync`` (MLflow was down), in chain order, each
    once; returns ``{"synced", "failed", "pending"}`` (see :func:`workbench.decide.registry.sync_pending`)."""
    from workbench.decide.registry import publisher
    from workbench.decide.registry import sync_pending as push

    return push(store, publisher(store, settings.mlflow_tracking_uri, settings.artifacts_dir), keys.trusted).to_dict()


def apply_and_publish(settings: Settings, store: Store, keys: KeyRing, signed) -> dict:
    """Apply a signed record to the canary state and publish it; returns the new status."""
    from workbench.decide.canary import apply_decision

    out = apply_decision(store, signed, keys.trusted, witnesses=witnesses(settings, mlflow=True)).to_dict()
    out.update(publish(settings, store, signed), verdict=signed.record["verdict"], signature=signed.signature)
    return out


@dataclass(frozen=True)
class AuditEntry:
    """One signed record as the audit shows it: applied (with its place in the chain) or only signed."""

    decision_id: str
    model: str
    kind: str
    verdict: str
    weight_before: int
    weight_after: int
    signer: str | None
    key_fingerprint: str | None
    created_at: str | None
    run_id: str | None
    sequence: int | None
    verified: bool
    problem: str | None
    mlflow_run_id: str | None
    pending_sync: bool
    record: dict | None
    signature: str | None
    justification: str | None = None
    override_of: str | None = None  # the policy's verdict when an approver overrode it
    signed_by: tuple[str, ...] = ()  # the signer and the approvers whose approvals verify
    quorum: int = 1

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def audit(store: Store, model: str, keys: Mapping, limit: int = 500) -> list[AuditEntry]:
    """Every decision on ``model``, newest first: applied records with their chain verification (stored
    bytes, hash, link, signature) and records signed but never applied with their signature check."""
    decisions = {d["decision_id"]: d for d in store.list_decisions(model, limit)}
    entries = []
    chained = set()
    for row, problem in chain_report(store, model, keys):
        chained.add(row["decision_id"])
        entries.append(
            _entry(
                store, decisions.get(row["decision_id"]), row["decision_id"], model, int(row["sequence"]), problem, keys
            )
        )
    for did, d in decisions.items():
        if did in chained:
            continue
        problem = None
        stored = store.get_decision(did)
        if stored is not None:  # (one listed a moment ago and gone now: _entry reports the record missing)
            record = json.loads(stored["record"])
            try:
                if record_hash(record) != stored["record_hash"]:
                    raise SignatureError(f"decision {did}: the stored record was altered (hash mismatch)")
                verify_signature(record, stored["signature"], keys)
                sign_off(record, store.approvals(did), keys)
            except SignatureError as e:
                problem = str(e)
        entries.append(_entry(store, d, did, model, None, problem, keys))
    return sorted(
        entries, key=lambda e: (parse_time(e.created_at) if e.created_at else EPOCH, e.sequence or 0), reverse=True
    )


def _entry(
    store: Store,
    listed: dict | None,
    did: str,
    model: str,
    sequence: int | None,
    problem: str | None,
    keys: Mapping,
) -> AuditEntry:
    stored = store.get_decision(did)
    record = json.loads(stored["record"]) if stored and stored["record"] else None
    r = record or {}
    return AuditEntry(
        decision_id=did,
        model=model,
        kind=r.get("kind", "?"),
        verdict=r.get("verdict", "?"),
        weight_before=int(r.get("weight_before", 0)),
        weight_after=int(r.get("weight_after", 0)),
        signer=r.get("signer"),
        key_fingerprint=r.get("key_fingerprint"),
        created_at=r.get("created_at"),
        run_id=r.get("run_id"),
        sequence=sequence,
        verified=problem is None and record is not None,
        problem=problem if record is not None else (problem or "the record is missing"),
        mlflow_run_id=(listed or stored or {}).get("mlflow_run_id"),
        pending_sync=bool((listed or stored or {}).get("pending_sync")),
        record=record,
        signature=stored["signature"] if stored else None,
        justification=r.get("justification"),
        override_of=(r.get("override") or {}).get("verdict"),
        signed_by=_signers(store, record, did, keys),
        quorum=quorum_of(r),
    )


def _signers(store: Store, record: dict | None, did: str, keys: Mapping) -> tuple[str, ...]:
    """Who signed ``record`` off (its signer, then approvers), as far as their approvals verify."""
    if record is None:
        return ()
    try:
        return sign_off(record, store.approvals(did), keys).signers
    except (SignatureError, KeyError):
        return (str(record.get("signer")),)
