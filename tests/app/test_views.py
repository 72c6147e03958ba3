"""The app's aggregates (Store.app_*, computed in DuckDB) and the pure views over them, against sklearn,
numpy and pandas on the same rows."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, roc_auc_score

from conftest import make_evaluation
from workbench import WorkbenchError, views
from workbench.ingest.traffic import ingest
from workbench.store import Store

N = 4000
BINS = 200


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A store with one finished run of N requests (both models' scores, classes, latencies; a few candidate
    errors; labels on ~90% of the rows) and the same rows as a pandas frame."""
    rng = np.random.default_rng(7)
    tmp = tmp_path_factory.mktemp("views")
    ids = np.char.add("r", np.arange(N).astype(str))
    times = np.datetime64("2013-07-01T00:00:00") + (np.arange(N) * 1800).astype("timedelta64[s]")
    carrier = rng.choice(["AA", "B6", "DL", "UA"], N)
    hour = rng.integers(5, 23, N).astype(np.int32)
    x = rng.normal(0, 1, N)
    label = (rng.random(N) < 1 / (1 + np.exp(-(x + 0.1 * (hour - 14))))).astype(np.int32)
    labelled = rng.random(N) < 0.9
    pq.write_table(
        pa.table({"request_id": ids, "event_time": times, "carrier": carrier, "hour": hour, "x": x}),
        tmp / "traffic.parquet",
    )
    pq.write_table(pa.table({"request_id": ids[labelled], "label": label[labelled]}), tmp / "labels.parquet")
    store = Store(tmp / "lake")
    ingest(store, tmp / "traffic.parquet", "t")
    from workbench.ingest.traffic import ingest_labels

    ingest_labels(store, tmp / "labels.parquet", "t")
    bs = 1 / (1 + np.exp(-(x + rng.normal(0, 1.0, N))))
    cs = 1 / (1 + np.exp(-(x + 0.1 * (hour - 14) + rng.normal(0, 0.6, N))))
    cerr = rng.random(N) < 0.02
    cs_stored = np.where(cerr, np.nan, cs)
    bl, cl = rng.lognormal(0.2, 0.5, N), rng.lognormal(0.5, 0.4, N)
    paired = pa.table(
        {
            "_row": np.arange(N),
            "baseline_score": bs,
            "baseline_class": (bs >= 0.5).astype(np.int32),
            "baseline_latency_ms": bl,
            "baseline_error": pa.nulls(N, pa.string()),
            "candidate_score": pa.array(cs_stored, from_pandas=True),
            "candidate_class": pa.array((cs >= 0.4).astype(np.int32), mask=cerr),
            "candidate_latency_ms": cl,
            "candidate_error": pa.array(np.where(cerr, "ValueError: bad", None), pa.string()),
        }
    )
    refs = {"uri": "test:m", "name": "m", "version": "1", "features": ["x"], "threshold": 0.5}
    store.create_run(
        run_id="r1",
        traffic="t",
        baseline=refs,
        candidate=refs | {"version": "2", "threshold": 0.4},
        rows_total=N,
        batch_size=N,
        device="cpu",
        mode="throughput",
        meta={},
    )
    store.commit_batch("r1", 0, 0, N - 1, N, 0.1, paired)
    store.finish_run("r1")
    df = pd.DataFrame(
        {
            "request_id": ids,
            "event_time": times,
            "carrier": carrier,
            "hour": hour,
            "x": x,
            "label": np.where(labelled, label, -1),
            "bs": bs,
            "cs": cs_stored,
            "bc": (bs >= 0.5).astype(int),
            "cc": np.where(cerr, -1, (cs >= 0.4).astype(int)),
            "bl": bl,
            "cl": cl,
        }
    )
    yield store, df
    store.close()


def _role(df, role):
    lab = df[df.label >= 0]
    score = lab["bs" if role == "baseline" else "cs"]
    ok = score.notna()
    return lab.label[ok].to_numpy(), score[ok].to_numpy()


