"""The recent window of a traffic log written by the router's own writer: rates, errors, latency per arm."""

import json
import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from workbench.live.trafficlog import LiveRecord, Outcome, TrafficLog
from workbench.live.window import SCHEMA, live_window, log_dir, log_files, log_token, read_log

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def request(i: int, t: datetime, routed: str, outcomes: dict, rows: int = 1) -> LiveRecord:
    body = {"dataframe_records": [{"x": float(i + k)} for k in range(rows)]}
    rec = LiveRecord(f"r{i}", t, f"u{i}", routed, "bucket", 25, "dec_1", json.dumps(body).encode(), "application/json")
    rec.served = routed
    rec.outcomes.update(outcomes)
    return rec


def ok(latency: float, rows: int = 1) -> Outcome:
    return Outcome(200, json.dumps({"predictions": [0.5] * rows}).encode(), latency)


def write(directory, records, **kw) -> list:
    log = TrafficLog(directory, flush_s=0.02, **kw)
    for rec in records:
        log.append(rec)
    log.close()
    return log.files


@pytest.fixture
def traffic(tmp_path):
    """60 s of traffic: a baseline request every second (latency 10..69 ms), a candidate request every 3 s
    (latency 100 ms, one in four a 500), one old request 10 minutes earlier, a two-row request, a candidate
    400 the baseline also gave (the client's error) and a candidate timeout."""
    recs = [request(i, T0 + timedelta(seconds=i), "baseline", {"baseline": ok(10.0 + i)}) for i in range(60)]
    for j, i in enumerate(range(0, 60, 3)):
        failed = j % 4 == 0
        cand = Outcome(500, b"boom", 100.0) if failed else ok(100.0)
        recs.append(request(1000 + i, T0 + timedelta(seconds=i, milliseconds=500), "candidate", {"candidate": cand}))
    recs.append(request(2000, T0 - timedelta(minutes=10), "baseline", {"baseline": ok(999.0)}))
    both = {"baseline": ok(5.0, 2), "candidate": ok(7.0, 2)}
    recs.append(request(3000, T0 + timedelta(seconds=30.2), "baseline", both, rows=2))
    client = {"baseline": Outcome(400, b"bad", 1.0), "candidate": Outcome(400, b"bad", 2.0)}
    recs.append(request(3001, T0 + timedelta(seconds=30.4), "candidate", client))
    timeout = {"candidate": Outcome(None, b"", 500.0, "timeout after 0.5 s"), "baseline": ok(20.0)}
    recs.append(request(3002, T0 + timedelta(seconds=30.6), "candidate", timeout))
    d = tmp_path / "live" / "fraud"
    write(d, recs, flush_rows=40, rotate_rows=50)
    return d


def test_rates_errors_and_percentiles_per_arm(traffic):
    table = read_log(traffic, 3600)
    w = live_window(table, 60.0)
    assert w.end == T0 + timedelta(seconds=59, microseconds=1) and w.start == w.end - timedelta(seconds=60)
    base, cand = w.arm("baseline"), w.arm("candidate")
    # the request 10 minutes earlier falls before the window; the two-row request counts once
    base_lat = [10.0 + i for i in range(60)] + [5.0, 1.0, 20.0]
    assert base.requests == len(base_lat) == 63 and base.per_s == pytest.approx(63 / 60)
    assert base.errors == 1 and base.error_rate == pytest.approx(1 / 63)  # the baseline's own 400
    assert base.p50_ms == pytest.approx(np.percentile(base_lat, 50))
    assert base.p99_ms == pytest.approx(np.percentile(base_lat, 99))
    # candidate: 20 requests every 3 s (from 0.5 s: all inside), 5 of them 500s, plus 7 ms, a client 400, a timeout
    assert cand.requests == 23 and cand.errors == 5 + 1 and cand.error_rate == pytest.approx(6 / 23)
    assert cand.p99_ms == pytest.approx(np.percentile([100.0] * 20 + [7.0, 2.0, 500.0], 99))
    assert w.to_dict()["arms"][1]["requests"] == 23


def test_window_length_and_end_are_parameters(traffic):
    table = read_log(traffic, 3600)
    w = live_window(table, 10.0, end=T0 + timedelta(seconds=31))
    assert w.arm("baseline").requests == 10 + 3  # seconds 21..30, the two-row request, the 400, the timeout's
    assert w.arm("candidate").requests == 4 + 3  # 21.5, 24.5, 27.5, 30.5 and the three at 30.2 to 30.6
    assert live_window(table, 3600.0).arm("baseline").requests == 64  # the old request is back


def test_series_has_one_row_per_bucket_and_arm(traffic):
    w = live_window(read_log(traffic, 3600), 60.0, buckets=6)
    assert len(w.series) == 12 and {s["arm"] for s in w.series} == {"baseline", "candidate"}
    base = [s for s in w.series if s["arm"] == "baseline"]
    assert [s["time"] for s in base] == [w.start + timedelta(seconds=10 * b) for b in range(6)]
    assert sum(s["per_s"] * 10 for s in base) == pytest.approx(63)
    cand = [s for s in w.series if s["arm"] == "candidate"]
    assert all(s["error_rate"] is not None for s in cand)


def test_an_empty_or_missing_log(tmp_path):
    assert read_log(tmp_path / "none", 60).num_rows == 0 and log_files(tmp_path / "none") == []
    w = live_window(SCHEMA.empty_table(), 60.0)
    assert w.empty and w.end is None and w.arm("candidate").p99_ms is None
    with pytest.raises(ValueError, match="window_s must be positive"):
        live_window(SCHEMA.empty_table(), 0)


def test_only_complete_files_recent_enough_are_read(tmp_path):
    d = log_dir(tmp_path, "fraud")
    assert d == tmp_path / "live" / "fraud"
    old = write(d, [request(1, T0, "baseline", {"baseline": ok(1.0)})], prefix="old")
    new = write(d, [request(2, T0 + timedelta(hours=1), "baseline", {"baseline": ok(2.0)})], prefix="new")
    os.utime(old[0], (1_000_000, 1_000_000))
    os.utime(new[0], (1_000_000 + 3600, 1_000_000 + 3600))
    (d / "live-x.parquet.partial").write_bytes(b"PAR1 not finished")
    token = log_token(d)
    assert read_log(d, 60).column("request_id").to_pylist() == ["r2"]
    assert read_log(d, 7200).num_rows == 2
    os.utime(new[0], (1_000_000 + 3700, 1_000_000 + 3700))
    assert log_token(d) != token
