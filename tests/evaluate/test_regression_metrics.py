"""Regression metrics: parity with scikit-learn, scipy and statsmodels, intervals that cover, undefined rows
counted by reason, refused input, and the anytime-valid bound on the paired MAE delta."""

import json
import math

import numpy as np
import pytest
from scipy.stats import ttest_1samp, ttest_rel, wilcoxon
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from workbench import WorkbenchError
from workbench.evaluate.regression import (
    REGRESSION_METRICS,
    compare_regression,
    paired_losses,
    regression_losses,
)
from workbench.evaluate.results import Options
from workbench.evaluate.sequential import mean_cs, running_cs

OPTS = Options(n_boot=200)


def _normal(r):
    y = r.normal(10, 3, 400)
    return y, y + r.normal(0, 1.0, 400), y + r.normal(0.2, 0.8, 400)


def _heavy_tails(r):
    y = r.lognormal(1, 1, 300)
    return y, y + r.standard_t(3, 300), y + 0.8 * r.standard_t(3, 300)


def _zeros_in_y(r):
    y = r.integers(-3, 4, 300).astype(float)
    b, c = y + r.normal(0, 1, 300), y.copy()
    c[::3] += r.normal(0, 1, 100)
    return y, b, c


def _failures(r):
    y, b, c = _normal(r)
    b[[3, 50, 51]] = np.nan
    c[[50, 70]] = [np.inf, np.nan]
    return y, b, c


def _ties(r):
    y = r.integers(0, 5, 200).astype(float)
    return y, y + r.integers(-1, 2, 200), y + r.integers(-2, 3, 200)


CASES = {
    "normal": _normal,
    "heavy_tails": _heavy_tails,
    "zeros_in_y": _zeros_in_y,
    "failures": _failures,
    "ties": _ties,
}


def sk_point(name, y, p):
    """scikit-learn's (or the textbook) value of a point metric on the rows given."""
    return {
        "mae": lambda: skm.mean_absolute_error(y, p),
        "mse": lambda: skm.mean_squared_error(y, p),
        "rmse": lambda: skm.root_mean_squared_error(y, p),
        "median_ae": lambda: skm.median_absolute_error(y, p),
        "mape": lambda: skm.mean_absolute_percentage_error(y[y != 0], p[y != 0]),
        "smape": lambda: np.mean(2 * np.abs(p - y) / (np.abs(y) + np.abs(p))),
        "r2": lambda: skm.r2_score(y, p),
        "bias": lambda: np.mean(p - y),
    }[name]()


@pytest.mark.parametrize("case", list(CASES))
def test_point_metrics_match_sklearn(case):
    y, b, c = CASES[case](np.random.default_rng(11))
    result = compare_regression(y, b, c, opts=OPTS)
    for role, pred in (("baseline", b), ("candidate", c)):
        ok = np.isfinite(pred)
        ours = getattr(result, role)
        for name in ("mae", "mse", "rmse", "median_ae", "mape", "smape", "r2", "bias"):
            rows = ok & ~((y == 0) & (pred == 0)) if name == "smape" else ok
            assert ours[name].value == pytest.approx(sk_point(name, y[rows], pred[rows]), abs=1e-9), (role, name)
        left_out = {"prediction is not finite": int((~ok).sum())} if (~ok).any() else {}
        assert ours["mae"].excluded == left_out
        zeros = int((y[ok] == 0).sum())
        assert ours["mape"].excluded == left_out | ({"y is 0": zeros} if zeros else {})
        assert ours["mape"].rows == int(ok.sum()) - zeros


@pytest.mark.parametrize("case", ["normal", "failures", "ties"])
def test_intervals_and_paired_tests_match_scipy(case):
    y, b, c = CASES[case](np.random.default_rng(12))
    result = compare_regression(y, b, c, opts=OPTS)
    both = np.isfinite(b) & np.isfinite(c)
    for name, loss in (("mae", np.abs), ("mse", np.square)):
        for role, pred in (("baseline", b), ("candidate", c)):
            x = loss(pred[np.isfinite(pred)] - y[np.isfinite(pred)])
            est = getattr(result, role)[name]
            ref = ttest_1samp(x, 0).confidence_interval(0.95)
            assert (est.ci_low, est.ci_high) == pytest.approx((max(ref.low, 0.0), ref.high), abs=1e-9)
        lb, lc = loss(b[both] - y[both]), loss(c[both] - y[both])
        d = result.delta[name]
        ref = ttest_rel(lc, lb)
        assert d.value == pytest.approx(np.mean(lc - lb), abs=1e-12)
        assert (d.ci_low, d.ci_high) == pytest.approx(tuple(ref.confidence_interval(0.95)), abs=1e-9)
        assert d.p_value == pytest.approx(ref.pvalue, abs=1e-12)
        assert d.wilcoxon_p == pytest.approx(wilcoxon(lc - lb).pvalue, abs=1e-12)
        assert d.relative == pytest.approx(d.value / np.mean(lb), abs=1e-12)
        assert d.rows == int(both.sum()) and d.test == "paired t"


