"""Each model's chain of applied records, verified, and everything shown about a canary derived from it.

The chain (``canary_chain`` joined to the stored record text in ``decisions``) is checked record by record:
the stored bytes are canonical, their hash is the one the chain and the row recorded, the signature verifies
under a trusted key, each record links to the previous one, and the row's convenience columns (kind, verdict,
weights, run) say what the record says. From the verified records alone follow the weight, the pair, the
head and the candidate versions the kill switch holds (a ``kill`` record of a version with no later
``resume`` of it). ``canary_state`` is a cache of that head: :func:`status` reports any disagreement with it,
and with the witnesses outside the database (:mod:`workbench.decide.witness`), as ``verified: false`` with the
problem named, and then serves weight 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from workbench import WorkbenchError
from workbench.clock import parse_time
from workbench.decide.policy import Verdict
from workbench.decide.signing import (
    SignatureError,
    SignedDecision,
    canonical_bytes,
    record_hash,
    verify_signature,
)
from workbench.decide.signoff import SignOff, awaiting_text, check_record, quorum_of, sign_off
from workbench.decide.witness import Witnesses, WitnessHead, WitnessUnavailable
from workbench.store import Store

RECORD_SCHEMA = "canary-workbench/decision/v1"
KINDS = ("decision", "kill", "resume")
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
COLUMNS = ("kind", "verdict", "weight_before", "weight_after", "run_id")  # copies of record fields in `decisions`


def record_time(text: str) -> datetime:
    """A record's timestamp; a malformed one makes the record invalid."""
    try:
        return parse_time(text)
    except WorkbenchError:
        raise SignatureError(f"bad timestamp {text!r} in the record") from None


def check_shape(record: dict) -> None:
    """Refuse anything that is not a decision record of a known schema, kind and verdict."""
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise SignatureError(
            f"decision {record.get('decision_id')}: not a decision record (missing {', '.join(missing)})"
        )
    if record["schema"] != RECORD_SCHEMA or record["kind"] not in KINDS or record["verdict"] not in tuple(Verdict):
        raise SignatureError(f"decision {record['decision_id']}: unknown schema, kind or verdict")
    check_record(record)


def pair_of(record_or_state: dict) -> tuple:
    """(baseline version, candidate version) of a record or a state row."""
    if "candidate_version" in record_or_state:
        return record_or_state["baseline_version"], record_or_state["candidate_version"]
    return record_or_state["baseline"]["version"], record_or_state["candidate"]["version"]


# -- verification -------------------------------------------------------------------------------------
def chain_report(store: Store, model: str, trusted: Mapping, upto: int | None = None) -> list[tuple[dict, str | None]]:
    """Every applied record of ``model`` (up to sequence ``upto``) in chain order, each with the first problem
    found in it (stored bytes, hashes, link, signature, columns), or None when it verifies."""
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
            _check_quorum(store, row, trusted)
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
    record = json.loads(row["record"])
    text_hash = record_hash(record)
    if not (text_hash == row["record_hash"] == row["chain_hash"]) or canonical_bytes(record) != row["record"].encode(
        "utf-8"
    ):
        raise SignatureError(f"{where}: the stored record was altered (hash mismatch)")
    verify_signature(record, row["signature"], trusted)
    if record.get("previous_hash") != prev or record.get("sequence") != seq or record.get("model") != model:
        raise SignatureError(f"{where}: does not link to the previous record")
    edited = [c for c in COLUMNS if row[c] != record.get(c)] + (["model"] if row["row_model"] != model else [])
    if edited:
        raise SignatureError(
            f"{where}: the decisions table's {', '.join(edited)} disagree with the signed record (edited columns)"
        )
    return text_hash


def _check_quorum(store: Store, row: dict, trusted: Mapping) -> None:
    """Refuse an applied record whose approvals do not verify or fall short of its quorum (one removed)."""
    record = json.loads(row["record"])
    check_record(record)
    rows = store.approvals(row["decision_id"])
    if quorum_of(record) == 1 and not rows:
        return
    off = sign_off(record, rows, trusted)
    if not off.met:
        raise SignatureError(
            f"chain of {record['model']} at sequence {row['sequence']} (decision {row['decision_id']}): applied "
            f"with {len(off.signers)} of the {off.quorum} distinct approvers it needs ({', '.join(off.signers)})"
        )


def verify_chain(store: Store, model: str, trusted: Mapping, upto: int | None = None) -> int:
    """Check every applied record of ``model`` (up to sequence ``upto``): stored bytes, hashes, links and
    signatures. Returns the number of records checked; raises :class:`SignatureError` at the first break."""
    return len(verified_rows(store, model, trusted, upto))


def verified_rows(store: Store, model: str, trusted: Mapping, upto: int | None = None) -> list[dict]:
    """The chain rows of ``model`` when every one verifies; raises :class:`SignatureError` at the first break."""
    report = chain_report(store, model, trusted, upto)
    for _, problem in report:
        if problem is not None:
            raise SignatureError(problem)
    return [row for row, _ in report]


