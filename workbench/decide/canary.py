"""The canary ramp: signed, hash-chained decision records are the only thing that moves the weight.

Per registered model the weight (percent of traffic on the candidate) follows the policy's ramp,
e.g. ``0 -> 1 -> 5 -> 25 -> 50 -> 100``: PROMOTE advances one step, HOLD stays, ROLLBACK (and the
kill switch) sets 0. Each applied record links to the previous applied record of its model by hash
(``previous_hash``, ``sequence``); :mod:`workbench.decide.chain` verifies the chain and derives the state
from it (``canary_state`` in DuckDB is only a cache of its head). A record is applied only when its signature
verifies against a trusted key, it is not stale (older than the policy's ``max_age_hours``), it extends the
verified chain's head, no witness outside the database shows a later head, and its weights follow the ramp.

The kill switch holds a candidate *version* at 0 through every path (any run, any baseline) until a signed
``resume`` record of that version, with a reason, releases it. A signed ``pause`` record (with a reason) holds
the pair at its current weight: until a ``resume`` of it, a PROMOTE moves nothing (a rollback or a kill still
sets 0), so routers, which follow the weight, stay where they are.

For live traffic: :func:`bucket_of` / :func:`in_canary` put an entity in a fixed bucket whose canary
membership only grows with the weight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from workbench import WorkbenchError
from workbench.clock import db_time, iso, utc_now
from workbench.decide.chain import (
    RECORD_SCHEMA,
    CanaryStatus,
    ChainState,
    check_shape,
    check_stored_copy,
    check_witnesses,
    derive,
    killed_after,
    pair_of,
    record_time,
    status,
    verified_rows,
)
from workbench.decide.judge import judge_run
from workbench.decide.policy import Policy, Verdict
from workbench.decide.scorecard import Scorecard
from workbench.decide.signing import (
    SignatureError,
    SignedDecision,
    Signer,
    canonical_bytes,
    clean,
    content_hash,
    record_hash,
    verify_signature,
)
from workbench.decide.signoff import awaiting_text, parse_verdict, required_text, sign_off
from workbench.decide.witness import Witnesses
from workbench.store import Store

log = logging.getLogger(__name__)
CLOCK_SKEW = timedelta(minutes=5)


def next_weight(
    verdict: Verdict | str,
    weight_before: int,
    ramp: tuple[int, ...] | list[int],
    killed: bool = False,
    paused: bool = False,
) -> int:
    """The weight after a verdict: PROMOTE -> the next ramp step, HOLD -> unchanged, ROLLBACK -> 0.

    A killed candidate stays at 0 whatever the verdict; a paused one keeps its weight unless rolled back.
    """
    if verdict not in tuple(Verdict):
        raise WorkbenchError(f"unknown verdict {verdict!r}")
    if killed or verdict == Verdict.ROLLBACK:
        return 0
    if verdict == Verdict.HOLD or paused:
        return weight_before
    return next((w for w in ramp if w > weight_before), max(ramp[-1], weight_before))


# -- inputs -----------------------------------------------------------------------------------------
def load_drift(store: Store, run_id: str) -> dict | None:
    """The run's latest drift report (``workbench drift --json``), or None when there is none."""
    return store.latest_drift(run_id)


# -- records ----------------------------------------------------------------------------------------
def new_decision_id(now: datetime) -> str:
    return "dec_" + now.strftime("%Y%m%d_%H%M%S") + "_" + uuid.uuid4().hex[:8]


def _model_of(run: dict) -> str:
    cand = run["candidate"]
    if not cand.get("name") or not cand.get("version"):
        raise WorkbenchError(
            f"run {run['run_id']}: the candidate ({cand.get('uri')}) is not a registered model "
            "version; canary decisions need models:/ URIs"
        )
    return cand["name"]


def _ref(ref: dict) -> dict:
    return {
        "name": ref.get("name"),
        "version": None if ref.get("version") is None else str(ref["version"]),
        "run_id": ref.get("run_id"),
        "uri": ref.get("uri"),
    }


