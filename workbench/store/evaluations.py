"""Evaluations: each evaluation of a run, its parameters and result, kept as JSON."""

from __future__ import annotations

import json
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

    def evaluation_made_with(self, run_id: str, params: dict) -> dict[str, Any] | None:
        """The result of a run's latest evaluation when it was made with ``params`` (each of them recorded with
        the same value: its options and the state of the data it read), else None."""
        rows = (
            self.cursor()
            .execute(
                "SELECT params, result FROM evaluations WHERE run_id = ? ORDER BY created_at DESC LIMIT 1", [run_id]
            )
            .fetchall()
        )
        if not rows:
            return None
        made, wanted = json.loads(rows[0][0]), json.loads(json.dumps(params))
        return json.loads(rows[0][1]) if all(k in made and made[k] == v for k, v in wanted.items()) else None
