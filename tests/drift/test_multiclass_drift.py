"""Drift of a multi-class run: prediction drift on the predicted-class distribution (a categorical test per
model, and between the two models with their class disagreement), concept drift on the misclassification
stream; calibration and CBPE are for binary classifiers only and say so."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from multiclass_helpers import SoftmaxModel, write_traffic
from workbench.drift.report import drift_run
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import replay
from workbench.store import Store

ROWS = 3000


def test_the_predicted_class_distribution_drifts_when_the_traffic_moves(tmp_path):
    traffic, labels = write_traffic(tmp_path, ROWS, seed=9)
    t = pq.read_table(traffic)
    x = t.column("x").to_numpy().copy()
    x[ROWS // 2 :] += 1.5  # the second half of the traffic: far more "high" requests
    t = t.set_column(t.schema.get_field_index("x"), "x", pa.array(x))
    pq.write_table(t, traffic)
    with Store(":memory:") as store:
        ingest(store, traffic, "t")
        ingest_labels(store, labels, "t", task="multiclass")
        base, cand = SoftmaxModel("m", "1", 2.0, 0.5), SoftmaxModel("m", "2", 2.0, 0.5, "zc")
        replay(store, "t", base, cand, run_id="r")
        d = drift_run(store, "r").to_dict()
    pred = d["prediction_drift"]
    for role in ("baseline", "candidate"):
        assert pred[role]["kind"] == "categorical" and pred[role]["drifted"], pred[role]
    paired = pred["baseline_vs_candidate"]
    b, c = base.predict(t).argmax(axis=1), cand.predict(t).argmax(axis=1)
    current = np.arange(ROWS) >= ROWS // 5  # the default reference: the earliest 20 % by event time
    assert paired["rows"] == current.sum()
    assert abs(paired["class_disagreement"] - np.mean(b[current] != c[current])) <= 1e-9
    concept = d["concept_drift"]
    assert concept["rows"] == ROWS and concept["stream"].startswith("per-request error")
    y = np.searchsorted(["high", "low", "mid"], pq.read_table(labels).column("label").to_numpy(zero_copy_only=False))
    assert abs(concept["error_rate"] - np.mean(b != y)) <= 1e-9
    calibration = d["calibration_drift"]
    assert calibration["available"] is False and "binary classifiers only" in calibration["reason"]
