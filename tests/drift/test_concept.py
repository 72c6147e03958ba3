"""Concept drift (Page-Hinkley, calibration drift) on planted change points, and CBPE estimates."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from workbench.drift.concept import (
    PageHinkley,
    calibration_drift,
    cbpe,
    estimated_metrics,
    fit_calibrator,
    page_hinkley,
    soft_roc_auc,
)
from workbench.evaluate.metrics import binary_metrics

CHANGE_AT = 5000
MAX_DELAY = 1000  # rows after the change by which the default Page-Hinkley must alarm (error rate 0.20 -> 0.35)
MAX_CHANGE_ERROR = 600  # rows between the estimated and the planted change point


def river_page_hinkley(x, p: PageHinkley) -> list[int]:
    """river's PageHinkley ("up"), one value at a time: the loop the vectorized version must equal."""
    alarms, mean, n, s, low = [], 0.0, 0, 0.0, np.inf
    for i, v in enumerate(x):
        n += 1
        mean += (v - mean) / n
        s = p.alpha * s + (v - mean - p.delta)
        low = min(low, s)
        if n >= p.min_instances and s - low > p.threshold:
            alarms.append(i)
            mean, n, s, low = 0.0, 0, 0.0, np.inf
    return alarms


def error_stream(seed: int, n: int, change_at: int | None, before=0.20, after=0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rate = np.full(n, before)
    if change_at is not None:
        rate[change_at:] = after
    return (rng.random(n) < rate).astype(float)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(PageHinkley(), id="defaults"),
        pytest.param(PageHinkley(delta=0.005, threshold=20, alpha=0.999), id="sensitive-forgetting"),
    ],
)
def test_page_hinkley_equals_the_sequential_algorithm(params):
    x = error_stream(1, 30_000, 10_000)
    assert [a.alarm_index for a in page_hinkley(x, params)] == river_page_hinkley(x, params)


def test_page_hinkley_finds_a_planted_change_within_the_stated_delay():
    for seed in range(10):
        alarms = page_hinkley(error_stream(seed, 20_000, CHANGE_AT))
        assert alarms, seed
        first = alarms[0]
        assert CHANGE_AT <= first.alarm_index <= CHANGE_AT + MAX_DELAY, (seed, first)
        assert abs(first.change_index - CHANGE_AT) <= MAX_CHANGE_ERROR, (seed, first)


def test_page_hinkley_stays_quiet_without_a_change():
    assert not any(page_hinkley(error_stream(seed, 20_000, None)) for seed in range(20))


def calibration_data(seed: int, n: int, shift: float):
    rng = np.random.default_rng(seed)
    s_ref, s_cur = rng.random(n), rng.random(n)
    y_ref = (rng.random(n) < s_ref).astype(float)
    y_cur = (rng.random(n) < np.clip(s_cur + shift, 0, 1)).astype(float)
    return s_ref, y_ref, s_cur, y_cur, np.quantile(s_ref, np.linspace(0, 1, 11))


def test_calibration_drift_detects_a_planted_shift_of_label_rates():
    out = calibration_drift(*calibration_data(0, 5000, 0.08))
    assert out["detected"] and out["p_value"] < 1e-6 and out["df"] == 10
    assert out["max_abs_rate_diff"] > 0.05 and sum(b["current_rows"] for b in out["bins"]) == 5000


def test_calibration_drift_false_alarm_rate_is_near_alpha():
    assert not calibration_drift(*calibration_data(0, 5000, 0.0))["detected"]
    alarms = sum(calibration_drift(*calibration_data(seed, 3000, 0.0))["detected"] for seed in range(60))
    assert alarms <= 9  # alpha 0.05: 3 expected of 60


def test_soft_roc_auc_equals_sklearn_with_weighted_duplicates():
    rng = np.random.default_rng(4)
    score = np.round(rng.random(500), 2)  # ties
    p = rng.random(500)
    expected = roc_auc_score(np.r_[np.ones(500), np.zeros(500)], np.r_[score, score], sample_weight=np.r_[p, 1 - p])
    assert soft_roc_auc(score, p) == pytest.approx(expected, abs=1e-12)


def test_cbpe_estimates_match_realized_on_calibrated_scores():
    rng = np.random.default_rng(8)
    n = 40_000
    true_p = rng.beta(2, 5, n)
    raw = true_p**0.5  # a monotone distortion: calibration must undo it
    y = (rng.random(n) < true_p).astype(float)
    ref, cur = slice(0, n // 2), slice(n // 2, n)
    cal = fit_calibrator(raw[ref], y[ref].astype(np.int64))
    label = y[cur].copy()
    known = rng.random(n // 2) < 0.5
    out = cbpe(cal, raw[cur], label, known, 0.55, lambda yy, ss: binary_metrics(yy, ss, 0.55), landed=True)
    assert out["calibrator"] == "isotonic" and out["unlabelled"]["rows"] == (~known).sum()
    for section in ("landed", "labelled"):
        for m, err in out[section]["abs_error"].items():
            assert err < 0.03, (section, m, out[section])


def test_cbpe_without_reference_labels_uses_scores_as_probabilities():
    cal = fit_calibrator(np.array([0.2, 0.8]), np.array([0, 1]))
    assert cal.kind.startswith("none") and cal(np.array([0.3]))[0] == 0.3
    est = estimated_metrics(np.array([0.9, 0.1]), np.array([0.9, 0.1]), 0.5)
    assert est["accuracy"] == pytest.approx(0.9) and est["precision"] == pytest.approx(0.9)
