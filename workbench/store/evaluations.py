"""Evaluations: each evaluation of a run, its parameters and result, kept as JSON."""

from __future__ import annotations

from typing import Any

from workbench.store.base import StoreBase


class EvaluationStore(StoreBase):
    """Evaluation results of runs (the rows they are computed from are read through ``RunStore``)."""

    def save_evaluation(self, run_id: str, params: dict, result: dict) -> None:
        """Append an evaluation of a run."""
        self._save_report("evaluations", run_id, params, result)

    def labels_state(self, traffic: str) -> dict[str, Any]:
        """The labels of a traffic set as they are now: their count and an order-free digest of (request id,
        label) pairs, which changes when a label is added, removed or changed."""
        row = self._rows(
            "SELECT count(*) AS n, coalesce(bit_xor(hash(request_id, label)), 0) AS digest FROM labels "
            "WHERE traffic = ?",
            [traffic],
        )[0]
        n, digest = row["n"], row["digest"]
        return {"rows": int(n), "digest": f"{int(digest):016x}"}

    def latest_evaluation(self, run_id: str) -> dict[str, Any] | None:
        """The result of a run's latest evaluation, or None."""
        return self._latest_report("evaluations", run_id)
