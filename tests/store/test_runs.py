"""The run lifecycle: open a run (created, or found with what it committed), commit units, finish and count."""

import json
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from workbench import WorkbenchError
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.store import RunCounts, RunState, Store

ROWS = 100
REFS = {role: {"uri": f"test:{role}", "name": role, "version": "1"} for role in ("baseline", "candidate")}


@pytest.fixture
def store(tmp_path):
    df = pd.DataFrame(
        {
            "request_id": [f"r{i:03d}" for i in range(ROWS)],
            "event_time": pd.date_range("2024-01-01", periods=ROWS, freq="min"),
            "x": np.linspace(-3, 3, ROWS),
        }
    )
    df.to_parquet(tmp_path / "t.parquet")
    with Store(":memory:") as s:
        ingest(s, tmp_path / "t.parquet", "t")
        yield s


def open_run(store, run_id="r", **changes) -> RunState:
    args = dict(
        run_id=run_id,
        traffic="t",
        baseline=REFS["baseline"],
        candidate=REFS["candidate"],
        batch_size=10,
        device="cpu",
        mode="throughput",
        meta={"environment": {"host": "test"}},
    )
    return store.open_run(**(args | changes))


def paired(first: int, last: int, failed: dict[str, set[int]] | None = None) -> pa.Table:
    """Paired result rows for ``_row`` first..last; the rows in ``failed[role]`` are that model's errors."""
    rows = np.arange(first, last + 1)
    cols = {"_row": pa.array(rows)}
    for role in ("baseline", "candidate"):
        bad = np.isin(rows, sorted((failed or {}).get(role, ())))
        cols[f"{role}_score"] = pa.array(np.full(len(rows), 0.7), mask=bad)
        cols[f"{role}_class"] = pa.array(np.ones(len(rows), dtype=np.int32), mask=bad)
        cols[f"{role}_latency_ms"] = pa.array(np.full(len(rows), 1.5))
        cols[f"{role}_error"] = pa.array(["ValueError: bad" if b else None for b in bad], pa.string())
    return pa.table(cols)


def commit(store, run_id, batch_no, first, last, failed=None):
    store.commit_batch(run_id, batch_no, first, last, last - first + 1, 0.01, paired(first, last, failed))


def test_new_run_is_created_with_nothing_done(store):
    run = open_run(store)
    assert run == RunState(
        run_id="r",
        traffic="t",
        baseline=REFS["baseline"],
        candidate=REFS["candidate"],
        status="running",
        created=True,
        rows_total=ROWS,
        rows_done=0,
        committed=(),
        next_batch=0,
    )
    assert not run.finished
    stored = store.require_run("r")
    assert (stored["rows_total"], stored["batch_size"], stored["device"], stored["mode"]) == (
        ROWS,
        10,
        "cpu",
        "throughput",
    )
    assert stored["meta"] == {"environment": {"host": "test"}}
    assert json.loads(json.dumps(run.to_dict())) == run.to_dict()


def test_reopened_run_resumes_after_partial_commits(store):
    open_run(store)
    commit(store, "r", 0, 0, 9)
    commit(store, "r", 2, 20, 29)  # writers may commit out of order: the hole 10..19 stays to be replayed
    commit(store, "r", 1, 30, 34)
    run = open_run(store, batch_size=99, device="cuda", meta={})
    assert (run.created, run.status, run.rows_done, run.rows_total) == (False, "running", 25, ROWS)
    assert run.committed == ((0, 9), (20, 34)) and run.next_batch == 3
    assert run.to_dict()["committed"] == [[0, 9], [20, 34]]
    stored = store.require_run("r")  # reopening changes nothing that was stored
    assert (stored["batch_size"], stored["device"], stored["meta"]) == (10, "cpu", {"environment": {"host": "test"}})


def test_finish_counts_reconcile_with_predictions(store):
    open_run(store)
    commit(store, "r", 0, 0, 49, {"candidate": {3, 4, 40}})
    commit(store, "r", 1, 50, ROWS - 1, {"baseline": {77}, "candidate": {90}})
    counts = store.finish_run("r")
    assert counts == RunCounts(run_id="r", rows=ROWS, baseline_errors=1, candidate_errors=4)
    n, b, c = store.con.execute(
        "SELECT count(*), count(baseline_error), count(candidate_error) FROM predictions WHERE run_id = 'r'"
    ).fetchall()[0]
    assert (counts.rows, counts.baseline_errors, counts.candidate_errors) == (n, b, c)
    assert counts.to_dict() == {"run_id": "r", "rows": ROWS, "baseline_errors": 1, "candidate_errors": 4}
    assert store.prediction_counts("r") == {
        "baseline": {"rows": ROWS, "errors": 1},
        "candidate": {"rows": ROWS, "errors": 4},
    }
    run = store.require_run("r")
    assert run["status"] == "finished" and run["finished_at"] is not None and run["rows_done"] == ROWS


