"""Bad traffic: a corpus of malformed inputs and property-based tests of the traffic contract.

Every input either ingests, with each bad row quarantined under a reason, or is refused with a clear
one-line error that changes nothing; the CLI never prints a traceback; rows read = rows ingested + rows
quarantined, and the traffic table holds each request id once, with no null, NaN or infinite value in a
required column. The property tests run 60 derandomized examples each; ``WORKBENCH_HYPOTHESIS_EXAMPLES``
asks for more (a deeper search, not for CI).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, TinyModel
from reliability_log import record
from workbench import WorkbenchError
from workbench.cli import main
from workbench.ingest.traffic import RAW_MAX_CHARS, ingest
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store, traffic_table

REASON = re.compile(r"^(null|type|nonfinite):.+$|^duplicate_id$|^malformed_row$")
MB = 1 << 20


def good(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "event_time": pd.date_range("2024-03-01", periods=n, freq="min"),
            "x": np.linspace(-2, 2, n),
            "seg": ["a", "b"] * (n // 2),
        }
    )


def csv_text(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows]) + "\n"


def rows(n: int, fmt: str = "r{i},2024-03-01T00:{i:02d}:00Z,{x},a") -> list[str]:
    return [fmt.format(i=i, x=0.1 * i) for i in range(n)]


# -- the corpus ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A bad input: how to write it, and either the error it is refused with or what it ingests."""

    name: str
    suffix: str
    write: Callable[[Path], None]
    refuse: str | None = None  # regex the one-line error matches
    reasons: dict | None = None  # the quarantine reasons when it ingests
    rows: int | None = None  # rows ingested when it ingests


def _truncated_parquet(p: Path) -> None:
    good(200).to_parquet(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])


def _text(content: str, encoding: str = "utf-8") -> Callable[[Path], None]:
    return lambda p: p.write_bytes(content.encode(encoding))


def _frame(df_fn: Callable[[], pd.DataFrame]) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        df = df_fn()
        df.to_parquet(p) if p.suffix == ".parquet" else df.to_csv(p, index=False)

    return write


def _nan_inf() -> pd.DataFrame:
    df = good(10)
    df.loc[1, "x"], df.loc[2, "x"], df.loc[3, "x"] = np.nan, np.inf, -np.inf
    return df


def _dup_ids() -> pd.DataFrame:
    df = good(10)
    df.loc[[3, 7], "request_id"] = "r0"
    return df


def _unicode() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": ["请求-1", "🙂", "naïve", "Ω\u200b", "r\u00e9sum\u00e9"],
            "event_time": pd.date_range("2024-03-01", periods=5, freq="min"),
            "température": [1.0, 2.0, 3.0, 4.0, 5.0],
            "列": ["東京", "ü", "😀", "a\tb", "x"],
        }
    )


def _unknown_columns() -> pd.DataFrame:
    df = good(10)
    df["debug_blob"] = ["{}"] * 10
    df["model_v9_score"] = np.arange(10.0)
    return df


def _huge_strings(p: Path) -> None:
    p.write_text(
        csv_text(
            "request_id,event_time,x,seg",
            [
                "r0,2024-03-01T00:00:00Z,1.0," + "s" * MB,  # a 1 MB value: kept
                "r1,2024-03-01T00:01:00Z," + "7" * MB + ",a",  # 1 MB of digits: overflows
                "r2,2024-03-01T00:02:00Z," + "z" * MB + ",a",  # 1 MB of text in x: type
                "i" * MB + ",2024-03-01T00:03:00Z,2.0,a",  # a 1 MB request id: kept
                *rows(30)[4:],
            ],
        )
    )


def _null_type_column(p: Path) -> None:
    t = pa.Table.from_pandas(good(10), preserve_index=False)
    pq.write_table(t.append_column("empty", pa.nulls(10)), p)


