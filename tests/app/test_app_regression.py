"""The app on a regression run (its own small home, no demo): Compare offers predicted vs actual and the residuals
per segment instead of the classifier's curves, its numbers agree with numpy and pandas, a run of quantile models
shows the pinball loss per level and the interval's coverage (as scikit-learn computes them), and Drift shows the
residual drift."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import build_task_home, open_run_page
from regression_helpers import LinearModel, QuantileModel, write_traffic

ROWS = 3000
RUN = "reg_app"
QUANTILE_RUN = "reg_quantiles"


@pytest.fixture(scope="module")
def reg_home(tmp_path_factory):
    """A home with one finished regression run (segment column ``region``), its evaluation and drift report."""
    from workbench.config import load_settings
    from workbench.evaluate.evaluation import evaluate_run
    from workbench.replay.pipeline import ReplayOptions, replay
    from workbench.store import Store

    home = tmp_path_factory.mktemp("regapp") / "home"
    traffic, labels = write_traffic(home.parent / "data", ROWS, seed=5, unlabelled=20)
    models = LinearModel("m", "1", 1.0, "zb"), LinearModel("m", "2", 0.5, "zc")
    build_task_home(home, traffic, labels, "reg", models, RUN, "regression", label_col="y")
    with Store(load_settings(home).db_path) as store:
        quantile_models = QuantileModel("m", "1", 1.0, "zb", spread=2.0), QuantileModel("m", "2", 0.5, "zc")
        replay(store, "reg", *quantile_models, run_id=QUANTILE_RUN, options=ReplayOptions(writers=1))
        evaluate_run(store, QUANTILE_RUN)
    return home, traffic, labels


@pytest.fixture
def app(reg_home, monkeypatch):
    return open_run_page(reg_home[0], monkeypatch, RUN)


def _truth(reg_home) -> pd.DataFrame:
    """The run's labelled rows as the test computes them: y and each model's prediction, with the segment."""
    _, traffic, labels = reg_home
    t, lab = pq.read_table(traffic).to_pandas(), pq.read_table(labels).to_pandas()
    df = t.merge(lab[["request_id", "y"]], on="request_id").dropna(subset=["y"])
    return df.assign(baseline=3 * df.x + 1.0 * df.zb, candidate=3 * df.x + 0.5 * df.zc)


def test_compare_offers_the_regression_sections_only(app):
    at = app("compare")
    control = at.segmented_control(key="wb_compare_section")
    assert control.options == ["Scorecard", "Predicted vs actual", "Latency", "Segments & windows"]
    table = at.table[0].value
    assert {"mae", "rmse", "r2", "bias"} <= set(table.index) and "roc_auc" not in table.index
    assert table.loc["mae", "difference"] == "candidate better"  # lower MAE, interval below zero
    for section in ("Latency", "Segments & windows"):
        control.set_value(section).run()
        assert not at.exception, [e.value for e in at.exception]
    assert not [s for s in at.subheader if "Accuracy" in s.value]  # a classifier's breakdowns are not drawn
    assert set(at.dataframe[0].value["value"]) == {"north", "south"}  # the evaluation's segments, with intervals


def test_predicted_vs_actual_and_residuals_per_segment(app, reg_home):
    from workbench import views_tasks
    from workbench.config import load_settings
    from workbench.store import Store

    at = app("compare")
    at.segmented_control(key="wb_compare_section").set_value("Predicted vs actual").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("plotly_chart")) == 3  # two heat maps and the residuals per segment
    assert at.selectbox(key="wb_reg_segment").value == "region"
    shown = at.dataframe[0].value.set_index("value")

    df = _truth(reg_home)
    for region, g in df.groupby("region"):
        for role in ("baseline", "candidate"):
            resid = g[role] - g.y
            assert shown.loc[region, f"{role} mae"] == pytest.approx(resid.abs().mean(), rel=1e-9)
            assert shown.loc[region, f"{role} bias"] == pytest.approx(resid.mean(), rel=1e-9, abs=1e-12)
        assert shown.loc[region, "rows"] == len(g)

    with Store(load_settings(reg_home[0]).db_path) as store:
        summary = store.app_regression_summary(RUN, 40, ["region"])
    lo, hi = summary["range"]
    edges = np.linspace(lo, hi, 41)
    for role in ("baseline", "candidate"):
        heat = views_tasks.predicted_vs_actual(summary, role, 40)
        clip = np.clip  # values beyond the range count in the edge bins
        expected, _, _ = np.histogram2d(
            clip(df[role], lo, hi - 1e-9 * (hi - lo)), clip(df.y, lo, hi - 1e-9 * (hi - lo)), bins=[edges, edges]
        )
        assert heat["rows"] == len(df) and np.abs(heat["counts"] - expected).sum() <= 4  # bin-edge rounding
        assert np.isnan(heat["log_counts"][heat["counts"] == 0]).all()


def test_drift_page_shows_the_residual_drift(app):
    at = app("drift")
    residual = next(d.value for d in at.dataframe if "model" in d.value.columns)
    assert residual["model"].tolist() == ["baseline", "candidate"]
    assert residual["test"].notna().all() and residual["current_mae"].gt(0).all()
    assert "Residual drift (prediction - y, reference against current)" in [s.value for s in at.subheader]


def test_compare_shows_the_pinball_loss_per_level_and_the_interval_coverage(app, reg_home):
    from sklearn.metrics import mean_pinball_loss

    at = app("compare", QUANTILE_RUN)
    control = at.segmented_control(key="wb_compare_section")
    assert control.options[-1] == "Quantiles"
    assert {"pinball@0.1", "pinball@0.5", "pinball@0.9", "coverage"} <= set(at.table[0].value.index)
    control.set_value("Quantiles").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Central 80% interval (q0.1 to q0.9)" in [s.value for s in at.subheader]
    bars, forest = (json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart"))
    assert bars["xaxis"]["title"]["text"] == "quantile level" and "unit" in bars["yaxis"]["title"]["text"]
    assert forest["yaxis"]["type"] == "category" and forest["yaxis"]["title"]["text"] == "quantile level"
    shown = next(d.value for d in at.dataframe if "level" in d.value.columns).set_index("level")

    df = _truth(reg_home)
    batch = {c: df[c].to_numpy() for c in ("x", "zb", "zc")}
    out = {
        role: QuantileModel("m", v, noise, col, spread=spread).predict(pa.table(batch))
        for role, v, noise, col, spread in (("baseline", "1", 1.0, "zb", 2.0), ("candidate", "2", 0.5, "zc", 1.0))
    }
    for j, q in enumerate((0.1, 0.5, 0.9), start=1):
        for role in ("baseline", "candidate"):
            assert shown.loc[q, role] == pytest.approx(mean_pinball_loss(df.y, out[role][:, j], alpha=q), abs=1e-9)
    coverage = {m.label: m.value for m in at.metric}
    hits = (out["candidate"][:, 1] <= df.y) & (df.y <= out["candidate"][:, 3])
    assert coverage["Nominal coverage"] == "80.0%"
    assert coverage["Candidate coverage"] == f"{hits.mean():.1%}"
