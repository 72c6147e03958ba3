"""Metric parity with sklearn.metrics on random and edge-case inputs, weighted too."""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from workbench.evaluate.metrics import (
    METRICS,
    Confusion,
    binary_metrics,
    confusion,
    grouping,
    score_groups,
    undefined_reason,
)

CASES = {
    "random": lambda r: (r.integers(0, 2, 500), r.random(500)),
    "ties": lambda r: (r.integers(0, 2, 300), r.integers(0, 4, 300) / 4),
    "all_equal_scores": lambda r: (r.integers(0, 2, 100), np.full(100, 0.7)),
    "extreme_scores": lambda r: (r.integers(0, 2, 100), r.choice([0.0, 1.0, 1e-20, 1 - 1e-16], 100)),
    "only_positives": lambda r: (np.ones(50, dtype=int), r.random(50)),
    "only_negatives": lambda r: (np.zeros(50, dtype=int), r.random(50)),
    "one_row": lambda r: (np.array([1]), np.array([0.3])),
    "bin_edges": lambda r: (r.integers(0, 2, 200), r.choice(np.linspace(0, 1, 11), 200)),
}


def ece_reference(y, s, w=None):
    """Expected calibration error from sklearn's calibration_curve (10 uniform bins); weighted bin means
    with the same binning when ``w`` is given (calibration_curve takes no weights)."""
    bins = np.searchsorted(np.linspace(0, 1, 11)[1:-1], s)  # calibration_curve's own binning
    if w is None:
        prob_true, prob_pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
        total = np.bincount(bins, minlength=10).astype(float)
    else:
        total = np.bincount(bins, weights=w, minlength=10)
        nz = total > 0
        prob_true = np.bincount(bins, weights=w * y, minlength=10)[nz] / total[nz]
        prob_pred = np.bincount(bins, weights=w * s, minlength=10)[nz] / total[nz]
    return float(np.sum(total[total > 0] / total.sum() * np.abs(prob_true - prob_pred)))


def sk_value(name, y, s, t, w=None):
    """sklearn's value of metric ``name`` (NaN where the metric is undefined)."""
    pred = (s >= t).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1], sample_weight=w).ravel()
    both = len(set(y)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": lambda: skm.accuracy_score(y, pred, sample_weight=w),
            "precision": lambda: skm.precision_score(y, pred, zero_division=np.nan, sample_weight=w),
            "recall": lambda: skm.recall_score(y, pred, zero_division=np.nan, sample_weight=w),
            "f1": lambda: skm.f1_score(y, pred, zero_division=np.nan, sample_weight=w),
            "fpr": lambda: fp / (fp + tn) if fp + tn else np.nan,
            "fnr": lambda: fn / (fn + tp) if fn + tp else np.nan,
            "roc_auc": lambda: skm.roc_auc_score(y, s, sample_weight=w) if both else np.nan,
            # sklearn returns a meaningless 0 (with a warning) without positive labels: undefined for us
            "pr_auc": lambda: skm.average_precision_score(y, s, sample_weight=w) if y.sum() else np.nan,
            "log_loss": lambda: skm.log_loss(y, s, labels=[0, 1], sample_weight=w),
            "brier": lambda: skm.brier_score_loss(y, s, pos_label=1, sample_weight=w),
            "ece": lambda: ece_reference(y, s, w),
        }[name]()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_parity_with_sklearn(case, threshold):
    y, s = CASES[case](np.random.default_rng(7))
    ours = binary_metrics(y, s, threshold)
    assert list(ours) == [
        "accuracy",
        "precision",
        "recall",
        "f1",
        "fpr",
        "fnr",
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "ece",
    ]
    for name in METRICS:
        ref = sk_value(name, y, s, threshold)
        if np.isnan(ref):
            assert ours[name] is None, name
        else:
            assert ours[name] == pytest.approx(ref, abs=1e-9), name


@pytest.mark.parametrize("case", ["random", "ties", "extreme_scores", "bin_edges"])
def test_score_metrics_under_weights_match_sklearn_sample_weight(case):
    """A batch of bootstrap weightings (one per row of the weight matrix) is evaluated in one call."""
    rng = np.random.default_rng(11)
    y, s = CASES[case](rng)
    w = rng.poisson(1.0, size=(6, len(y))).astype(float)
    g = grouping(y, s).weigh(w)
    for name, m in METRICS.items():
        if not m.from_scores:
            continue
        got = m.compute(g)
        assert got.shape == (6,)
        for i in range(6):
            assert got[i] == pytest.approx(sk_value(name, y, s, 0.5, w[i]), abs=1e-9), (name, i)


def test_confusion_metrics_are_vectorised_over_replicates():
    c = Confusion(tp=np.array([3, 0]), fp=np.array([1, 0]), tn=np.array([4, 5]), fn=np.array([2, 0]))
    np.testing.assert_allclose(METRICS["precision"].compute(c), [0.75, np.nan])
    np.testing.assert_allclose(METRICS["f1"].compute(c), [6 / 9, np.nan])
    assert METRICS["accuracy"].compute(Confusion(3, 1, 4, 2)) == pytest.approx(0.7)


