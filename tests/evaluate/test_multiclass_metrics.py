"""Multi-class metrics: parity with scikit-learn and statsmodels, per-class values undefined with a reason,
intervals that cover, rows left out counted by reason, and refused input."""

import json
import warnings

import numpy as np
import pytest
from scipy.stats import ttest_rel
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from workbench import WorkbenchError
from workbench.evaluate.multiclass import (
    AVERAGES,
    MULTICLASS_METRICS,
    PER_CLASS,
    brier_scores,
    class_undefined_reason,
    compare_multiclass,
    log_losses,
    multiclass_confusion,
    multiclass_metrics,
    top_k_hits,
)
from workbench.evaluate.results import Options

OPTS = Options(n_boot=200)

CASES = {
    "three_classes": lambda r: (r.integers(0, 3, 400), r.integers(0, 3, 400)),
    "class_never_predicted": lambda r: (r.integers(0, 4, 300), r.integers(0, 3, 300)),
    "class_never_true": lambda r: (r.integers(0, 3, 300), r.integers(0, 4, 300)),
    "skewed_five": lambda r: (
        r.choice(5, 500, p=[0.6, 0.2, 0.1, 0.07, 0.03]),
        r.choice(5, 500, p=[0.5, 0.3, 0.1, 0.05, 0.05]),
    ),
    "binary": lambda r: (r.integers(0, 2, 200), r.integers(0, 2, 200)),
    "one_row": lambda r: (np.array([2]), np.array([2])),
}


def sk_values(y, pred):
    """scikit-learn's accuracy, per-class and averaged precision/recall/f1, and fpr from the one-vs-rest
    matrices, over the classes in y or the predictions (NaN where undefined)."""
    labels = np.unique(np.concatenate([y, pred]))
    out = {"accuracy": skm.accuracy_score(y, pred)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for avg in AVERAGES:
            p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=np.nan)
            out |= {f"{avg}_precision": p, f"{avg}_recall": r, f"{avg}_f1": f}
        p, r, f, support = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average=None, zero_division=np.nan
        )
    mcm = skm.multilabel_confusion_matrix(y, pred, labels=labels)
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    fpr = np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1), np.nan)
    ok = ~np.isnan(fpr)
    out |= {
        "macro_fpr": np.nanmean(fpr) if ok.any() else np.nan,
        "micro_fpr": fp.sum() / (fp + tn).sum() if (fp + tn).sum() else np.nan,
        "weighted_fpr": np.average(fpr[ok], weights=support[ok]) if support[ok].sum() else np.nan,
    }
    per_class = {"precision": p, "recall": r, "f1": f, "fpr": fpr}
    return out, labels, per_class


def _close(ours, ref):
    if ref is None or np.isnan(ref):
        return ours is None or np.isnan(ours)
    return ours is not None and abs(ours - ref) <= 1e-9


@pytest.mark.parametrize("case", list(CASES))
def test_confusion_metrics_match_sklearn(case):
    y, pred = CASES[case](np.random.default_rng(5))
    ref, labels, ref_class = sk_values(y, pred)
    ours = multiclass_metrics(multiclass_confusion(y, pred))
    for name, value in ref.items():
        assert _close(ours[name], value), (name, ours[name], value)
    for name in PER_CLASS:
        for i, k in enumerate(labels):
            assert _close(ours[name][k], ref_class[name][i]), (name, k)
    assert (multiclass_confusion(y, pred, 6) == skm.confusion_matrix(y, pred, labels=range(6))).all()


def test_confusion_metrics_vectorise_over_confusion_matrices():
    rng = np.random.default_rng(2)
    cms = np.stack([multiclass_confusion(*CASES["three_classes"](rng), n_classes=3) for _ in range(4)])
    batch = multiclass_metrics(cms)
    for i in range(4):
        one = multiclass_metrics(cms[i])
        assert batch["macro_f1"][i] == pytest.approx(one["macro_f1"])
        assert batch["recall"][i] == pytest.approx(one["recall"])


