"""Evaluation of real replay runs (tiny in-process models, in-memory DuckDB) and of the CLI on the demo."""

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from conftest import TinyModel, run_cli
from workbench import WorkbenchError
from workbench.evaluate.evaluation import _cell_confusions, _cells, _paired_keys, _Sample, compare, evaluate_run
from workbench.evaluate.metrics import METRICS, confusion, grouping
from workbench.evaluate.results import Options
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store

N = 3000
CARRIERS = {"AA": 0.4, "UA": 0.3, "DL": 0.2, "B6": 0.07, "HA": 0.03}


class Linear(TinyModel):
    """score = sigmoid(a * x + c * x2 + b); raises on the x values in ``raise_on`` like TinyModel."""

    def __init__(self, name, a, c=0.0, b=0.0, **kw):
        super().__init__(name, **kw)
        self.a, self.c, self.b = a, c, b
        self.ref = dataclasses.replace(self.ref, features=("x", "x2") if c else ("x",))

    def predict(self, batch):
        x = batch.column("x").to_numpy()
        if self.raise_on.intersection(x.tolist()):
            raise ValueError("bad input row")
        x2 = batch.column("x2").to_numpy() if self.c else 0.0
        return 1 / (1 + np.exp(-(self.a * x + self.c * x2 + self.b)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A replayed run: 3000 requests over 5 days, 80% labelled, the candidate fails on two rows."""
    tmp = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(0)
    x, x2 = rng.standard_normal(N).round(6), rng.standard_normal(N).round(6)
    df = pd.DataFrame(
        {
            "request_id": [f"r{i:05d}" for i in range(N)],
            "event_time": pd.Timestamp("2024-03-01") + pd.to_timedelta(np.arange(N) * 144, unit="s"),
            "x": x,
            "x2": x2,
            "carrier": rng.choice(list(CARRIERS), N, p=list(CARRIERS.values())),
        }
    )
    df.to_parquet(tmp / "traffic.parquet")
    y = (rng.random(N) < 1 / (1 + np.exp(-(1.5 * x + x2 - 0.5)))).astype(int)
    labelled = rng.random(N) < 0.8
    labelled[[5, 77]] = True  # the rows the candidate fails on
    pd.DataFrame({"request_id": df.request_id[labelled], "label": y[labelled]}).to_parquet(tmp / "labels.parquet")
    store = Store(":memory:")
    ingest(store, tmp / "traffic.parquet", "t")
    ingest_labels(store, tmp / "labels.parquet", "t")
    bad = {float(x[5]), float(x[77])}
    replay(
        store,
        "t",
        Linear("base", 1.0, threshold=0.4),
        Linear("cand", 1.4, 0.9, -0.2, threshold=0.55, raise_on=bad),
        run_id="run1",
        options=ReplayOptions(batch_size=500),
    )
    # the paired table in long form with request ids, for the reference computations below
    store.con.execute("""CREATE TEMP VIEW lp AS
        SELECT p.run_id, t.request_id, 'baseline' AS role, p.baseline_score AS score,
               p.baseline_latency_ms AS latency_ms, p.baseline_error AS error
        FROM predictions p JOIN traffic_t t USING (_row)
        UNION ALL
        SELECT p.run_id, t.request_id, 'candidate', p.candidate_score, p.candidate_latency_ms, p.candidate_error
        FROM predictions p JOIN traffic_t t USING (_row)""")
    yield store
    store.close()


def stored(store, role, both=False):
    """(label, score, latency) of the labelled rows ``role`` scored without error (or both models did)."""
    sql = """SELECT l.label, p.score FROM lp p JOIN labels l USING (request_id)
             WHERE p.run_id = 'run1' AND p.role = ? AND p.error IS NULL"""
    if both:
        sql += """ AND request_id NOT IN (SELECT request_id FROM lp WHERE run_id = 'run1'
                                          AND error IS NOT NULL)"""
    rows = store.con.execute(sql + " ORDER BY request_id", [role]).fetchall()
    y, s = map(np.array, zip(*rows, strict=True))
    return y, s


@pytest.fixture(scope="module")
def result(run):
    return evaluate_run(run, "run1").to_dict()


def test_json_shape(result):
    assert list(result) == [
        "run_id",
        "labeled_rows",
        "label_coverage",
        "confidence",
        "rows",
        "thresholds",
        "baseline",
        "candidate",
        "delta",
        "latency",
        "errors",
        "undefined",
        "coverage",
        "resources",
    ]
    names = ["accuracy", "precision", "recall", "f1", "fpr", "fnr", "roc_auc", "pr_auc", "log_loss", "brier", "ece"]
    for role in ("baseline", "candidate"):
        assert list(result[role]) == names
        assert all(set(v) == {"value", "ci_low", "ci_high"} for v in result[role].values())
    assert list(result["delta"]) == names
    assert all(set(v) == {"value", "ci_low", "ci_high", "p_value", "mde"} for v in result["delta"].values())
    assert set(result["latency"]) == {"baseline", "candidate", "delta", "mann_whitney_p"}
    assert all(set(result["latency"][r]) == {"p50", "p95", "p99"} for r in ("baseline", "candidate"))
    assert all(set(v) == {"value", "ci_low", "ci_high"} for v in result["latency"]["delta"].values())
    assert set(result["errors"]["baseline"]) == {"count", "rows", "rate", "ci_low", "ci_high"}
    json.dumps(result, allow_nan=False)


def test_rows_coverage_and_thresholds_come_from_the_run(run, result):
    labelled = run.con.execute("SELECT count(*) FROM labels").fetchall()[0][0]
    assert result["labeled_rows"] == labelled and result["label_coverage"] == round(labelled / N, 6)
    assert result["thresholds"] == {"baseline": 0.4, "candidate": 0.55}
    assert result["rows"] == {"baseline": labelled, "candidate": labelled - 2, "paired": labelled - 2}


def test_each_model_metric_equals_sklearn_on_its_own_rows(run, result):
    for role in ("baseline", "candidate"):
        y, s = stored(run, role)
        t = result["thresholds"][role]
        pred = s >= t
        ref = {
            "accuracy": skm.accuracy_score(y, pred),
            "precision": skm.precision_score(y, pred),
            "recall": skm.recall_score(y, pred),
            "f1": skm.f1_score(y, pred),
            "roc_auc": skm.roc_auc_score(y, s),
            "pr_auc": skm.average_precision_score(y, s),
            "log_loss": skm.log_loss(y, s),
            "brier": skm.brier_score_loss(y, s),
        }
        for name, value in ref.items():
            got = result[role][name]
            assert got["value"] == pytest.approx(value, abs=1e-9), (role, name)
            assert got["ci_low"] <= got["value"] <= got["ci_high"], (role, name)
        k = int(((y == 1) & pred).sum())
        assert (result[role]["recall"]["ci_low"], result[role]["recall"]["ci_high"]) == pytest.approx(
            proportion_confint(k, int(y.sum()), alpha=0.05, method="wilson"), abs=1e-12
        )


def test_deltas_use_the_paired_rows_with_mcnemar_for_accuracy(run, result):
    yb, sb = stored(run, "baseline", both=True)
    yc, sc = stored(run, "candidate", both=True)
    assert (yb == yc).all() and len(yb) == result["rows"]["paired"]
    assert result["delta"]["roc_auc"]["value"] == pytest.approx(
        skm.roc_auc_score(yc, sc) - skm.roc_auc_score(yb, sb), abs=1e-9
    )
    ok_b, ok_c = (sb >= 0.4) == yb, (sc >= 0.55) == yc
    table = [[np.sum(ok_b & ok_c), np.sum(ok_b & ~ok_c)], [np.sum(~ok_b & ok_c), np.sum(~ok_b & ~ok_c)]]
    assert result["delta"]["accuracy"]["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue, abs=1e-12)
    for name, d in result["delta"].items():
        assert d["ci_low"] <= d["value"] <= d["ci_high"] and 0 < d["p_value"] <= 1 and d["mde"] > 0, name
    # the candidate separates better here; the bootstrap sees it
    assert result["delta"]["roc_auc"]["ci_low"] > 0 and result["delta"]["roc_auc"]["p_value"] < 0.01


def test_latency_and_errors(run, result):
    lat = {
        r: np.array(
            [
                v
                for (v,) in run.con.execute(
                    "SELECT latency_ms FROM lp WHERE run_id = 'run1' AND role = ? AND error IS NULL", [r]
                ).fetchall()
            ]
        )
        for r in ("baseline", "candidate")
    }
    for role in ("baseline", "candidate"):
        for k, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert result["latency"][role][k] == np.quantile(lat[role], q)
    d = result["latency"]["delta"]["p95"]
    assert d["value"] == pytest.approx(result["latency"]["candidate"]["p95"] - result["latency"]["baseline"]["p95"])
    assert d["ci_low"] <= d["ci_high"]
    assert result["latency"]["mann_whitney_p"] == pytest.approx(
        mannwhitneyu(lat["baseline"], lat["candidate"], method="asymptotic").pvalue, abs=1e-12
    )
    e = result["errors"]["candidate"]
    assert (e["count"], e["rows"], e["rate"]) == (2, N, 2 / N)
    assert (e["ci_low"], e["ci_high"]) == pytest.approx(proportion_confint(2, N, method="wilson"), abs=1e-12)
    assert result["errors"]["baseline"]["count"] == 0 and result["errors"]["baseline"]["ci_low"] == 0


def test_seeded_reproducible_and_confidence_is_a_parameter(run, result):
    assert evaluate_run(run, "run1").to_dict() == result
    other_seed = evaluate_run(run, "run1", seed=1).to_dict()
    assert other_seed["baseline"]["roc_auc"]["value"] == result["baseline"]["roc_auc"]["value"]
    assert other_seed["baseline"]["roc_auc"]["ci_low"] != result["baseline"]["roc_auc"]["ci_low"]
    narrow = evaluate_run(run, "run1", confidence=0.8).to_dict()
    assert narrow["confidence"] == 0.8
    for name in ("accuracy", "roc_auc", "log_loss"):
        w80 = narrow["delta"][name]["ci_high"] - narrow["delta"][name]["ci_low"]
        w95 = result["delta"][name]["ci_high"] - result["delta"][name]["ci_low"]
        assert w80 < w95, name
        assert narrow["delta"][name]["mde"] < result["delta"][name]["mde"], name


def test_result_is_persisted(run):
    res = evaluate_run(run, "run1", segment="carrier", top_k=2)
    assert run.latest_evaluation("run1") == json.loads(json.dumps(res.to_dict()))
    params = json.loads(
        run.con.execute("SELECT params FROM evaluations ORDER BY created_at DESC LIMIT 1").fetchall()[0][0]
    )
    assert params["segment"] == "carrier" and params["bootstrap"] == "rows" and params["power"] == 0.8


def test_segments_top_k_plus_other_with_small_flag(run):
    d = evaluate_run(run, "run1", segment="carrier", top_k=3, small_rows=300).to_dict()
    seg = d["segments"]["carrier"]
    assert list(seg) == ["AA", "UA", "DL", "other"]
    assert sum(s["rows"] for s in seg.values()) == d["labeled_rows"]
    counts = dict(
        run.con.execute("""SELECT t.carrier, count(*) FROM traffic_t t JOIN labels l USING (request_id)
                                     GROUP BY 1""").fetchall()
    )
    assert seg["DL"]["rows"] == counts["DL"] and seg["other"]["rows"] == counts["B6"] + counts["HA"]
    assert [s["small"] for s in seg.values()] == [s["rows"] < 300 for s in seg.values()]
    # a segment's numbers are those of its rows
    ids = [r for (r,) in run.con.execute("SELECT request_id FROM traffic_t WHERE carrier = 'UA'").fetchall()]
    y, s = stored(run, "baseline")
    yid = [
        r
        for (r,) in run.con.execute(
            """SELECT request_id FROM lp p JOIN labels l USING (request_id) WHERE p.run_id = 'run1'
           AND p.role = 'baseline' ORDER BY request_id"""
        ).fetchall()
    ]
    mask = np.isin(yid, ids)
    assert seg["UA"]["baseline"]["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y[mask], s[mask]), abs=1e-9)
    assert set(seg["UA"]) == {"rows", "small", "baseline", "candidate", "delta"}


def test_windows_by_day(run):
    d = evaluate_run(run, "run1", window="day").to_dict()
    days = d["windows"]["day"]
    assert list(days) == [f"2024-03-0{i}T00:00:00Z" for i in range(1, 6)]
    assert sum(w["rows"] for w in days.values()) == d["labeled_rows"]
    assert all(w["delta"]["accuracy"]["p_value"] is not None for w in days.values())


def test_undefined_values_are_null_with_a_reason(run):
    d = evaluate_run(run, "run1", thresholds={"baseline": 1.01, "candidate": 0.55}).to_dict()
    assert d["baseline"]["precision"] == {"value": None, "ci_low": None, "ci_high": None}
    assert d["undefined"]["baseline.precision"] == "no positive predictions"
    assert d["delta"]["precision"]["value"] is None and d["undefined"]["delta.precision"] == "no positive predictions"
    assert d["baseline"]["recall"]["value"] == 0.0  # defined, and truly 0


def test_a_run_without_labels_does_not_crash(run):
    run.con.execute("CREATE TEMP TABLE saved AS SELECT * FROM labels")
    run.con.execute("DELETE FROM labels")
    try:
        d = evaluate_run(run, "run1", segment="carrier").to_dict()
    finally:
        run.con.execute("INSERT INTO labels SELECT * FROM saved")
        run.con.execute("DROP TABLE saved")
    assert d["labeled_rows"] == 0 and d["segments"] == {"carrier": {}}
    assert all(v["value"] is None for v in d["baseline"].values())
    assert d["undefined"]["baseline.roc_auc"] == "no labelled rows"
    assert d["latency"]["baseline"]["p50"] is not None


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"segment": "nope"}, "has no column 'nope' to segment by (columns: carrier, x, x2)"),
        ({"window": "month"}, "unknown window 'month'"),
        ({"confidence": 1.0}, "--confidence must be between 0 and 1"),
        ({"n_boot": 10}, "at least 100 bootstrap replicates"),
    ],
    ids=["segment", "window", "confidence", "replicates"],
)
def test_bad_arguments_are_errors_that_name_the_problem(run, kwargs, message):
    with pytest.raises(WorkbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate_run(run, "run1", **kwargs)


def test_multiclass_labels_are_refused_for_binary_scores(run):
    run.con.execute("UPDATE labels SET label = 2 WHERE request_id = 'r00001'")
    try:
        with pytest.raises(WorkbenchError, match=r"hold classes \[0, 1, 2\]"):
            evaluate_run(run, "run1")
    finally:
        run.con.execute("UPDATE labels SET label = 1 WHERE request_id = 'r00001'")


# -- compare() on arrays -------------------------------------------------------------------------------
def sample(n, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int8)
    z = rng.standard_normal(n)
    return y, {
        "baseline": 1 / (1 + np.exp(-(1.5 * y + z - 1))),
        "candidate": 1 / (1 + np.exp(-(1.8 * y + 0.9 * z + 0.4 * rng.standard_normal(n) - 1))),
    }


THR = {"baseline": 0.5, "candidate": 0.5}


@pytest.mark.parametrize("exact_max_rows", [10**6, 0], ids=["row_weights", "linearised"])
def test_failures_of_both_models_each_metric_on_own_rows_delta_on_shared(exact_max_rows):
    y, s = sample(4000, seed=5)
    s["baseline"][::50] = np.nan
    s["candidate"][7::40] = np.nan
    c = compare(y, s, THR, Options(exact_max_rows=exact_max_rows))
    ok = {r: np.isfinite(v) for r, v in s.items()}
    both = ok["baseline"] & ok["candidate"]
    assert c.rows == {
        "baseline": int(ok["baseline"].sum()),
        "candidate": int(ok["candidate"].sum()),
        "paired": int(both.sum()),
    }
    for r in ("baseline", "candidate"):
        assert getattr(c, r)["pr_auc"].value == pytest.approx(
            skm.average_precision_score(y[ok[r]], s[r][ok[r]]), abs=1e-12
        )
    assert c.delta["roc_auc"].value == pytest.approx(
        skm.roc_auc_score(y[both], s["candidate"][both]) - skm.roc_auc_score(y[both], s["baseline"][both]), abs=1e-12
    )
    for name in METRICS:
        d = c.delta[name]
        assert d.ci_low <= d.value <= d.ci_high and d.mde > 0, name


def test_one_count_of_cells_gives_each_models_confusion_on_its_own_and_on_the_paired_rows():
    y, s = sample(2000, seed=7)
    s["baseline"][::30] = np.nan
    s["candidate"][5::45] = np.nan
    ok = {r: np.isfinite(v) for r, v in s.items()}
    both = ok["baseline"] & ok["candidate"]
    cells = _cells(y, s, THR, ok)
    assert _cell_confusions(cells[:, 1].sum(axis=0))[0] == confusion(
        y[ok["baseline"]], s["baseline"][ok["baseline"]] >= 0.5
    )
    assert _cell_confusions(cells[1, :].sum(axis=0))[1] == confusion(
        y[ok["candidate"]], s["candidate"][ok["candidate"]] >= 0.5
    )
    for r, paired in zip(("baseline", "candidate"), _cell_confusions(cells[1, 1]), strict=True):
        assert paired == confusion(y[both], s[r][both] >= 0.5), r


@pytest.mark.parametrize("rounded", ["baseline", "candidate"])
def test_paired_keys_pair_each_rows_values_of_both_models(rounded):
    """The paired influences, looked up in the order of the model with more groups, against the definition:
    each row's value per model, found by score and label, paired by row."""
    y, s = sample(3000, seed=6)
    s[rounded] = np.round(s[rounded], 2)  # many ties: the other model leads
    s["baseline"][::50] = np.nan
    both = np.isfinite(s["baseline"])
    yb = y[both]
    paired = {r: _Sample(grouping(yb, s[r][both]), confusion(yb, s[r][both] >= 0.5)) for r in ("baseline", "candidate")}
    keys = _paired_keys(paired)
    lead = "baseline" if rounded == "candidate" else "candidate"
    for r, p in paired.items():
        influence = METRICS["roc_auc"].influence(p.groups)
        at = np.searchsorted(p.groups.score, s[r][both])
        in_row_order = np.where(yb == 1, influence[0][at], influence[1][at])
        got = p.grouping.per_row(influence, keys[r])
        np.testing.assert_array_equal(got, in_row_order[paired[lead].grouping.order])


def test_identical_models_give_zero_deltas_and_say_why_there_is_no_mde():
    y, s = sample(500)
    c = compare(y, {"baseline": s["baseline"], "candidate": s["baseline"].copy()}, THR, Options())
    for name in METRICS:
        d = c.delta[name]
        assert (d.value, d.ci_low, d.ci_high, d.p_value, d.mde) == (0, 0, 0, 1.0, None), name
        assert "does not vary across bootstrap replicates" in c.undefined[f"delta.{name}.mde"]


@pytest.mark.parametrize("exact_max_rows", [10**6, 0], ids=["row_weights", "linearised"])
def test_results_do_not_depend_on_row_order(exact_max_rows):
    y, s = sample(3000, seed=2)
    perm = np.random.default_rng(1).permutation(len(y))
    opts = Options(exact_max_rows=exact_max_rows)
    a = compare(y, s, THR, opts)
    b = compare(y[perm], {r: v[perm] for r, v in s.items()}, THR, opts)
    assert a == b


def test_linearised_bootstrap_agrees_with_the_row_bootstrap():
    """Above ``exact_max_rows`` the linearised bootstrap takes over; at 8000 rows both are affordable."""
    y, s = sample(8000, seed=3)
    rows = compare(y, s, THR, Options(exact_max_rows=10**6, n_boot=2000))
    linear = compare(y, s, THR, Options(exact_max_rows=0, n_boot=2000))
    assert (rows.method, linear.method) == ("rows", "linear")
    for name in METRICS:
        for who in ("baseline", "candidate", "delta"):
            a, b = getattr(rows, who)[name], getattr(linear, who)[name]
            width = a.ci_high - a.ci_low
            assert a.value == b.value
            assert b.ci_low == pytest.approx(a.ci_low, abs=0.1 * width), (who, name)
            assert b.ci_high == pytest.approx(a.ci_high, abs=0.1 * width), (who, name)


def test_mde_shrinks_with_more_rows():
    small = compare(*sample(1000, seed=4), THR, Options())
    large = compare(*sample(16000, seed=4), THR, Options(exact_max_rows=2000))
    for name in ("accuracy", "f1", "roc_auc", "log_loss"):
        ratio = large.delta[name].mde / small.delta[name].mde
        assert 0.17 < ratio < 0.35, name  # about 1 / sqrt(16)


# -- CLI -------------------------------------------------------------------------------------------------
def test_cli_evaluate_segments_and_windows(demo_home, tmp_path):
    home = tmp_path / "home"  # a copy: the evaluation it stores (confidence 0.9) must not reach other tests
    shutil.copytree(demo_home, home)
    run_id = json.loads((home / "demo.json").read_text())["replay"]["run_id"]
    proc = run_cli(
        "evaluate", run_id, "--segment", "carrier", "--window", "week", "--confidence", "0.9", "--json", home=home
    )
    assert len(proc.stdout.strip().splitlines()) == 1
    d = json.loads(proc.stdout)
    assert d["confidence"] == 0.9 and d["run_id"] == run_id
    assert sum(s["rows"] for s in d["segments"]["carrier"].values()) == d["labeled_rows"]
    assert sum(w["rows"] for w in d["windows"]["week"].values()) == d["labeled_rows"]
    assert all(k.endswith("T00:00:00Z") for k in d["windows"]["week"])
    text = run_cli("evaluate", run_id, home=home).stdout
    assert "roc_auc" in text and "p50" in text
    bad = run_cli("evaluate", run_id, "--segment", "nope", home=home, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: traffic 'flights' has no column 'nope'")


def test_an_unchanged_finished_run_gets_its_stored_evaluation_and_new_labels_evaluate_again(seeded_home, tmp_path):
    from workbench.evaluate.stored import evaluation

    def made(store) -> int:
        return store.cursor().execute("SELECT count(*) FROM evaluations WHERE run_id = 'run_a'").fetchall()[0][0]

    with Store(seeded_home / "lake") as store:
        seeded = made(store)  # the seeded evaluation records no state of the data: evaluated again
        first = evaluation(store, "run_a")
        assert made(store) == seeded + 1
        assert evaluation(store, "run_a") == first and made(store) == seeded + 1  # a lookup: nothing new stored
        narrow = evaluation(store, "run_a", confidence=0.9)  # other options: evaluated
        assert narrow["confidence"] == 0.9 and made(store) == seeded + 2
        assert evaluation(store, "run_a", confidence=0.9, recompute=True) == narrow and made(store) == seeded + 3
        # new labels for the run's traffic: the first 500 requests' labels flipped
        old = (
            store.cursor()
            .execute("SELECT request_id, label FROM labels WHERE traffic = 'syn_run_a' ORDER BY request_id LIMIT 500")
            .fetchall()
        )
        pd.DataFrame({"request_id": [r for r, _ in old], "label": [1 - y for _, y in old]}).to_parquet(
            tmp_path / "labels.parquet"
        )
        ingest_labels(store, tmp_path / "labels.parquet", "syn_run_a")
        again = evaluation(store, "run_a", confidence=0.9)
        assert made(store) == seeded + 4
        assert again["baseline"]["accuracy"]["value"] != narrow["baseline"]["accuracy"]["value"]
    out = run_cli("evaluate", "run_a", "--confidence", "0.9", "--json", home=seeded_home)
    assert json.loads(out.stdout) == again  # the CLI returns the stored one
    run_cli("evaluate", "run_a", "--confidence", "0.9", "--recompute", "--json", home=seeded_home)
    with Store(seeded_home / "lake", read_only=True) as store:
        assert made(store) == seeded + 5
