"""Data drift against Evidently 0.7.23's own Report, the stat-test registry, sketches and histograms."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from workbench import WorkbenchError
from workbench.drift import sketch as sketch_mod
from workbench.drift.report import compare_columns, compare_frames
from workbench.drift.sketch import ColumnSource, RowSet
from workbench.drift.stattests import STAT_TESTS, stat_test, sturges_edges
from workbench.store import Store


def frame(rng: np.random.Generator, n: int, shift: float) -> pd.DataFrame:
    """Columns covering every default branch: continuous, few-valued and binary numbers, small and large
    integers, text, booleans, and missing values."""
    return pd.DataFrame(
        {
            "cont_shift": rng.normal(shift, 1, n),
            "cont_same": rng.normal(0, 1, n),
            "expo": rng.exponential(1 + shift, n),
            "rounded": rng.normal(0, 1, n).round(1),
            "four_values": rng.integers(0, 4, n).astype(float),
            "two_values": rng.integers(0, 2, n).astype(float),
            "int_wide": rng.integers(0, 40, n),
            "int_three": rng.integers(0, 3, n),
            "text": rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2 - shift / 4, 0.1 + shift / 4]),
            "text_two": rng.choice(["yes", "no"], n),
            "flag": rng.choice([True, False], n),
            "with_nan": np.where(rng.random(n) < 0.1, np.nan, rng.normal(shift / 2, 1, n)),
        }
    )


def evidently_report(ref: pd.DataFrame, cur: pd.DataFrame, **preset) -> tuple[dict, dict, float]:
    """Evidently's per-column (method display name, score), drift flags and drifted share."""
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    snap = (
        Report([DataDriftPreset(**preset)], include_tests=True)
        .run(Dataset.from_pandas(cur), Dataset.from_pandas(ref))
        .dict()
    )
    scores = {
        m["config"]["column"]: (m["config"]["method"], float(m["value"]))
        for m in snap["metrics"]
        if m["config"]["type"].endswith("ValueDrift")
    }
    flags = {
        t["name"].removeprefix("Value Drift for column "): t["status"] == "FAIL"
        for t in snap["tests"]
        if t["name"].startswith("Value Drift for column ")
    }
    share = next(m["value"]["share"] for m in snap["metrics"] if m["config"]["type"].endswith("DriftedColumnsCount"))
    return scores, flags, share


@pytest.mark.parametrize(
    "n_ref, n_cur, value_cap",
    [
        pytest.param(600, 900, sketch_mod.VALUE_CAP, id="small-reference"),
        pytest.param(3000, 4000, sketch_mod.VALUE_CAP, id="large-reference-sketch"),
        pytest.param(3000, 4000, 50, id="large-reference-exact"),
    ],
)
def test_default_tests_match_evidently_report(n_ref, n_cur, value_cap, monkeypatch):
    monkeypatch.setattr(sketch_mod, "VALUE_CAP", value_cap)
    rng = np.random.default_rng(7)
    ref, cur = frame(rng, n_ref, 0.0), frame(rng, n_cur, 0.15)
    ours = compare_frames(ref, cur)
    scores, flags, share = evidently_report(ref, cur)
    assert set(ours.features) == set(scores)
    for col, f in ours.features.items():
        method, value = scores[col]
        assert STAT_TESTS[f.test].display == method, col
        assert f.statistic == pytest.approx(value, abs=1e-6), col
        assert f.drifted == flags[col], col
    assert ours.share_drifted == pytest.approx(share)
    assert ours.dataset_drift == (share >= 0.5)
    assert 0 < ours.share_drifted < 1
    methods = {c: f.method for c, f in ours.features.items()}
    if value_cap == 50:  # continuous columns have too many values for the sketch: the raw reference is read
        assert methods["cont_shift"] == "exact" and methods["text"] == "sketch"
    else:
        assert set(methods.values()) == {"sketch"}


