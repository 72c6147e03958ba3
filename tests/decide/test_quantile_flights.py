"""A real quantile model end to end: HistGradientBoosting quantile regressors (levels 0.1, 0.5, 0.9) of the NYC
flights' arrival delay, wrapped as MLflow pyfuncs and loaded through the workbench's loader, replayed on the
later months' traffic, evaluated (pinball loss as scikit-learn's) and judged under a pinball-loss gate."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_pinball_loss

from regression_helpers import save_quantile_model
from workbench.decide.canary import preview_decision
from workbench.decide.policy import parse_policy
from workbench.evaluate.evaluation import evaluate_run
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.models import load_predictor
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store

LEVELS = (0.1, 0.5, 0.9)
POLICY = {
    "metrics": [
        {"metric": "pinball", "min_relative_change": -0.02, "critical": True},
        {"metric": "coverage", "min_absolute_change": -0.05},
    ],
    "min_labeled_rows": 1000,
    "min_segment_rows": 1000,
}


@pytest.fixture(scope="module")
def flights_run(tmp_path_factory):
    from pipelines.prepare_flights import NULLABLE, TARGET, build
    from pipelines.train_models import train_regressor

    tmp = tmp_path_factory.mktemp("qflights")
    df = build(limit=20_000)
    train = df[(df["month"] <= 6) & df[TARGET].notna()].reset_index(drop=True)
    later = df[df["month"] >= 7].reset_index(drop=True)
    paths = {}
    for role, months, iters, metadata in (
        ("baseline", 2, 20, {"task": "regression", "quantiles": list(LEVELS)}),
        ("candidate", 6, 100, {"task": "regression"}),  # its levels come from its output signature
    ):
        part = train[train["month"] <= months]
        fitted = {q: train_regressor(part, "quantile", seed=0, quantile=q, max_iter=iters) for q in LEVELS}
        features = fitted[0.5][1]
        models = {q: m for q, (m, _) in fitted.items()}
        paths[role] = save_quantile_model(tmp / role, models, features, part.head(5), metadata)
    traffic = later.drop(columns=["label", TARGET, "delay_band", "label_time"])
    traffic.to_parquet(tmp / "traffic.parquet", index=False)
    labels = later.loc[later[TARGET].notna(), ["request_id", TARGET]]
    labels.to_parquet(tmp / "labels.parquet", index=False)
    store = Store(":memory:")
    ingested = ingest(store, tmp / "traffic.parquet", "flights", nullable=NULLABLE)
    ingest_labels(store, tmp / "labels.parquet", "flights", label_col=TARGET, task="regression")
    predictors = {r: load_predictor(p) for r, p in paths.items()}
    for version, pred in enumerate(predictors.values(), start=1):  # as if registered as versions 1 and 2
        pred.ref = replace(pred.ref, name="flight-delay-quantiles", version=str(version))
    result = replay(
        store, "flights", predictors["baseline"], predictors["candidate"], run_id="qf", options=ReplayOptions()
    )
    yield store, result, predictors, ingested.rows
    store.close()


def test_the_pyfuncs_declare_their_levels_and_every_row_is_scored_or_failed_with_a_reason(flights_run):
    store, result, predictors, ingested = flights_run
    assert {r: p.ref.quantiles for r, p in predictors.items()} == {"baseline": LEVELS, "candidate": LEVELS}
    assert result.task == "regression" and result.rows == ingested
    assert store.require_run("qf")["meta"]["quantiles"] == list(LEVELS)
    counts = (
        store.cursor()
        .execute(
            """SELECT count(*), count(pq.candidate_quantiles), count(p.candidate_error),
                  count(*) FILTER (WHERE p.candidate_error LIKE 'quantiles cross:%')
           FROM predictions p LEFT JOIN prediction_quantiles pq USING (run_id, _row) WHERE p.run_id = 'qf'"""
        )
        .fetchall()[0]
    )
    rows, stored, failed, crossed = counts
    assert rows == ingested and stored + failed == rows and crossed == failed  # each row scored or failed


def test_the_evaluation_matches_scikit_learn_and_the_pinball_gate_judges_it(flights_run):
    store, result, predictors, _ = flights_run
    ev = evaluate_run(store, "qf", n_boot=200).to_dict()
    batch = (
        store.cursor()
        .sql(
            """SELECT t.*, l.value AS y FROM traffic_flights t
               LEFT JOIN label_values l ON l.traffic = 'flights' AND l.request_id = t.request_id ORDER BY t._row"""
        )
        .to_arrow_table()
    )
    out = {r: p.predict(batch) for r, p in predictors.items()}
    y = batch.column("y").to_numpy(zero_copy_only=False).astype(np.float64)
    ok = np.isfinite(y) & np.all([np.all(np.diff(o[:, 1:], axis=1) >= 0, axis=1) for o in out.values()], axis=0)
    for j, q in enumerate(LEVELS, start=1):
        for role in ("baseline", "candidate"):
            own = np.isfinite(y) & np.all(np.diff(out[role][:, 1:], axis=1) >= 0, axis=1)
            want = mean_pinball_loss(y[own], out[role][own, j], alpha=q)
            assert ev[role][f"pinball@{q:g}"]["value"] == pytest.approx(want, rel=0, abs=1e-9)
    p = preview_decision(store, "qf", parse_policy(POLICY))
    gate = next(c for c in p.scorecard.checks if c.gate == "metric.pinball.min_relative_change")
    mean_loss = {
        r: np.mean([mean_pinball_loss(y[ok], out[r][ok, j], alpha=q) for j, q in enumerate(LEVELS, start=1)])
        for r in ("baseline", "candidate")
    }
    assert gate.baseline == pytest.approx(mean_loss["baseline"], rel=1e-9)
    assert gate.candidate == pytest.approx(mean_loss["candidate"], rel=1e-9)
    assert gate.rows == int(ok.sum())
    assert gate.outcome in ("pass", "fail", "inconclusive") and gate.reason
    print(  # the numbers behind the decision, for the record
        pd.Series(
            {"rows": gate.rows, "baseline": gate.baseline, "candidate": gate.candidate, "outcome": gate.outcome}
        ).to_dict(),
        p.scorecard.verdict,
    )
