"""Decisions: signed records, each model's hash chain of applied records, its canary state, MLflow sync state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.store.base import StoreBase


class DecisionStore(StoreBase):
    """Signed decision records (their canonical text, byte for byte), the canary chain and canary state."""

    def save_decision(
        self,
        cur,
        *,
        decision_id: str,
        model: str,
        kind: str,
        run_id: str | None,
        verdict: str,
        weight_before: int,
        weight_after: int,
        record_text: str,
        record_hash: str,
        signature: str,
        created_at: datetime,
    ) -> None:
        """Store a signed record (its canonical text, byte for byte); a known decision id is left as is."""
        cur.execute(
            "INSERT INTO decisions (decision_id, model, kind, run_id, verdict, weight_before, weight_after, "
            "record, record_hash, signature, created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM decisions WHERE decision_id = $1)",
            [
                decision_id,
                model,
                kind,
                run_id,
                verdict,
                weight_before,
                weight_after,
                record_text,
                record_hash,
                signature,
                created_at,
            ],
        )

    def get_decision(self, decision_id: str) -> dict[str, Any] | None:
        """A stored decision with its place in the chain (``applied_sequence``, ``applied_at``) once applied."""
        rows = self._rows(
            """SELECT d.*, c.sequence AS applied_sequence, c.applied_at FROM decisions d
               LEFT JOIN canary_chain c USING (decision_id) WHERE d.decision_id = ?""",
            [decision_id],
        )
        return rows[0] if rows else None

    def require_decision(self, decision_id: str) -> dict[str, Any]:
        """:meth:`get_decision`, or an error when no decision has that id."""
        row = self.get_decision(decision_id)
        if row is None:
            raise WorkbenchError(f"unknown decision {decision_id!r}")
        return row

    def list_decisions(
        self, model: str | None = None, limit: int = 100, *, run_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Decisions (of ``model`` and/or ``run_id``, or all), newest first, without their record text."""
        return self._rows(
            """SELECT d.decision_id, d.model, d.kind, d.run_id, d.verdict, d.weight_before, d.weight_after,
                      d.created_at, c.sequence AS applied_sequence, d.mlflow_run_id, d.pending_sync
               FROM decisions d LEFT JOIN canary_chain c USING (decision_id)
               WHERE (? IS NULL OR d.model = ?) AND (? IS NULL OR d.run_id = ?)
               ORDER BY d.created_at DESC LIMIT ?""",
            [model, model, run_id, run_id, limit],
        )

    def chain(self, model: str) -> list[dict[str, Any]]:
        """The applied records of ``model`` in chain order, with their stored text, signature and the columns
        that copy record fields (``row_model``, kind, verdict, weights, run id)."""
        return self._rows(
            """SELECT c.sequence, c.decision_id, c.record_hash AS chain_hash, c.applied_at, d.record,
                      d.record_hash, d.signature, d.model AS row_model, d.kind, d.verdict, d.weight_before,
                      d.weight_after, d.run_id
               FROM canary_chain c LEFT JOIN decisions d USING (decision_id)
               WHERE c.model = ? ORDER BY c.sequence""",
            [model],
        )

    def chain_models(self) -> list[str]:
        """Every model with an applied record or a canary state row."""
        return [
            r[0]
            for r in self.cursor()
            .execute("SELECT model FROM canary_chain UNION SELECT model FROM canary_state ORDER BY 1")
            .fetchall()
        ]

    def chain_head(self, model: str) -> dict[str, Any] | None:
        """The last link of ``model``'s chain (sequence, decision id, record hash), or None."""
        rows = self._rows(
            "SELECT sequence, decision_id, record_hash FROM canary_chain WHERE model = ? "
            "ORDER BY sequence DESC LIMIT 1",
            [model],
        )
        return rows[0] if rows else None

    def canary_state(self, model: str) -> dict[str, Any] | None:
        """``model``'s canary: versions, weight, killed, and the decision that set them; None before any."""
        rows = self._rows("SELECT * FROM canary_state WHERE model = ?", [model])
        return rows[0] if rows else None

    def append_chain(
        self,
        cur,
        *,
        model: str,
        sequence: int,
        decision_id: str,
        record_hash: str,
        baseline_version: str | None,
        candidate_version: str | None,
        weight: int,
        killed: bool,
    ) -> None:
        """Link an applied record to its model's chain and move the model's canary state (in ``cur``'s transaction)."""
        head, chained = cur.execute(
            "SELECT max(sequence) FILTER (WHERE model = ?), count(*) FILTER (WHERE decision_id = ?) FROM canary_chain",
            [model, decision_id],
        ).fetchall()[0]
        if chained or (head or 0) != sequence - 1:
            raise WorkbenchError(
                f"the chain of {model} moved while decision {decision_id} was made (it is at sequence {head or 0}, "
                f"this record would be {sequence}); nothing was applied: make a new decision"
            )
        now = db_time(utc_now())
        cur.execute("INSERT INTO canary_chain VALUES (?, ?, ?, ?, ?)", [model, sequence, decision_id, record_hash, now])
        cur.execute("DELETE FROM canary_state WHERE model = ?", [model])
        cur.execute(
            "INSERT INTO canary_state VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [model, baseline_version, candidate_version, weight, decision_id, record_hash, killed, now],
        )
        cur.execute("UPDATE decisions SET pending_sync = TRUE WHERE decision_id = ?", [decision_id])

    def mark_synced(self, decision_id: str, mlflow_run_id: str | None) -> None:
        """Record that a decision reached MLflow (as run ``mlflow_run_id``)."""
        self.write(
            "UPDATE decisions SET pending_sync = FALSE, mlflow_run_id = ?, sync_error = NULL WHERE decision_id = ?",
            [mlflow_run_id, decision_id],
        )

    def mark_sync_failed(self, decision_id: str, error: str) -> None:
        """Keep a decision waiting for MLflow, with the error of the last try."""
        self.write(
            "UPDATE decisions SET pending_sync = TRUE, sync_error = ? WHERE decision_id = ?",
            [error[:2000], decision_id],
        )

    def pending_sync(self) -> list[dict[str, Any]]:
        """Decisions waiting for MLflow, oldest first."""
        return self._rows(
            "SELECT decision_id, model, created_at, sync_error FROM decisions WHERE pending_sync ORDER BY created_at"
        )

    def pending_sync_records(self) -> list[dict[str, Any]]:
        """Applied decisions not yet in MLflow, with their stored record and signature, per model in chain order."""
        return self._rows("""SELECT d.decision_id, d.model, d.record, d.signature, c.sequence, d.sync_error
                             FROM decisions d JOIN canary_chain c USING (decision_id)
                             WHERE d.pending_sync ORDER BY d.model, c.sequence""")
