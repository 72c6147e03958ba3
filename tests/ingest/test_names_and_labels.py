"""Names that print alike (a trailing line break, edge whitespace, control characters) and binary labels that
are not exactly 0 or 1: refused or quarantined, never silently stored, and the counts reconcile."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, TinyModel
from workbench import WorkbenchError
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store, check_name, name_problem, traffic_table


def traffic(n: int, **extra) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "event_time": pd.date_range("2024-03-01", periods=n, freq="min"),
            "x": np.linspace(-1, 1, n),
            **extra,
        }
    )


# -- names -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, problem",
    [
        ("name\n", "ends with whitespace or a control character (U+000A)"),
        ("name\r\n", "ends with whitespace or a control character (U+000A)"),
        (" name", "starts with whitespace or a control character (U+0020)"),
        ("name\t", "ends with whitespace or a control character (U+0009)"),
        ("na\x00me", "holds a control character (U+0000)"),
        ("na\u2028me", "holds a control character (U+2028)"),
        ("name\u200b", "ends with whitespace or a control character (U+200B)"),
    ],
    ids=["newline", "crlf", "leading-space", "tab", "nul", "line-separator", "zero-width-space"],
)
def test_names_with_edge_whitespace_or_control_characters_are_refused(tmp_path, name, problem):
    assert name_problem(name) == "it " + problem
    with pytest.raises(WorkbenchError, match="invalid traffic name .*" + rf"{problem.split(' (')[0]}"):
        check_name(name, "traffic name")
    path = tmp_path / "t.parquet"
    traffic(3).to_parquet(path)
    with Store(":memory:") as store:
        with pytest.raises(WorkbenchError, match="invalid traffic name"):
            ingest(store, path, name)
        assert store.list_traffic() == []


def test_plain_names_pass():
    assert check_name("name", "traffic name") == "name" and name_problem("a b") is None


@pytest.mark.parametrize(
    "columns, message",
    [
        (["x", "x\n"], r"column name 'x\\n' is refused: it ends with whitespace or a control character \(U\+000A\)"),
        (["x", " y"], r"column name ' y' is refused: it starts with whitespace"),
        (["x", "y "], r"column name 'y ' is refused: it ends with whitespace"),
        (["x", "a\tb"], r"column name 'a\\tb' is refused: it holds a control character \(U\+0009\)"),
        (["x", "a\x1bb"], r"column name 'a\\x1bb' is refused: it holds a control character \(U\+001B\)"),
    ],
    ids=["name-and-name-newline", "leading-space", "trailing-space", "inner-tab", "inner-escape"],
)
def test_column_names_that_print_alike_are_refused_and_nothing_is_stored(tmp_path, columns, message):
    df = traffic(4)
    for c in columns[1:]:
        df[c] = 1.0
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    with Store(":memory:") as store:
        with pytest.raises(WorkbenchError, match=message):
            ingest(store, path, "t")
        assert store.traffic_info("t") is None


def test_the_cli_refuses_a_newline_in_a_column_name_in_one_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('request_id,event_time,x,"x\n"\nr1,2024-03-01T00:00:00Z,0.1,0.2\n')
    env = os.environ | {"WORKBENCH_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "ingest", str(path), "--name", "t", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert "column name 'x\\n' is refused: it ends with whitespace or a control character" in proc.stderr


# -- labels -----------------------------------------------------------------------------------------------
LABEL_CASES = [
    # (column as Arrow, labels kept as {row: label}, quarantined reasons by row)
    (pa.array([0.0, 1.0, 0.5, 1e300, 2.0, -1.0, math.nan, None]), {0: 0, 1: 1}, {2, 3, 4, 5}),
    (pa.array([0, 1, 2, -1, None], pa.int64()), {0: 0, 1: 1}, {2, 3}),
    (pa.array([True, False, None]), {0: 1, 1: 0}, set()),
    (
        pa.array(["0", "1", " 1 ", "true", "FALSE", "yes", "0.5", "1e300", "2", "01", "+1", "maybe", None]),
        {0: 0, 1: 1, 2: 1, 3: 1, 4: 0, 5: 1},
        {6, 7, 8, 9, 10, 11},
    ),
]


@pytest.mark.parametrize("column, kept, bad", LABEL_CASES, ids=["double", "int", "bool", "text"])
def test_labels_file_keeps_only_0_and_1(tmp_path, column, kept, bad):
    n = len(column)
    traffic(n).to_parquet(tmp_path / "t.parquet")
    pq.write_table(pa.table({"request_id": [f"r{i}" for i in range(n)], "label": column}), tmp_path / "l.parquet")
    with Store(":memory:") as store:
        ingest(store, tmp_path / "t.parquet", "t")
        res = ingest_labels(store, tmp_path / "l.parquet", "t", time_col=None)
        stored = dict(store.cursor().execute("SELECT request_id, label FROM labels WHERE traffic = 't'").fetchall())
        reasons = dict(
            store.cursor()
            .execute("SELECT request_id, reason FROM quarantine WHERE traffic = 't' AND kind = 'labels'")
            .fetchall()
        )
    assert stored == {f"r{i}": v for i, v in kept.items()}
    assert {k for k, v in reasons.items() if v == "type:label"} == {f"r{i}" for i in bad}
    missing = n - len(kept) - len(bad)  # nulls (and NaN) are missing labels, not type errors
    assert res.reasons == {k: v for k, v in {"type:label": len(bad), "null:label": missing}.items() if v}
    assert res.rows_read == res.labels + res.quarantined == n


@pytest.mark.parametrize("column, kept, bad", LABEL_CASES, ids=["double", "int", "bool", "text"])
def test_traffic_labels_keep_only_0_and_1_and_every_row_is_scored_or_quarantined(tmp_path, column, kept, bad):
    n = len(column)
    table = pa.Table.from_pandas(traffic(n), preserve_index=False).append_column("y", column)
    pq.write_table(table, tmp_path / "t.parquet")
    with Store(":memory:") as store:
        res = ingest(store, tmp_path / "t.parquet", "t", label_col="y")
        assert res.rows_read == res.rows + res.quarantined == n
        assert res.reasons == ({"type:y": len(bad)} if bad else {})
        ids = [r[0] for r in store.cursor().execute(f"SELECT request_id FROM {traffic_table('t')}").fetchall()]
        assert sorted(ids) == sorted(f"r{i}" for i in range(n) if i not in bad)
        labels = dict(store.cursor().execute("SELECT request_id, label FROM labels WHERE traffic = 't'").fetchall())
        assert labels == {f"r{i}": v for i, v in kept.items()}
        out = replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="run_t", options=ReplayOptions(batch_size=4))
        scored = store.cursor().execute("SELECT count(*) FROM predictions WHERE run_id = 'run_t'").fetchall()[0][0]
    assert out.rows == scored == res.rows and scored + res.quarantined == n


def test_label_counts_in_json_reconcile(tmp_path):
    """`workbench ingest --label-col` on a CSV with 0.5 and 1e300: quarantined as type:label, counts add up."""
    path = tmp_path / "t.csv"
    lines = ["request_id,event_time,x,label"] + [
        f"r{i},2024-03-01T00:0{i}:00Z,0.{i},{v}" for i, v in enumerate(["0", "1", "0.5", "1e300", "1"])
    ]
    path.write_text("\n".join(lines) + "\n")
    env = os.environ | {"WORKBENCH_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "ingest", str(path), "--name", "t", "--label-col", "label", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["reasons"] == {"type:label": 2} and out["rows_read"] == out["rows"] + out["quarantined"] == 5
