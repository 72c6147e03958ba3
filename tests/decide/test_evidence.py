"""The evidence a decision judges: the pair's growing sample, its anytime-valid bounds, slices and citation."""

import math

import numpy as np
import pyarrow as pa
import pytest
from sklearn import metrics as skm

from conftest import fresh_run, seed_run
from workbench.decide.evidence import Sample, build_evidence
from workbench.decide.judge import gather
from workbench.decide.policy import parse_policy
from workbench.evaluate.sequential import (
    cs_radius,
    one_sided_bounds,
    optimal_rho,
    paired_delta_cs,
    proportion_bounds,
    proportion_rows_to_settle,
    quantile_bounds,
    rows_to_settle,
)
from workbench.store import Store

POLICY = parse_policy(
    {
        "metrics": [
            {"metric": "f1", "min_absolute_change": -0.02},
            {"metric": "roc_auc", "min_absolute_change": -0.01},
            {"metric": "log_loss", "min_relative_change": -0.05},
        ],
        "segments": [{"column": "*", "metric": "f1", "min_absolute_change": -0.02}],
        "min_segment_rows": 500,
    }
)


def synthetic(n: int = 8000, seed: int = 0, segments: bool = True) -> Sample:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    logit = 1.2 * x - 0.4
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    base = 1 / (1 + np.exp(-(logit + rng.standard_normal(n))))
    cand = 1 / (1 + np.exp(-(logit + 0.7 * rng.standard_normal(n))))
    region = np.where(rng.random(n) < 0.97, "big", "tiny").astype(object)
    region[:100] = "tiny"
    seg = {"region": region} if segments else {}
    t = np.datetime64("2026-01-01T00:00:00", "us") + (np.arange(n) * 60_000_000).astype("timedelta64[us]")
    lat = rng.lognormal(1.0, 0.3, (2, n))
    return Sample(
        np.array([f"r{i}" for i in range(n)], dtype=object),
        t,
        y,
        base,
        cand,
        np.zeros(n, bool),
        np.zeros(n, bool),
        lat[0],
        lat[1],
        seg,
        ("run",),
        True,
    )