@pytest.mark.parametrize("name", sorted(STAT_TESTS))
def test_each_registered_test_matches_evidently(name, monkeypatch):
    monkeypatch.setattr(sketch_mod, "VALUE_CAP", 100)  # exercise the exact path on the continuous columns too
    rng = np.random.default_rng(11)
    ref, cur = frame(rng, 2500, 0.0), frame(rng, 2000, 0.1)
    test = STAT_TESTS[name]
    kinds = {
        "cont_shift": "numerical",
        "expo": "numerical",
        "int_wide": "numerical",
        "rounded": "numerical",
        "text": "categorical",
        "int_three": "categorical",
        "text_two": "categorical",
    }
    cols = [c for c, k in kinds.items() if k in test.kinds]
    ours = compare_frames(ref[cols], cur[cols], tests={"*": name})
    scores, flags, _ = evidently_report(ref[cols], cur[cols], method=name)
    for col in cols:
        assert ours.features[col].statistic == pytest.approx(scores[col][1], abs=1e-6), col
        assert ours.features[col].drifted == flags[col], col


def test_overrides_per_column_and_thresholds():
    rng = np.random.default_rng(3)
    ref, cur = frame(rng, 2000, 0.0), frame(rng, 2000, 0.3)
    out = compare_frames(
        ref, cur, ["cont_shift", "text"], tests={"cont_shift": "psi"}, thresholds={"cont_shift": 10.0, "text": 0.0}
    )
    assert out.features["cont_shift"].test == "psi" and out.features["cont_shift"].threshold == 10.0
    assert not out.features["cont_shift"].drifted
    assert out.features["text"].test == "jensenshannon" and out.features["text"].drifted


@pytest.mark.parametrize(
    "tests, message",
    [
        pytest.param(
            {"cont_shift": "kolmogorov"},
            "unknown drift test 'kolmogorov'; valid tests: chisquare, ed,",
            id="unknown-name-lists-valid",
        ),
        pytest.param({"text": "ks"}, "does not apply to categorical column 'text'", id="wrong-kind"),
        pytest.param({"no_such_column": "ks"}, "--test for unknown column(s) no_such_column", id="unknown-column"),
    ],
)
def test_invalid_overrides_are_errors(tests, message):
    rng = np.random.default_rng(0)
    ref = frame(rng, 100, 0.0)[["cont_shift", "text"]]
    with pytest.raises(WorkbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare_frames(ref, ref, tests=tests)
    with pytest.raises(WorkbenchError, match="valid tests: .*wasserstein"):
        stat_test("nope")


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(np.random.default_rng(0).normal(size=1000), id="floats"),
        pytest.param(np.random.default_rng(1).integers(0, 7, 50), id="small-integers"),
        pytest.param(np.random.default_rng(2).integers(-500, 500, 5000), id="wide-integers"),
        pytest.param(np.full(10, 3.0), id="constant"),
    ],
)
def test_sturges_edges_match_numpy(values):
    got = sturges_edges(float(values.min()), float(values.max()), len(values), values.dtype.kind == "i")
    np.testing.assert_array_equal(got, np.histogram_bin_edges(values, bins="sturges"))


def test_histogram_in_sql_matches_numpy_at_bin_edges():
    rng = np.random.default_rng(5)
    edges = np.histogram_bin_edges(rng.normal(size=100), bins="sturges")
    values = np.concatenate([rng.normal(size=5000), edges, edges[1:] - 1e-12, [edges[0] - 1, edges[-1] + 1]])
    with Store() as store:
        store.drift_import_table("h", pa.table({"v": values}))
        got = store.drift_histogram(ColumnSource("v", "num", rows=RowSet("h", "table")), list(edges))
    np.testing.assert_array_equal(got, np.histogram(values, bins=edges)[0])


def test_reference_is_summarized_once_and_reused():
    rng = np.random.default_rng(9)
    with Store() as store:
        store.drift_import_table("ref", pa.Table.from_pandas(frame(rng, 1500, 0.0), preserve_index=False))
        store.drift_import_table("cur", pa.Table.from_pandas(frame(rng, 1500, 0.2), preserve_index=False))
        ref, cur = RowSet("ref", "table"), RowSet("cur", "table")
        cols = ["cont_shift", "text", "int_three"]
        first = compare_columns(store, ref, cur, cols, reference_key="k1")
        stored = store.cursor().execute("SELECT count(*) FROM drift_sketches WHERE key = 'k1'").fetchall()[0][0]
        assert stored == len(cols)
        store.cursor().execute("DELETE FROM ref")  # the sketch is lossless: the reference rows are not read again
        again = compare_columns(store, ref, cur, cols, reference_key="k1")
        for c, f in again.features.items():  # DuckDB sums in parallel: the last bits may differ
            assert f.statistic == pytest.approx(first.features[c].statistic, rel=1e-12) and f.method == "sketch"
        sk = sketch_mod.ColumnSketch.from_dict(store.drift_sketch_load("k1")["cont_shift"])
        assert sk.lossless and sk.rows == 1500 and len(sk.quantiles) == 101


