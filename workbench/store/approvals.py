"""Approvals: signed statements by which approvers sign off a stored decision record (its quorum)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from workbench.errors import WorkbenchError
from workbench.store.base import StoreBase


class ApprovalStore(StoreBase):
    """Approval statements (their canonical text, byte for byte), at most one per approver and decision."""

    def save_approval(
        self,
        *,
        approval_id: str,
        decision_id: str,
        approver: str,
        statement_text: str,
        signature: str,
        created_at: datetime,
    ) -> None:
        """Store an approval; refused when ``approver`` already approved ``decision_id`` (checked inside the
        transaction, where writers are serialized: the table has no unique constraint)."""
        with self.transaction() as cur:
            seen = cur.execute(
                "SELECT count(*) FROM approvals WHERE decision_id = ? AND approver = ?", [decision_id, approver]
            ).fetchall()[0][0]
            if seen:
                raise WorkbenchError(f"{approver} has already approved decision {decision_id}")
            cur.execute(
                "INSERT INTO approvals (approval_id, decision_id, approver, statement, signature, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [approval_id, decision_id, approver, statement_text, signature, created_at],
            )

    def approvals(self, decision_id: str) -> list[dict[str, Any]]:
        """The stored approvals of a decision, oldest first."""
        return self._rows(
            "SELECT approval_id, decision_id, approver, statement, signature, created_at FROM approvals "
            "WHERE decision_id = ? ORDER BY created_at, approval_id",
            [decision_id],
        )