def test_weighted_average_without_supported_classes_is_undefined_where_sklearn_falls_back():
    y, pred = np.zeros(10, int), np.ones(10, int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = skm.precision_score(y, pred, average="weighted", zero_division=np.nan)
    assert sk == 0.0  # scikit-learn drops the zero weights and averages the rest unweighted
    assert multiclass_metrics(multiclass_confusion(y, pred))["weighted_precision"] is None


def _probabilities(r, y, sharpness):
    """Probabilities that favour the true class; rounded to 0.05 so that top-k meets ties."""
    p = r.dirichlet(np.ones(4), len(y)) + sharpness * np.eye(4)[y]
    p = np.round(p / p.sum(axis=1, keepdims=True) / 0.05) * 0.05
    return p / p.sum(axis=1, keepdims=True)


def _pair(seed, n=600):
    r = np.random.default_rng(seed)
    y = r.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])
    b = np.where(r.random(n) < 0.7, y, r.integers(0, 4, n))
    c = np.where(r.random(n) < 0.78, y, r.integers(0, 4, n))
    return y, b, c, {"baseline": _probabilities(r, y, 0.8), "candidate": _probabilities(r, y, 1.2)}


def test_comparison_values_match_sklearn():
    y, b, c, probs = _pair(6)
    result = compare_multiclass(y, b, c, probabilities=probs, top_k=(1, 2, 3), opts=OPTS)
    for role, pred in (("baseline", b), ("candidate", c)):
        ours = getattr(result, role)
        ref, labels, ref_class = sk_values(y, pred)
        for name, value in ref.items():
            assert _close(ours[name].value, value), (role, name)
        for name in PER_CLASS:
            assert all(_close(e.value, v) for e, v in zip(result.per_class[role][name], ref_class[name], strict=True))
        p = probs[role]
        for k in (1, 2, 3):
            ref_k = skm.top_k_accuracy_score(y, p, k=k, labels=range(4))
            assert ours[f"top_{k}_accuracy"].value == pytest.approx(ref_k, abs=1e-12)
        assert ours["log_loss"].value == pytest.approx(skm.log_loss(y, y_proba=p, labels=range(4)), abs=1e-9)
        ref_brier = skm.brier_score_loss(y, p, labels=range(4), scale_by_half=False)
        assert ours["brier"].value == pytest.approx(ref_brier, abs=1e-9)
        assert (result.confusion[role] == skm.confusion_matrix(y, pred, labels=range(4))).all()
        n = len(y)
        k = int((y == pred).sum())
        assert (ours["accuracy"].ci_low, ours["accuracy"].ci_high) == pytest.approx(
            proportion_confint(k, n, method="wilson"), abs=1e-12
        )
        tp, support = np.diag(result.confusion[role]), result.confusion[role].sum(axis=1)
        for cls, est in enumerate(result.per_class[role]["recall"]):
            ref_ci = proportion_confint(int(tp[cls]), int(support[cls]), method="wilson")
            assert (est.ci_low, est.ci_high) == pytest.approx(ref_ci, abs=1e-12)


def test_top_k_breaks_ties_as_sklearn():
    y = np.array([0, 1, 2, 3, 2])
    p = np.array([[0.25] * 4, [0.25] * 4, [0.25] * 4, [0.25] * 4, [0.4, 0.2, 0.2, 0.2]])
    for k in (1, 2, 3):
        assert top_k_hits(y, p, k).mean() == skm.top_k_accuracy_score(y, p, k=k, labels=range(4))


def test_paired_tests_match_statsmodels_and_scipy():
    y, b, c, probs = _pair(7)
    result = compare_multiclass(y, b, c, probabilities=probs, top_k=(2,), opts=OPTS)
    rb, rc = b == y, c == y
    table = [[int((rb & rc).sum()), int((rb & ~rc).sum())], [int((~rb & rc).sum()), int((~rb & ~rc).sum())]]
    d = result.delta["accuracy"]
    assert d.test == "mcnemar exact" and d.p_value == pytest.approx(mcnemar(table, exact=True).pvalue, abs=1e-12)
    assert d.value == pytest.approx(rc.mean() - rb.mean(), abs=1e-12)
    assert d.ci_low < d.value < d.ci_high and d.method == "bootstrap"
    for name, per_row in (("log_loss", log_losses), ("brier", brier_scores)):
        lb, lc = per_row(y, probs["baseline"]), per_row(y, probs["candidate"])
        ref = ttest_rel(lc, lb)
        assert result.delta[name].p_value == pytest.approx(ref.pvalue, abs=1e-12)
        ci = (result.delta[name].ci_low, result.delta[name].ci_high)
        assert ci == pytest.approx(tuple(ref.confidence_interval(0.95)), abs=1e-9)
    hb, hc = (top_k_hits(y, probs[r], 2) for r in ("baseline", "candidate"))
    table = [[int((hb & hc).sum()), int((hb & ~hc).sum())], [int((~hb & hc).sum()), int((~hb & ~hc).sum())]]
    assert result.delta["top_2_accuracy"].p_value == pytest.approx(mcnemar(table, exact=True).pvalue, abs=1e-12)
    assert len(result.per_class_delta["recall"]) == 4
    for cls, d in enumerate(result.per_class_delta["recall"]):
        true = y == cls
        assert d.value == pytest.approx(rc[true].mean() - rb[true].mean(), abs=1e-12)


