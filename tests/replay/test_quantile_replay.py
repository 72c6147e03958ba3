"""Replay of quantile regression models: each model's quantiles stored per request beside its prediction, the
run's levels recorded, crossing quantiles and a wrong number of columns failing their rows with a reason (the
counts reconcile), and models of different levels replayed with their predictions only, the reason recorded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from regression_helpers import LinearModel, QuantileModel, write_traffic
from workbench import WorkbenchError
from workbench.ingest.traffic import ingest
from workbench.replay.models import ModelRef, PyfuncPredictor, quantile_matrix
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store

ROWS = 800
LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture()
def store(tmp_path):
    traffic, _ = write_traffic(tmp_path, ROWS, seed=2)
    with Store(":memory:") as s:
        ingest(s, traffic, "t")
        yield s


def _stored(store: Store, run_id: str) -> pa.Table:
    return (
        store.cursor()
        .execute(
            """SELECT t.x, t.zb, t.zc, p.baseline_score, p.baseline_error, p.candidate_score, p.candidate_error,
                      pq.baseline_quantiles, pq.candidate_quantiles
               FROM predictions p JOIN traffic_t t USING (_row)
               LEFT JOIN prediction_quantiles pq ON pq.run_id = p.run_id AND pq._row = p._row
               WHERE p.run_id = ? ORDER BY p._row""",
            [run_id],
        )
        .to_arrow_table()
    )


def test_each_model_stores_its_prediction_and_quantiles(store):
    base, cand = QuantileModel("m", "1", 1.0, "zb", spread=2.0), QuantileModel("m", "2", 0.3, "zc", spread=0.5)
    r = replay(store, "t", base, cand, run_id="q", options=ReplayOptions(batch_size=128, writers=2))
    assert (r.task, r.rows, r.baseline_errors, r.candidate_errors) == ("regression", ROWS, 0, 0)
    run = store.require_run("q")
    assert run["meta"]["quantiles"] == list(LEVELS) and run["candidate"]["quantiles"] == list(LEVELS)
    got = _stored(store, "q")
    assert got.num_rows == ROWS
    for role, model in (("baseline", base), ("candidate", cand)):
        want = model.predict(pa.table({c: got.column(c) for c in ("x", "zb", "zc")}))
        np.testing.assert_array_equal(got.column(f"{role}_score").to_numpy(), want[:, 0])
        np.testing.assert_array_equal(np.array(got.column(f"{role}_quantiles").to_pylist()), want[:, 1:])


def test_crossing_quantiles_and_a_wrong_width_fail_their_rows_with_a_reason(store):
    base = QuantileModel("m", "1", 1.0, "zb", cross="zc")
    cand = QuantileModel("m", "2", 1.0, "zb", columns=3)
    r = replay(store, "t", base, cand, run_id="bad", options=ReplayOptions(batch_size=200, writers=1))
    got = _stored(store, "bad")
    crossed = got.column("zc").to_numpy() > 1.5
    assert 0 < crossed.sum() < ROWS
    assert (r.rows, r.baseline_errors, r.candidate_errors) == (ROWS, int(crossed.sum()), ROWS)
    counts = store.prediction_counts("bad")
    assert counts["baseline"] == {"rows": ROWS, "errors": int(crossed.sum())}
    errors = got.column("baseline_error").to_pylist()
    for i in np.flatnonzero(crossed)[:5]:
        assert errors[i].startswith("quantiles cross: q0.5 = ") and "is below q0.1 = " in errors[i]
    assert all(e is None for e in np.array(errors, dtype=object)[~crossed])
    base_q = got.column("baseline_quantiles")
    assert base_q.null_count == crossed.sum() and got.column("baseline_score").null_count == crossed.sum()
    assert set(got.column("candidate_error").to_pylist()) == {
        "ValueError: model returned output of shape (1, 3) for 1 rows, a prediction and 3 quantiles"
    }
    assert got.column("candidate_quantiles").null_count == ROWS


def test_models_of_different_levels_keep_their_predictions_and_the_run_says_why(store):
    base, cand = LinearModel("m", "1", 1.0, "zb"), QuantileModel("m", "2", 0.5, "zc")
    r = replay(store, "t", base, cand, run_id="mixed", options=ReplayOptions(writers=1))
    assert (r.rows, r.baseline_errors, r.candidate_errors) == (ROWS, 0, 0)
    meta = store.require_run("mixed")["meta"]
    assert "quantiles" not in meta
    assert meta["quantiles_skipped"] == (
        "quantiles not stored: the two models give different quantile levels "
        "(the baseline gives none; the candidate gives [0.1, 0.5, 0.9])"
    )
    got = _stored(store, "mixed")
    np.testing.assert_array_equal(
        got.column("candidate_score").to_numpy(), cand.predict(pa.table({"x": got["x"], "zc": got["zc"]}))[:, 0]
    )
    assert got.column("candidate_quantiles").null_count == ROWS  # nothing in prediction_quantiles


def test_a_pyfunc_output_gives_its_quantiles_by_column_name():
    levels = (0.1, 0.9)
    frame = pd.DataFrame({"q0.9": [3.0, 4.0], "prediction": [2.0, 3.0], "q0.1": [1.0, 2.0], "other": [0, 0]})
    np.testing.assert_array_equal(quantile_matrix(frame, levels), [[2.0, 1.0, 3.0], [3.0, 2.0, 4.0]])
    with pytest.raises(ValueError, match="model output lacks column.s. q0.9 .it has prediction, q0.1."):
        quantile_matrix(frame[["prediction", "q0.1"]], levels)

    class Pyfunc:
        def predict(self, X):
            return frame.iloc[: len(X)]

    ref = ModelRef("m", None, None, None, "pyfunc", ("x",), 0.5, task="regression", quantiles=levels)
    out = PyfuncPredictor(ref, Pyfunc()).predict(pa.table({"x": [1.0, 2.0]}))
    assert out.shape == (2, 3)


@pytest.mark.parametrize(
    ("levels", "match"),
    [([0.1, 1.0], "strictly between 0 and 1"), ([0.5, 0.5], "distinct"), ("many", "list of numbers")],
    ids=["level-one", "repeated", "not-numbers"],
)
def test_bad_declared_levels_are_a_clear_error(levels, match):
    from workbench.replay.models import check_quantiles

    with pytest.raises(WorkbenchError, match=match):
        check_quantiles(levels, "model metadata's")
