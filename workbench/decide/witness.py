"""Witnesses of each model's chain head outside the database: the published weight document and MLflow's tags.

The DuckDB chain can be edited by whoever can write the database file: rows deleted, the state rewound to an
earlier record. Signatures cannot catch that (every remaining record is genuine), so the head is also kept
where the database's writer does not reach it:

- the published weight document, ``<published_dir>/<model>.json`` (``WORKBENCH_PUBLISHED_DIR``, by default
  ``$WORKBENCH_HOME/published``), replaced atomically after every applied record. It holds the model, the
  head's sequence, decision id, record hash and weight, the candidates the kill switch holds, and the head's
  signed record with its signature, so a router can read and verify it without the database;
- the registered model's ``canary.sequence`` / ``canary.record_hash`` / ``canary.decision_id`` tags in MLflow
  (:class:`workbench.decide.registry.RegistryWitness`), written when a record is published.

A witness may lag the chain (MLflow was down, a crash after the commit); it must never be ahead of it or name
another record at its sequence: that is a rewound or rewritten chain (:func:`workbench.decide.chain.witness_problem`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from workbench import WorkbenchError
from workbench.clock import iso, utc_now
from workbench.decide.signing import SignatureError, SignedDecision, record_hash, verify_signature

log = logging.getLogger(__name__)
DOCUMENT_SCHEMA = "canary-workbench/published-head/v1"


class WitnessUnavailable(WorkbenchError):
    """A witness that could not be read now (MLflow down): reported, never taken as agreement."""


@dataclass(frozen=True)
class WitnessHead:
    """The head of a model's chain as a witness saw it."""

    source: str
    sequence: int
    record_hash: str
    decision_id: str | None


class Witness(Protocol):
    """Something outside the database that knows a model's chain head."""

    name: str

    def head(self, model: str, trusted) -> WitnessHead | None: ...


class WeightDocuments:
    """The published weight documents, one JSON file per model in ``folder``."""

    name = "published document"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, model: str) -> Path:
        """The document of ``model`` (the name percent-encoded: it never leaves the folder)."""
        return self.folder / (quote(model, safe="") + ".json")

    def read(self, model: str, trusted) -> dict | None:
        """The document of ``model`` after checking it (its record's hash and signature, and that its fields
        are the record's); None when there is none. A document that does not check raises SignatureError."""
        path = self.path(model)
        try:
            doc = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SignatureError(f"the published weight document {path} cannot be read: {e}") from None
        where = f"the published weight document {path}"
        if not isinstance(doc, dict) or doc.get("schema") != DOCUMENT_SCHEMA or not isinstance(doc.get("record"), dict):
            raise SignatureError(f"{where} is not a weight document")
        record = doc["record"]
        try:
            verify_signature(record, doc.get("signature"), trusted)
        except SignatureError as e:
            raise SignatureError(f"{where} does not verify: {e}") from None
        same = (
            doc.get("model") == record.get("model") == model
            and doc.get("sequence") == record.get("sequence")
            and doc.get("decision_id") == record.get("decision_id")
            and doc.get("record_hash") == record_hash(record)
        )
        if not same or not isinstance(doc["sequence"], int) or doc["sequence"] < 1:
            raise SignatureError(f"{where} does not match the signed record it carries")
        return doc

    def head(self, model: str, trusted) -> WitnessHead | None:
        """The head the document names (see :meth:`read`)."""
        doc = self.read(model, trusted)
        if doc is None:
            return None
        return WitnessHead(self.name, doc["sequence"], doc["record_hash"], doc["decision_id"])

    def publish(self, signed: SignedDecision, weight: int, killed_versions: list[str], trusted) -> None:
        """Replace the document of the record's model by this head (a temporary file, fsync, rename), unless
        the document already names this sequence or a later one (a concurrent writer got there first)."""
        r = signed.record
        model, seq = r["model"], int(r["sequence"])
        try:
            current = self.read(model, trusted)
        except SignatureError:
            current = None  # an unreadable document is replaced by the verified head
        if current is not None and current["sequence"] >= seq:
            return
        doc = {
            "schema": DOCUMENT_SCHEMA,
            "model": model,
            "sequence": seq,
            "decision_id": r["decision_id"],
            "record_hash": record_hash(r),
            "weight": weight,
            "baseline_version": r["baseline"]["version"],
            "candidate_version": r["candidate"]["version"],
            "killed_versions": sorted(killed_versions),
            "published_at": iso(utc_now()),
            "record": r,
            "signature": signed.signature,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(model)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True)
class Witnesses:
    """The witnesses a process checks the chain against: the weight documents it also writes, and read-only
    ones (MLflow's tags). ``Witnesses()`` checks nothing (in-memory stores in tests)."""

    document: WeightDocuments | None = None
    others: tuple[Witness, ...] = ()

    def all(self) -> tuple[Witness, ...]:
        return ((self.document,) if self.document is not None else ()) + self.others

    def publish(self, signed: SignedDecision, weight: int, killed_versions: list[str], trusted) -> None:
        """Write the weight document of a record just applied; a failure is logged (the document then lags,
        which the next applied record repairs)."""
        if self.document is None:
            return
        try:
            self.document.publish(signed, weight, killed_versions, trusted)
        except OSError as e:
            log.warning("the weight document of %s was not written (%s); it lags the chain", signed.model, e)
