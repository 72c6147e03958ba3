"""Shadow replay with tiny in-process models: pairing, error isolation, resume, immutability."""

import numpy as np
import pandas as pd
import pytest

from conftest import TinyModel
from workbench import WorkbenchError
from workbench.ingest.traffic import ingest
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store


@pytest.fixture
def store(tmp_path):
    df = pd.DataFrame(
        {
            "request_id": [f"r{i:03d}" for i in range(100)],
            "event_time": pd.date_range("2024-01-01", periods=100, freq="min"),
            "x": np.linspace(-3, 3, 100).round(6),
        }
    )
    df.loc[17, "x"] = 100.0
    df.loc[42, "x"] = 200.0
    df.to_parquet(tmp_path / "t.parquet")
    with Store(":memory:") as s:
        ingest(s, tmp_path / "t.parquet", "t")
        yield s


def predictions(store, run_id):
    """The run's results in long form (one row per request and role), for easy assertions."""
    return store.con.execute(
        """
        WITH p AS (SELECT t.request_id, p.* FROM predictions p JOIN traffic_t t USING (_row) WHERE p.run_id = ?)
        SELECT request_id, 'baseline' AS role, baseline_score AS score, baseline_class AS pred_class,
               baseline_latency_ms AS latency_ms, baseline_error AS error FROM p
        UNION ALL
        SELECT request_id, 'candidate', candidate_score, candidate_class, candidate_latency_ms, candidate_error
        FROM p ORDER BY role, request_id""",
        [run_id],
    ).df()


def test_every_request_scored_by_both(store):
    r = replay(
        store, "t", TinyModel("a"), TinyModel("b", threshold=0.9), run_id="r1", options=ReplayOptions(batch_size=16)
    )
    assert (r.rows, r.baseline_errors, r.candidate_errors, r.status) == (100, 0, 0, "finished")
    p = predictions(store, "r1")
    assert len(p) == 200 and p.groupby("role").request_id.nunique().to_dict() == {"baseline": 100, "candidate": 100}
    x = np.linspace(-3, 3, 100).round(6)
    x[17], x[42] = 100.0, 200.0
    np.testing.assert_allclose(p[p.role == "baseline"].score.to_numpy(), 1 / (1 + np.exp(-x)))
    cand = p[p.role == "candidate"]
    assert (cand.pred_class == (cand.score >= 0.9)).all()
    assert (p.latency_ms > 0).all()


def test_raising_rows_are_bisected_and_isolated(store):
    bad = TinyModel("bad", raise_on={100.0, 200.0})
    r = replay(store, "t", TinyModel("good"), bad, run_id="r2", options=ReplayOptions(batch_size=32))
    assert (r.baseline_errors, r.candidate_errors) == (0, 2)
    p = predictions(store, "r2")
    errs = p[(p.role == "candidate") & p.error.notna()]
    assert sorted(errs.request_id) == ["r017", "r042"]
    assert errs.error.str.contains("ValueError: bad input row").all() and errs.score.isna().all()
    assert p[p.role == "baseline"].error.isna().all()


def test_nan_scores_and_wrong_shapes_are_errors(store):
    r = replay(store, "t", TinyModel("nan", nan_on={100.0}), TinyModel("shape", wrong_shape=True), run_id="r3")
    assert r.baseline_errors == 1
    assert r.candidate_errors == 100  # a wrong shape is bisected down to single rows, which fail too
    p = predictions(store, "r3")
    assert p[p.role == "baseline"].dropna(subset=["error"]).error.iloc[0].startswith("non-finite score")


def test_finished_run_is_immutable(store):
    replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="r4")
    again = replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="r4")
    assert again.status == "already_complete" and again.rows == 100
    assert len(predictions(store, "r4")) == 200