@pytest.mark.parametrize("name", [n for n, m in METRICS.items() if m.from_scores])
@pytest.mark.parametrize("case", ["random", "ties"])
def test_influence_is_the_derivative_of_the_weighted_metric(name, case):
    """The linearised bootstrap rests on these: check them against finite differences."""
    rng = np.random.default_rng(3)
    y, s = CASES[case](rng)
    m = METRICS[name]
    g = score_groups(y, s)
    psi_pos, psi_neg = m.influence(g)
    gr = grouping(y, s)
    group_of = np.searchsorted(gr.score, s)
    base, eps = m.compute(g), 1e-7
    for i in rng.choice(len(y), 15, replace=False):
        w = np.ones(len(y))
        w[i] += eps
        numeric = (m.compute(score_groups(y, s, w)) - base) / eps
        analytic = (psi_pos if y[i] else psi_neg)[group_of[i]]
        assert numeric == pytest.approx(analytic, rel=1e-4, abs=1e-9), i
    # the metric is invariant to scaling all weights, so the influences sum to zero
    assert float(np.dot(g.pos, psi_pos) + np.dot(g.neg, psi_neg)) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("case", ["random", "ties", "all_equal_scores"])
def test_restricted_grouping_equals_a_fresh_one(case):
    rng = np.random.default_rng(8)
    y, s = CASES[case](rng)
    keep = rng.random(len(y)) < 0.7
    fresh, restricted = grouping(y[keep], s[keep]), grouping(y, s).restrict(keep)
    np.testing.assert_array_equal(restricted.score, fresh.score)
    np.testing.assert_array_equal(restricted.starts, fresh.starts)
    a, b = fresh.weigh(), restricted.weigh()
    np.testing.assert_array_equal(a.pos, b.pos)
    np.testing.assert_array_equal(a.neg, b.neg)
    w = rng.poisson(1.0, size=(3, keep.sum())).astype(np.float32)  # row weights follow the row order
    np.testing.assert_array_equal(fresh.weigh(w).pos, restricted.weigh(w).pos)
    assert np.array_equal(np.sort(restricted.order), np.arange(keep.sum()))


def test_undefined_metrics_are_none_with_a_reason_not_zero():
    y = np.ones(20, dtype=int)
    s = np.linspace(0, 1, 20)
    m = binary_metrics(y, s, 0.5)
    assert m["fpr"] is None and m["roc_auc"] is None
    c = confusion(y, s >= 0.5)
    assert undefined_reason("fpr", c) == "no negative labels"
    assert undefined_reason("roc_auc", c) == "no negative labels"
    assert undefined_reason("recall", c) is None
    assert m["recall"] == pytest.approx(skm.recall_score(y, s >= 0.5))
    none_predicted = confusion(np.array([0, 1]), np.array([0, 0]))
    assert undefined_reason("precision", none_predicted) == "no positive predictions"
    assert undefined_reason("accuracy", confusion(np.array([], int), np.array([], int))) == "no labelled rows"
    assert all(v is None for v in binary_metrics(np.array([], int), np.array([]), 0.5).values())


def test_confusion_counts():
    c = confusion(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1]))
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 1, 1, 1)


def test_every_metric_declares_direction():
    assert {m.name: m.higher_is_better for m in METRICS.values()} == {
        "accuracy": True,
        "precision": True,
        "recall": True,
        "f1": True,
        "fpr": False,
        "fnr": False,
        "roc_auc": True,
        "pr_auc": True,
        "log_loss": False,
        "brier": False,
        "ece": False,
    }


@pytest.mark.parametrize("case", ["random", "ties", "all_equal_scores", "one_row"])
def test_per_row_values_are_each_rows_group_value_for_its_label(case):
    """The per-row table lookup against its definition: the row's group (by score), then its label's value."""
    rng = np.random.default_rng(5)
    y, s = CASES[case](rng)
    gr = grouping(y, s)
    pos, neg = rng.random(len(gr.score)), rng.random(len(gr.score))
    group = np.searchsorted(gr.score, s[gr.order])
    np.testing.assert_array_equal(gr.per_row((pos, neg)), np.where(y[gr.order] == 1, pos[group], neg[group]))


@pytest.mark.parametrize("case", ["random", "ties", "extreme_scores", "bin_edges"])
def test_sums_shared_between_metrics_leave_every_value_unchanged(case):
    """Values and influences on one object that computed every other metric first equal a fresh object's,
    bit for bit; a batch of weightings shares nothing."""
    rng = np.random.default_rng(9)
    y, s = CASES[case](rng)
    shared = score_groups(y, s)
    names = [n for n, m in METRICS.items() if m.from_scores]
    for name in names:
        METRICS[name].compute(shared), METRICS[name].influence(shared)
    for name in names:
        m = METRICS[name]
        assert m.compute(shared) == m.compute(score_groups(y, s)), name
        for a, b in zip(m.influence(shared), m.influence(score_groups(y, s)), strict=True):
            np.testing.assert_array_equal(a, b)
    shared.release()  # the arrays go, the values stay
    assert not any(isinstance(v, np.ndarray | tuple) for v in shared._shared.values()) and shared._shared
    for name in names:
        m = METRICS[name]
        assert m.compute(shared) == m.compute(score_groups(y, s)), name
        for a, b in zip(m.influence(shared), m.influence(score_groups(y, s)), strict=True):
            np.testing.assert_array_equal(a, b)
    batch = score_groups(y, s, rng.poisson(1.0, size=(3, len(y))).astype(float))
    for name in names:
        METRICS[name].compute(batch)
    assert batch._shared == {}
