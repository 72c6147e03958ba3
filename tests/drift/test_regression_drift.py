"""Drift of a regression run: residual drift against scipy and Evidently, the concept detector on the absolute
errors (a planted rise is found, a steady stream stays quiet), and what a regression report leaves out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from regression_helpers import LinearModel
from workbench.drift.concept import PageHinkley, page_hinkley
from workbench.drift.report import drift_run
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store

ROWS, CHANGE_AT, UNLABELLED = 4000, 2500, 30
T0 = pd.Timestamp("2026-03-01")


def regression_run(folder, store: Store, change: bool, run_id: str) -> dict[str, np.ndarray]:
    """Hourly traffic; y = 3 x + N(0, 1); the baseline predicts 3 x + 0.5 zb, the candidate 3 x + 0.5 zc, and
    with ``change`` zc's spread triples from row CHANGE_AT (the candidate's errors grow). The last UNLABELLED
    requests have no label. Returns y and each model's prediction per row."""
    rng = np.random.default_rng(31)
    i = np.arange(ROWS)
    x, zb = rng.standard_normal(ROWS), rng.standard_normal(ROWS)
    zc = rng.standard_normal(ROWS) * np.where(change & (i >= CHANGE_AT), 3.0, 1.0)
    y = 3 * x + rng.standard_normal(ROWS)
    ids = [f"r{k:05d}" for k in i]
    times = pa.array((T0 + pd.to_timedelta(i, unit="h")).to_numpy(), pa.timestamp("us"))
    pq.write_table(pa.table({"request_id": ids, "event_time": times, "x": x, "zb": zb, "zc": zc}), folder / "t.parquet")
    pq.write_table(
        pa.table({"request_id": ids[: ROWS - UNLABELLED], "y": y[: ROWS - UNLABELLED]}), folder / "labels.parquet"
    )
    ingest(store, folder / "t.parquet", "rg")
    ingest_labels(store, folder / "labels.parquet", "rg", label_col="y", time_col=None, task="regression")
    models = LinearModel("m", "1", 0.5, "zb"), LinearModel("m", "2", 0.5, "zc")
    replay(store, "rg", *models, run_id=run_id, options=ReplayOptions(writers=1))
    return {"y": y, "baseline": 3 * x + 0.5 * zb, "candidate": 3 * x + 0.5 * zc}


@pytest.fixture(scope="module")
def changed(tmp_path_factory):
    with Store(":memory:") as store:
        truth = regression_run(tmp_path_factory.mktemp("rg"), store, True, "rg_run")
        yield store, truth, drift_run(store, "rg_run").to_dict()


def _sides(truth: dict, role: str) -> tuple[np.ndarray, np.ndarray]:
    """A model's residuals on the default reference (the earliest 20% by time) and on the labelled rest."""
    resid = truth[role] - truth["y"]
    k = ROWS // 5
    return resid[:k], resid[k : ROWS - UNLABELLED]


def test_residual_drift_matches_scipy_ks(changed):
    _, truth, d = changed
    for role, drifted in (("baseline", False), ("candidate", True)):
        ref, cur = _sides(truth, role)
        got = d["residual_drift"][role]
        assert got["available"] and got["test"] == "ks"  # Evidently's default with at most 1000 reference rows
        assert (got["reference_rows"], got["current_rows"]) == (len(ref), len(cur))
        assert got["statistic"] == pytest.approx(stats.ks_2samp(ref, cur).pvalue, abs=1e-12)
        assert got["drifted"] is drifted
        assert got["reference_bias"] == pytest.approx(ref.mean(), abs=1e-12)
        assert got["current_mae"] == pytest.approx(np.abs(cur).mean(), abs=1e-12)


def test_residual_drift_with_a_chosen_test_matches_evidently(changed):
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    store, truth, _ = changed
    d = drift_run(store, "rg_run", tests={"residual": "wasserstein"}, thresholds={"residual": 0.2}).to_dict()
    ref, cur = _sides(truth, "candidate")
    got = d["residual_drift"]["candidate"]
    assert got["statistic"] == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref), rel=1e-9)
    snap = (
        Report([DataDriftPreset(method="wasserstein", threshold=0.2)])
        .run(Dataset.from_pandas(pd.DataFrame({"residual": cur})), Dataset.from_pandas(pd.DataFrame({"residual": ref})))
        .dict()
    )
    value = next(m["value"] for m in snap["metrics"] if m["config"]["type"].endswith("ValueDrift"))
    assert got["statistic"] == pytest.approx(float(value), rel=1e-9) and got["drifted"] is bool(value >= 0.2)
    assert d["params"]["tests"] == {"residual": "wasserstein"}


def test_concept_detector_runs_on_the_absolute_errors(changed):
    _, truth, d = changed
    concept = d["concept_drift"]
    assert not concept["detected"] and concept["rows"] == ROWS - UNLABELLED  # the baseline's errors are steady
    cand = concept["candidate"]
    assert cand["detected"] and cand["detector"] == "page_hinkley" and "absolute error" in cand["stream"]
    change = pd.Timestamp(cand["change_point"].removesuffix("Z"))
    assert abs((change - (T0 + pd.Timedelta(hours=CHANGE_AT))) / pd.Timedelta(hours=1)) <= 50
    # the same alarms from the stream rebuilt here: each absolute error's mid-rank percentile in the reference's
    err = np.abs(truth["candidate"] - truth["y"])[: ROWS - UNLABELLED]
    ref = np.sort(err[: ROWS // 5])
    pit = (np.searchsorted(ref, err, "left") + np.searchsorted(ref, err, "right")) / (2 * len(ref))
    first = page_hinkley(pit, PageHinkley())[0]
    assert cand["change_point"].startswith(str(T0 + pd.Timedelta(hours=first.change_index))[:13].replace(" ", "T"))
    assert cand["delay_rows"] == first.alarm_index - first.change_index
    assert cand["mae"] == pytest.approx(err.mean(), abs=1e-12)
    assert cand["mae_before"] == pytest.approx(err[: first.change_index].mean(), abs=1e-12)


def test_a_steady_regression_run_stays_quiet_and_drops_classifier_checks(tmp_path):
    with Store(":memory:") as store:
        regression_run(tmp_path, store, False, "steady")
        d = drift_run(store, "steady").to_dict()
    assert not d["concept_drift"]["detected"] and not d["concept_drift"]["candidate"]["detected"]
    assert not d["residual_drift"]["baseline"]["drifted"] and not d["residual_drift"]["candidate"]["drifted"]
    assert d["calibration_drift"]["available"] is False and "regression" in d["calibration_drift"]["reason"]
    assert d["estimated_performance"]["baseline"]["available"] is False
    assert "class_disagreement" not in d["prediction_drift"]["baseline_vs_candidate"]
    assert d["prediction_drift"]["baseline_vs_candidate"]["rows"] == ROWS - ROWS // 5
