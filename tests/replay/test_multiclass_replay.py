"""Replay of multi-class classifiers: each model's class and class probabilities stored per request, the run's
classes recorded, models of different class sets refused, a wrong output width an error on its rows, and
class labels (text or numbers) ingested with unknown classes quarantined."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multiclass_helpers import CLASSES, SoftmaxModel, write_traffic
from workbench import WorkbenchError
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store


@pytest.fixture()
def store(tmp_path):
    traffic, labels = write_traffic(tmp_path, 600, seed=1, unknown=4)
    with Store(":memory:") as s:
        ingest(s, traffic, "t")
        s.labels_path = labels
        yield s


def test_each_model_stores_its_class_and_probabilities(store):
    base, cand = SoftmaxModel("m", "1", 1.0, noise=0.5), SoftmaxModel("m", "2", 3.0)
    r = replay(store, "t", base, cand, run_id="r", options=ReplayOptions(batch_size=100, writers=2))
    assert (r.task, r.rows, r.baseline_errors, r.candidate_errors) == ("multiclass", 600, 0, 0)
    run = store.require_run("r")
    assert run["meta"]["classes"] == list(CLASSES) and run["candidate"]["classes"] == list(CLASSES)
    got = (
        store.cursor()
        .sql(
            """SELECT t.x, t.zb, p.baseline_class, p.baseline_score, pp.baseline_proba, pp.candidate_proba
           FROM predictions p JOIN traffic_t t USING (_row)
           JOIN prediction_probabilities pp ON pp.run_id = p.run_id AND pp._row = p._row
           WHERE p.run_id = 'r' ORDER BY p._row"""
        )
        .to_arrow_table()
    )
    assert got.num_rows == 600
    batch = pa.table({"x": got.column("x"), "zb": got.column("zb")})
    want = base.predict(batch)
    proba = np.array(got.column("baseline_proba").to_pylist())
    np.testing.assert_allclose(proba, want, rtol=0, atol=0)
    np.testing.assert_array_equal(got.column("baseline_class").to_numpy(), want.argmax(axis=1))
    np.testing.assert_array_equal(got.column("baseline_score").to_numpy(), want.max(axis=1))
    np.testing.assert_allclose(np.array(got.column("candidate_proba").to_pylist()), cand.predict(batch), atol=0)


def test_a_wrong_number_of_probabilities_fails_its_rows_with_a_reason(store):
    r = replay(store, "t", SoftmaxModel("m", "1", 1.0), SoftmaxModel("m", "2", 1.0, width=2), run_id="w")
    assert (r.rows, r.baseline_errors, r.candidate_errors) == (600, 0, 600)
    errors = (
        store.cursor()
        .sql("SELECT DISTINCT candidate_error, candidate_class IS NULL FROM predictions WHERE run_id = 'w'")
        .fetchall()
    )
    assert errors == [("ValueError: model returned output of shape (1, 2) for 1 rows and 3 classes", True)]
    nulls = (
        store.cursor()
        .sql("SELECT count(*) FROM prediction_probabilities WHERE run_id = 'w' AND candidate_proba IS NULL")
        .fetchall()[0][0]
    )
    assert nulls == 600


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        (("high", "low", "medium"), r"different classes \(baseline \['high', 'low', 'mid'\], candidate"),
        (("low", "mid", "high"), "in another order"),
    ],
    ids=["other-class", "other-order"],
)
def test_models_of_different_class_sets_are_refused(store, classes, match):
    with pytest.raises(WorkbenchError, match=match):
        replay(store, "t", SoftmaxModel("m", "1", 1.0), SoftmaxModel("m", "2", 1.0, classes=classes), run_id="c")
    assert store.get_run("c") is None


def test_class_labels_are_text_and_unknown_classes_are_quarantined(store, tmp_path):
    got = ingest_labels(store, store.labels_path, "t", task="multiclass", classes=["low", "mid", "high"])
    assert (got.rows_read, got.labels, got.quarantined) == (600, 596, 4)
    assert got.reasons == {"unknown_class:label": 4}
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(
        pa.table({"request_id": ["m1-000000", "m1-000001", "m1-000002", "m1-000003"], "label": [2.0, 1.0, 0.5, None]}),
        numbers,
    )
    got = ingest_labels(store, numbers, "t", task="multiclass")
    assert (got.labels, got.reasons) == (2, {"null:label": 1, "type:label": 1})
    rows = store.cursor().sql("SELECT label FROM label_classes WHERE request_id IN ('m1-000000', 'm1-000001')")
    assert sorted(r[0] for r in rows.fetchall()) == ["1", "2"]
    with pytest.raises(WorkbenchError, match="--classes applies to multi-class labels only"):
        ingest_labels(store, numbers, "t", classes=["a"])
