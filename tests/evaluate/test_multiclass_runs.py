"""Multi-class runs end to end in memory: replay two multi-class models, ingest class labels, and evaluate the
stored run; every value matches scikit-learn on the same rows (1e-9), labels of unknown classes are counted
and left out, failed rows are counted by reason, and segments and windows are compared too."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import sklearn.metrics as skm
from statsmodels.stats.contingency_tables import mcnemar

from multiclass_helpers import CLASSES, SoftmaxModel, write_traffic
from workbench.evaluate.evaluation import evaluate_run
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import replay
from workbench.store import Store

ROWS = 3000
UNKNOWN = 7


class Flaky(SoftmaxModel):
    """Fails every row whose zb is above 2 (about 2 % of them)."""

    def predict(self, batch: pa.Table) -> np.ndarray:
        if (batch.column("zb").to_numpy() > 2).any():
            raise ValueError("zb out of range")
        return super().predict(batch)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    traffic, labels = write_traffic(tmp_path_factory.mktemp("mc"), ROWS, seed=3, unknown=UNKNOWN)
    with Store(":memory:") as store:
        ingest(store, traffic, "t")
        ingest_labels(store, labels, "t", task="multiclass")
        base = SoftmaxModel("m", "1", 1.0, noise=0.6)
        cand = Flaky("m", "2", 2.5, noise=0.2)
        replay(store, "t", base, cand, run_id="r")
        t = pa.Table.from_batches(store.traffic_batches("t", ["x", "zb", "zc", "region", "event_time"], 100_000))
        yield store, t, base, cand


def test_the_evaluation_matches_sklearn_on_the_stored_rows(run):
    store, t, base, cand = run
    ev = evaluate_run(store, "r").to_dict()
    json.dumps(ev, allow_nan=False)
    labels = store.cursor().sql("SELECT request_id, label FROM label_classes").to_arrow_table()
    assert t.num_rows == ROWS
    order = store.cursor().sql("SELECT _row, request_id FROM traffic_t ORDER BY _row").to_arrow_table()
    lab = dict(zip(labels.column("request_id").to_pylist(), labels.column("label").to_pylist(), strict=True))
    y_text = np.array([lab[i] for i in order.column("request_id").to_pylist()])
    known = np.isin(y_text, CLASSES)
    assert (~known).sum() == UNKNOWN
    assert ev["classes"] == list(CLASSES) and ev["excluded_labels"] == {"the label is not one of the run's classes": 7}
    y = np.searchsorted(CLASSES, y_text[known])
    feats = t.filter(pa.array(known))
    pb, pc_ = base.predict(feats), SoftmaxModel.predict(cand, feats)
    failed = feats.column("zb").to_numpy() > 2
    assert ev["labeled_rows"] == known.sum()
    n, ok = int(known.sum()), int((~failed).sum())
    assert ev["rows"] == {"total": n, "baseline": n, "candidate": ok, "paired": ok}
    yb, bb, cc = y, pb.argmax(axis=1), pc_.argmax(axis=1)
    ok = ~failed
    close = lambda got, want: abs(got - want) <= 1e-9  # noqa: E731
    assert close(ev["baseline"]["accuracy"]["value"], skm.accuracy_score(yb, bb))
    assert close(ev["candidate"]["accuracy"]["value"], skm.accuracy_score(yb[ok], cc[ok]))
    assert close(ev["baseline"]["macro_f1"]["value"], skm.f1_score(yb, bb, average="macro"))
    assert close(ev["candidate"]["weighted_recall"]["value"], skm.recall_score(yb[ok], cc[ok], average="weighted"))
    assert close(ev["baseline"]["log_loss"]["value"], skm.log_loss(yb, pb, labels=[0, 1, 2]))
    assert close(ev["candidate"]["log_loss"]["value"], skm.log_loss(yb[ok], pc_[ok], labels=[0, 1, 2]))
    assert close(ev["baseline"]["top_2_accuracy"]["value"], skm.top_k_accuracy_score(yb, pb, k=2, labels=[0, 1, 2]))
    onehot = np.eye(3)[yb]
    assert close(ev["baseline"]["brier"]["value"], ((pb - onehot) ** 2).sum(axis=1).mean())
    assert ev["candidate"]["log_loss"]["excluded"] == {"probabilities are not finite": int(failed.sum())}
    # paired: the rows both predicted
    delta_acc = skm.accuracy_score(yb[ok], cc[ok]) - skm.accuracy_score(yb[ok], bb[ok])
    assert close(ev["delta"]["accuracy"]["value"], delta_acc)
    wb, wc = bb[ok] == yb[ok], cc[ok] == yb[ok]
    table = [[np.sum(wb & wc), np.sum(wb & ~wc)], [np.sum(~wb & wc), np.sum(~wb & ~wc)]]
    assert close(ev["delta"]["accuracy"]["p_value"], mcnemar(table, exact=True).pvalue)
    lo, hi = ev["delta"]["macro_f1"]["ci_low"], ev["delta"]["macro_f1"]["ci_high"]
    assert lo < ev["delta"]["macro_f1"]["value"] < hi
    # per class, by class name; confusion matrices in the classes' order
    recall = skm.recall_score(yb, bb, average=None)
    for k, c in enumerate(CLASSES):
        assert close(ev["per_class"]["baseline"]["recall"][c]["value"], recall[k])
    want_delta = skm.recall_score(yb[ok], cc[ok], average=None) - skm.recall_score(yb[ok], bb[ok], average=None)
    for k, c in enumerate(CLASSES):
        assert close(ev["per_class_delta"]["recall"][c]["value"], want_delta[k])
    assert ev["confusion"]["baseline"] == skm.confusion_matrix(yb, bb, labels=[0, 1, 2]).tolist()
    assert ev["confusion"]["candidate"] == skm.confusion_matrix(yb[ok], cc[ok], labels=[0, 1, 2]).tolist()
    assert ev["errors"]["candidate"]["count"] == int((t.column("zb").to_numpy() > 2).sum())


def test_segments_and_windows_of_a_multiclass_run(run):
    store = run[0]
    ev = evaluate_run(store, "r", segment="region").to_dict()
    slices = ev["segments"]["region"]
    assert set(slices) == {"north", "south"}
    assert sum(s["rows"] for s in slices.values()) == ev["labeled_rows"]
    assert {"accuracy", "macro_f1", "log_loss"} <= set(slices["north"]["delta"])
    assert set(slices["south"]["per_class_delta"]["recall"]) == set(CLASSES)
    ev = evaluate_run(store, "r", window="day").to_dict()
    assert sum(s["rows"] for s in ev["windows"]["day"].values()) == ev["labeled_rows"]