CORPUS = [
    Case("truncated_parquet", ".parquet", _truncated_parquet, refuse=r"^cannot read .*: "),
    Case("empty_parquet_file", ".parquet", _text(""), refuse=r"^cannot read "),
    Case("empty_csv_file", ".csv", _text(""), refuse=r"^cannot read "),
    Case("binary_garbage_as_csv", ".csv", lambda p: p.write_bytes(bytes(range(256)) * 4), refuse=r"not UTF-8 text"),
    Case(
        "control_characters_csv",
        ".csv",
        lambda p: p.write_bytes(bytes(range(1, 128)) * 4),
        refuse=r"column name '\\x01.*' is refused: it starts with whitespace or a control character \(U\+0001\)",
    ),
    Case("zero_row_parquet", ".parquet", _frame(lambda: good(0)), refuse=r"holds no rows"),
    Case("header_only_csv", ".csv", _text("request_id,event_time,x\n"), refuse=r"holds no rows"),
    Case(
        "semicolon_delimited_csv",
        ".csv",
        _text(csv_text("request_id;event_time;x", ["r1;2024-03-01;1"])),
        refuse=r"^missing required column\(s\) request_id, event_time",
    ),
    Case(
        "tab_delimited_named_csv",
        ".csv",
        _text(csv_text("request_id\tevent_time\tx", ["r1\t2024-03-01\t1"])),
        refuse=r"column name 'request_id\\tevent_time\\tx' is refused: it holds a control character \(U\+0009\)",
    ),
    Case(
        "ragged_csv_lines",
        ".csv",
        _text(
            csv_text(
                "request_id,event_time,x,seg",
                rows(12) + ["r90,2024-03-01T01:00:00Z,1.0", "r91,2024-03-01T01:00:00Z,1.0,a,extra"],
            )
        ),
        reasons={"malformed_row": 2},
        rows=12,
    ),
    Case(
        "wrong_types_csv",
        ".csv",
        _text(
            csv_text(
                "request_id,event_time,x,seg",
                rows(20)
                + ["r90,2024-03-01T01:00:00Z,abc,a", "r91,yesterday,1.0,a", "r92,2024-03-01T01:00:00Z,1.0.0,a"],
            )
        ),
        reasons={"type:event_time": 1, "type:x": 2},
        rows=20,
    ),
    Case(
        "wrong_types_parquet",
        ".parquet",
        _frame(lambda: good(20).assign(x=[str(v) for v in range(18)] + ["abc", "1,5"])),
        reasons={"type:x": 2},
        rows=18,
    ),
    Case("nan_inf_parquet", ".parquet", _frame(_nan_inf), reasons={"nonfinite:x": 2, "null:x": 1}, rows=7),
    Case(
        "nan_inf_text_csv",
        ".csv",
        _text(
            csv_text(
                "request_id,event_time,x,seg",
                rows(10)
                + [
                    "n1,2024-03-01T01:00:00Z,nan,a",
                    "n2,2024-03-01T01:00:00Z,NaN,a",
                    "n3,2024-03-01T01:00:00Z,inf,a",
                    "n4,2024-03-01T01:00:00Z,-Infinity,a",
                    "n5,2024-03-01T01:00:00Z,,a",
                ],
            )
        ),
        reasons={"nonfinite:x": 2, "null:x": 3},
        rows=10,
    ),
    Case("huge_1mb_strings_csv", ".csv", _huge_strings, reasons={"nonfinite:x": 1, "type:x": 1}, rows=28),
    Case("unicode_ids_columns_values", ".parquet", _frame(_unicode), reasons={}, rows=5),
    Case("unicode_csv", ".csv", _frame(_unicode), reasons={}, rows=5),
    Case("duplicate_ids", ".parquet", _frame(_dup_ids), reasons={"duplicate_id": 2}, rows=8),
    Case(
        "missing_id_column",
        ".parquet",
        _frame(lambda: good().drop(columns="request_id")),
        refuse=r"^missing required column\(s\) request_id",
    ),
    Case(
        "missing_time_column",
        ".csv",
        _frame(lambda: good().drop(columns="event_time")),
        refuse=r"^missing required column\(s\) event_time",
    ),
    Case("columns_the_model_does_not_know", ".parquet", _frame(_unknown_columns), reasons={}, rows=10),
    Case("null_typed_column", ".parquet", _null_type_column, reasons={"null:empty": 10}, rows=0),
    Case(
        "duplicate_column_names_csv",
        ".csv",
        _text(csv_text("request_id,event_time,x,x", ["r1,2024-03-01,1,2"])),
        refuse=r"duplicate column name 'x'",
    ),
    Case(
        "column_names_equal_up_to_case",
        ".csv",
        _text(csv_text("request_id,event_time,x,X", ["r1,2024-03-01,1,2"])),
        refuse=r"case-insensitive",
    ),
    Case(
        "column_without_name",
        ".csv",
        _text(csv_text("request_id,event_time,", ["r1,2024-03-01,1"])),
        refuse=r"column 3 has no name",
    ),
    Case("reserved_column_row", ".parquet", _frame(lambda: good().assign(_row=1)), refuse=r"reserved"),
    Case("reserved_column_prefix", ".parquet", _frame(lambda: good().assign(_wb_stage=1)), refuse=r"reserved"),
    Case(
        "staging_like_column_names",
        ".parquet",
        _frame(lambda: good().assign(_reason="x", _raw=1.0)),
        reasons={},
        rows=20,
    ),
    Case(
        "sql_in_column_names",
        ".parquet",
        _frame(lambda: good().rename(columns={"x": 'x"; DROP TABLE runs; --', "seg": "a'b"})),
        reasons={},
        rows=20,
    ),
    Case(
        "latin1_csv",
        ".csv",
        _text(csv_text("request_id,event_time,x", ["ré,2024-03-01,1"]), "latin-1"),
        refuse=r"not UTF-8 text \(byte 0xe9 at offset 25\)",
    ),
    Case(
        "text_that_looks_null_csv",
        ".csv",
        _text(
            csv_text(
                "request_id,event_time,x,country",
                ["NA,2024-03-01,1,NA", "null,2024-03-01,2,null", "N/A,2024-03-01,3,None"],
            )
        ),
        reasons={},
        rows=3,
    ),
    Case(
        "quoted_newlines_and_quotes_csv",
        ".csv",
        _text(
            csv_text(
                "request_id,event_time,x,seg",
                ['r1,2024-03-01,1,"line one\nline two"', 'r2,2024-03-01,2,"say ""hi"", ok"'],
            )
        ),
        reasons={},
        rows=2,
    ),
    Case(
        "malformed_jsonl",
        ".jsonl",
        _text('{"request_id": "a", "event_time": "2024-03-01", "x": 1}\n{"request_id":\n'),
        refuse=r"^cannot read .*JSON",
    ),
    Case("unsupported_extension", ".xlsx", _text("PK\x03\x04"), refuse=r"unsupported file type"),
]