def test_empty_column_is_not_compared():
    ref = pd.DataFrame({"a": [np.nan] * 20, "b": np.arange(20.0)})
    out = compare_frames(ref, ref.assign(b=np.arange(20.0) + 100))
    assert out.features["a"].test is None and "no values in the reference" in out.features["a"].note
    assert out.features["b"].drifted and out.share_drifted == 1.0 and out.dataset_drift


# -- a whole run: real ingest and replay with tiny models, planted drift ---------------------------
N_ROWS, SHIFT_AT, CHANGE_AT = 6000, 3000, 4000
T0 = pd.Timestamp("2024-01-01")


def synthetic_run(tmp_path, store: Store, concept_change: bool, run_id: str) -> None:
    """Hourly traffic: x shifts up at SHIFT_AT; with ``concept_change``, from CHANGE_AT positives among x > 0
    become rarer (the model's errors rise). A category only in the current window, missing values and
    out-of-range values in the current window; labels arrive 6 hours after their request, 3% never do."""
    from dataclasses import replace as dc_replace

    from conftest import TinyModel
    from workbench.ingest.traffic import ingest, ingest_labels
    from workbench.replay.pipeline import replay

    rng = np.random.default_rng(21)
    i = np.arange(N_ROWS)
    x = rng.normal(0, 1, N_ROWS) + np.where(i >= SHIFT_AT, 0.5, 0.0)
    p = 1 / (1 + np.exp(-x))
    if concept_change:
        p = np.where((i >= CHANGE_AT) & (x > 0), np.clip(p - 0.35, 0, 1), p)
    cat = rng.choice(["a", "b", "c"], N_ROWS)
    cat[SHIFT_AT::97] = "d"
    n = rng.normal(0, 1, N_ROWS)
    n[(i >= SHIFT_AT) & (rng.random(N_ROWS) < 0.1)] = np.nan
    z = rng.uniform(0, 1, N_ROWS)
    z[SHIFT_AT::50] = 5.0
    times = T0 + pd.to_timedelta(i, unit="h")
    ids = [f"q{k:05d}" for k in i]
    pd.DataFrame({"request_id": ids, "event_time": times, "x": x, "cat": cat, "n": n, "z": z}).to_parquet(
        tmp_path / "t.parquet"
    )
    y = (rng.random(N_ROWS) < p).astype(int)
    keep = rng.random(N_ROWS) > 0.03
    pd.DataFrame({"request_id": ids, "label": y, "label_time": times + pd.Timedelta(hours=6)})[keep].to_parquet(
        tmp_path / "labels.parquet"
    )
    ingest(store, tmp_path / "t.parquet", "syn", nullable=["n"])
    ingest_labels(store, tmp_path / "labels.parquet", "syn")
    models = []
    for name, thr in (("base", 0.5), ("cand", 0.6)):
        m = TinyModel(name, threshold=thr)
        m.ref = dc_replace(m.ref, features=("x", "cat", "n", "z"))
        models.append(m)
    replay(store, "syn", *models, run_id=run_id)


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    with Store(":memory:") as store:
        synthetic_run(tmp_path_factory.mktemp("syn"), store, True, "syn_run")
        yield store