def _current(head: ChainState | None, pair: tuple, kind: str, model: str) -> tuple[int, bool]:
    """(weight of ``pair`` now, whether the kill switch holds its candidate) for a new record, from the verified
    chain; refuses to start a pair while another ramps."""
    killed = head is not None and pair[1] in head.killed_versions
    if head is None:
        return 0, killed
    if kind == "kill" or head.pair == pair:
        return head.weight, killed
    if 0 < head.weight < 100:
        raise WorkbenchError(
            f"model {model} has a canary in progress: candidate v{head.pair[1]} at "
            f"{head.weight}%; finish it or `workbench canary kill {model}` first"
        )
    return 0, killed


def verified_head(store: Store, model: str, trusted: Mapping) -> ChainState | None:
    """The head of ``model``'s chain when the whole chain verifies; raises :class:`SignatureError` otherwise."""
    return derive(verified_rows(store, model, trusted))


@dataclass(frozen=True)
class DecisionPreview:
    """What a decision on a run would say, before anything is signed: the scorecard and the weight move."""

    run: dict
    model: str
    baseline: dict
    candidate: dict
    traffic: dict
    evidence: dict  # what the scorecard judged (:func:`workbench.decide.evidence.build_evidence`)
    drift: dict | None
    scorecard: Scorecard
    weight_before: int
    weight_after: int
    killed: bool
    reason: str
    paused: bool = False

    @property
    def verdict(self) -> Verdict:
        return self.scorecard.verdict


def preview_decision(
    store: Store, run_id: str, policy: Policy, evidence: Callable[[dict, dict | None], dict] | None = None
) -> DecisionPreview:
    """Judge a finished replay run under ``policy`` (the pair's growing sample, see
    :mod:`workbench.decide.judge`) and work out the weight it would move to (signs nothing). ``evidence(run,
    drift)``: where the evidence comes from when not computed here (a copy stored for the run's data as it is)."""
    run = store.require_run(run_id)
    if run["status"] != "finished":
        raise WorkbenchError(f"run {run_id} is {run['status']}, not finished: finish the replay first")
    model = _model_of(run)
    traffic = store.require_traffic(run["traffic"])
    base, cand = _ref(run["baseline"]), _ref(run["candidate"])
    if base["version"] == cand["version"] and run["baseline"].get("name") == run["candidate"].get("name"):
        raise WorkbenchError(f"run {run_id}: the baseline and the candidate are the same version: nothing to decide")
    head, pair = claimed_head(store, model), (base["version"], cand["version"])
    weight_before, killed = _current(head, pair, "decision", model)
    paused = head is not None and head.paused and head.pair == pair
    drift = load_drift(store, run_id)
    judged = judge_run(store, run, policy, drift, None if evidence is None else evidence(run, drift))
    card = judged.scorecard
    reason = card.reason
    if killed:
        reason += f"; the kill switch holds candidate v{cand['version']} at 0%"
    if paused and head is not None and head.pause is not None:
        reason += f"; paused at {weight_before}% by {head.pause['signer']} ({head.pause['justification']})"
    return DecisionPreview(
        run,
        model,
        base,
        cand,
        traffic,
        judged.evidence,
        judged.drift,
        card,
        weight_before,
        next_weight(card.verdict, weight_before, policy.ramp, killed, paused),
        killed,
        reason,
        paused,
    )