def test_bootstrap_intervals_cover_the_truth():
    """200 seeded samples of 300 rows from a population whose values are known (10^6 rows): the 95 % intervals
    of the accuracy, macro-f1 and per-class recall deltas and of each model's macro-f1 cover the truth in
    88-99 % of samples."""
    r = np.random.default_rng(8)

    def draw(n):
        y = r.choice(3, n, p=[0.5, 0.3, 0.2])
        noise = r.random(n)
        b = np.where(noise < 0.7, y, (y + 1) % 3)
        c = np.where(noise < 0.65, y, np.where(r.random(n) < 0.5, (y + 2) % 3, y))
        return y, b, c

    y, b, c = draw(1_000_000)
    vb, vc = (multiclass_metrics(multiclass_confusion(y, p)) for p in (b, c))
    truth = {
        "accuracy": vc["accuracy"] - vb["accuracy"],
        "macro_f1": vc["macro_f1"] - vb["macro_f1"],
        "recall[2]": vc["recall"][2] - vb["recall"][2],
        "baseline.f1_macro": vb["macro_f1"],
    }
    hits = dict.fromkeys(truth, 0)
    trials = 200
    for _ in range(trials):
        result = compare_multiclass(*draw(300), opts=OPTS)
        found = {
            "accuracy": result.delta["accuracy"],
            "macro_f1": result.delta["macro_f1"],
            "recall[2]": result.per_class_delta["recall"][2],
            "baseline.f1_macro": result.baseline["macro_f1"],
        }
        for key, est in found.items():
            hits[key] += est.ci_low <= truth[key] <= est.ci_high
    assert all(0.88 <= h / trials <= 0.99 for h in hits.values()), hits


def test_a_class_absent_from_y_has_per_class_values_undefined_with_a_reason():
    y = np.array([0, 0, 1, 1, 0, 1])
    b = np.array([0, 2, 1, 1, 0, 0])  # predicts class 2, which y never holds
    c = np.array([0, 0, 1, 0, 0, 1])
    result = compare_multiclass(y, b, c, n_classes=4, opts=OPTS)
    base = result.per_class["baseline"]
    assert base["recall"][2].value is None and base["recall"][2].undefined == "the class is absent from y"
    assert base["precision"][2].value == 0.0 and base["f1"][2].value == 0.0  # predicted, never right: defined
    assert base["f1"][3].undefined == "the class is neither in y nor predicted"
    assert result.per_class["candidate"]["precision"][2].undefined == "the class is never predicted"
    assert result.per_class_delta["recall"][2].value is None
    assert result.per_class_delta["recall"][2].undefined == "the class is absent from y"
    assert base["fpr"][2].value == pytest.approx(1 / 6)
    one_class = compare_multiclass(np.zeros(5), np.zeros(5), np.zeros(5), n_classes=2, opts=OPTS)
    assert one_class.per_class["baseline"]["fpr"][0].undefined == "every row is of this class"
    assert class_undefined_reason("recall", result.confusion["baseline"], 0) is None


def test_missing_predictions_and_bad_probabilities_are_counted():
    y, b, c, probs = _pair(9, n=100)
    b, c = b.astype(float), c.astype(float)
    b[[1, 2]] = np.nan
    c[[2, 3, 4]] = np.nan
    probs["baseline"][5] = np.nan
    probs["candidate"][6] *= 0.5
    probs["candidate"][7, 0] = -0.1
    result = compare_multiclass(y, b, c, probabilities=probs, opts=OPTS)
    assert result.rows == {"total": 100, "baseline": 98, "candidate": 97, "paired": 96}
    assert result.baseline["accuracy"].excluded == {"prediction is missing": 2}
    assert result.delta["macro_f1"].excluded == {
        "baseline: prediction is missing": 1,
        "prediction is missing": 1,
        "candidate: prediction is missing": 2,
    }
    assert result.candidate["log_loss"].excluded == {
        "probabilities outside [0, 1]": 1,
        "probabilities do not sum to 1 (within 0.001)": 1,
    }
    assert sum(result.delta["brier"].excluded.values()) == 3 and result.delta["brier"].rows == 97
    ok = ~np.isnan(b)
    assert result.baseline["accuracy"].value == pytest.approx(np.mean(b[ok] == y[ok]))