def test_finished_run_opens_as_complete(store):
    open_run(store)
    commit(store, "r", 0, 0, ROWS - 1, {"baseline": {5}})
    finished = store.finish_run("r")
    run = open_run(store)
    assert run.finished and not run.created
    assert (run.rows_done, run.committed, run.next_batch) == (ROWS, ((0, ROWS - 1),), 1)
    assert store.run_counts("r") == finished
    assert [r["run_id"] for r in store.list_runs()] == ["r"]


def test_run_on_unknown_traffic_is_refused_and_not_created(store):
    with pytest.raises(WorkbenchError, match="unknown traffic 'nowhere'"):
        open_run(store, traffic="nowhere")
    assert store.get_run("r") is None


def test_counts_of_an_unknown_run_are_an_error(store):
    with pytest.raises(WorkbenchError, match="unknown run 'nope'"):
        store.run_counts("nope")


@pytest.mark.parametrize("in_order", [True, False], ids=["rows_in_order", "rows_out_of_order"])
def test_evaluation_rows_carry_each_requests_label_segment_and_window(store, tmp_path, in_order):
    """Labels and traffic columns are looked up by the request's row, whatever order the rows come in."""
    open_run(store)
    for b, (first, last) in enumerate([(0, 49), (50, 99)] if in_order else [(50, 99), (0, 49)]):
        commit(store, "r", b, first, last, failed={"candidate": {3, 77}})
    labelled = np.arange(ROWS) if in_order else np.random.default_rng(0).permutation(ROWS)[:60]
    labels = pd.DataFrame({"request_id": [f"r{i:03d}" for i in labelled], "label": labelled % 2})
    labels.to_parquet(tmp_path / "l.parquet")
    ingest_labels(store, tmp_path / "l.parquet", "t", time_col=None)
    got = store.evaluation_rows("r", segment="x", window="hour").to_pandas()
    assert len(got) == ROWS
    row = np.rint((got["segment"].astype(float) + 3) / 6 * (ROWS - 1)).astype(int)  # x = linspace(-3, 3)
    assert sorted(row) == list(range(ROWS))
    expected = pd.Series(row % 2, dtype=float).where(row.isin(labelled))
    pd.testing.assert_series_equal(got["label"].astype(float), expected, check_names=False)
    start = pd.Timestamp("2024-01-01") + pd.to_timedelta(row // 60 * 60, unit="min")
    assert (pd.to_datetime(got["window_start"]).dt.tz_localize(None) == start).all()
    assert set(row[got["candidate_score"].isna()]) == set(row[got["candidate_failed"]]) == {3, 77}
    assert store.counts_of(store.prediction_rows(store.require_run("r"))) == store.prediction_counts("r")


@pytest.fixture(params=["memory", "lake"])
def either_store(request, tmp_path):
    """The fixture's traffic in an in-memory store and in a lake (its snapshots are the lake's own)."""
    pd.DataFrame(
        {
            "request_id": [f"r{i:03d}" for i in range(ROWS)],
            "event_time": pd.date_range("2024-01-01", periods=ROWS, freq="min"),
        }
    ).to_parquet(tmp_path / "t.parquet")
    with Store(":memory:" if request.param == "memory" else tmp_path / "lake") as s:
        ingest(s, tmp_path / "t.parquet", "t")
        yield s


def test_read_labels_returns_the_state_of_the_labels_it_handed_over(either_store, tmp_path):
    """The labels' state comes from the snapshot the labels were read in: a label added after they were read
    (here by the handler itself) changes neither, and the labels line up with the rows as a lookup does."""
    store = either_store
    open_run(store)
    for b, (first, last) in enumerate([(50, 99), (0, 49)]):
        commit(store, "r", b, first, last)
    labelled = np.random.default_rng(1).permutation(ROWS)[:60]
    pd.DataFrame({"request_id": [f"r{i:03d}" for i in labelled], "label": labelled % 2}).to_parquet(tmp_path / "l.pq")
    pd.DataFrame({"request_id": ["r999"], "label": [1]}).to_parquet(tmp_path / "late.pq")
    ingest_labels(store, tmp_path / "l.pq", "t", time_col=None)
    before = store.labels_state("t")
    handed: list[pa.Table] = []

    def handle(labels: pa.Table) -> None:
        handed.append(labels)
        late = threading.Thread(
            target=ingest_labels, args=(store, tmp_path / "late.pq", "t"), kwargs={"time_col": None}
        )
        late.start()  # a label arrives meanwhile
        late.join()

    run = store.require_run("r")
    assert store.read_labels(run, handle) == before
    assert store.labels_state("t")["rows"] == before["rows"] + 1
    assert sorted(handed[0].column("_row").to_pylist()) == sorted(labelled.tolist())
    rows = store.prediction_rows(run)
    looked_up = store.with_labels(run, rows)
    assert store.with_labels(run, rows, handed[0]).equals(looked_up)
    assert looked_up.column("label").null_count == ROWS - 60