def build_decision(
    store: Store,
    run_id: str,
    policy: Policy,
    signer: Signer,
    *,
    justification: str | None,
    override: Verdict | str | None = None,
    override_reason: str | None = None,
    now: datetime | None = None,
) -> tuple[SignedDecision, Scorecard]:
    """Judge a finished replay run under ``policy``; sign and store the record (not yet applied).

    ``justification`` (required, non-blank) is the signer's word on why, signed into the record. ``override``
    replaces the policy's verdict (with a required ``override_reason``); the record keeps the policy's verdict
    next to the signed one. A PROMOTE that moves the weight records the quorum of distinct approvers the
    policy asks for at its step (:mod:`workbench.decide.signoff`)."""
    now = now or utc_now()
    justification = required_text(justification, "justification")
    p = preview_decision(store, run_id, policy)
    verdict, weight_after, reason, overridden = p.verdict, p.weight_after, p.reason, None
    if override is not None:
        verdict = parse_verdict(str(override))
        why = required_text(override_reason, "reason for the override")
        if verdict == p.verdict:
            raise WorkbenchError(f"the policy's verdict is already {verdict}: there is nothing to override")
        weight_after = next_weight(verdict, p.weight_before, policy.ramp, p.killed, p.paused)
        overridden = {"verdict": p.verdict, "reason": why}
        reason = f"override of {p.verdict} by {signer.name}: {why} (the policy: {p.reason})"
    elif override_reason is not None:
        raise WorkbenchError("a reason for an override needs the verdict it overrides with (--override VERDICT)")
    moves = verdict == Verdict.PROMOTE and weight_after > p.weight_before
    record = _record(
        store,
        p.model,
        now,
        signer,
        policy,
        kind="decision",
        baseline=p.baseline,
        candidate=p.candidate,
        run_id=run_id,
        traffic=p.traffic["name"],
        traffic_fingerprint=p.traffic["fingerprint"],
        evaluation_hash=content_hash(p.evidence),
        drift_hash=content_hash(p.drift),
        evidence=p.evidence["evidence"],
        scorecard=p.scorecard.to_dict(),
        verdict=verdict,
        reason=reason,
        weight_before=p.weight_before,
        weight_after=weight_after,
        justification=justification,
        quorum=policy.approvals.quorum_for(weight_after) if moves else 1,
        override=overridden,
    )
    signed = signer.sign(record)
    save_record(store, signed)
    return signed, p.scorecard


def build_kill(
    store: Store,
    model: str,
    reason: str,
    signer: Signer,
    policy: Policy,
    *,
    now: datetime | None = None,
    source: str = "kill switch",
    scorecard: dict | None = None,
) -> SignedDecision:
    """A signed ROLLBACK record that sets ``model``'s canary weight to 0 (the kill switch).

    ``source`` prefixes the reason (``"kill switch"``, ``"live SLO"``); ``scorecard`` carries the checks
    behind an automated rollback (the live SLO's numbers)."""
    now = now or utc_now()
    if not reason or not reason.strip():
        raise WorkbenchError("--reason is required: say why the canary is killed")
    state = claimed_head(store, model)
    if state is None:
        raise WorkbenchError(f"model {model} has no canary state: nothing to kill")
    return _control_record(
        store,
        model,
        now,
        signer,
        policy,
        "kill",
        state.record,
        Verdict.ROLLBACK,
        f"{source}: {reason.strip()}",
        state.weight,
        0,
        scorecard,
        reason.strip(),
    )


def build_pause(
    store: Store,
    model: str,
    reason: str,
    signer: Signer,
    policy: Policy,
    *,
    now: datetime | None = None,
) -> SignedDecision:
    """A signed ``pause`` record (HOLD) that keeps ``model``'s canary at its current weight until a ``resume``.

    Refused without a reason, without a canary, or when the candidate is already paused or killed."""
    now = now or utc_now()
    if not reason or not reason.strip():
        raise WorkbenchError("--reason is required: say why the canary is paused")
    head = claimed_head(store, model)
    if head is None:
        raise WorkbenchError(f"model {model} has no canary state: nothing to pause")
    if head.killed or head.paused:
        what = "killed (held at 0%)" if head.killed else f"already paused at {head.weight}%"
        raise WorkbenchError(f"candidate v{head.pair[1]} of {model} is {what}: nothing to pause")
    return _control_record(
        store,
        model,
        now,
        signer,
        policy,
        "pause",
        head.record,
        Verdict.HOLD,
        f"pause: {reason.strip()}",
        head.weight,
        head.weight,
        None,
        reason.strip(),
    )


