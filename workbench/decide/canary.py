"""The canary ramp: signed, hash-chained decision records are the only thing that moves the weight.

Per registered model the weight (percent of traffic on the candidate) follows the policy's ramp,
e.g. ``0 -> 1 -> 5 -> 25 -> 50 -> 100``: PROMOTE advances one step, HOLD stays, ROLLBACK (and the
kill switch) sets 0. Each applied record links to the previous applied record of its model by hash
(``previous_hash``, ``sequence``); the state in DuckDB (``canary_state``) is the chain's head. A
record is applied only when its signature verifies against a trusted key, it is not stale (older than
the policy's ``max_age_hours``), it extends the chain's head, and its weights follow the ramp.

For live traffic: :func:`live_view` is what the weight API serves, and :func:`bucket_of` /
:func:`in_canary` put an entity in a fixed bucket whose canary membership only grows with the weight.
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
from workbench.clock import db_time, iso, parse_time, utc_now
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
from workbench.store import Store

log = logging.getLogger(__name__)
RECORD_SCHEMA = "canary-workbench/decision/v1"
KINDS = ("decision", "kill")
CLOCK_SKEW = timedelta(minutes=5)
REQUIRED_FIELDS = (
    "schema",
    "kind",
    "decision_id",
    "sequence",
    "previous_hash",
    "model",
    "baseline",
    "candidate",
    "run_id",
    "traffic",
    "traffic_fingerprint",
    "policy_hash",
    "evaluation_hash",
    "drift_hash",
    "scorecard",
    "verdict",
    "reason",
    "ramp",
    "weight_before",
    "weight_after",
    "registry",
    "signer",
    "key_fingerprint",
    "created_at",
    "expires_at",
)


def _record_time(text: str) -> datetime:
    """A record's timestamp; a malformed one makes the record invalid."""
    try:
        return parse_time(text)
    except WorkbenchError:
        raise SignatureError(f"bad timestamp {text!r} in the record") from None


def next_weight(
    verdict: Verdict | str, weight_before: int, ramp: tuple[int, ...] | list[int], killed: bool = False
) -> int:
    """The weight after a verdict: PROMOTE -> the next ramp step, HOLD -> unchanged, ROLLBACK -> 0.

    A killed candidate stays at 0 whatever the verdict.
    """
    if verdict not in tuple(Verdict):
        raise WorkbenchError(f"unknown verdict {verdict!r}")
    if killed or verdict == Verdict.ROLLBACK:
        return 0
    if verdict == Verdict.HOLD:
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


def _pair(record_or_state: dict) -> tuple:
    if "candidate_version" in record_or_state:
        return record_or_state["baseline_version"], record_or_state["candidate_version"]
    return record_or_state["baseline"]["version"], record_or_state["candidate"]["version"]


def _current(state: dict | None, pair: tuple, kind: str, model: str) -> tuple[int, bool]:
    """(weight of ``pair`` now, killed) for a new record; refuses to start a pair while another ramps."""
    if state is None:
        return 0, False
    if kind == "kill" or _pair(state) == pair:
        return int(state["weight"]), bool(state["killed"])
    if 0 < state["weight"] < 100:
        raise WorkbenchError(
            f"model {model} has a canary in progress: candidate v{state['candidate_version']} at "
            f"{state['weight']}%; finish it or `workbench canary kill {model}` first"
        )
    return 0, False


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

    @property
    def verdict(self) -> Verdict:
        return self.scorecard.verdict


def preview_decision(store: Store, run_id: str, policy: Policy) -> DecisionPreview:
    """Judge a finished replay run under ``policy`` (the pair's growing sample, see
    :mod:`workbench.decide.judge`) and work out the weight it would move to (signs nothing)."""
    run = store.require_run(run_id)
    if run["status"] != "finished":
        raise WorkbenchError(f"run {run_id} is {run['status']}, not finished: finish the replay first")
    model = _model_of(run)
    traffic = store.require_traffic(run["traffic"])
    base, cand = _ref(run["baseline"]), _ref(run["candidate"])
    if base["version"] == cand["version"] and run["baseline"].get("name") == run["candidate"].get("name"):
        raise WorkbenchError(f"run {run_id}: the baseline and the candidate are the same version: nothing to decide")
    weight_before, killed = _current(store.canary_state(model), (base["version"], cand["version"]), "decision", model)
    judged = judge_run(store, run, policy, load_drift(store, run_id))
    card = judged.scorecard
    reason = card.reason
    if killed:
        reason += f"; the kill switch holds candidate v{cand['version']} at 0%"
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
        next_weight(card.verdict, weight_before, policy.ramp, killed),
        killed,
        reason,
    )


