"""Labels carry the ``_row`` of their request (evaluations join on it): set when the label or its request comes,
whichever is later, and filled in when a storage made before the column is first opened for writing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import seed_run
from workbench.evaluate.evaluation import evaluate_run
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _traffic(path: Path, ids: range, label: bool = False) -> Path:
    df = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in ids],
            "event_time": pd.Timestamp("2024-03-01") + pd.to_timedelta(list(ids), unit="s"),
            "x": [float(i) for i in ids],
        }
    )
    if label:
        df["label"] = [i % 2 for i in ids]
    df.to_parquet(path)
    return path


def _label_rows(store: Store, table: str) -> dict[str, int | None]:
    return dict(store.cursor().execute(f"SELECT request_id, _row FROM {table} WHERE traffic = 't'").fetchall())


def _traffic_rows(store: Store) -> dict[str, int]:
    return dict(store.cursor().execute("SELECT request_id, _row FROM traffic_t").fetchall())


def test_a_label_gets_its_request_row_whether_it_comes_before_or_after_the_request(tmp_path):
    store = Store(":memory:")
    ingest(store, _traffic(tmp_path / "a.parquet", range(0, 10)), "t")
    pd.DataFrame({"request_id": [f"r{i}" for i in range(5, 15)], "label": 1}).to_parquet(tmp_path / "l.parquet")
    pd.DataFrame({"request_id": [f"r{i}" for i in range(8, 14)], "label": 2.5}).to_parquet(tmp_path / "v.parquet")
    assert ingest_labels(store, tmp_path / "l.parquet", "t").unmatched == 5
    assert ingest_labels(store, tmp_path / "v.parquet", "t", task="regression").unmatched == 4
    pd.DataFrame({"request_id": ["r1", "r12"], "label": ["cat", "dog"]}).to_parquet(tmp_path / "c.parquet")
    assert ingest_labels(store, tmp_path / "c.parquet", "t", task="multiclass").unmatched == 1
    rows = _traffic_rows(store)
    assert _label_rows(store, "labels") == {f"r{i}": rows.get(f"r{i}") for i in range(5, 15)}
    assert _label_rows(store, "label_values") == {f"r{i}": rows.get(f"r{i}") for i in range(8, 14)}
    assert _label_rows(store, "label_classes") == {"r1": rows["r1"], "r12": None}

    ingest(store, _traffic(tmp_path / "b.parquet", range(10, 14)), "t")  # the requests of 4 labels come later
    rows = _traffic_rows(store)
    assert _label_rows(store, "labels") == {f"r{i}": rows.get(f"r{i}") for i in range(5, 15)}
    assert _label_rows(store, "label_values") == {f"r{i}": rows[f"r{i}"] for i in range(8, 14)}
    assert _label_rows(store, "label_classes") == {"r1": rows["r1"], "r12": rows["r12"]}
    assert _label_rows(store, "labels")["r14"] is None  # still no such request

    ingest(store, _traffic(tmp_path / "d.parquet", range(20, 25), label=True), "t", label_col="label")
    rows = _traffic_rows(store)
    assert _label_rows(store, "labels") == {f"r{i}": rows.get(f"r{i}") for i in [*range(5, 15), *range(20, 25)]}


OLD_LAYOUT = """
import sys
from workbench.store import Store
with Store(sys.argv[1]) as s, s.transaction() as cur:
    cur.execute("ALTER TABLE labels DROP COLUMN _row")
    cur.execute("ALTER TABLE label_values DROP COLUMN _row")
    print(list(s._table_columns("labels")))
"""

EVALUATE = """
import json, sys
from workbench.evaluate.evaluation import evaluate_run
from workbench.store import Store
with Store(sys.argv[1]) as s:
    columns = list(s._table_columns("labels"))
    result = evaluate_run(s, "r1", segment="region").to_dict()
    rows = s.cursor().execute("SELECT count(*), count(_row) FROM labels").fetchall()[0]
print(json.dumps({"columns": columns, "rows": rows, "result": result}))
"""


def _python(code: str, *args) -> str:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_storage_made_before_label_rows_gets_them_when_opened_for_writing_and_evaluates_the_same(tmp_path):
    lake = tmp_path / "lake"
    with Store(lake) as store:
        seed_run(store, "r1", rows=3000, labelled=0.7)
        before = evaluate_run(store, "r1", segment="region").to_dict()
    old = _python(OLD_LAYOUT, lake)  # each process attaches the lake afresh, and upgrades it when it writes
    assert old.split() == ["['traffic',", "'request_id',", "'label',", "'label_time']"]
    out = json.loads(_python(EVALUATE, lake))
    assert out["columns"] == ["traffic", "request_id", "label", "label_time", "_row"]
    assert out["rows"] == [2100, 2100]
    assert out["result"] == json.loads(json.dumps(before))


def test_the_labels_state_changes_when_two_labels_swap(tmp_path):
    """The digest of (request id, label) pairs changes for any change of labels, here one that keeps how many
    rows have each label."""
    with Store(tmp_path / "lake") as s:
        ingest(s, _traffic(tmp_path / "t.parquet", range(4)), "t")
        pd.DataFrame({"request_id": ["r0", "r1", "r2", "r3"], "label": [0, 1, 0, 1]}).to_parquet(tmp_path / "a.parquet")
        ingest_labels(s, tmp_path / "a.parquet", "t")
        before = s.labels_state("t")
        pd.DataFrame({"request_id": ["r0", "r1"], "label": [1, 0]}).to_parquet(tmp_path / "b.parquet")
        ingest_labels(s, tmp_path / "b.parquet", "t")
        after = s.labels_state("t")
    assert before["rows"] == after["rows"] == 4 and before["digest"] != after["digest"]