@pytest.mark.parametrize("writers", [1, 3], ids=["one_writer", "three_writers"])
def test_interrupted_run_resumes_exactly_once(store, writers):
    class Crash(TinyModel):
        def predict(self, batch):
            if self.calls >= 3:
                raise KeyboardInterrupt  # stands in for the process dying between batches
            return super().predict(batch)

    opts = ReplayOptions(batch_size=10, writers=writers)
    with pytest.raises(KeyboardInterrupt):
        replay(store, "t", TinyModel("a"), Crash("b"), run_id="r5", options=opts)
    assert store.require_run("r5")["rows_done"] == 30
    r = replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="r5", options=opts)
    assert r.status == "finished" and r.rows == 100
    p = predictions(store, "r5")
    assert len(p) == 200 and not p.duplicated(["request_id", "role"]).any()


def test_resume_refuses_other_models(store):
    replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="r6")
    other = TinyModel("c")
    with pytest.raises(WorkbenchError, match="was started with candidate"):
        replay(store, "t", TinyModel("a"), other, run_id="r6")


def test_missing_feature_is_a_clear_error(store):
    m = TinyModel("a")
    object.__setattr__(m, "ref", m.ref.__class__(**{**m.ref.__dict__, "features": ("x", "nope")}))
    with pytest.raises(WorkbenchError, match="needs column"):
        replay(store, "t", m, TinyModel("b"))


def test_resume_skips_ranges_committed_out_of_order(store):
    """Writers may commit batch 2 before batch 1; a resume must fill exactly the hole."""
    replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="full", options=ReplayOptions(batch_size=10))
    rows = store.con.execute(
        "SELECT * EXCLUDE (run_id) FROM predictions WHERE run_id = 'full' ORDER BY _row"
    ).to_arrow_table()
    store.create_run(
        run_id="holes",
        traffic="t",
        baseline=TinyModel("a").ref.to_dict(),
        candidate=TinyModel("b").ref.to_dict(),
        rows_total=100,
        batch_size=10,
        device="cpu",
        mode="throughput",
        meta={},
    )
    store.commit_batch("holes", 0, 0, 9, 10, 0.0, rows.slice(0, 10))
    store.commit_batch("holes", 2, 20, 29, 10, 0.0, rows.slice(20, 10))
    assert store.committed_ranges("holes") == [(0, 9), (20, 29)]
    r = replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="holes", options=ReplayOptions(batch_size=7))
    assert r.rows == 100
    p = predictions(store, "holes")
    assert len(p) == 200 and not p.duplicated(["request_id", "role"]).any()


# -- batching and commit units --------------------------------------------------------------------------
def _reader(sizes):
    import pyarrow as pa

    start, batches = 0, []
    for n in sizes:
        batches.append(pa.record_batch({"_row": np.arange(start, start + n)}))
        start += n
    return pa.RecordBatchReader.from_batches(batches[0].schema, batches)