def build_decision(
    store: Store, run_id: str, policy: Policy, signer: Signer, *, now: datetime | None = None
) -> tuple[SignedDecision, Scorecard]:
    """Judge a finished replay run under ``policy``; sign and store the record (not yet applied)."""
    now = now or utc_now()
    p = preview_decision(store, run_id, policy)
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
        verdict=p.verdict,
        reason=p.reason,
        weight_before=p.weight_before,
        weight_after=p.weight_after,
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
    state = store.canary_state(model)
    if state is None:
        raise WorkbenchError(f"model {model} has no canary state: nothing to kill")
    head = json.loads(store.require_decision(state["decision_id"])["record"])
    record = _record(
        store,
        model,
        now,
        signer,
        policy,
        kind="kill",
        baseline=head["baseline"],
        candidate=head["candidate"],
        run_id=None,
        traffic=head["traffic"],
        traffic_fingerprint=head["traffic_fingerprint"],
        evaluation_hash=None,
        drift_hash=None,
        scorecard=scorecard,
        verdict=Verdict.ROLLBACK,
        reason=f"{source}: {reason.strip()}",
        weight_before=int(state["weight"]),
        weight_after=0,
        registry=head.get("registry"),
        ramp=head.get("ramp"),
    )
    signed = signer.sign(record)
    save_record(store, signed)
    return signed


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
    record.update({k: v for k, v in fields.items() if v is not None or k not in ("registry", "ramp")})
    return clean(record)


def save_record(store: Store, signed: SignedDecision, cur=None) -> None:
    r = signed.record
    if signed.signature is None:
        raise SignatureError(f"decision {r.get('decision_id')} is unsigned: only signed records are stored")
    store.save_decision(
        cur or store.cursor(),
        decision_id=r["decision_id"],
        model=r["model"],
        kind=r["kind"],
        run_id=r["run_id"],
        verdict=r["verdict"],
        weight_before=int(r["weight_before"]),
        weight_after=int(r["weight_after"]),
        record_text=canonical_bytes(r).decode("utf-8"),
        record_hash=record_hash(r),
        signature=signed.signature,
        created_at=db_time(_record_time(r["created_at"])),
    )


# -- verification and applying ----------------------------------------------------------------------
def _check_shape(record: dict) -> None:
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise SignatureError(
            f"decision {record.get('decision_id')}: not a decision record (missing {', '.join(missing)})"
        )
    if record["schema"] != RECORD_SCHEMA or record["kind"] not in KINDS or record["verdict"] not in tuple(Verdict):
        raise SignatureError(f"decision {record['decision_id']}: unknown schema, kind or verdict")


def _check_stored_copy(store: Store, signed: SignedDecision) -> dict | None:
    stored = store.get_decision(signed.decision_id)
    if stored is not None and stored["record_hash"] != record_hash(signed.record):
        raise SignatureError(f"decision {signed.decision_id} differs from the stored record with that id")
    return stored


def chain_report(store: Store, model: str, trusted: Mapping, upto: int | None = None) -> list[tuple[dict, str | None]]:
    """Every applied record of ``model`` (up to sequence ``upto``) in chain order, each with the first problem
    found in it (stored bytes, hashes, link, signature), or None when it verifies."""
    prev: str | None = None
    n = 0
    out: list[tuple[dict, str | None]] = []
    for row in store.chain(model):
        seq = int(row["sequence"])
        if upto is not None and seq > upto:
            break
        n += 1
        try:
            prev = _check_chain_row(row, model, seq, n, prev, trusted)
            out.append((row, None))
        except SignatureError as e:
            out.append((row, str(e)))
            prev = row["chain_hash"]  # later records are judged against the hash the chain recorded
    return out


def _check_chain_row(row: dict, model: str, seq: int, n: int, prev: str | None, trusted: Mapping) -> str:
    """The record's hash, after checking it extends ``prev``; raises :class:`SignatureError` otherwise."""
    where = f"chain of {model} at sequence {seq} (decision {row['decision_id']})"
    if seq != n:
        raise SignatureError(f"{where}: sequence gap, expected {n}")
    if row["record"] is None:
        raise SignatureError(f"{where}: the record is missing")
    text_hash = record_hash(json.loads(row["record"]))
    if not (text_hash == row["record_hash"] == row["chain_hash"]) or canonical_bytes(json.loads(row["record"])) != row[
        "record"
    ].encode("utf-8"):
        raise SignatureError(f"{where}: the stored record was altered (hash mismatch)")
    record = json.loads(row["record"])
    verify_signature(record, row["signature"], trusted)
    if record.get("previous_hash") != prev or record.get("sequence") != seq or record.get("model") != model:
        raise SignatureError(f"{where}: does not link to the previous record")
    return text_hash