@pytest.mark.parametrize("role", ["baseline", "candidate"])
def test_roc_pr_points_and_auc_match_sklearn(scored, role):
    store, df = scored
    s = store.app_score_summary("r1", BINS, 20)
    c = views.curves(s["scores"], role, BINS)
    y, score = _role(df, role)
    for k in (0, 1, 37, 100, 150, 199, 200):
        pred = score * BINS >= k  # the histogram's bin floor(score * bins) >= k
        tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
        assert c.tpr[k] == pytest.approx(tp / (y == 1).sum())
        assert c.fpr[k] == pytest.approx(fp / (y == 0).sum())
        assert (np.isnan(c.precision[k]) and tp + fp == 0) or c.precision[k] == pytest.approx(tp / (tp + fp))
    assert (c.positives, c.negatives) == (int((y == 1).sum()), int((y == 0).sum()))
    assert c.roc_auc == pytest.approx(roc_auc_score(y, score), abs=2e-3)


@pytest.mark.parametrize("role", ["baseline", "candidate"])
def test_calibration_matches_sklearn_uniform_bins(scored, role):
    store, df = scored
    s = store.app_score_summary("r1", BINS, 20)
    cal = views.calibration(s["scores"], role, BINS, 10)
    y, score = _role(df, role)
    prob_true, prob_pred = calibration_curve(y, score, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(cal.positive_rate, prob_true, atol=1e-12)
    np.testing.assert_allclose(cal.mean_score, prob_pred, atol=1e-12)
    assert cal.rows.sum() == len(y)
    with pytest.raises(ValueError, match="do not split"):
        views.calibration(s["scores"], role, BINS, 7)


def test_confusion_and_agreement_match_sklearn(scored):
    store, df = scored
    pairs = store.app_score_summary("r1", BINS, 20)["pairs"]
    lab = df[df.label >= 0]
    np.testing.assert_array_equal(views.confusion(pairs, "baseline"), confusion_matrix(lab.label, lab.bc))
    ok = lab[lab.cc >= 0]
    np.testing.assert_array_equal(views.confusion(pairs, "candidate"), confusion_matrix(ok.label, ok.cc))
    a = views.agreement(pairs)
    both = df[df.cc >= 0]
    assert a["rows"] == len(both) and a["disagree"] == int((both.bc != both.cc).sum())
    lb = both[both.label >= 0]
    table = pd.crosstab(lb.bc == lb.label, lb.cc == lb.label).to_numpy()
    np.testing.assert_array_equal(a["paired"], table)


def test_latency_histogram_and_exact_percentiles(scored):
    store, df = scored
    s = store.app_score_summary("r1", BINS, 20)
    for role, col in (("baseline", "bl"), ("candidate", "cl")):
        h = views.latency_histogram(s["latency"], role, 20)
        assert h["rows"].sum() == N and h["share"].sum() == pytest.approx(1)
        expected = pd.Series(np.floor(np.log10(df[col]) * 20)).value_counts().sort_index()
        np.testing.assert_array_equal(h["rows"], expected.to_numpy())
        np.testing.assert_allclose(h["lo"], 10 ** (expected.index.to_numpy() / 20))
    q = store.app_latency_quantiles("r1", [0.5, 0.95, 0.99])
    np.testing.assert_allclose(q["baseline"], np.quantile(df.bl, [0.5, 0.95, 0.99]))
    np.testing.assert_allclose(q["candidate"], np.quantile(df.cl, [0.5, 0.95, 0.99]))
    rows = views.latency_rows({}, q)
    assert [r["percentile"] for r in rows] == ["p50", "p95", "p99"] and rows[0]["source"] == "replayed rows"
    assert rows[2]["ratio"] == pytest.approx(q["candidate"][2] / q["baseline"][2])


def test_breakdowns_per_day_week_month_and_segment_match_pandas(scored):
    store, df = scored
    assert store.app_segment_columns("t") == ["carrier", "hour"]  # text and integers, not the float x
    b = store.app_breakdowns("r1", ["carrier", "hour"])
    lab = df[df.label >= 0]
    by_carrier = {r["key"]: r for r in views.breakdown_rows(b["carrier"])}
    for carrier, g in lab.groupby("carrier"):
        r = by_carrier[carrier]
        assert r["rows"] == int((df.carrier == carrier).sum()) and r["labelled"] == len(g)
        assert r["baseline_accuracy"] == pytest.approx((g.bc == g.label).mean())
        assert r["candidate_accuracy"] == pytest.approx((g.cc == g.label).mean())
        assert r["candidate_mean_score"] == pytest.approx(df[df.carrier == carrier].cs.mean())
        assert r["candidate_failures"] == int(((df.carrier == carrier) & df.cs.isna()).sum())
    assert len(b["hour"]) == df.hour.nunique()
    day = df.event_time.dt.normalize()
    keys = {
        "day": day,
        "week": day - pd.to_timedelta(day.dt.weekday, unit="D"),
        "month": df.event_time.dt.to_period("M").dt.start_time,
    }
    for period, key in keys.items():
        got = views.breakdown_rows(views.rollup(b["day"], period))
        rows = df.groupby(key).size()
        assert [r["rows"] for r in got] == rows.tolist()
        assert [pd.Timestamp(r["key"]) for r in got] == list(rows.index)
        acc = lab.groupby(key[lab.index]).apply(lambda g: (g.bc == g.label).mean())
        np.testing.assert_allclose([r["baseline_accuracy"] for r in got], acc.to_numpy())
    assert [g["key"] for g in views.largest(b["carrier"], 2)] == df.carrier.value_counts().index[:2].tolist()
    with pytest.raises(WorkbenchError, match="no column"):
        store.app_breakdowns("r1", ["nope"])


def test_disagreements_are_limited_and_ordered_with_features(scored):
    store, df = scored
    t = store.app_disagreements("r1", 25).to_pandas()
    both = df[(df.cc >= 0) & (df.bc != df.cc)].copy()
    both["gap"] = (both.cs - both.bs).abs()
    want = both.assign(_row=both.index).sort_values(["gap", "_row"], ascending=[False, True]).head(25)
    assert t.request_id.tolist() == want.request_id.tolist()
    assert {"carrier", "hour", "x", "event_time", "label"} <= set(t.columns)
    assert (t.baseline_class != t.candidate_class).all()


def test_metric_rows_take_intervals_or_bare_numbers():
    ev = make_evaluation("r", metrics={"roc_auc": (0.70, 0.72, 0.01, 0.03), "log_loss": (0.5, 0.49, -0.02, -0.005)})
    rows = {r["metric"]: r for r in views.metric_rows(ev)}
    assert list(rows) == ["roc_auc", "log_loss"]  # registry order
    r = rows["roc_auc"]
    assert (r["baseline"], r["baseline_ci_low"], r["candidate_ci_high"]) == pytest.approx((0.70, 0.69, 0.73))
    assert (r["delta"], r["delta_ci_low"], r["delta_ci_high"], r["p_value"], r["mde"]) == pytest.approx(
        (0.02, 0.01, 0.03, 0.01, 0.012)
    )
    assert r["improved"] is True and rows["log_loss"]["improved"] is True  # lower log loss is better
    flat = {"baseline": {"accuracy": 0.7, "f1": 0.4, "pr_auc": 0.3}, "candidate": {"accuracy": 0.72, "f1": 0.38}}
    rows = {r["metric"]: r for r in views.metric_rows(flat)}
    assert list(rows) == ["accuracy", "f1", "pr_auc"]
    assert rows["accuracy"]["delta"] == pytest.approx(0.02) and rows["accuracy"]["delta_ci_low"] is None
    assert rows["f1"]["improved"] is None and rows["pr_auc"]["delta"] is None  # no interval: no emphasis
    assert views.difference_text(rows["f1"]) == ""
    seg = views.segment_rows(make_evaluation(segments={"carrier": {"AA": {"rows": 900, "f1": (0.4, 0.5, 0.05, 0.15)}}}))
    assert seg[0]["column"] == "carrier" and seg[0]["value"] == "AA" and seg[0]["delta"] == pytest.approx(0.1)
    assert views.error_rows(make_evaluation(errors=(5, 5000)))[1]["rate"] == pytest.approx(0.001)


def test_better_or_worse_only_when_the_interval_excludes_zero():
    ev = make_evaluation(
        metrics={"roc_auc": (0.70, 0.72, 0.01, 0.03), "fpr": (0.10, 0.12, 0.01, 0.03), "f1": (0.40, 0.39, -0.03, 0.01)}
    )
    ev["delta"]["f1"]["p_value"] = 0.91
    rows = {r["metric"]: r for r in views.metric_rows(ev)}
    assert [views.difference_text(rows[m]) for m in ("roc_auc", "fpr", "f1")] == [
        "candidate better",
        "baseline better",  # a higher false-positive rate, surely
        "no significant difference",
    ]
    assert rows["f1"]["improved"] is None and rows["f1"]["significant"] is False


@pytest.mark.parametrize(
    "x,signed,want",
    [
        (165184, False, "165,184"),
        (165184.0, False, "165,184"),
        (0.81234567, False, "0.8123"),
        (-0.0123456, True, "-0.01235"),
        (0.02, True, "+0.02"),
        (12345.67, False, "12,346"),
        (1234.5, False, "1,234"),
        (None, False, ""),
        (float("nan"), False, ""),
    ],
    ids=["count", "count-float", "fraction", "signed-delta", "signed-plus", "large", "thousands", "none", "nan"],
)
def test_number_reads_like_people_write_it(x, signed, want):
    assert views.number(x, signed) == want


@pytest.mark.parametrize(
    "ms,signed,want",
    [
        (0.000867, False, "867 ns"),
        (0.0421, False, "42.1 µs"),
        (2.2, False, "2.2 ms"),
        (123.456, False, "123 ms"),
        (1530.0, False, "1.53 s"),
        (-0.25, True, "-250 µs"),
        (None, False, ""),
    ],
    ids=["nano", "micro", "milli", "milli-3-digits", "seconds", "signed-micro", "none"],
)
def test_duration_picks_the_unit(ms, signed, want):
    assert views.duration(ms, signed) == want


def test_check_rows_failing_first_with_readable_numbers():
    def check(gate, outcome, **kw):
        base = dict(
            kind="quality",
            metric="roc_auc",
            criterion="min_absolute_change",
            threshold=-0.01,
            baseline=None,
            candidate=None,
            delta=None,
            critical=False,
            reason=f"{gate} because",
            rows=None,
            settle_rows=None,
        )
        return base | {"gate": gate, "outcome": outcome} | kw

    delta = {"value": 0.0123, "ci_low": -0.004, "ci_high": 0.0291, "fail_low": None, "fail_high": None}
    checks = [
        check(
            "evidence.labeled_rows",
            "pass",
            kind="evidence",
            metric="labeled_rows",
            criterion="min_rows",
            threshold=1000.0,
            candidate=165184,
            rows=165184,
        ),
        check(
            "recent.roc_auc.min_absolute_change",
            "inconclusive",
            baseline=0.71234,
            candidate=0.72464,
            delta=delta,
            rows=4321,
            settle_rows=165200,
        ),
        check(
            "latency.p99.max_ratio",
            "fail",
            kind="latency",
            metric="latency_p99_ms",
            criterion="max_ratio",
            threshold=1.2,
            baseline=0.85,
            candidate=2.4,
            critical=True,
            delta={"value": 1.55, "ci_low": 1.2, "ci_high": 1.9},
        ),
        check(
            "errors.rate",
            "inconclusive",
            kind="errors",
            metric="error_rate",
            criterion="max_rate",
            threshold=0.001,
            baseline=0.0,
            candidate=0.0,
            rows=7820,
            delta={"value": 0.0, "ci_low": 0.0, "ci_high": 0.002414},
            settle_rows=6764,
        ),
        check("quality.f1.threshold", "fail", metric="f1", criterion="threshold", threshold=0.4, candidate=0.38),
    ]
    rows = views.check_rows(checks)
    assert [r["Gate"] for r in rows] == [
        "latency.p99.max_ratio",  # critical failures first
        "quality.f1.threshold",
        "recent.roc_auc.min_absolute_change",  # the open check needing most rows first
        "errors.rate",
        "evidence.labeled_rows",
    ]
    lat, f1, auc, err, ev = rows
    assert (lat["Outcome"], lat["Baseline"], lat["Candidate"]) == ("✗ fail (critical)", "850 µs", "2.4 ms")
    assert lat["Candidate − baseline [interval]"] == "+1.55 ms [+1.2 ms, +1.9 ms]"
    assert lat["Requirement"] == "≤ 1.2 × baseline" and f1["Requirement"] == "≥ 0.4"
    assert f1["Baseline"] == "" and f1["Rows judged"] == "" and f1["Candidate − baseline [interval]"] == ""
    assert auc["Outcome"] == "? inconclusive" and auc["More rows to settle"] == "165,200"
    assert auc["Baseline"] == "0.7123" and auc["Candidate − baseline [interval]"] == "+0.0123 [-0.004, +0.0291]"
    assert auc["Requirement"] == "change ≥ -0.01" and auc["Rows judged"] == "4,321"
    assert f1["Outcome"] == "✗ fail" and err["Candidate"] == "0 [0, 0.002414]"
    assert err["Candidate − baseline [interval]"] == ""
    assert ev["Outcome"] == "✓ pass" and ev["Candidate"] == "165,184" and ev["Requirement"] == "≥ 1,000 labelled rows"
    ctx = views.context_rows([{"name": "prediction_drift.baseline_vs_candidate", "detail": "scores differ"}])
    assert ctx == [{"Context": "prediction drift: baseline vs candidate", "What it says": "scores differ"}]


def test_labels_for_headers():
    rows = views.labelled(views.latency_rows(make_evaluation()), drop=("source",))
    assert list(rows[0]) == [
        "percentile",
        "baseline (ms)",
        "candidate (ms)",
        "delta (ms)",
        "delta interval low",
        "delta interval high",
        "ratio",
    ]


@pytest.mark.parametrize(
    "test,statistic,threshold,expected",
    [
        ("wasserstein", 0.2, 0.1, 2.0),
        ("jensenshannon", 0.05, 0.1, 0.5),
        ("ks", 0.05, 0.05, 1.0),
        ("ks", 0.0025, 0.05, 2.0),
        ("chisquare", 1.0, 0.05, 0.0),
        ("ks", 0.0, 0.05, np.log(1e-300) / np.log(0.05)),
        ("ks", 0.5, None, None),
    ],
    ids=["distance-over", "distance-under", "p-at-threshold", "p-squared", "p-one", "p-zero", "no-threshold"],
)
def test_drift_score(test, statistic, threshold, expected):
    got = views.drift_score(test, statistic, threshold)
    assert got == (None if expected is None else pytest.approx(expected))


def test_drift_rows_most_drifted_first():
    report = {
        "features": {
            "a": {"test": "ks", "statistic": 0.5, "threshold": 0.05, "drifted": False},
            "b": {"test": "wasserstein", "statistic": 0.3, "threshold": 0.1, "drifted": True},
        },
        "prediction_drift": {
            "baseline": {"test": "ks", "statistic": 0.01, "threshold": 0.05, "drifted": True},
            "candidate": {"available": False, "reason": "no scores"},
        },
        "quality": {"a": {"missing_share": 0.1, "unseen_categories": ["x", "y"]}},
    }
    assert [r["feature"] for r in views.feature_drift_rows(report)] == ["b", "a"]
    pd_rows = views.prediction_drift_rows(report)
    assert pd_rows[0]["drifted"] and pd_rows[1]["available"] is False
    assert views.quality_rows(report) == [{"feature": "a", "missing_share": 0.1, "unseen_categories": "x, y"}]


@pytest.mark.parametrize(
    "weight,step,nxt", [(0, 0, 1), (1, 1, 5), (25, 3, 50), (100, 5, None)], ids=["before", "first", "middle", "done"]
)
def test_ramp_position(weight, step, nxt):
    pos = views.ramp_position(weight, (1, 5, 25, 50, 100))
    assert (pos["step"], pos["steps"], pos["next"]) == (step, 5, nxt)
    assert f"[{weight}%]" in pos["text"]


def test_rollup_rejects_unknown_period():
    with pytest.raises(ValueError, match="unknown period"):
        views.rollup([{"key": datetime(2013, 7, 1), "rows": 1}], "year")


def test_page_urls_and_the_runs_of_a_model():
    assert views.page_url("compare", run="r1") == "compare?run=r1"
    assert views.page_url("audit", model="a b&c") == "audit?model=a+b%26c" and views.page_url("drift") == "drift"
    runs = [
        {"run_id": "r3", "baseline": {"name": "m"}, "candidate": {"name": "m"}},
        {"run_id": "r2", "baseline": {"uri": "runs:/x/model"}, "candidate": {"name": "other"}},
        {"run_id": "r1", "baseline": {"name": "other"}, "candidate": {"name": "m"}},
    ]
    assert [r["run_id"] for r in views.runs_of_model(runs, "m")] == ["r3", "r1"]
    assert views.runs_of_model(runs, "none") == []


def test_weight_history_is_the_applied_records_in_chain_order():
    def entry(seq, kind, after, when, record=True):
        return {
            "sequence": seq,
            "kind": kind,
            "verdict": "ROLLBACK" if kind == "kill" else "PROMOTE",
            "weight_before": 0,
            "weight_after": after,
            "signer": "alice",
            "created_at": when,
            "decision_id": f"dec_{seq}",
            "verified": True,
            "record": {"reason": f"{kind} {seq}"} if record else None,
        }

    entries = [
        entry(3, "kill", 0, "2026-11-02T11:00:00Z"),
        entry(None, "decision", 5, "2026-11-02T12:00:00Z"),  # signed, never applied
        entry(1, "decision", 1, "2026-11-02T09:00:00Z"),
        entry(2, "pause", 1, "2026-11-02T10:00:00Z", record=False),
    ]
    rows = views.weight_history(entries)
    assert [(r["sequence"], r["kind"], r["weight"]) for r in rows] == [
        (1, "decision", 1),
        (2, "pause", 1),
        (3, "kill", 0),
    ]
    assert rows[0]["time"] == datetime(2026, 11, 2, 9, tzinfo=UTC) and rows[2]["reason"] == "kill 3"
    assert rows[1]["reason"] is None and views.weight_history([]) == []


def test_live_rows_format_each_arm():
    arms = [
        {
            "arm": "baseline",
            "requests": 90,
            "per_s": 1.5,
            "errors": 0,
            "error_rate": 0.0,
            "p50_ms": 12.0,
            "p99_ms": 1500.0,
        },
        {
            "arm": "candidate",
            "requests": 0,
            "per_s": 0.0,
            "errors": 0,
            "error_rate": None,
            "p50_ms": None,
            "p99_ms": None,
        },
    ]
    rows = views.live_rows(arms)
    assert rows[0] == {
        "arm": "baseline",
        "requests": 90,
        "req/s": 1.5,
        "errors": 0,
        "error rate": "0.00%",
        "P50": "12 ms",
        "P99": "1.5 s",
    }
    assert (rows[1]["error rate"], rows[1]["P50"], rows[1]["P99"]) == (None, None, None)