@pytest.mark.parametrize("level", [0.1, 0.5, 0.9])
def test_pinball_loss_matches_sklearn(level):
    r = np.random.default_rng(13)
    y, b, c = _failures(r)
    spread = {"baseline": 1.3, "candidate": 1.0}
    z = {0.1: -1.2816, 0.5: 0.0, 0.9: 1.2816}
    quantiles = {
        role: {q: np.nan_to_num(p, nan=0.0, posinf=0.0) + z[q] * spread[role] for q in z}
        for role, p in (("baseline", b), ("candidate", c))
    }
    quantiles["candidate"][level][7] = np.nan
    result = compare_regression(y, b, c, quantiles=quantiles, opts=OPTS)
    name = f"pinball@{level:g}"
    for role in ("baseline", "candidate"):
        q = quantiles[role][level]
        ok = np.isfinite(q)
        ref = skm.mean_pinball_loss(y[ok], q[ok], alpha=level)
        assert getattr(result, role)[name].value == pytest.approx(ref, abs=1e-9)
    assert result.candidate[name].excluded == {f"quantile {level:g} is not finite": 1}
    assert result.delta[name].excluded == {f"candidate: quantile {level:g} is not finite": 1}
    assert result.delta[name].rows == len(y) - 1


def test_coverage_and_width_with_wilson_and_mcnemar():
    r = np.random.default_rng(14)
    y, b, c = _normal(r)
    intervals = {"baseline": (b - 1.6, b + 1.6), "candidate": (c - 1.2, c + 1.2)}
    intervals["baseline"][0][5] = intervals["baseline"][1][5] + 1  # lower above upper
    result = compare_regression(y, b, c, intervals=intervals, opts=OPTS)
    hits = {}
    for role, (lo, hi) in intervals.items():
        ok = lo <= hi
        hits[role] = ((lo <= y) & (y <= hi))[ok]
        est = getattr(result, role)["coverage"]
        k, n = int(hits[role].sum()), int(ok.sum())
        assert est.value == pytest.approx(k / n, abs=1e-12)
        assert (est.ci_low, est.ci_high) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-12)
        assert getattr(result, role)["interval_width"].value == pytest.approx(np.mean((hi - lo)[ok]), abs=1e-9)
    assert result.baseline["coverage"].excluded == {"lower bound above upper bound": 1}
    both = intervals["baseline"][0] <= intervals["baseline"][1]
    hb = (intervals["baseline"][0] <= y) & (y <= intervals["baseline"][1])
    hc = (intervals["candidate"][0] <= y) & (y <= intervals["candidate"][1])
    hb, hc = hb[both], hc[both]
    table = [[int((hb & hc).sum()), int((hb & ~hc).sum())], [int((~hb & hc).sum()), int((~hb & ~hc).sum())]]
    d = result.delta["coverage"]
    assert d.test == "mcnemar exact"
    assert d.p_value == pytest.approx(mcnemar(table, exact=True).pvalue, abs=1e-12)
    assert d.value == pytest.approx(hc.mean() - hb.mean(), abs=1e-12)


def test_bootstrap_and_delta_method_intervals_cover_the_truth():
    """200 seeded samples of 300 rows from a population whose deltas are known (1e6 rows): the 95 % intervals
    of r2, median_ae, rmse and their deltas cover the truth in 88-99 % of samples."""
    r = np.random.default_rng(15)

    def draw(n):
        y = r.normal(0, 2, n)
        return y, y + r.normal(0, 1.0, n), y + 0.5 * r.normal(0, 1.0, n) + 0.4 * r.normal(0, 1.0, n)

    y, b, c = draw(1_000_000)
    truth = {
        "r2": skm.r2_score(y, c) - skm.r2_score(y, b),
        "median_ae": np.median(np.abs(c - y)) - np.median(np.abs(b - y)),
        "rmse": skm.root_mean_squared_error(y, c) - skm.root_mean_squared_error(y, b),
        "baseline.r2": skm.r2_score(y, b),
        "baseline.median_ae": np.median(np.abs(b - y)),
    }
    hits = dict.fromkeys(truth, 0)
    trials = 200
    for _ in range(trials):
        result = compare_regression(*draw(300), opts=OPTS)
        for key, true in truth.items():
            est = result.baseline[key.split(".")[1]] if "." in key else result.delta[key]
            hits[key] += est.ci_low <= true <= est.ci_high
    assert all(0.88 <= h / trials <= 0.99 for h in hits.values()), hits