def verify_chain(store: Store, model: str, trusted: Mapping, upto: int | None = None) -> int:
    """Check every applied record of ``model`` (up to sequence ``upto``): stored bytes, hashes, links and
    signatures. Returns the number of records checked; raises :class:`SignatureError` at the first break."""
    report = chain_report(store, model, trusted, upto)
    for _, problem in report:
        if problem is not None:
            raise SignatureError(problem)
    return len(report)


@dataclass(frozen=True)
class CanaryStatus:
    model: str
    baseline_version: str | None
    candidate_version: str | None
    weight: int
    decision_id: str | None
    verified: bool
    problem: str | None = None

    def to_dict(self) -> dict:
        d = {
            "model": self.model,
            "baseline_version": self.baseline_version,
            "candidate_version": self.candidate_version,
            "weight": self.weight,
            "decision_id": self.decision_id,
            "verified": self.verified,
        }
        if self.problem:
            d["problem"] = self.problem
        return d


def status(store: Store, model: str, trusted: Mapping) -> CanaryStatus:
    """The model's canary state; ``verified`` when the whole chain verifies and its head is the state."""
    state = store.canary_state(model)
    if state is None:
        return CanaryStatus(model, None, None, 0, None, False, "no decision has been applied to this model")
    problem = None
    try:
        verify_chain(store, model, trusted)
        head = store.chain_head(model)
        if head is None:  # a state with no chain: verify_chain found nothing to check
            raise SignatureError("the stored canary state has no signed chain behind it")
        record = json.loads(store.require_decision(head["decision_id"])["record"])
        if (
            (head["decision_id"], head["record_hash"]) != (state["decision_id"], state["record_hash"])
            or int(record["weight_after"]) != int(state["weight"])
            or _pair(record) != _pair(state)
        ):
            problem = "the stored canary state does not match the head of the signed chain"
    except SignatureError as e:
        problem = str(e)
    return CanaryStatus(
        model,
        state["baseline_version"],
        state["candidate_version"],
        int(state["weight"]),
        state["decision_id"],
        problem is None,
        problem,
    )


def apply_decision(
    store: Store, signed: SignedDecision, trusted: Mapping, *, now: datetime | None = None
) -> CanaryStatus:
    """Move the canary weight by a signed record, after checking everything; otherwise the weight stays.

    Refused (:class:`SignatureError`): unsigned, tampered, untrusted key, not a record, already applied,
    stale or from the future, out of chain, weights that do not match the state or the ramp, or a chain so far
    that does not verify under the trusted keys.
    """
    now = now or utc_now()
    record = signed.record
    verify_signature(record, signed.signature, trusted)
    _check_shape(record)
    did, model = record["decision_id"], record["model"]
    stored = _check_stored_copy(store, signed)
    if stored is not None and stored["applied_sequence"] is not None:
        raise SignatureError(f"decision {did} is already applied (sequence {stored['applied_sequence']} of {model})")
    created, expires = _record_time(record["created_at"]), _record_time(record["expires_at"])
    if now > expires:
        raise SignatureError(
            f"decision {did} is stale: made {record['created_at']}, expired {record['expires_at']} "
            "(the policy's max_age_hours); make a new decision"
        )
    if created > now + CLOCK_SKEW:
        raise SignatureError(f"decision {did} is dated in the future ({record['created_at']})")
    try:  # nothing applies on top of a chain that does not verify under the trusted keys (a swapped key, an edit)
        verify_chain(store, model, trusted)
    except SignatureError as e:
        raise SignatureError(f"decision {did} cannot apply: the chain of {model} does not verify ({e})") from None
    head = store.chain_head(model)
    want_seq = 1 if head is None else int(head["sequence"]) + 1
    want_prev = None if head is None else head["record_hash"]
    if record["sequence"] != want_seq or record["previous_hash"] != want_prev:
        raise SignatureError(
            f"decision {did} is out of chain: it follows {str(record['previous_hash'])[:12]} (sequence "
            f"{record['sequence']}), but the chain of {model} is at {str(want_prev)[:12]} (next sequence {want_seq}); "
            "make a new decision"
        )
    state = store.canary_state(model)
    try:
        weight_now, killed = _current(state, _pair(record), record["kind"], model)
    except WorkbenchError as e:
        raise SignatureError(str(e)) from None
    if int(record["weight_before"]) != weight_now:
        raise SignatureError(
            f"decision {did} was made at weight {record['weight_before']}%, the canary is at {weight_now}%"
        )
    expected = 0 if record["kind"] == "kill" else next_weight(record["verdict"], weight_now, record["ramp"], killed)
    if int(record["weight_after"]) != expected:
        raise SignatureError(
            f"decision {did}: {record['verdict']} from {weight_now}% must give {expected}%, "
            f"the record says {record['weight_after']}%"
        )
    killed = killed or record["kind"] == "kill"
    with store.transaction() as cur:
        if stored is None:
            save_record(store, signed, cur)
        store.append_chain(
            cur,
            model=model,
            sequence=want_seq,
            decision_id=did,
            record_hash=record_hash(record),
            baseline_version=record["baseline"]["version"],
            candidate_version=record["candidate"]["version"],
            weight=int(record["weight_after"]),
            killed=killed,
        )
    return status(store, model, trusted)