def build_resume(
    store: Store,
    model: str,
    version: str,
    reason: str,
    signer: Signer,
    policy: Policy,
    *,
    now: datetime | None = None,
) -> SignedDecision:
    """A signed ``resume`` record that releases candidate ``version`` of ``model`` from the kill switch or a pause.

    The weight stays where it is (HOLD; 0 after a kill): the candidate ramps again only through new decisions.
    Refused without a reason or when the version is not killed or paused."""
    now = now or utc_now()
    if not reason or not reason.strip():
        raise WorkbenchError("--reason is required: say why the candidate may ramp again")
    head = claimed_head(store, model)
    version = str(version)
    paused = head is not None and head.paused and head.pair[1] == version
    if head is None or not (version in head.killed_versions or paused):
        raise WorkbenchError(f"candidate v{version} of {model} is not killed or paused: nothing to resume")
    held = (  # the record that holds the version: the pause in force, else its latest kill
        head.pause
        if paused and head.pause is not None
        else next(
            r
            for r in reversed([json.loads(row["record"]) for row in store.chain(model)])
            if r["kind"] == "kill" and r["candidate"]["version"] == version
        )
    )
    pair = pair_of(held)
    weight_now, _ = _current(head, pair, "resume", model)
    return _control_record(
        store,
        model,
        now,
        signer,
        policy,
        "resume",
        held,
        Verdict.HOLD,
        f"resume: {reason.strip()}",
        weight_now,
        weight_now,
        None,
        reason.strip(),
    )


def _control_record(
    store: Store,
    model: str,
    now: datetime,
    signer: Signer,
    policy: Policy,
    kind: str,
    source: dict,
    verdict: Verdict,
    reason: str,
    weight_before: int,
    weight_after: int,
    scorecard: dict | None,
    justification: str,
) -> SignedDecision:
    """Sign and store a kill, resume or pause record about the pair, traffic, ramp and registry of ``source``; its
    reason is its justification."""
    record = _record(
        store,
        model,
        now,
        signer,
        policy,
        kind=kind,
        baseline=source["baseline"],
        candidate=source["candidate"],
        run_id=None,
        traffic=source["traffic"],
        traffic_fingerprint=source["traffic_fingerprint"],
        evaluation_hash=None,
        drift_hash=None,
        scorecard=scorecard,
        verdict=verdict,
        reason=reason,
        weight_before=weight_before,
        weight_after=weight_after,
        registry=source.get("registry"),
        ramp=source.get("ramp"),
        justification=justification,
    )
    signed = signer.sign(record)
    save_record(store, signed)
    return signed


def claimed_head(store: Store, model: str) -> ChainState | None:
    """The head the stored chain claims, for building a record (not verified here: :func:`apply_decision`
    verifies the whole chain before anything moves). A chain with a missing record is refused."""
    rows = store.chain(model)
    if any(r["record"] is None for r in rows):
        raise SignatureError(f"the chain of {model} has a missing record: it does not verify")
    return derive(rows)


def _record(store: Store, model: str, now: datetime, signer: Signer, policy: Policy, **fields) -> dict:
    head = store.chain_head(model)
    record = {
        "schema": RECORD_SCHEMA,
        "decision_id": new_decision_id(now),
        "sequence": 1 if head is None else int(head["sequence"]) + 1,
        "previous_hash": None if head is None else head["record_hash"],
        "model": model,
        "policy_hash": policy.hash,
        "ramp": list(policy.ramp),
        "registry": policy.registry.model_dump(mode="json"),
        "signer": signer.name,
        "key_fingerprint": signer.fingerprint,
        "created_at": iso(now),
        "expires_at": iso(now + timedelta(hours=policy.max_age_hours)),
    }
    # a kill record carries the ramp and registry options of the decision it stops (when it has them)
    record.update({k: v for k, v in fields.items() if v is not None or k not in ("registry", "ramp", "override")})
    return clean(record)