def check_reconciled(store: Store, name: str, res) -> None:
    """Counts reconcile, reasons are from the contract, and the stored rows meet it."""
    assert res.rows + res.quarantined == res.rows_read
    assert sum(res.reasons.values()) == res.quarantined
    assert all(REASON.match(r) for r in res.reasons), res.reasons
    cur = store.cursor()
    q = cur.execute("SELECT count(*) FROM quarantine WHERE traffic = ? AND kind = 'traffic'", [name]).fetchall()[0][0]
    assert q == res.quarantined
    t = traffic_table(name)
    n, ids, null_ids, null_times = cur.execute(
        f"SELECT count(*), count(DISTINCT request_id), count(*) - count(request_id), count(*) - count(event_time) "
        f"FROM {t}"
    ).fetchall()[0]
    assert (n, ids, null_ids, null_times) == (res.rows, res.rows, 0, 0)
    assert store.require_traffic(name)["rows"] == res.rows
    for col, typ in cur.execute(f"SELECT column_name, column_type FROM (DESCRIBE {t})").fetchall():
        if typ in ("DOUBLE", "FLOAT"):
            bad = cur.execute(
                f'SELECT count(*) FROM {t} WHERE NOT isfinite("{col.replace(chr(34), chr(34) * 2)}") '
                f'OR "{col.replace(chr(34), chr(34) * 2)}" IS NULL'
            ).fetchall()[0][0]
            assert bad == 0, col


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_traffic")
    paths = {}
    for case in CORPUS:
        p = root / f"{case.name}{case.suffix}"
        case.write(p)
        paths[case.name] = p
    return paths


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_corpus_input_ingests_with_reasons_or_is_refused(case, corpus):
    path = corpus[case.name]
    with Store(":memory:") as store:
        if case.refuse:
            with pytest.raises(WorkbenchError) as err:
                ingest(store, path, "t")
            msg = str(err.value)
            assert re.search(case.refuse, msg) and "\n" not in msg and len(msg) < 1000, msg
            assert store.traffic_info("t") is None  # nothing changed
            assert store.cursor().execute("SELECT count(*) FROM quarantine").fetchall() == [(0,)]
            record("bad traffic", case.name, "refused: " + msg.replace(str(path.parent) + "/", "")[:150], rows_stored=0)
            return
        res = ingest(store, path, "t")
        check_reconciled(store, "t", res)
        assert (res.reasons, res.rows) == (case.reasons, case.rows)
        raws = [r[0] for r in store.cursor().execute("SELECT raw FROM quarantine").fetchall()]
        assert all(r is not None and len(r) <= RAW_MAX_CHARS for r in raws)
        record(
            "bad traffic",
            case.name,
            "ingested; bad rows quarantined" if res.quarantined else "ingested",
            rows_read=res.rows_read,
            ingested=res.rows,
            quarantined=res.quarantined,
            reasons=res.reasons,
        )


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_cli_answers_every_corpus_input_in_one_line(case, corpus, tmp_path, capsys):
    code = main(["ingest", str(corpus[case.name]), "--name", "t", "--json", "--home", str(tmp_path / "home")])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in err
    if case.refuse:
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ")
    else:
        assert code == 0 and out.count("\n") == 1
        d = json.loads(out)
        assert d["rows_read"] == d["rows"] + d["quarantined"] and d["reasons"] == case.reasons