# -- the state the verified chain says ------------------------------------------------------------------
@dataclass(frozen=True)
class ChainState:
    """The head of a verified chain and the candidate versions the kill switch holds at 0."""

    record: dict
    signature: str
    sequence: int
    record_hash: str
    killed_versions: frozenset[str]

    @property
    def decision_id(self) -> str:
        return self.record["decision_id"]

    @property
    def pair(self) -> tuple:
        return pair_of(self.record)

    @property
    def killed(self) -> bool:
        """Whether the head's candidate is held at 0 by the kill switch."""
        return self.record["candidate"]["version"] in self.killed_versions

    @property
    def weight(self) -> int:
        return 0 if self.killed else int(self.record["weight_after"])


def killed_after(killed: frozenset[str], record: dict) -> frozenset[str]:
    """The killed candidate versions once ``record`` applies: a kill adds its candidate, a resume removes it."""
    version = record["candidate"]["version"]
    if record["kind"] == "kill":
        return killed | {version}
    if record["kind"] == "resume":
        return killed - {version}
    return killed


def derive(rows: list[dict]) -> ChainState | None:
    """The state of a chain whose ``rows`` all verified (None for an empty chain)."""
    if not rows:
        return None
    killed: frozenset[str] = frozenset()
    record: dict = {}
    for row in rows:
        record = json.loads(row["record"])
        killed = killed_after(killed, record)
    head = rows[-1]
    return ChainState(record, head["signature"], int(head["sequence"]), head["record_hash"], killed)


def witness_problem(rows: list[dict], head: WitnessHead) -> str | None:
    """Why a witness's head contradicts the verified chain ``rows`` (ahead of it, or another record at its
    sequence); None when the witness names one of the chain's records (the head, or an earlier one: it lags)."""
    n = len(rows)
    if head.sequence > n:
        return (
            f"the chain was rewound: the {head.source} head is sequence {head.sequence} (decision "
            f"{head.decision_id}) but the database chain ends at sequence {n}"
        )
    held = rows[head.sequence - 1]
    if held["record_hash"] != head.record_hash:
        return (
            f"the chain was rewritten: the {head.source} head at sequence {head.sequence} is decision "
            f"{head.decision_id}, the database chain has decision {held['decision_id']} there"
        )
    return None


def check_witnesses(rows: list[dict], model: str, trusted: Mapping, witnesses: Witnesses) -> tuple[str | None, dict]:
    """(the first contradiction between the chain and a witness or None, what each witness said)."""
    notes: dict[str, str] = {}
    problem = None
    for w in witnesses.all():
        try:
            head = w.head(model, trusted)
        except WitnessUnavailable as e:
            notes[w.name] = f"unavailable: {e}"
            continue
        except SignatureError as e:
            notes[w.name] = "does not verify"
            problem = problem or str(e)
            continue
        if head is None:
            notes[w.name] = "none yet"
            continue
        found = witness_problem(rows, head)
        problem = problem or found
        notes[w.name] = (
            f"contradicts the chain at sequence {head.sequence}"
            if found
            else f"sequence {head.sequence}" + (" (the head)" if head.sequence == len(rows) else f" (lags {len(rows)})")
        )
    return problem, notes


# -- status -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryStatus:
    """A model's canary as the verified chain says it (weight 0 whenever ``verified`` is false)."""

    model: str
    baseline_version: str | None
    candidate_version: str | None
    weight: int
    decision_id: str | None
    verified: bool
    problem: str | None = None
    killed: bool = False
    sequence: int | None = None
    witnesses: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "model": self.model,
            "baseline_version": self.baseline_version,
            "candidate_version": self.candidate_version,
            "weight": self.weight,
            "decision_id": self.decision_id,
            "verified": self.verified,
            "killed": self.killed,
            "sequence": self.sequence,
            "witnesses": dict(self.witnesses),
        }
        if self.problem:
            d["problem"] = self.problem
        return d


def _cache_problem(state: dict | None, head: ChainState) -> str | None:
    if state is None:
        return "the canary_state cache is missing for a model with a signed chain"
    differs = [
        name
        for name, cached, signed in (
            ("decision", (state["decision_id"], state["record_hash"]), (head.decision_id, head.record_hash)),
            ("weight", int(state["weight"]), head.weight),
            ("versions", pair_of(state), head.pair),
            ("killed", bool(state["killed"]), head.killed),
        )
        if cached != signed
    ]
    if differs:
        return (
            "the stored canary state does not match the head of the signed chain "
            f"(its {', '.join(differs)} {'differs' if len(differs) == 1 else 'differ'})"
        )
    return None