def test_values_match_sklearn_and_bounds_are_the_confidence_sequence():
    s = synthetic()
    ev = build_evidence(s, POLICY)
    y = s.label.astype(int)
    for role, score in (("baseline", s.baseline), ("candidate", s.candidate)):
        assert ev[role]["f1"]["value"] == pytest.approx(skm.f1_score(y, score >= 0.5), abs=1e-12)
        assert ev[role]["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
        assert ev[role]["log_loss"]["value"] == pytest.approx(skm.log_loss(y, score), abs=1e-12)
    for m in ("f1", "roc_auc", "log_loss"):
        cs = paired_delta_cs(m, y, s.baseline, s.candidate, alpha=0.01, t_star=100_000, one_sided=True)
        d = ev["delta"][m]
        assert (d["value"], d["ci_low"], d["ci_high"]) == pytest.approx((cs.estimate, cs.lower, cs.upper), abs=1e-12)
        assert d["rows"] == len(y) and d["ci_low"] < d["value"] < d["ci_high"]
    assert ev["bound"] == "sequential" and ev["alpha"] == pytest.approx(0.01) and ev["labeled_rows"] == len(y)


def test_segments_list_small_values_and_correct_only_the_failure_side():
    ev = build_evidence(synthetic(), POLICY)
    region = ev["segments"]["region"]
    assert region["tiny"]["small"] and region["tiny"]["rows"] < 500
    big = region["big"]["delta"]["f1"]
    assert big["fail_alpha"] == pytest.approx(0.01)  # one segment judged: no correction
    two = parse_policy(POLICY.to_dict() | {"min_segment_rows": 100})
    d = build_evidence(synthetic(), two)["segments"]["region"]
    assert d["big"]["delta"]["f1"]["fail_alpha"] == pytest.approx(0.005)  # Bonferroni over the 2 judged
    f = d["tiny"]["delta"]["f1"]
    assert f["fail_low"] < f["ci_low"] and f["fail_high"] > f["ci_high"]  # wider only for declaring it worse


def test_recent_window_and_after_change_point():
    s = synthetic()
    from datetime import UTC, datetime

    ev = build_evidence(s, POLICY, change_point=datetime(2026, 1, 5, tzinfo=UTC))
    span = (s.time[-1] - s.time[0]) * 0.2
    assert ev["recent"]["rows"] == int((s.time >= s.time[-1] - span).sum())
    assert ev["recent"]["from"].startswith("2026-01-05") and not ev["recent"]["small"]
    after = (s.time >= np.datetime64("2026-01-05T00:00:00", "us")).sum()
    assert ev["after_change"]["rows"] == after and ev["after_change"]["delta"]["f1"]["rows"] == after
    assert "after_change" not in build_evidence(s, POLICY)


def drifted_sample(n: int = 20_000, seed: int = 1, worse_top: bool = True) -> Sample:
    """A candidate about the baseline; ``worse_top``: much worse on the top quartile of a drifted feature ``x``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    logit = 1.2 * x - 0.4
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    seen = logit + rng.standard_normal(n)
    base = 1 / (1 + np.exp(-seen))
    shift = np.where((x > np.quantile(x, 0.75)) & worse_top, -1.5, 0.0)  # many false negatives there
    cand = 1 / (1 + np.exp(-(seen + shift + 0.2 * rng.standard_normal(n))))  # else about the baseline
    x[:50] = np.nan  # missing values are a bin of their own
    t = np.datetime64("2026-01-01T00:00:00", "us") + (np.arange(n) * 60_000_000).astype("timedelta64[us]")
    kind = np.where(rng.random(n) < 0.5, "web", "app").astype(object)
    kind[:20] = "kiosk"
    s = synthetic(n, seed, segments=False)
    return Sample(
        s.request_id,
        t,
        y,
        base,
        cand,
        *(np.zeros(n, bool),) * 2,
        s.latency_baseline,
        s.latency_candidate,
        features={"x": x, "kind": kind},
    )


def test_drifted_slices_are_quantile_bins_and_categories_with_bonferroni_fail_bounds():
    from workbench.decide.scorecard import score

    s = drifted_sample()
    drift = {
        "features": {"x": {"drifted": True, "kind": "numerical"}, "kind": {"drifted": True, "kind": "categorical"}}
    }
    ev = build_evidence(s, POLICY, drifted={"x": "numerical", "kind": "categorical"})
    x, kind = ev["drifted_slices"]["x"], ev["drifted_slices"]["kind"]
    assert x["(missing)"] == {"rows": 50, "small": True} and kind["(rarer values: 1)"] == {"rows": 20, "small": True}
    quartiles = {k: v for k, v in x.items() if k != "(missing)"}
    assert len(quartiles) == 4 and all(abs(v["rows"] - (len(s) - 50) / 4) <= 1 for v in quartiles.values())
    edges = np.nanquantile(s.features["x"], [0.25, 0.5, 0.75])
    top = x[f">= {edges[2]:.4g}"]
    ok = s.features["x"] >= edges[2]
    y = s.label[ok].astype(int)
    want = skm.f1_score(y, s.candidate[ok] >= 0.5) - skm.f1_score(y, s.baseline[ok] >= 0.5)
    assert top["delta"]["f1"]["value"] == pytest.approx(want, abs=1e-12)
    judged = 4 + 2  # four quartiles of x, "= web" and "= app" of kind
    assert top["delta"]["f1"]["fail_alpha"] == pytest.approx(0.01 / judged)
    card = score(POLICY, ev, drift)
    failed = [c for c in card.checks if c.kind == "drifted_slice" and c.outcome == "fail"]
    on_x = {c.gate for c in failed if c.gate.startswith("drifted.x ")}
    assert on_x == {
        f"drifted.x >= {edges[2]:.4g}.{m}" for m in ("f1.min_absolute_change", "log_loss.min_relative_change")
    }
    assert not any(c.critical for c in failed)  # a bin surely worse holds for review; it never rolls back alone
    assert {sk.gate for sk in card.skipped} >= {"drifted.x (missing)", "drifted.kind (rarer values: 1)"}


def test_drifted_slices_are_harm_tests_by_default():
    from workbench.decide.scorecard import score

    s = drifted_sample(worse_top=False)
    drift = {"features": {"x": {"drifted": True, "kind": "numerical"}}}
    card = score(POLICY, build_evidence(s, POLICY, drifted={"x": "numerical"}), drift)
    sliced = [c for c in card.checks if c.kind == "drifted_slice"]
    assert len(sliced) == 4 * 3 and all(c.outcome == "pass" for c in sliced)  # 4 bins x 3 metric gates
    strict = parse_policy(POLICY.to_dict() | {"drift": {"slices_require": "non_inferiority"}})
    card = score(strict, build_evidence(s, strict, drifted={"x": "numerical"}), drift)
    assert {c.outcome for c in card.checks if c.kind == "drifted_slice"} >= {"inconclusive"}
    off = parse_policy(POLICY.to_dict() | {"drift": {"drifted_slices": False}})
    assert "drifted_slices" not in build_evidence(s, off, drifted={"x": "numerical"})


def test_judge_run_slices_the_features_the_drift_report_found_drifted():
    from workbench.decide.judge import judge_run

    drift = {"features": {"x": {"drifted": True, "kind": "numerical"}, "region": {"drifted": False}}}
    with Store() as store:
        seed_run(store, "run_d", rows=8000)
        judged = judge_run(store, store.require_run("run_d"), POLICY, drift)
    assert list(judged.evidence["drifted_slices"]) == ["x"]
    bins = judged.evidence["drifted_slices"]["x"]
    assert len(bins) == 4 and sum(b["rows"] for b in bins.values()) == judged.evidence["labeled_rows"]
    assert any(c.gate.startswith("drifted.x ") for c in judged.scorecard.checks)


def test_sample_counts_each_request_once_from_the_latest_run():
    def table(ids, score):
        n = len(ids)
        return pa.table(
            {
                "request_id": pa.array(ids),
                "event_time": pa.array(np.arange(n).astype("datetime64[s]"), pa.timestamp("s")),
                "label": pa.array([1] * n, pa.int32()),
                "baseline_score": pa.array([0.5] * n),
                "baseline_failed": pa.array([False] * n),
                "baseline_latency_ms": pa.array([1.0] * n),
                "candidate_score": pa.array([score] * n),
                "candidate_failed": pa.array([False] * n),
                "candidate_latency_ms": pa.array([1.0] * n),
            }
        )

    s = Sample.from_tables(
        [("old", table(["a", "b", "c"], 0.1)), ("new", table(["b", "c", "d"], 0.9))],
        online=False,
        thresholds=(0.5, 0.5),
    )
    assert sorted(s.request_id) == ["a", "b", "c", "d"]
    assert dict(zip(s.request_id, s.candidate, strict=True)) == {"a": 0.1, "b": 0.9, "c": 0.9, "d": 0.9}
    cite = s.cite()
    assert cite["runs"] == ["old", "new"] and cite["labelled_rows"] == 4 and len(cite["labels_digest"]) == 64


def test_gather_pools_the_pairs_finished_runs_and_declared_segments():
    with Store() as store:
        seed_run(store, "run_a", rows=3000)
        fresh_run(store, 1, rows=2000)
        seed_run(store, "other", rows=1000, candidate_version="3")  # another pair: not pooled
        sample, missing = gather(store, store.require_run("run_a1"), POLICY)
    assert sample.runs == ("run_a", "run_a1") and len(sample) == 5000 and missing == []
    assert set(sample.segments) == {"region"} and set(sample.segments["region"]) == {"north", "south"}
    assert np.all(np.diff(sample.time.astype(np.int64)) >= 0)  # event-time order


def test_error_and_latency_bounds():
    lo, hi = proportion_bounds(0, 20_000, 0.01, 100_000)
    assert lo == 0 and 0 < hi < 0.001  # no errors in 20,000 requests: surely below 0.1 %
    lo, hi = proportion_bounds(0, 3_000, 0.01, 100_000)
    assert hi > 0.001  # too few requests to tell
    lo, hi = proportion_bounds(200, 20_000, 0.01, 100_000)
    assert lo > 0.001 and lo < 0.01 < hi
    n = proportion_rows_to_settle(0.0, 0.001, 0.01, 100_000)  # no errors: how many requests show < 0.1 %
    assert proportion_bounds(0, n, 0.01, 100_000)[1] <= 0.001 < proportion_bounds(0, int(n * 0.99), 0.01, 100_000)[1]
    x = np.random.default_rng(3).lognormal(1.0, 0.5, 20_000)
    est, lo, hi = quantile_bounds(x, 0.99, 0.01, 100_000)
    assert lo < est < hi and est == pytest.approx(np.quantile(x, 0.99))
    est, lo, hi = quantile_bounds(x[:50], 0.99, 0.01, 100_000)
    assert math.isinf(hi)  # 50 rows say nothing about a P99's upper end


def test_rows_to_settle_is_where_the_bound_clears():
    sd, gap, alpha, t_star = 0.8, 0.02, 0.01, 100_000
    need = rows_to_settle(gap, sd, alpha, t_star)
    rho = optimal_rho(t_star, alpha, one_sided=True)
    assert (
        sd * cs_radius(need, alpha, rho, one_sided=True)
        < gap
        <= sd * cs_radius(need * 0.99, alpha, rho, one_sided=True)
    )
    lo, _ = one_sided_bounds(0.0, sd, need, alpha, t_star)
    assert -gap < lo
    assert rows_to_settle(0.0, sd, alpha, t_star) is None


def test_drift_context_reads_p_values_as_p_values():
    from workbench.decide.context import drift_context

    pred = {
        "baseline": {"test": "ks", "statistic": 1e-57, "threshold": 0.05, "drifted": True},
        "candidate": {"test": "wasserstein", "statistic": 0.5, "threshold": 0.1, "drifted": True},
    }
    details = [c["detail"] for c in drift_context({"prediction_drift": pred})]
    assert details == [
        "baseline scores, reference vs current: ks p-value 1e-57 (below its threshold)",
        "candidate scores, reference vs current: wasserstein 0.5 (above its threshold)",
    ]