@pytest.mark.parametrize(
    "sizes,size",
    [([7, 7, 7], 5), ([3, 100, 1], 40), ([10], 10), ([4, 4], 100)],
    ids=["small-into-smaller", "split-big", "exact", "short-tail"],
)
def test_rebatch_gives_exact_sizes_in_order(sizes, size):
    from workbench.replay.pipeline import rebatch

    out = list(rebatch(_reader(sizes), size))
    total = sum(sizes)
    assert [t.num_rows for t in out] == [size] * (total // size) + ([total % size] if total % size else [])
    assert np.concatenate([t.column("_row").to_numpy() for t in out]).tolist() == list(range(total))


def test_commit_packer_cuts_whole_row_groups_and_shares_seconds():
    import pyarrow as pa

    from workbench.replay.pipeline import CommitPacker

    packer = CommitPacker(row_group=10, groups=2)
    table = lambda a, b: pa.table({"_row": np.arange(a, b)})  # noqa: E731
    assert packer.add(table(0, 13), 1.3, now=0.0) == []  # 13 rows < a unit of 20
    ((unit, sec),) = packer.add(table(13, 26), 2.6, now=0.1)  # 26 rows pending: 2 whole groups
    assert unit.column("_row").to_pylist() == list(range(20)) and sec == pytest.approx(1.3 + 1.4)
    assert packer.whole() == [] and packer.rows == 6  # no whole group left
    assert not packer.due(0.2) and packer.due(10.0)  # the rest waits, then may be flushed
    ((rest, sec),) = packer.flush()
    assert rest.column("_row").to_pylist() == list(range(20, 26)) and sec == pytest.approx(1.2)
    assert packer.flush() == [] and packer.rows == 0


def test_commit_packer_joins_float32_gpu_scores_with_float64_fallback_scores():
    """A GPU batch keeps float32 scores; one that fell back to model-by-model scoring has float64 ones."""
    import pyarrow as pa

    from workbench.replay.pipeline import CommitPacker

    packer = CommitPacker(row_group=4, groups=1)
    packer.add(pa.table({"_row": [0, 1], "s": pa.array([0.25, 0.5], pa.float32())}), 0.1, now=0.0)
    ((unit, _),) = packer.add(pa.table({"_row": [2, 3], "s": pa.array([0.1, 0.2], pa.float64())}), 0.1, now=0.0)
    assert unit.schema.field("s").type == pa.float64() and unit.column("s").to_pylist() == [0.25, 0.5, 0.1, 0.2]


def test_fast_replay_commits_whole_row_groups(store, monkeypatch):
    """Busy writers get units of whole row groups only; the tail is the one partial unit."""
    import workbench.replay.pipeline as rp

    monkeypatch.setattr(rp, "ROW_GROUP", 8)
    monkeypatch.setattr(rp, "FLUSH_S", 3600.0)
    r = replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="rg", options=ReplayOptions(batch_size=6))
    spans = [
        n
        for (n,) in store.con.execute("SELECT rows FROM run_batches WHERE run_id = 'rg' ORDER BY first_row").fetchall()
    ]
    assert sum(spans) == 100 and all(n % 8 == 0 for n in spans[:-1])
    assert r.stages["bound"] in ("read", "score", "build", "write") and r.stages["busy_s"]["write"] > 0


def test_duckdb_limits_size_the_scan_and_respect_explicit_settings(monkeypatch):
    from workbench.replay.pipeline import duckdb_limits

    monkeypatch.delenv("WORKBENCH_DUCKDB_THREADS", raising=False)
    monkeypatch.delenv("WORKBENCH_DUCKDB_MEMORY_LIMIT", raising=False)
    assert duckdb_limits(25, 8, cores=16) == {"threads": 8, "memory": "256MiB"}  # narrow: the floor
    assert duckdb_limits(25, 1, cores=2) == {"threads": 2, "memory": "256MiB"}
    # wide traffic: what 8 scan threads pin for 201 columns plus 8 writers' units (0.5*8*201 + 16*8 MB)
    assert duckdb_limits(200, 8, cores=16) == {"threads": 8, "memory": "932MiB"}
    monkeypatch.setenv("WORKBENCH_DUCKDB_THREADS", "16")  # explicit threads: kept, and the memory follows them
    assert duckdb_limits(200, 8, cores=16) == {"threads": None, "memory": "1736MiB"}
    monkeypatch.setenv("WORKBENCH_DUCKDB_MEMORY_LIMIT", "1GB")
    assert duckdb_limits(200, 8, cores=16) == {"threads": None, "memory": None}


def test_replay_runs_under_its_duckdb_limits_and_restores_them(store, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DUCKDB_THREADS", raising=False)
    monkeypatch.delenv("WORKBENCH_DUCKDB_MEMORY_LIMIT", raising=False)

    def settings(cur):
        return cur.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchall()[0]

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    store.con.execute("SET threads = 3")
    before = settings(store.con)
    during = []
    replay(
        store,
        "t",
        TinyModel("a"),
        TinyModel("b"),
        run_id="lim",
        options=ReplayOptions(batch_size=16),
        progress=lambda done, total: during.append(settings(store.cursor())),
    )
    assert before[0].startswith("488.") and before[1] == 3  # the store's default, 512 MB
    assert set(during[1:]) == {("256.0 MiB", 8)}  # min(8, cores) threads
    assert settings(store.con) == before