def test_sequential_interval_on_the_mae_delta_covers_the_truth_at_every_look():
    """The paired absolute-error differences are i.i.d. with mean the MAE delta, so the confidence sequence of
    their mean (sequential.running_cs / mean_cs) is an anytime-valid bound on the MAE delta: across 300 seeded
    runs of 2,000 rows, the true delta is outside the 95 % sequence at some look (after 50 rows) in at most
    about 5 % of runs, where the fixed-horizon interval looked at every row misses far more often."""
    r = np.random.default_rng(16)
    trials, n, alpha = 300, 2000, 0.05
    true_delta = math.sqrt(2 / math.pi) * (0.9 - 1.0)  # E|N(0, s)| = s sqrt(2 / pi)
    diffs = np.empty((trials, n))
    for i in range(trials):
        y = r.normal(5, 2, n)
        losses = paired_losses(y, y + r.normal(0, 1.0, n), y + r.normal(0, 0.9, n))
        diffs[i] = losses.absolute
    mean, radius = running_cs(diffs, alpha, t_star=n)
    ever_missed = (np.abs(mean - true_delta) > radius)[:, 50:].any(axis=1)
    assert ever_missed.mean() <= 0.07
    t = np.arange(1, n + 1)
    sd = np.sqrt(np.maximum(np.cumsum(diffs**2, axis=1) / t - mean**2, 0) * t / np.maximum(t - 1, 1))
    fixed_missed = (np.abs(mean - true_delta) > 1.96 * sd / np.sqrt(t))[:, 50:].any(axis=1)
    assert fixed_missed.mean() > 2 * ever_missed.mean()
    last = mean_cs(diffs[0], alpha, t_star=n)
    assert last.estimate == pytest.approx(mean[0, -1]) and last.radius == pytest.approx(radius[0, -1])


def test_paired_losses_are_the_differences_whose_means_are_the_deltas():
    y, b, c = _failures(np.random.default_rng(17))
    losses = paired_losses(y, b, c)
    both = np.isfinite(b) & np.isfinite(c)
    assert losses.index.tolist() == np.flatnonzero(both).tolist()
    lb, lc = regression_losses(y, b), regression_losses(y, c)
    assert np.allclose(losses.absolute, (lc.absolute - lb.absolute)[both])
    assert np.allclose(losses.squared, (lc.squared - lb.squared)[both])
    assert np.isnan(lb.absolute[3]) and np.isnan(lc.squared[50])
    result = compare_regression(y, b, c, opts=OPTS)
    assert losses.absolute.mean() == pytest.approx(result.delta["mae"].value, abs=1e-12)
    assert losses.squared.mean() == pytest.approx(result.delta["mse"].value, abs=1e-12)
    assert losses.excluded == result.delta["mae"].excluded


def test_rows_left_out_are_counted_and_named():
    y, b, c = _failures(np.random.default_rng(18))
    y[10] = np.nan
    result = compare_regression(y, b, c, opts=OPTS)
    assert result.rows == {"total": 400, "baseline": 396, "candidate": 397, "paired": 395}
    assert result.baseline["mae"].excluded == {"y is not finite": 1, "prediction is not finite": 3}
    assert result.delta["mae"].excluded == {
        "y is not finite": 1,
        "baseline: prediction is not finite": 2,  # rows 3 and 51
        "candidate: prediction is not finite": 1,  # row 70
        "prediction is not finite": 1,  # row 50: both models
    }
    assert sum(result.delta["mae"].excluded.values()) + result.delta["mae"].rows == 400


def test_smape_leaves_out_rows_where_y_and_the_prediction_are_zero():
    y = np.array([0.0, 0.0, 1.0, 2.0, 3.0])
    b = np.array([0.0, 1.0, 1.5, 2.0, 2.0])
    result = compare_regression(y, b, b + 0.1, opts=OPTS)
    assert result.baseline["smape"].excluded == {"y and the prediction are both 0": 1}
    assert result.baseline["smape"].value == pytest.approx(np.mean([2.0, 2 * 0.5 / 2.5, 0.0, 2 * 1 / 5]))
    assert result.baseline["mape"].excluded == {"y is 0": 2}
    assert result.delta["smape"].excluded == {"baseline: y and the prediction are both 0": 1}


