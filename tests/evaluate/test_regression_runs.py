"""A regression run end to end in an in-memory store: numeric labels, the replay, the stored evaluation
(parity with scikit-learn), and the binary path left as it was."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    median_absolute_error,
    r2_score,
)

from regression_helpers import LinearModel, write_traffic
from workbench.evaluate.evaluation import evaluate_run
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store

ROWS, UNLABELLED = 1500, 40


@pytest.fixture(scope="module")
def regression_store(tmp_path_factory):
    traffic, labels = write_traffic(tmp_path_factory.mktemp("reg"), ROWS, seed=3, unlabelled=UNLABELLED)
    with Store(":memory:") as store:
        ingest(store, traffic, "reg")
        binary = ingest_labels(store, labels, "reg")
        numeric = ingest_labels(store, labels, "reg", label_col="y", task="regression")
        res = replay(
            store,
            "reg",
            LinearModel("m", "1", 2.0, "zb"),
            LinearModel("m", "2", 0.5, "zc"),
            run_id="reg_run",
            options=ReplayOptions(writers=1),
        )
        yield store, binary, numeric, res


def test_numeric_labels_are_stored_apart_and_every_row_is_counted(regression_store):
    store, binary, numeric, _ = regression_store
    assert (binary.labels, binary.quarantined) == (ROWS, 0)
    assert (numeric.rows_read, numeric.labels, numeric.quarantined) == (ROWS, ROWS - UNLABELLED, UNLABELLED)
    assert numeric.reasons == {"null:y": UNLABELLED}
    assert store.labels_state("reg", "regression")["rows"] == ROWS - UNLABELLED
    assert store.labels_state("reg")["rows"] == ROWS


def test_the_run_records_its_task_and_no_classes(regression_store):
    store, _, _, res = regression_store
    assert res.task == "regression" and res.to_dict()["task"] == "regression"
    assert store.require_run("reg_run")["meta"]["task"] == "regression"
    classes = store._rows(
        "SELECT count(baseline_class) AS b, count(candidate_class) AS c FROM predictions WHERE run_id = 'reg_run'"
    )[0]
    assert classes == {"b": 0, "c": 0}


def test_stored_evaluation_matches_scikit_learn(regression_store):
    store, *_ = regression_store
    ev = evaluate_run(store, "reg_run", segment="region").to_dict()
    assert store.latest_evaluation("reg_run") == ev
    table = store.evaluation_rows("reg_run")
    table = table.filter(table.column("label").is_valid())  # every replayed row: the labelled ones here
    y = table.column("label").to_numpy()
    pred = {r: table.column(f"{r}_score").to_numpy() for r in ("baseline", "candidate")}
    assert ev["task"] == "regression" and ev["labeled_rows"] == ROWS - UNLABELLED
    assert ev["label_coverage"] == pytest.approx((ROWS - UNLABELLED) / ROWS, abs=1e-6)
    for r, p in pred.items():
        got = ev[r]
        assert got["mae"]["value"] == pytest.approx(mean_absolute_error(y, p), rel=1e-10)
        assert got["mse"]["value"] == pytest.approx(mean_squared_error(y, p), rel=1e-10)
        assert got["rmse"]["value"] == pytest.approx(np.sqrt(mean_squared_error(y, p)), rel=1e-10)
        assert got["median_ae"]["value"] == pytest.approx(median_absolute_error(y, p), rel=1e-10)
        assert got["mape"]["value"] == pytest.approx(mean_absolute_percentage_error(y, p), rel=1e-10)
        assert got["r2"]["value"] == pytest.approx(r2_score(y, p), rel=1e-10)
        assert got["mae"]["ci_low"] < got["mae"]["value"] < got["mae"]["ci_high"]
    delta = ev["delta"]["mae"]
    expected = mean_absolute_error(y, pred["candidate"]) - mean_absolute_error(y, pred["baseline"])
    assert delta["value"] == pytest.approx(expected, rel=1e-10)
    assert delta["ci_high"] < 0 and delta["p_value"] < 1e-6  # the candidate's errors are a quarter the size
    assert set(ev["segments"]["region"]) == {"north", "south"}
    assert sum(s["rows"] for s in ev["segments"]["region"].values()) == ROWS - UNLABELLED
    assert ev["errors"]["candidate"]["count"] == 0 and ev["latency"]["baseline"]["p50"] is not None


def test_the_evaluation_is_saved_with_its_task(regression_store):
    store, *_ = regression_store
    ev = evaluate_run(store, "reg_run").to_dict()
    saved = store.latest_evaluation("reg_run")
    assert saved["task"] == "regression" and saved["delta"]["mae"] == ev["delta"]["mae"]
    assert saved["coverage"]["labels"] == store.labels_state("reg", "regression")


def test_a_binary_run_on_the_same_traffic_still_uses_the_binary_labels(regression_store):
    from conftest import TinyModel

    store, *_ = regression_store
    replay(store, "reg", TinyModel("b"), TinyModel("c"), run_id="bin_run", options=ReplayOptions(writers=1))
    ev = evaluate_run(store, "bin_run").to_dict()
    assert "task" not in ev and ev["labeled_rows"] == ROWS
    assert {"accuracy", "roc_auc"} <= set(ev["delta"])
