"""The live SLO: sliding windows per arm, the Wilson interval and P99 against statsmodels/numpy, the breach rules."""

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from workbench.decide.policy import Outcome, parse_policy
from workbench.live.slo import ArmStats, ArmWindow, judge, wilson

LIVE = parse_policy(
    {"live": {"window_s": 10, "min_requests": 20, "max_error_rate": 0.05, "max_p99_ms": 100.0, "max_p99_ratio": 2.0}}
).live


@pytest.mark.parametrize(
    "errors, n, conf",
    [(0, 20, 0.95), (1, 20, 0.95), (7, 50, 0.9), (50, 50, 0.99), (3, 1000, 0.95)],
    ids=["none", "one", "some-90", "all-99", "rare"],
)
def test_wilson_matches_statsmodels(errors, n, conf):
    low, high = proportion_confint(errors, n, alpha=1 - conf, method="wilson")
    assert wilson(errors, n, conf) == pytest.approx((low, high), abs=1e-12)


def test_window_keeps_only_the_last_seconds_and_matches_numpy():
    rng = np.random.default_rng(7)
    w = ArmWindow("candidate", window_s=10)
    lat = rng.lognormal(1.0, 0.6, 500)
    err = rng.random(500) < 0.1
    times = np.linspace(0, 20, 500)
    for t, ms, e in zip(times, lat, err, strict=True):
        w.add(float(t), float(ms), bool(e))
    s = w.stats(now=20.0, confidence=0.95)
    keep = times >= 10.0
    assert s.requests == int(keep.sum()) and s.errors == int(err[keep].sum())
    assert s.p99_ms == pytest.approx(np.percentile(lat[keep], 99)) and s.p50_ms == pytest.approx(np.median(lat[keep]))
    assert (s.error_ci_low, s.error_ci_high) == pytest.approx(
        proportion_confint(s.errors, s.requests, alpha=0.05, method="wilson")
    )
    assert w.stats(now=40.0, confidence=0.95).requests == 0


def stats(arm, n, errors, p99, p50=1.0):
    low, high = wilson(errors, n, 0.95) if n else (None, None)
    return ArmStats(arm, n, errors, errors / n if n else None, low, high, p50 if n else None, p99 if n else None)


@pytest.mark.parametrize(
    "cand, base, breached, failing",
    [
        (stats("candidate", 19, 19, 5.0), stats("baseline", 100, 0, 5.0), False, []),
        (stats("candidate", 40, 1, 5.0), stats("baseline", 100, 0, 5.0), False, []),
        (stats("candidate", 40, 8, 5.0), stats("baseline", 100, 0, 5.0), True, ["live.errors.max_rate"]),
        (stats("candidate", 40, 0, 150.0), stats("baseline", 100, 0, 140.0), True, ["live.latency.p99.max_ms"]),
        (stats("candidate", 40, 0, 30.0), stats("baseline", 100, 0, 10.0), True, ["live.latency.p99.max_ratio"]),
        (stats("candidate", 40, 0, 30.0), stats("baseline", 10, 0, 10.0), False, []),
    ],
    ids=[
        "too-few-requests",
        "one-error-not-sure",
        "errors-surely-above",
        "p99-over-max",
        "p99-over-ratio",
        "ratio-needs-baseline-requests",
    ],
)
def test_judge(cand, base, breached, failing):
    report = judge(LIVE, {"candidate": cand, "baseline": base}, 0.95)
    assert report.breached is breached
    assert [c.gate for c in report.checks if c.outcome == Outcome.FAIL] == failing
    if breached:
        assert report.reason.endswith(
            f"over the last 10 s (candidate {cand.requests} requests, baseline {base.requests})"
        )
        card = report.scorecard()
        assert card["verdict"] == "ROLLBACK" and card["counts"][Outcome.FAIL] == len(failing)
        assert card["live"]["arms"]["candidate"]["requests"] == cand.requests


def test_breach_reason_carries_the_numbers():
    arms = {"candidate": stats("candidate", 40, 12, 5.0), "baseline": stats("baseline", 60, 0, 4.0)}
    report = judge(LIVE, arms, 0.95)
    assert report.reason.startswith(
        "candidate error rate 0.3 [0.1807, 0.4543] (12 errors in 40 requests, 95% Wilson) whole interval > 0.05"
    )
    assert [c.outcome for c in report.checks] == [Outcome.FAIL, Outcome.PASS, Outcome.PASS]