def save_record(store: Store, signed: SignedDecision) -> None:
    """Store a signed record (inside the caller's write transaction when there is one)."""
    r, signature = signed.record, signed.signature
    if signature is None:
        raise SignatureError(f"decision {r.get('decision_id')} is unsigned: only signed records are stored")
    with store.transaction() as cur:
        store.save_decision(
            cur,
            decision_id=r["decision_id"],
            model=r["model"],
            kind=r["kind"],
            run_id=r["run_id"],
            verdict=r["verdict"],
            weight_before=int(r["weight_before"]),
            weight_after=int(r["weight_after"]),
            record_text=canonical_bytes(r).decode("utf-8"),
            record_hash=record_hash(r),
            signature=signature,
            created_at=db_time(record_time(r["created_at"])),
        )


# -- verification and applying ----------------------------------------------------------------------
def apply_decision(
    store: Store,
    signed: SignedDecision,
    trusted: Mapping,
    *,
    now: datetime | None = None,
    witnesses: Witnesses | None = None,
) -> CanaryStatus:
    """Move the canary weight by a signed record, after checking everything; otherwise the weight stays.

    Refused (:class:`SignatureError`): unsigned, tampered, untrusted key, not a record, already applied,
    stale or from the future, out of chain, weights that do not match the verified chain or the ramp, a chain
    so far that does not verify under the trusted keys, a witness showing a later or another head (a rewound
    chain), or a resume of a version the kill switch does not hold. Once applied, the weight document is
    written (``witnesses.document``).
    """
    now = now or utc_now()
    witnesses = witnesses or Witnesses()
    record = signed.record
    verify_signature(record, signed.signature, trusted)
    check_shape(record)
    did, model = record["decision_id"], record["model"]
    stored = check_stored_copy(store, signed)
    if stored is not None and stored["applied_sequence"] is not None:
        raise SignatureError(f"decision {did} is already applied (sequence {stored['applied_sequence']} of {model})")
    off = sign_off(record, store.approvals(did), trusted)
    if not off.met:
        raise SignatureError(awaiting_text(off))
    created, expires = record_time(record["created_at"]), record_time(record["expires_at"])
    if now > expires:
        raise SignatureError(
            f"decision {did} is stale: made {record['created_at']}, expired {record['expires_at']} "
            "(the policy's max_age_hours); make a new decision"
        )
    if created > now + CLOCK_SKEW:
        raise SignatureError(f"decision {did} is dated in the future ({record['created_at']})")
    try:  # nothing applies on top of a chain that does not verify under the trusted keys (a swapped key, an edit)
        rows = verified_rows(store, model, trusted)
    except SignatureError as e:
        raise SignatureError(f"decision {did} cannot apply: the chain of {model} does not verify ({e})") from None
    rewound, _ = check_witnesses(rows, model, trusted, witnesses)
    if rewound:
        raise SignatureError(f"decision {did} cannot apply: {rewound}")
    head = derive(rows)
    want_seq = len(rows) + 1
    want_prev = None if head is None else head.record_hash
    if record["sequence"] != want_seq or record["previous_hash"] != want_prev:
        raise SignatureError(
            f"decision {did} is out of chain: it follows {str(record['previous_hash'])[:12]} (sequence "
            f"{record['sequence']}), but the chain of {model} is at {str(want_prev)[:12]} (next sequence {want_seq}); "
            "make a new decision"
        )
    _check_weights(record, head)
    killed = killed_after(frozenset() if head is None else head.killed_versions, record)
    with store.transaction() as cur:
        if stored is None:
            save_record(store, signed)
        store.append_chain(
            cur,
            model=model,
            sequence=want_seq,
            decision_id=did,
            record_hash=record_hash(record),
            baseline_version=record["baseline"]["version"],
            candidate_version=record["candidate"]["version"],
            weight=int(record["weight_after"]),
            killed=record["candidate"]["version"] in killed,
        )
    witnesses.publish(signed, int(record["weight_after"]), sorted(killed), trusted)
    return status(store, model, trusted, witnesses)