def _claimed(rows: list[dict]) -> dict:
    """What the last chain row claims, for display next to a problem (never trusted)."""
    if not rows:
        return {}
    try:
        return json.loads(rows[-1]["record"] or "{}")
    except ValueError:
        return {}


def chain_status(
    store: Store, model: str, trusted: Mapping, witnesses: Witnesses | None = None
) -> tuple[CanaryStatus, ChainState | None]:
    """(:func:`status`, the verified chain state behind it: None when nothing verifies)."""
    report = chain_report(store, model, trusted)
    rows = [row for row, _ in report]
    problem = next((p for _, p in report if p is not None), None)
    state = store.canary_state(model)
    wproblem, notes = check_witnesses(rows, model, trusted, witnesses or Witnesses())
    head = derive(rows) if problem is None else None
    if head is not None:
        problem = wproblem or _cache_problem(state, head)
    elif problem is None:  # an empty chain
        problem = wproblem
        if problem is None and state is not None:
            problem = "the stored canary state has no signed chain behind it"
        if problem is None:
            return CanaryStatus(model, None, None, 0, None, False, "no decision has been applied to this model"), None
    if head is not None and problem is None:
        return (
            CanaryStatus(
                model,
                head.pair[0],
                head.pair[1],
                head.weight,
                head.decision_id,
                True,
                None,
                head.killed,
                head.sequence,
                notes,
            ),
            head,
        )
    claimed = _claimed(rows)
    return (
        CanaryStatus(
            model,
            (claimed.get("baseline") or {}).get("version"),
            (claimed.get("candidate") or {}).get("version"),
            0,
            claimed.get("decision_id"),
            False,
            problem,
            bool(head and head.killed),
            claimed.get("sequence"),
            notes,
        ),
        None,
    )


def status(store: Store, model: str, trusted: Mapping, witnesses: Witnesses | None = None) -> CanaryStatus:
    """The model's canary from its verified chain; ``verified`` when every record verifies, the cached state is
    its head and no witness contradicts it (else weight 0 and ``problem`` says what is wrong)."""
    return chain_status(store, model, trusted, witnesses)[0]


def live_view(store: Store, model: str, trusted: Mapping, witnesses: Witnesses | None = None) -> dict:
    """What the weight API serves for a model: :func:`status` plus the head record's signature, ramp, time and
    verdict. ``verdict`` is the lower-case verdict of the latest decision ("promote", "hold", "rollback")
    when the chain verifies, else "unverified" (so a gate on ``verdict == "promote"`` never opens on it)."""
    st, head = chain_status(store, model, trusted, witnesses)
    view = st.to_dict() | {"signature": None, "verdict": None, "ramp": None, "created_at": None}
    if head is not None:
        r = head.record
        view.update(
            signature=head.signature, ramp=r.get("ramp"), verdict=str(r["verdict"]).lower(), created_at=r["created_at"]
        )
    elif st.decision_id is not None:
        view["verdict"] = "unverified"
    return view


# -- one record against the chain ---------------------------------------------------------------------------
def check_stored_copy(store: Store, signed: SignedDecision) -> dict | None:
    """The stored decision with the record's id, refusing one whose stored record differs."""
    stored = store.get_decision(signed.decision_id)
    if stored is not None and stored["record_hash"] != record_hash(signed.record):
        raise SignatureError(f"decision {signed.decision_id} differs from the stored record with that id")
    return stored


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
    sign_off: SignOff | None = None
    justification: str | None = None
    override: dict | None = None

    def to_dict(self) -> dict:
        off = self.sign_off.to_dict() if self.sign_off is not None else {}
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
            "justification": self.justification,
            "override": self.override,
            "quorum": off.get("quorum", 1),
            "signed_by": off.get("signed_by", [self.signer]),
            "approvals": off.get("approvals", []),
            "awaiting_approval": not off.get("met", True),
        }


def verify_decision(store: Store, signed: SignedDecision, trusted: Mapping) -> Verification:
    """Check a record's signature and its place in the chain (staleness does not matter here:
    an old record stays verifiable). Raises :class:`SignatureError` naming the problem."""
    record = signed.record
    fp = verify_signature(record, signed.signature, trusted)
    check_shape(record)
    model, seq = record["model"], int(record["sequence"])
    stored = check_stored_copy(store, signed)
    off = sign_off(record, store.approvals(record["decision_id"]) if stored is not None else [], trusted)
    extra = {"justification": record.get("justification"), "override": record.get("override")}
    if stored is not None and stored["applied_sequence"] is not None:
        n = verify_chain(store, model, trusted)
        note = f"applied as sequence {seq} of {n} in the chain of {model}"
        return Verification(
            record["decision_id"], model, record["verdict"], fp, record["signer"], seq, True, n, note, off, **extra
        )
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
        + (f"; {awaiting_text(off)}" if not off.met else "")
    )
    return Verification(
        record["decision_id"], model, record["verdict"], fp, record["signer"], seq, False, n, note, off, **extra
    )
