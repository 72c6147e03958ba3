"""The live traffic log: scoring-protocol parsing, rows per request, rotation, and ingest of the files."""

import json
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from conftest import TinyModel
from workbench.ingest.traffic import ingest
from workbench.live.trafficlog import LiveRecord, Outcome, TrafficLog, request_rows, response_scores, to_table
from workbench.replay.pipeline import replay
from workbench.store import Store

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "body, ctype, rows",
    [
        ({"dataframe_records": [{"x": 1, "c": "a"}]}, "application/json", [{"x": 1, "c": "a"}]),
        (
            {"dataframe_split": {"columns": ["x", "c"], "data": [[1, "a"], [2, "b"]]}},
            "application/json",
            [{"x": 1, "c": "a"}, {"x": 2, "c": "b"}],
        ),
        ({"instances": [{"x": 1}]}, "application/json", [{"x": 1}]),
        ({"inputs": {"x": [1, 2]}}, "application/json; charset=utf-8", [{"x": 1}, {"x": 2}]),
        ("x,c\n1,a\n", "text/csv", [{"x": "1", "c": "a"}]),
        ({"inputs": [[1, 2]]}, "application/json", [{}]),
        ("not json", "application/json", [{}]),
    ],
    ids=["records", "split", "instances", "inputs-columns", "csv", "tensor", "garbage"],
)
def test_request_rows(body, ctype, rows):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert request_rows(raw, ctype) == rows


@pytest.mark.parametrize(
    "outcome, n, scores, error",
    [
        (Outcome(200, b'{"predictions": [0.1, 0.9]}', 1.0), 2, [0.1, 0.9], None),
        (Outcome(200, b'{"predictions": [[0.8, 0.2]]}', 1.0), 1, [0.2], None),
        (Outcome(200, b"[0.3]", 1.0), 1, [0.3], None),
        (Outcome(200, b'{"predictions": [0.1]}', 1.0), 2, [None, None], "bad response: expected 2 predictions, got 1"),
        (Outcome(400, b'{"error_code": "BAD_REQUEST"}', 1.0), 1, [None], 'HTTP 400: {"error_code": "BAD_REQUEST"}'),
        (Outcome(None, b"", 500.0, "timeout after 0.5 s"), 1, [None], "timeout after 0.5 s"),
    ],
    ids=["scores", "proba-pairs", "bare-list", "wrong-count", "http-error", "timeout"],
)
def test_response_scores(outcome, n, scores, error):
    assert response_scores(outcome, n) == (scores, error)


def record(i: int, x=0.5, mirrored=True, routed="baseline") -> LiveRecord:
    rec = LiveRecord(
        request_id=f"r{i}",
        event_time=T0,
        entity=f"u{i}",
        routed=routed,
        reason="bucket",
        weight=5,
        decision_id="dec_1",
        body=json.dumps({"dataframe_records": [{"x": x, "request_id": 7}]}).encode(),
        content_type="application/json",
        served=routed,
        mirrored=mirrored,
    )
    rec.outcomes[routed] = Outcome(200, b'{"predictions": [0.25]}', 1.5)
    if mirrored:
        rec.outcomes["candidate"] = Outcome(500, b"boom", 3.0)
    return rec


def test_rows_and_reserved_names():
    t = to_table([record(1), record(2, mirrored=False)])
    row = t.to_pylist()[0]
    assert row["request_id"] == "r1" and row["input_request_id"] == 7 and row["x"] == 0.5
    assert row["event_time"] == T0.replace(tzinfo=None) and row["entity_key"] == "u1"
    assert (row["live_baseline_score"], row["live_baseline_latency_ms"], row["live_baseline_status"]) == (
        0.25,
        1.5,
        200,
    )
    assert (row["live_candidate_score"], row["live_candidate_error"]) == (None, "HTTP 500: boom")
    second = t.to_pylist()[1]
    assert second["live_candidate_status"] is None and second["live_candidate_error"] is None
    assert str(t.schema.field("event_time").type) == "timestamp[us]"


def test_rotation_partial_files_and_ingest(tmp_path):
    log = TrafficLog(tmp_path / "live", flush_s=0.05, flush_rows=10, rotate_rows=25)
    for i in range(60):
        log.append(record(i, x=float(i)))
    log.close()
    files = sorted((tmp_path / "live").glob("*.parquet"))
    sizes = [pq.read_metadata(f).num_rows for f in files]
    assert len(files) >= 2 and all(n >= 25 for n in sizes[:-1]) and not list((tmp_path / "live").glob("*.partial"))
    assert sum(sizes) == 60 == log.rows_written == log.requests_written and log.files == [str(f) for f in files]
    with Store() as store:
        res = ingest(store, str(tmp_path / "live" / "*.parquet"), "live", entity_col="entity_key", nullable=["live_*"])
        assert (res.rows, res.quarantined) == (60, 0)
        strict = ingest(store, str(tmp_path / "live" / "*.parquet"), "live_strict", entity_col="entity_key")
        assert strict.quarantined == 60 and set(strict.reasons) == {"null:live_baseline_error"}
        run = replay(store, "live", TinyModel("a"), TinyModel("b"), run_id="live_run")  # the loop closes
        assert (run.rows, run.baseline_errors, run.candidate_errors) == (60, 0, 0)


def test_a_new_request_field_starts_a_new_file(tmp_path):
    log = TrafficLog(tmp_path, flush_s=60, flush_rows=1)
    log.append(record(1))
    rec = record(2)
    rec.body = json.dumps({"dataframe_records": [{"x": 1.0, "extra": "y"}]}).encode()
    log.append(rec)
    log.close()
    files = sorted(tmp_path.glob("*.parquet"))
    assert len(files) == 2 and "extra" in pq.read_schema(files[1]).names
