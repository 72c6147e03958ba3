"""The app on a multi-class run (its own small home, no demo): Compare shows each model's confusion matrix (its
counts agree with scikit-learn) and the per-class deltas with their intervals instead of the binary curves, the
Decide and Drift pages open on the run, Drift draws each model's predicted-class distribution per window, and the
app's aggregates judge the predicted classes against the class labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import confusion_matrix, recall_score
from streamlit.testing.v1 import AppTest

from conftest import REPO
from multiclass_helpers import CLASSES, SoftmaxModel, write_traffic

ROWS = 3000
RUN = "mc_app"


@pytest.fixture(scope="module")
def mc_home(tmp_path_factory):
    """A home with one finished multi-class run (segment column ``region``), its evaluation and drift report."""
    from workbench.config import load_settings
    from workbench.drift.report import drift_run
    from workbench.evaluate.evaluation import evaluate_run
    from workbench.ingest.traffic import ingest, ingest_labels
    from workbench.replay.pipeline import ReplayOptions, replay
    from workbench.store import Store

    home = tmp_path_factory.mktemp("mcapp") / "home"
    traffic, labels = write_traffic(home.parent / "data", ROWS, seed=7)
    models = SoftmaxModel("m", "1", 1.0, noise=0.6), SoftmaxModel("m", "2", 2.5, noise=0.2, column="zc")
    with Store(load_settings(home).db_path) as store:
        ingest(store, traffic, "mc")
        store.declare_segments("mc", ["region"])
        ingest_labels(store, labels, "mc", task="multiclass")
        replay(store, "mc", *models, run_id=RUN, options=ReplayOptions(writers=1))
        evaluate_run(store, RUN, segment="region", n_boot=200)
        drift_run(store, RUN)
    return home, traffic, labels, models


@pytest.fixture
def app(mc_home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(mc_home[0]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def open_page(page: str) -> AppTest:
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
        at.query_params.update({"run": RUN})
        at.run()
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_page


def _truth(mc_home) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The true class index of every row and each model's predicted class index, as the test computes them."""
    _, traffic, labels, models = mc_home
    t, lab = pq.read_table(traffic), pq.read_table(labels)
    assert t.column("request_id").to_pylist() == lab.column("request_id").to_pylist()
    y = np.searchsorted(CLASSES, np.array(lab.column("label").to_pylist()))
    return y, {role: m.predict(t).argmax(axis=1) for role, m in zip(("baseline", "candidate"), models, strict=True)}


def _figure(at: AppTest, key: str) -> dict:
    return json.loads(next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key)).proto.spec)


def test_compare_offers_the_multiclass_sections_only(app):
    at = app("compare")
    control = at.segmented_control(key="wb_compare_section")
    assert control.options == ["Scorecard", "Classes", "Latency", "Segments & windows"]  # no ROC/PR, no threshold
    table = at.table[0].value
    assert {"accuracy", "macro_f1", "weighted_recall", "top_2_accuracy"} <= set(table.index)
    assert "roc_auc" not in table.index and "pr_auc" not in table.index
    assert table.loc["accuracy", "difference"] == "candidate better"  # the sharper, less noisy model
    assert not table["difference"].eq("differs (neither direction is better)").any()  # every metric has a direction
    for section in ("Latency", "Segments & windows"):
        control.set_value(section).run()
        assert not at.exception, [e.value for e in at.exception]
    assert not [s for s in at.subheader if "Accuracy" in s.value]  # a binary classifier's breakdowns are not drawn
    assert set(at.dataframe[0].value["value"]) == {"north", "south"}  # the evaluation's segments, with intervals


