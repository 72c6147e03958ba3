"""Metric parity with sklearn.metrics on random and edge-case inputs."""
import numpy as np
import pytest
from sklearn import metrics as skm

from workbench.metrics import METRICS, binary_metrics, confusion

CASES = {
    "random": lambda r: (r.integers(0, 2, 500), r.random(500)),
    "ties": lambda r: (r.integers(0, 2, 300), r.integers(0, 4, 300) / 4),
    "all_equal_scores": lambda r: (r.integers(0, 2, 100), np.full(100, 0.7)),
    "extreme_scores": lambda r: (r.integers(0, 2, 100), r.choice([0.0, 1.0, 1e-20, 1 - 1e-16], 100)),
}


def sk_value(name, y, s, t):
    pred = (s >= t).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": lambda: skm.accuracy_score(y, pred),
        "precision": lambda: skm.precision_score(y, pred, zero_division=np.nan),
        "recall": lambda: skm.recall_score(y, pred, zero_division=np.nan),
        "f1": lambda: skm.f1_score(y, pred, zero_division=np.nan),
        "fpr": lambda: fp / (fp + tn) if fp + tn else np.nan,
        "fnr": lambda: fn / (fn + tp) if fn + tp else np.nan,
        "roc_auc": lambda: skm.roc_auc_score(y, s) if len(set(y)) == 2 else np.nan,
        "log_loss": lambda: skm.log_loss(y, s, labels=[0, 1]),
    }[name]()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_parity_with_sklearn(case, threshold):
    y, s = CASES[case](np.random.default_rng(7))
    ours = binary_metrics(y, s, threshold)
    for name in METRICS:
        ref = sk_value(name, y, s, threshold)
        if np.isnan(ref):
            assert ours[name] is None, name
        else:
            assert ours[name] == pytest.approx(ref, abs=1e-9), name


def test_undefined_metrics_are_none_not_zero():
    y = np.ones(20, dtype=int)
    m = binary_metrics(y, np.linspace(0, 1, 20), 0.5)
    assert m["fpr"] is None and m["roc_auc"] is None
    assert m["recall"] == pytest.approx(skm.recall_score(y, np.linspace(0, 1, 20) >= 0.5))


def test_confusion_counts():
    c = confusion(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1]))
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 1, 1, 1)


def test_every_metric_declares_direction():
    assert {m.name: m.higher_is_better for m in METRICS.values()}["fpr"] is False