@pytest.mark.parametrize("name", ["truncated_parquet", "huge_1mb_strings_csv", "latin1_csv"])
def test_real_cli_process_never_prints_a_traceback(name, corpus, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "ingest",
            str(corpus[name]),
            "--name",
            "t",
            "--home",
            str(tmp_path / "home"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    case = next(c for c in CORPUS if c.name == name)
    assert proc.returncode == (2 if case.refuse else 0)


def test_columns_the_model_does_not_know_are_ignored_and_missing_ones_refused(corpus):
    with Store(":memory:") as store:
        ingest(store, corpus["columns_the_model_does_not_know"], "t")
        r = replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="extra", options=ReplayOptions(batch_size=4))
        assert (r.rows, r.baseline_errors, r.candidate_errors) == (10, 0, 0)
        ingest(store, corpus["unicode_ids_columns_values"], "u")
        with pytest.raises(WorkbenchError, match=r"needs column\(s\) x that the traffic lacks"):
            replay(store, "u", TinyModel("a"), TinyModel("b"), run_id="missing")
    record("bad traffic", "model needs a column the traffic lacks", "replay refused before any work")


def test_appending_an_empty_file_changes_nothing(tmp_path):
    good(10).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "empty.csv").write_text("request_id,event_time,x,seg\n")
    (tmp_path / "short.csv").write_text("request_id,event_time\n")
    with Store(":memory:") as store:
        ingest(store, tmp_path / "t.parquet", "t")
        res = ingest(store, tmp_path / "empty.csv", "t")
        assert (res.rows_read, res.rows, res.quarantined) == (0, 0, 0) and store.traffic_count("t") == 10
        with pytest.raises(WorkbenchError, match=r"missing column\(s\) x, seg that the traffic set already has"):
            ingest(store, tmp_path / "short.csv", "t")


def test_a_glob_whose_first_file_is_empty_takes_types_from_rows(tmp_path):
    (tmp_path / "a.csv").write_text("request_id,event_time,x\n")
    (tmp_path / "b.csv").write_text(csv_text("request_id,event_time,x", ["r1,2024-03-01,1.5", "r2,2024-03-01,2"]))
    with Store(":memory:") as store:
        res = ingest(store, tmp_path / "*.csv", "t")
        assert res.rows == 2
        assert (
            dict(
                store.cursor()
                .execute(f"SELECT column_name, column_type FROM (DESCRIBE {traffic_table('t')})")
                .fetchall()
            )["x"]
            == "DOUBLE"
        )