def test_a_model_with_no_usable_rows_has_no_values_and_says_why():
    y, b, c = _normal(np.random.default_rng(19))
    result = compare_regression(y, np.full_like(b, np.nan), c, opts=OPTS)
    for name in ("mae", "rmse", "median_ae", "r2"):
        est = result.baseline[name]
        assert est.value is None and est.rows == 0
        assert est.undefined == "no usable rows (prediction is not finite: 400)", name
        assert result.delta[name].value is None and result.delta[name].undefined.startswith("no usable rows")
    assert result.candidate["mae"].value is not None


def test_constant_y_leaves_r2_undefined_where_sklearn_reports_a_number():
    y = np.full(50, 3.0)
    b = y + np.random.default_rng(20).normal(0, 1, 50)
    result = compare_regression(y, b, b * 0.5 + 1.5, opts=OPTS)
    assert skm.r2_score(y, b) == 0.0  # force_finite: a number with no meaning
    assert result.baseline["r2"].value is None
    assert result.baseline["r2"].undefined == "y does not vary on these rows: r2 is undefined"
    assert result.delta["r2"].value is None and result.delta["r2"].undefined.startswith("y does not vary")


def test_one_row_has_values_without_intervals():
    result = compare_regression(np.array([2.0]), np.array([1.0]), np.array([2.5]), opts=OPTS)
    assert result.baseline["mae"].value == 1.0 and result.baseline["mae"].ci_low is None
    assert result.baseline["mae"].undefined == "one row: no interval"
    assert result.delta["mae"].value == -0.5 and result.delta["mae"].ci_low is None


@pytest.mark.parametrize(
    "args,message",
    [
        ((np.array([]), np.array([]), np.array([])), "no rows to evaluate: y is empty"),
        ((np.zeros(10), np.zeros(9), np.zeros(10)), "baseline has 9 rows but y has 10"),
        ((np.zeros(10), np.zeros(10), np.zeros(12)), "candidate has 12 rows but y has 10"),
        ((np.zeros((2, 2)), np.zeros(2), np.zeros(2)), "y must be a 1-D array"),
        ((np.zeros(3), np.array(["a", "b", "c"]), np.zeros(3)), "baseline must hold numbers"),
    ],
    ids=["empty", "short_baseline", "long_candidate", "two_dimensional_y", "text_predictions"],
)
def test_bad_input_is_refused_with_a_clear_message(args, message):
    with pytest.raises(WorkbenchError, match=message):
        compare_regression(*args, opts=OPTS)


@pytest.mark.parametrize(
    "quantiles,intervals,message",
    [
        ({"baseline": {0.9: np.zeros(4)}, "candidate": {0.5: np.zeros(4)}}, None, "different quantile levels"),
        ({"baseline": {1.0: np.zeros(4)}, "candidate": {1.0: np.zeros(4)}}, None, "strictly between 0 and 1"),
        ({"baseline": {0.9: np.zeros(4)}}, None, "quantiles must be given for both"),
        ({"baseline": {0.9: np.zeros(3)}, "candidate": {0.9: np.zeros(4)}}, None, "baseline quantile 0.9 has 3 rows"),
        (None, {"candidate": (np.zeros(4), np.ones(4))}, "intervals must be given for both"),
        (None, {"baseline": (np.zeros(4), np.ones(5)), "candidate": (np.zeros(4), np.ones(4))}, "baseline upper has 5"),
    ],
    ids=["levels_differ", "level_one", "one_model", "short_quantile", "one_model_interval", "long_upper"],
)
def test_bad_quantiles_and_intervals_are_refused(quantiles, intervals, message):
    y = np.arange(4.0)
    with pytest.raises(WorkbenchError, match=message):
        compare_regression(y, y, y, quantiles=quantiles, intervals=intervals, opts=OPTS)


def test_every_metric_has_a_direction_and_the_result_is_plain_json():
    y, b, c = _failures(np.random.default_rng(21))
    q = {role: {0.9: p + 1.0} for role, p in (("baseline", b), ("candidate", c))}
    iv = {role: (p - 1, p + 1) for role, p in (("baseline", b), ("candidate", c))}
    result = compare_regression(y, b, c, quantiles=q, intervals=iv, opts=OPTS)
    names = list(result.baseline)
    assert names == list(result.delta) == [
        "mae", "mse", "rmse", "median_ae", "mape", "smape", "r2", "bias", "pinball@0.9", "coverage", "interval_width"
    ]  # fmt: skip
    assert all(n.split("@")[0] in REGRESSION_METRICS for n in names)
    assert REGRESSION_METRICS["r2"].higher_is_better and not REGRESSION_METRICS["mae"].higher_is_better
    out = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert out["delta"]["mae"]["test"] == "paired t" and out["rows"]["paired"] == 396
    again = compare_regression(y, b, c, quantiles=q, intervals=iv, opts=OPTS)
    assert again.to_dict() == result.to_dict()  # seeded: reproducible