def test_a_model_with_no_predictions_has_no_values_and_says_why():
    y, b, c, _ = _pair(10, n=50)
    result = compare_multiclass(y, np.full(50, np.nan), c, opts=OPTS)
    assert result.baseline["accuracy"].value is None
    assert result.baseline["accuracy"].undefined == "no usable rows (prediction is missing: 50)"
    assert result.baseline["macro_f1"].undefined == "no usable rows (prediction is missing: 50)"
    assert result.delta["accuracy"].value is None and result.delta["accuracy"].undefined.startswith("no usable rows")
    assert result.per_class["baseline"]["recall"][0].undefined == "no usable rows"
    assert result.candidate["accuracy"].value is not None


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ((np.array([]), np.array([]), np.array([])), {}, "no rows to evaluate: y is empty"),
        ((np.zeros(5), np.zeros(4), np.zeros(5)), {}, "baseline has 4 rows but y has 5"),
        ((np.zeros(5), np.zeros(5), np.zeros(7)), {}, "candidate has 7 rows but y has 5"),
        ((np.array([0, 1, -1]), np.zeros(3), np.zeros(3)), {}, r"y must hold integer classes 0..C-1, got \[-1.0\]"),
        ((np.zeros(3), np.array([0, 0.5, 1]), np.zeros(3)), {}, "baseline must hold integer classes"),
        ((np.array([0, 1, 5]), np.zeros(3), np.zeros(3)), {"n_classes": 3}, "class 5 appears but there are 3"),
        ((np.zeros(3), np.zeros(3), np.zeros(3)), {"probabilities": {"baseline": np.ones((3, 2)) / 2}}, "both"),
        (
            (np.zeros(3), np.zeros(3), np.zeros(3)),
            {"probabilities": {"baseline": np.ones((3, 2)) / 2, "candidate": np.ones((3, 3)) / 3}},
            "different numbers of columns",
        ),
        (
            (np.zeros(3), np.zeros(3), np.zeros(3)),
            {"probabilities": {"baseline": np.ones((2, 2)) / 2, "candidate": np.ones((3, 2)) / 2}},
            "baseline probabilities has 2 rows but y has 3",
        ),
        (
            (np.zeros(3), np.zeros(3), np.zeros(3)),
            {"probabilities": {r: np.ones((3, 2)) / 2 for r in ("baseline", "candidate")}, "top_k": (0,)},
            "top_k must be positive integers",
        ),
    ],
    ids=[
        "empty",
        "short_baseline",
        "long_candidate",
        "negative_class",
        "fractional_class",
        "class_beyond_n_classes",
        "probabilities_of_one_model",
        "probability_widths_differ",
        "short_probabilities",
        "top_zero",
    ],
)
def test_bad_input_is_refused_with_a_clear_message(args, kwargs, message):
    with pytest.raises(WorkbenchError, match=message):
        compare_multiclass(*args, **kwargs, opts=OPTS)


def test_every_metric_has_a_direction_and_the_result_is_plain_json():
    y, b, c, probs = _pair(11, n=200)
    result = compare_multiclass(y, b, c, probabilities=probs, top_k=(2, 3), opts=OPTS)
    names = list(result.baseline)
    assert names == list(result.delta)
    assert names[:5] == ["accuracy", "top_2_accuracy", "top_3_accuracy", "log_loss", "brier"]
    assert names[5:] == [f"{a}_{m}" for a in AVERAGES for m in PER_CLASS]
    assert MULTICLASS_METRICS["f1"].higher_is_better and not MULTICLASS_METRICS["fpr"].higher_is_better
    assert not MULTICLASS_METRICS["log_loss"].higher_is_better
    out = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert out["classes"] == 4 and len(out["per_class"]["candidate"]["recall"]) == 4
    assert out["confusion"]["baseline"] == result.confusion["baseline"].tolist()
    assert compare_multiclass(y, b, c, probabilities=probs, top_k=(2, 3), opts=OPTS).to_dict() == result.to_dict()