def test_a_bad_copy_of_an_id_never_displaces_the_good_one(tmp_path):
    """Found by the property test below: a row quarantined for a null time made the next, valid copy of its
    id a 'duplicate', so the request was lost from the traffic."""
    (tmp_path / "t.csv").write_text(csv_text("request_id,event_time,x", ["a,,1", "a,2024-03-01,2", "a,2024-03-01,3"]))
    with Store(":memory:") as store:
        res = ingest(store, tmp_path / "t.csv", "t")
        assert res.reasons == {"null:event_time": 1, "duplicate_id": 1}
        assert store.cursor().execute(f"SELECT x FROM {traffic_table('t')}").fetchall() == [(2,)]
    record(
        "bad traffic",
        "an id whose first copy is bad (null time), then two good copies",
        "the first good copy kept; the bad one and the later copy quarantined",
        rows_read=3,
        ingested=1,
        quarantined=2,
    )


def test_decimal_text_is_never_rounded_to_an_integer(tmp_path):
    """DuckDB casts '0.7' and 0.7 to the integer 1: the contract reads decimals as decimals, and a decimal
    offered to an integer column is a type error, not a rounded value (labels included)."""
    (tmp_path / "dec.csv").write_text(csv_text("request_id,event_time,x", ["r1,2024-03-01,0.1", "r2,2024-03-01,0.7"]))
    (tmp_path / "int.csv").write_text(csv_text("request_id,event_time,n,y", ["r1,2024-03-01,1,1", "r2,2024-03-01,2,0"]))
    (tmp_path / "more.csv").write_text(
        csv_text("request_id,event_time,n,y", ["r3,2024-03-01,1.5,0.7", "r4,2024-03-01, 3 ,true"])
    )
    pd.DataFrame({"request_id": ["r5"], "event_time": pd.to_datetime(["2024-03-01"]), "n": [2.5], "y": [1]}).to_parquet(
        tmp_path / "more.parquet"
    )
    with Store(":memory:") as store:
        ingest(store, tmp_path / "dec.csv", "d")
        assert store.cursor().execute(f"SELECT x FROM {traffic_table('d')} ORDER BY _row").fetchall() == [
            (0.1,),
            (0.7,),
        ]
        ingest(store, tmp_path / "int.csv", "i", label_col="y")
        res = ingest(store, tmp_path / "more.csv", "i", label_col="y")
        assert res.reasons == {"type:n": 1} and res.rows == 1
        assert ingest(store, tmp_path / "more.parquet", "i", label_col="y").reasons == {"type:n": 1}
        assert store.cursor().execute(f"SELECT n FROM {traffic_table('i')} ORDER BY _row").fetchall() == [
            (1,),
            (2,),
            (3,),
        ]
        (tmp_path / "labels.csv").write_text(csv_text("request_id,label", ["r1,0.7", "r2,1"]))
        from workbench.ingest.traffic import ingest_labels

        assert ingest_labels(store, tmp_path / "labels.csv", "i").reasons == {"type:label": 1}
    record(
        "bad traffic",
        "decimal text in CSV ('0.1', '0.7'), decimals appended to an integer column and decimal labels",
        "decimals kept exact; decimals for integer columns quarantined as type:<col>",
    )


# -- property-based: random frames with nulls, bad types and duplicates, as CSV and as Parquet --------------
IDS = st.one_of(
    st.none(), st.sampled_from(["a", "b", "c", "", " ", "NA", "é", "🙂", 'q"q', "c,d", "l\nm"]), st.text(max_size=6)
)
TIMES = st.one_of(
    st.none(),
    st.datetimes(
        min_value=pd.Timestamp("1990-01-01").to_pydatetime(), max_value=pd.Timestamp("2100-01-01").to_pydatetime()
    ),
)
FLOATS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))
TEXT = st.one_of(st.none(), st.text(max_size=8))


