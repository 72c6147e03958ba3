"""Evaluations: each evaluation of a run, its parameters and result, kept as JSON."""

from __future__ import annotations

import json
from typing import Any

from workbench.store.base import StoreBase, label_source
from workbench.tasks import BINARY


class EvaluationStore(StoreBase):
    """Evaluation results of runs (the rows they are computed from are read through ``RunStore``)."""

    def save_evaluation(self, run_id: str, params: dict, result: dict) -> None:
        """Append an evaluation of a run."""
        self._save_report("evaluations", run_id, params, result)

    def labels_state(self, traffic: str, task: str = BINARY) -> dict[str, Any]:
        """The labels of a traffic set as they are now (the numeric ones for a regression ``task``): their count
        and an order-free digest of (request id, label) pairs, which changes when a label is added, removed or
        changed. (Each pair's hash is hashed again: DuckDB combines ``hash(a, b)`` from the hashes of ``a`` and
        ``b`` in a way the XOR over the rows would take apart, and two labels that swap would cancel out.)"""
        table, column = label_source(task)
        row = self._rows(
            f"SELECT count(*) AS n, coalesce(bit_xor(hash(hash(request_id, {column}))), 0) AS digest FROM {table} "
            "WHERE traffic = ?",
            [traffic],
        )[0]
        n, digest = row["n"], row["digest"]
        return {"rows": int(n), "digest": f"{int(digest):016x}"}

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