def test_drift_run_default_reference(run_store):
    from workbench.drift.report import drift_run

    rep = drift_run(run_store, "syn_run")
    d = rep.to_dict()
    assert d["reference"]["kind"] == "default" and d["reference"]["rows"] == N_ROWS // 5
    assert d["current"]["rows"] == N_ROWS - N_ROWS // 5
    assert d["reference"]["last_event"] < d["current"]["first_event"]
    assert set(d["features"]) == {"x", "cat", "n", "z"}
    assert d["features"]["x"]["drifted"] and d["features"]["x"]["test"] == "wasserstein"
    assert set(d) >= {
        "reference",
        "features",
        "share_drifted",
        "dataset_drift",
        "prediction_drift",
        "concept_drift",
        "calibration_drift",
        "estimated_performance",
        "quality",
    }

    q = d["quality"]  # the current window is rows N_ROWS // 5 .. of the traffic
    assert q["cat"]["unseen_categories"] == 1 and q["cat"]["unseen_examples"] == ["d"]
    rows = np.arange(N_ROWS)[N_ROWS // 5 :]
    assert q["cat"]["unseen_share"] == pytest.approx(np.sum(rows[rows >= SHIFT_AT] % 97 == SHIFT_AT % 97) / len(rows))
    missing = (
        run_store.cursor()
        .execute(
            "SELECT avg(CASE WHEN n IS NULL OR isnan(n) THEN 1.0 ELSE 0 END) FROM traffic_syn WHERE _row >= ?",
            [N_ROWS // 5],
        )
        .fetchall()[0][0]
    )
    assert q["n"]["missing_share"] == pytest.approx(missing) and q["n"]["missing_share"] > 0.03
    outside = (
        run_store.cursor()
        .execute(
            "WITH r AS (SELECT min(z) lo, max(z) hi FROM traffic_syn WHERE _row < ?) SELECT avg(CASE WHEN z < lo OR "
            "z > hi THEN 1.0 ELSE 0 END) FROM traffic_syn, r WHERE _row >= ?",
            [N_ROWS // 5, N_ROWS // 5],
        )
        .fetchall()[0][0]
    )
    assert q["z"]["out_of_range_share"] == pytest.approx(outside)
    assert q["z"]["out_of_range_share"] >= len(range(SHIFT_AT, N_ROWS, 50)) / len(rows)
    assert q["x"]["type_violations"] == 0

    pdrift = d["prediction_drift"]
    assert pdrift["baseline"]["drifted"] and pdrift["candidate"]["drifted"]
    assert not pdrift["baseline_vs_candidate"]["drifted"]  # both models score sigmoid(x)
    assert pdrift["baseline_vs_candidate"]["mean_abs_score_diff"] == 0.0
    between = (
        run_store.cursor()
        .execute(  # the thresholds differ: 0.5 and 0.6
            "SELECT avg(CASE WHEN x >= 0 AND 1 / (1 + exp(-x)) < 0.6 THEN 1.0 ELSE 0 END) FROM traffic_syn "
            "WHERE _row >= ?",
            [N_ROWS // 5],
        )
        .fetchall()[0][0]
    )
    assert pdrift["baseline_vs_candidate"]["class_disagreement"] == pytest.approx(between)

    cd = d["concept_drift"]
    assert cd["detected"] and cd["detector"] == "page_hinkley"
    change = pd.Timestamp(cd["change_point"].removesuffix("Z"))
    assert abs((change - (T0 + pd.Timedelta(hours=CHANGE_AT))) / pd.Timedelta(hours=1)) <= 600
    assert d["calibration_drift"]["detected"] and d["calibration_drift"]["p_value"] < 1e-6

    est = d["estimated_performance"]
    assert est["estimated"] is True and est["baseline"]["calibrator"] == "isotonic"
    assert est["baseline"]["unlabelled"]["rows"] == N_ROWS - N_ROWS // 5 - est["baseline"]["labelled"]["rows"]
    assert set(est["baseline"]["labelled"]["realized"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert len(est["candidate"]["chunks"]) == 10

    import json

    assert run_store.latest_drift("syn_run") == json.loads(json.dumps(d, default=str))


def test_drift_run_without_concept_change_stays_quiet(tmp_path):
    from workbench.drift.report import drift_run

    with Store(":memory:") as store:
        synthetic_run(tmp_path, store, False, "calm")
        d = drift_run(store, "calm").to_dict()
    assert not d["concept_drift"]["detected"] and d["concept_drift"]["change_point"] is None
    assert not d["calibration_drift"]["detected"]
    lab = d["estimated_performance"]["baseline"]["labelled"]
    assert all(err < 0.05 for err in lab["abs_error"].values()), lab


def test_drift_run_windows_and_label_delay(run_store):
    from workbench.drift.report import drift_run

    d = drift_run(
        run_store, "syn_run", "2024-01-01..2024-02-01", current="2024-07-01..2024-08-01", as_of="2024-07-20"
    ).to_dict()
    count = (
        run_store.cursor()
        .execute(
            "SELECT count(*) FILTER (WHERE event_time < '2024-02-01'), count(*) FILTER (WHERE event_time >= "
            "'2024-07-01' AND event_time < '2024-08-01') FROM traffic_syn"
        )
        .fetchall()[0]
    )
    assert (d["reference"]["rows"], d["current"]["rows"]) == count
    assert d["reference"]["kind"] == "window" and d["current"]["window"] == "2024-07-01..2024-08-01"
    base = d["estimated_performance"]["baseline"]
    landed = base["landed"]
    assert d["estimated_performance"]["as_of"] == "2024-07-20T00:00:00Z"
    assert landed["rows"] > 200 and set(landed["abs_error"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert base["labelled"]["rows"] + base["unlabelled"]["rows"] == count[1]


def test_drift_run_writes_evidentlys_html_report(run_store, tmp_path):
    from workbench.drift.report import drift_run

    path = tmp_path / "report" / "drift.html"
    d = drift_run(run_store, "syn_run", html=path).to_dict()
    text = path.read_text()
    assert d["html"] == str(path) and run_store.latest_drift("syn_run")["html"] == str(path)
    assert "Dataset Drift" in text and all(f'"{c}"' in text for c in d["features"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"run_id": "nope"}, "unknown run 'nope'", id="unknown-run"),
        pytest.param({"reference": "2024-02-01..2024-01-01"}, "empty time window", id="backwards-window"),
        pytest.param({"reference": "2024-13-01.."}, "invalid time '2024-13-01'", id="bad-time"),
        pytest.param({"reference": "elsewhere"}, r"unknown traffic 'elsewhere' \(known: syn\)", id="unknown-traffic"),
        pytest.param({"tests": {"x": "ks2"}}, "unknown drift test 'ks2'", id="unknown-test"),
    ],
)
def test_drift_run_errors_name_the_problem(run_store, kwargs, message):
    from workbench.drift.report import drift_run

    with pytest.raises(WorkbenchError, match=message):
        drift_run(run_store, **({"run_id": "syn_run"} | kwargs))


# -- the CLI on the demo (NYC flights, real MLflow) ------------------------------------------------
def test_cli_drift_default_reference(demo_home):
    import json

    from conftest import run_cli

    run_id = json.loads((demo_home / "demo.json").read_text())["replay"]["run_id"]
    proc = run_cli("drift", run_id, "--json", home=demo_home)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    assert d["reference"]["kind"] == "default" and d["current"]["rows"] > 4 * d["reference"]["rows"] * 0.99
    for f in d["features"].values():
        assert set(f) >= {"test", "statistic", "threshold", "drifted", "method"} and f["method"] in ("exact", "sketch")
    assert d["features"]["temp"]["drifted"]  # July-August against the autumn: the weather moved
    assert set(d["concept_drift"]) >= {"detected", "change_point", "detector"}
    assert set(d["quality"]["carrier"]) >= {
        "missing_share",
        "out_of_range_share",
        "unseen_categories",
        "type_violations",
    }
    with Store(demo_home / "lake", read_only=True) as store:
        assert store.latest_drift(run_id) == d


def test_training_reference_from_mlflow(workbench_env, demo_home):
    """The sample logged with the baseline model (a real MLflow artifact), scored by both registered models."""
    import json

    from conftest import run_cli
    from workbench.drift.report import drift_run

    run_id = json.loads((demo_home / "demo.json").read_text())["replay"]["run_id"]
    with Store(workbench_env.db_path) as store:
        d = drift_run(store, run_id, "training").to_dict()
    assert d["reference"]["kind"] == "training" and d["reference"]["rows"] > 0
    assert d["features"]["month"]["drifted"]  # trained on January-February, replayed on July-December
    assert d["prediction_drift"]["baseline"]["available"] and d["prediction_drift"]["candidate"]["available"]
    assert d["estimated_performance"]["baseline"]["calibration_rows"] == d["reference"]["rows"]
    proc = run_cli("drift", run_id, "--reference", "nowhere", "--json", home=demo_home, check=False)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.startswith("error: unknown traffic 'nowhere'")