@st.composite
def frames(draw) -> tuple[pd.DataFrame, bool]:
    n = draw(st.integers(0, 25))
    df = pd.DataFrame(
        {
            "request_id": pd.Series(draw(st.lists(IDS, min_size=n, max_size=n)), dtype=object),
            "event_time": pd.Series(draw(st.lists(TIMES, min_size=n, max_size=n)), dtype="datetime64[ns]"),
            "x": pd.Series(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype="float64"),
            "s": pd.Series(draw(st.lists(TEXT, min_size=n, max_size=n)), dtype=object),
        }
    )
    return df, draw(st.booleans())


def expected(df: pd.DataFrame, nullable: set) -> tuple[list, dict]:
    """The contract as plain Python: the ids kept (in file order) and the reasons of the others."""
    kept, reasons, seen = [], {}, set()
    for rid, t, x, s in df.itertuples(index=False):
        r = None
        if rid is None or rid == "":
            r = "null:request_id"
        elif pd.isna(t):
            r = "null:event_time"
        elif "x" not in nullable and (x is None or math.isnan(x)):
            r = "null:x"
        elif x is not None and math.isinf(x):
            r = "nonfinite:x"
        elif "s" not in nullable and s is None:
            r = "null:s"
        elif rid in seen:
            r = "duplicate_id"
        if r is None:
            seen.add(rid)
            kept.append(rid)
        else:
            reasons[r] = reasons.get(r, 0) + 1
    return kept, reasons


EXAMPLES = int(os.environ.get("WORKBENCH_HYPOTHESIS_EXAMPLES", "60"))
PROPERTY: dict[str, dict[str, int]] = {"parquet": {}, "csv": {}}


def _tally(fmt: str, outcome: str, rows_read: int = 0, quarantined: int = 0) -> None:
    t = PROPERTY[fmt]
    for k, v in ((outcome, 1), ("rows_read", rows_read), ("quarantined", quarantined)):
        t[k] = t.get(k, 0) + v


@pytest.fixture(scope="module", autouse=True)
def _report_properties():
    yield
    if PROPERTY["parquet"]:
        record(
            "bad traffic",
            "hypothesis: random frames (nulls, NaN/inf, unicode, empty and duplicate ids) as "
            "Parquet, against an oracle of the contract",
            "every row kept or quarantined with the oracle's reason",
            **PROPERTY["parquet"],
        )
    if PROPERTY["csv"]:
        record(
            "bad traffic",
            "hypothesis: the same frames as CSV (quotes, commas, newlines in values)",
            "ingested with counts reconciled, or refused in one line",
            **PROPERTY["csv"],
        )


@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(frames())
def test_parquet_frames_meet_the_contract_exactly(case):
    df, lenient = case
    nullable = {"x", "s"} if lenient else set()
    with tempfile.TemporaryDirectory() as d, Store(":memory:") as store:
        p = Path(d) / "t.parquet"
        df.to_parquet(p)
        try:
            res = ingest(store, p, "t", nullable=nullable)
        except WorkbenchError as e:
            assert len(df) == 0 and "holds no rows" in str(e)
            _tally("parquet", "refused")
            return
        if not nullable:
            check_reconciled(store, "t", res)
        assert res.rows + res.quarantined == res.rows_read == len(df)
        kept, reasons = expected(df, nullable)
        assert res.reasons == reasons
        stored = [
            r[0]
            for r in store.cursor().execute(f"SELECT request_id FROM {traffic_table('t')} ORDER BY _row").fetchall()
        ]
        assert stored == kept
        _tally("parquet", "ingested", res.rows_read, res.quarantined)


@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(frames())
def test_csv_frames_ingest_reconciled_or_are_refused_in_one_line(case):
    df, _ = case
    with tempfile.TemporaryDirectory() as d, Store(":memory:") as store:
        p = Path(d) / "t.csv"
        df.to_csv(p, index=False)
        try:
            res = ingest(store, p, "t")
        except WorkbenchError as e:
            assert "\n" not in str(e)
            assert store.traffic_info("t") is None
            _tally("csv", "refused")
            return
        check_reconciled(store, "t", res)
        if not df.map(lambda v: isinstance(v, str) and "\r" in v).any().any():
            assert res.rows_read == len(df)  # pandas leaves a bare CR unquoted: for CSV readers it ends a line
        _tally("csv", "ingested", res.rows_read, res.quarantined)
