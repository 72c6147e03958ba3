"""Ingest: the traffic contract, the quarantine and reconciled counts."""

import json

import pandas as pd
import pytest

from workbench import WorkbenchError
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.store import Store


@pytest.fixture
def store():
    with Store(":memory:") as s:
        yield s


def good_frame(n=10):
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "event_time": pd.date_range("2024-01-01", periods=n, freq="min"),
            "user": [f"u{i % 3}" for i in range(n)],
            "x": [float(i) for i in range(n)],
            "seg": ["a", "b"] * (n // 2),
        }
    )


def test_parquet_ingest_reconciles(store, tmp_path):
    p = tmp_path / "t.parquet"
    good_frame().to_parquet(p)
    r = ingest(store, p, "t", entity_col="user")
    assert (r.rows_read, r.rows, r.quarantined) == (10, 10, 0)
    assert store.traffic_count("t") == 10
    info = store.require_traffic("t")
    assert info["columns"] == ["x", "seg"] and len(info["fingerprint"]) == 64


def test_csv_bad_rows_are_quarantined_with_reasons(store, tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "request_id,event_time,x,seg\n"
        "r1,2024-01-01T00:00:00Z,1.5,a\n"
        "r2,2024-01-01T00:01:00Z,oops,a\n"  # text in a numeric column
        ",2024-01-01T00:02:00Z,2.0,b\n"  # null id
        "r4,not-a-time,2.0,b\n"  # bad time
        "r5,2024-01-01T00:04:00Z,,b\n"  # null feature
        "r1,2024-01-01T00:05:00Z,3.0,b\n"  # duplicate id, later copy
        "r7,2024-01-01T00:06:00Z,inf,a\n"  # non-finite
        "r8,2024-01-01T00:07:00Z,4,a\n"
        "r9,2024-01-01T00:08:00Z,5,a\n"
        "r10,2024-01-01T00:09:00Z,6,a\n"
        "r11,2024-01-01T00:10:00Z,7,a\n"
    )
    r = ingest(store, p, "t")
    assert r.rows_read == 11 and r.rows + r.quarantined == r.rows_read
    assert r.reasons == {
        "duplicate_id": 1,
        "nonfinite:x": 1,
        "null:request_id": 1,
        "null:x": 1,
        "type:event_time": 1,
        "type:x": 1,
    }
    rows = store.con.execute("SELECT source_row, reason, raw FROM quarantine ORDER BY source_row").fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        (1, "type:x"),
        (2, "null:request_id"),
        (3, "type:event_time"),
        (4, "null:x"),
        (5, "duplicate_id"),
        (6, "nonfinite:x"),
    ]
    assert json.loads(rows[0][2])["x"] == "oops"
    # the first copy of r1 is the one kept
    assert store.con.execute("SELECT x FROM traffic_t WHERE request_id = 'r1'").fetchall() == [(1.5,)]


def test_nullable_column_admits_nulls(store, tmp_path):
    df = good_frame()
    df.loc[3, "x"] = None
    p = tmp_path / "t.parquet"
    df.to_parquet(p)
    assert ingest(store, p, "strict").reasons == {"null:x": 1}
    assert ingest(store, p, "lenient", nullable=["x"]).quarantined == 0


def test_append_quarantines_ids_already_stored(store, tmp_path):
    p = tmp_path / "t.parquet"
    good_frame().to_parquet(p)
    ingest(store, p, "t")
    r = ingest(store, p, "t")
    assert (r.rows, r.quarantined, r.reasons) == (0, 10, {"duplicate_id": 10})
    assert store.require_traffic("t")["rows"] == 10


@pytest.mark.parametrize("content", [b"", b"PAR1garbage", b"\x00\x01\x02"], ids=["empty", "truncated", "binary"])
def test_unreadable_file_is_refused_and_changes_nothing(store, tmp_path, content):
    p = tmp_path / "t.parquet"
    p.write_bytes(content)
    with pytest.raises(WorkbenchError, match="cannot read"):
        ingest(store, p, "t")
    assert store.traffic_info("t") is None
    assert store.con.execute("SELECT count(*) FROM quarantine").fetchall() == [(0,)]


def test_missing_required_column_names_it(store, tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("id;event_time;x\nr1;2024-01-01;1\n")  # wrong delimiter: one column
    with pytest.raises(WorkbenchError, match="missing required column"):
        ingest(store, p, "t")


@pytest.mark.parametrize("name", ["1abc", "a-b", "x; DROP TABLE runs", ""], ids=["digit", "dash", "sql", "empty"])
def test_hostile_traffic_names_are_refused(store, tmp_path, name):
    p = tmp_path / "t.parquet"
    good_frame().to_parquet(p)
    with pytest.raises(WorkbenchError, match="invalid traffic name"):
        ingest(store, p, name)


def test_labels_join_by_request_id(store, tmp_path):
    p = tmp_path / "t.parquet"
    good_frame().to_parquet(p)
    ingest(store, p, "t")
    lp = tmp_path / "l.csv"
    lp.write_text(
        "request_id,label,label_time\nr1,1,2024-01-02\nr2,0,2024-01-02\nzz,1,2024-01-02\n"
        "r3,maybe,2024-01-02\nr2,1,2024-01-03\n"
    )
    r = ingest_labels(store, lp, "t")
    assert (r.rows_read, r.labels, r.unmatched, r.quarantined) == (5, 3, 1, 2)
    assert r.reasons == {"duplicate_id": 1, "type:label": 1}


def test_label_column_in_traffic_is_accepted(store, tmp_path):
    df = good_frame()
    df["y"] = [i % 2 for i in range(10)]
    p = tmp_path / "t.parquet"
    df.to_parquet(p)
    r = ingest(store, p, "t", entity_col="user", label_col="y")
    assert r.rows == 10 and store.require_traffic("t")["columns"] == ["x", "seg"]
    assert store.con.execute("SELECT count(*), sum(label) FROM labels").fetchall() == [(10, 5)]


def test_parquet_reader_holds_about_one_row_group(tmp_path):
    """Streaming a file keeps memory flat: pyarrow's default pre-buffering held every chunk it had read."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workbench.ingest.traffic import read_batches

    n, groups = 100_000, 12
    table = pa.table({f"f{j}": np.arange(n * groups, dtype=np.float64) for j in range(8)})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=n, compression="none")
    group_bytes = table.nbytes // groups
    del table
    base, peak = pa.total_allocated_bytes(), 0
    for _ in read_batches([tmp_path / "big.parquet"], batch_rows=25_000):
        peak = max(peak, pa.total_allocated_bytes() - base)
    assert peak < 3 * group_bytes, (peak, group_bytes)  # was the whole file: 12 row groups


def test_arrow_view_frees_each_batch_inside_a_transaction(store):
    """Tables seen through ArrowView go away with their batch, not at the commit (``register`` kept them)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from workbench.store import ArrowView

    store.con.execute("CREATE TABLE sink (x DOUBLE)")
    base = pa.total_allocated_bytes()
    with store.transaction() as cur:
        for k in range(5):
            data = pa.table({"x": pc.add(pa.array(np.zeros(200_000)), float(k))})  # 1.6 MB in Arrow's pool
            view = ArrowView(cur, "_wb_b", data)
            view.execute("INSERT INTO sink SELECT x FROM _wb_b")
            del data, view
            assert pa.total_allocated_bytes() - base < 1_000_000
        assert cur.execute("SELECT count(*), sum(x) FROM sink").fetchall()[0] == (1_000_000, 2_000_000.0)
