"""Evaluate a replay run: join labels, compute each model's metrics, persist the result.

Each model's metrics use the labelled rows it scored without error, and report that count.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import binary_metrics
from .store import Store


@dataclass(frozen=True)
class ModelEvaluation:
    rows: int
    threshold: float
    metrics: dict


@dataclass(frozen=True)
class EvaluationResult:
    run_id: str
    labeled_rows: int
    label_coverage: float
    models: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"run_id": self.run_id, "labeled_rows": self.labeled_rows, "label_coverage": self.label_coverage}
        for role, ev in self.models.items():
            out[role] = ev.metrics
            out.setdefault("rows", {})[role] = ev.rows
            out.setdefault("thresholds", {})[role] = ev.threshold
        return out


def evaluate_run(store: Store, run_id: str) -> EvaluationResult:
    """Metrics of both models of ``run_id`` on its labelled rows; stored in DuckDB and returned."""
    run = store.require_run(run_id)
    paired = store.paired_labeled(run_id)
    y = paired.column("label").to_numpy()
    models = {}
    for role in ("baseline", "candidate"):
        score = paired.column(f"{role}_score").to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(score)
        threshold = float(run[role].get("threshold", 0.5))
        models[role] = ModelEvaluation(int(ok.sum()), threshold, binary_metrics(y[ok], score[ok], threshold))
    total = int(run["rows_done"] or 0)
    result = EvaluationResult(run_id, len(y), round(len(y) / total, 6) if total else 0.0, models)
    store.save_evaluation(run_id, {}, result.to_dict())
    return result
