"""Evaluations: each evaluation of a run, its parameters and result, kept as JSON."""

from __future__ import annotations

from typing import Any

from workbench.store.base import StoreBase


class EvaluationStore(StoreBase):
    """Evaluation results of runs (the rows they are computed from are read through ``RunStore``)."""

    def save_evaluation(self, run_id: str, params: dict, result: dict) -> None:
        """Append an evaluation of a run."""
        self._save_report("evaluations", run_id, params, result)

    def latest_evaluation(self, run_id: str) -> dict[str, Any] | None:
        """The result of a run's latest evaluation, or None."""
        return self._latest_report("evaluations", run_id)