@dataclass(frozen=True)
class Verification:
    decision_id: str
    model: str
    verdict: str
    key_fingerprint: str
    signer: str
    sequence: int
    applied: bool
    chain_length: int
    note: str

    def to_dict(self) -> dict:
        return {
            "decision_id": self.decision_id,
            "model": self.model,
            "verdict": self.verdict,
            "signature": "valid",
            "chain": "valid",
            "verified": True,
            "key_fingerprint": self.key_fingerprint,
            "signer": self.signer,
            "sequence": self.sequence,
            "applied": self.applied,
            "chain_length": self.chain_length,
            "note": self.note,
        }


def verify_decision(store: Store, signed: SignedDecision, trusted: Mapping) -> Verification:
    """Check a record's signature and its place in the chain (staleness does not matter here:
    an old record stays verifiable). Raises :class:`SignatureError` naming the problem."""
    record = signed.record
    fp = verify_signature(record, signed.signature, trusted)
    _check_shape(record)
    model, seq = record["model"], int(record["sequence"])
    stored = _check_stored_copy(store, signed)
    if stored is not None and stored["applied_sequence"] is not None:
        n = verify_chain(store, model, trusted)
        note = f"applied as sequence {seq} of {n} in the chain of {model}"
        return Verification(record["decision_id"], model, record["verdict"], fp, record["signer"], seq, True, n, note)
    n = verify_chain(store, model, trusted, upto=seq - 1)
    chain = store.chain(model)
    prev = chain[seq - 2]["chain_hash"] if seq >= 2 and len(chain) >= seq - 1 else None
    if n != seq - 1 or record["previous_hash"] != prev:
        raise SignatureError(
            f"decision {record['decision_id']} is out of chain: its previous hash "
            f"{str(record['previous_hash'])[:12]} (sequence {seq}) is not in the chain of {model}"
        )
    holder = chain[seq - 1]["decision_id"] if len(chain) >= seq else None
    note = (
        f"not applied: sequence {seq} of {model} is held by decision {holder}"
        if holder
        else f"not applied yet: it extends the head of the chain of {model}"
    )
    return Verification(record["decision_id"], model, record["verdict"], fp, record["signer"], seq, False, n, note)


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


def live_view(store: Store, model: str, trusted: Mapping) -> dict:
    """What the weight API serves for a model: :func:`status` plus the head record's signature, ramp and
    verdict. ``verdict`` is the lower-case verdict of the latest decision ("promote", "hold", "rollback")
    when the chain verifies, else "unverified" (so a gate on ``verdict == "promote"`` never opens on it)."""
    st = status(store, model, trusted)
    view = st.to_dict() | {"signature": None, "verdict": None, "killed": False, "sequence": None, "ramp": None}
    if st.decision_id is None:
        return view
    row = store.get_decision(st.decision_id)
    state = store.canary_state(model)
    record = json.loads(row["record"]) if row else {}
    view.update(
        signature=row["signature"] if row else None,
        killed=bool(state and state["killed"]),
        sequence=record.get("sequence"),
        ramp=record.get("ramp"),
        verdict=str(record.get("verdict")).lower() if st.verified else "unverified",
    )
    return view


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