def test_confusion_matrices_and_per_class_deltas(app, mc_home):
    at = app("compare")
    at.segmented_control(key="wb_compare_section").set_value("Classes").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("plotly_chart")) == 4  # two confusion matrices and two per-class delta plots
    y, preds = _truth(mc_home)
    for role, pred in preds.items():
        want = confusion_matrix(y, pred, labels=range(len(CLASSES)))
        fig = _figure(at, f"mc_cm_{role}")
        heat = fig["data"][0]
        assert heat["x"] == heat["y"] == list(CLASSES)
        assert np.array_equal(np.array(heat["customdata"]), want)  # counts, in the hover
        assert np.allclose(np.array(heat["z"]), want / want.sum(axis=1, keepdims=True), atol=1e-12)  # row shares
        assert fig["layout"]["xaxis"]["title"]["text"] == "predicted class"
        assert fig["layout"]["yaxis"]["title"]["text"] == "true class"

    table = at.dataframe[0].value
    assert len(table) == 4 * len(CLASSES) and set(table["metric"]) == {"precision", "recall", "f1", "fpr"}
    recall = table[table.metric == "recall"].set_index("class")
    for role, pred in preds.items():
        want = recall_score(y, pred, average=None, labels=range(len(CLASSES)))
        got = [float(recall.loc[c, role].split()[0]) for c in CLASSES]
        assert np.allclose(got, want, atol=5e-5)  # shown to 4 decimals
    for metric in ("recall", "f1"):
        dots = _figure(at, f"mc_delta_{metric}")["data"][0]
        assert sorted(dots["y"]) == sorted(CLASSES)
        rows = table[table.metric == metric].set_index("class")
        for cls, colour in zip(dots["y"], dots["marker"]["color"], strict=True):
            text = rows.loc[cls, "difference"]
            assert text in ("candidate better", "baseline better", "no significant difference")
            assert (colour == "#888") == (text == "no significant difference")  # coloured only when significant


def test_class_rows_emphasis_follows_the_interval():
    from workbench import views

    ev = {
        "classes": ["a", "b"],
        "per_class": {r: {"fpr": {"a": {"value": 0.1}, "b": {"value": 0.2}}} for r in ("baseline", "candidate")},
        "per_class_delta": {
            "fpr": {"a": {"value": -0.05, "ci_low": -0.08, "ci_high": -0.01}, "b": {"value": 0.01, "ci_low": -0.02}}
        },
    }
    a, b = views.class_rows(ev, "fpr")
    assert (a["class"], a["significant"], a["improved"]) == ("a", True, True)  # fpr: lower is better
    assert views.difference_text(a) == "candidate better"
    assert (b["significant"], b["improved"], views.difference_text(b)) == (None, None, "")  # no upper bound
    assert views.class_rows(ev, "recall")[0]["delta"] is None
    assert views.class_confusion({"classes": ["a", "b"], "confusion": {"baseline": [[2, 2], [0, 0]]}}, "baseline")[
        "shares"
    ].tolist()[0] == [0.5, 0.5]


@pytest.mark.parametrize("page", ["decide", "drift"])
def test_decide_and_drift_open_on_a_multiclass_run(app, page):
    at = app(page)
    assert not at.error, [e.value for e in at.error]


def test_drift_shows_the_predicted_class_distribution_per_window(app, mc_home):
    from workbench import views

    at = app("drift")
    assert "Prediction drift (predicted-class distribution)" in [s.value for s in at.subheader]
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert not any(k.endswith("score_time") for k in keys)  # no binary score chart
    _, predicted = _truth(mc_home)
    t = pq.read_table(mc_home[1]).to_pandas()
    week = t.event_time.dt.floor("D") - pd.to_timedelta(t.event_time.dt.weekday, unit="D")
    for role in ("baseline", "candidate"):
        fig = _figure(at, f"class_shares_{role}")
        assert [bar["name"] for bar in fig["data"]] == list(CLASSES)
        want = pd.crosstab(week, predicted[role], normalize="index")
        for j, bar in enumerate(fig["data"]):
            assert bar["y"] == pytest.approx(want[j].tolist(), abs=1e-12)
        assert fig["data"][0]["customdata"][0] == int((week == week.min()).sum())  # rows of the first week
    assert views.class_shares({"classes": list(CLASSES), "counts": []}, "week")["baseline"]["keys"] == []


def test_breakdowns_judge_multiclass_predictions_against_class_labels(mc_home):
    from workbench.config import load_settings
    from workbench.store import Store

    y, predicted = _truth(mc_home)
    t = pq.read_table(mc_home[1]).to_pandas()
    with Store(load_settings(mc_home[0]).db_path) as store:
        b = store.app_breakdowns(RUN, ["region"])
        summary = store.app_score_summary(RUN, 10, 4)
    by_region = {g["key"]: g for g in b["region"]}
    for region in ("north", "south"):
        rows = (t.region == region).to_numpy()
        g = by_region[region]
        assert g["labelled"] == rows.sum() and g["positives"] == 0
        for role in ("baseline", "candidate"):
            assert g[f"{role}_correct"] == int((predicted[role][rows] == y[rows]).sum())
    pairs = np.zeros((3, 3, 3), dtype=int)
    for label, bc, cc, n in summary["pairs"]:
        pairs[label, bc, cc] += n
    want = np.zeros_like(pairs)
    np.add.at(want, (y, predicted["baseline"], predicted["candidate"]), 1)
    np.testing.assert_array_equal(pairs, want)