def _check_weights(record: dict, head: ChainState | None) -> None:
    """Refuse a record whose weights do not follow from the verified head (the ramp, the kill switch)."""
    did, model, kind = record["decision_id"], record["model"], record["kind"]
    try:
        weight_now, killed = _current(head, pair_of(record), kind, model)
    except WorkbenchError as e:
        raise SignatureError(str(e)) from None
    paused = head is not None and head.paused and head.pair == pair_of(record)
    if kind == "resume" and not (killed or paused):
        raise SignatureError(
            f"decision {did}: candidate v{record['candidate']['version']} of {model} is not killed or paused"
        )
    if kind == "pause" and (killed or paused):
        raise SignatureError(f"decision {did}: candidate v{record['candidate']['version']} of {model} is already held")
    if kind in ("resume", "pause") and not str(record["reason"]).removeprefix(f"{kind}:").strip():
        raise SignatureError(f"decision {did}: a {kind} needs a reason")
    if int(record["weight_before"]) != weight_now:
        raise SignatureError(
            f"decision {did} was made at weight {record['weight_before']}%, the canary is at {weight_now}%"
        )
    if kind == "kill":
        expected = 0
    elif kind in ("resume", "pause"):
        expected = weight_now
    else:
        expected = next_weight(record["verdict"], weight_now, record["ramp"], killed, paused)
    if int(record["weight_after"]) != expected:
        raise SignatureError(
            f"decision {did}: {record['verdict']} from {weight_now}% must give {expected}%, "
            f"the record says {record['weight_after']}%"
        )


def load_signed(store: Store, path_or_id: str) -> SignedDecision:
    """A signed record from a JSON file (what ``decide --json`` printed) or a stored decision id."""
    p = Path(path_or_id)
    if p.is_file():
        try:
            data = json.loads(p.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WorkbenchError(f"cannot read decision file {p}: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("record"), dict):
            raise WorkbenchError(
                f"{p} holds no decision record (expected the JSON that `workbench decide --json` "
                "prints, with 'record' and 'signature')"
            )
        return SignedDecision(data["record"], data.get("signature"))
    stored = store.get_decision(path_or_id)
    if stored is None:
        raise WorkbenchError(f"no decision file or stored decision named {path_or_id!r}")
    return SignedDecision(json.loads(stored["record"]), stored["signature"])


# -- MLflow sync ------------------------------------------------------------------------------------
def try_publish(signed: SignedDecision, publish: Callable[[SignedDecision], str]) -> tuple[str | None, str | None]:
    """Publish an applied record to MLflow: (MLflow run id, None), or (None, error) when MLflow is down
    or refuses (nothing raised: the signed decision is kept locally for a later sync)."""
    try:
        return publish(signed), None
    except Exception as e:  # MLflow down or refusing
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def record_sync(store: Store, decision_id: str, run_id: str | None, err: str | None) -> None:
    """Store the outcome of :func:`try_publish` (``pending_sync`` stays set on failure)."""
    if err is not None:
        store.mark_sync_failed(decision_id, err)
        log.warning("decision %s stored locally, not yet in MLflow (%s)", decision_id, err)
    else:
        store.mark_synced(decision_id, run_id)


def sync(
    store: Store, signed: SignedDecision, publish: Callable[[SignedDecision], str]
) -> tuple[str | None, str | None]:
    """Publish an applied record to MLflow; on failure it stays stored with ``pending_sync`` set.

    Returns (MLflow run id, None) or (None, error).
    """
    run_id, err = try_publish(signed, publish)
    record_sync(store, signed.decision_id, run_id, err)
    return run_id, err


# -- sticky bucketing (the live router) -------------------------------------------------------------
BUCKETS = 10_000


def bucket_of(key: str, salt: str) -> int:
    """The fixed bucket in [0, 10000) of an entity key: SHA-256 of ``salt`` (the model name) and the key.

    Stable across processes, hosts and Python versions (unlike ``hash()``); the salt keeps the canary
    cohorts of different models independent.
    """
    digest = hashlib.sha256(salt.encode("utf-8") + b"\x00" + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_canary(bucket: int, weight: int) -> bool:
    """Whether a bucket takes the candidate at ``weight`` percent: ``bucket < weight * 100``.

    Monotone: a bucket in the cohort at one weight stays in it at every higher weight.
    """
    return bucket < weight * (BUCKETS // 100)
