"""The recent window of a router's traffic log: per arm, the request rate, error rate and P50/P99 latency.

The source is the log the router writes (:mod:`workbench.live.trafficlog`) under ``$WORKBENCH_HOME/live/MODEL``:
it is on the shared home (no network address to configure), it holds every arm's status and latency per
request, and a window of any length can be cut from it. Only complete files are read (``*.parquet``; a
``.partial`` file has no footer yet), so the log lags live traffic by up to the router's ``--rotate-s``: the
window therefore ends at the latest logged request unless told otherwise, and says where it ends.

:func:`read_log` does the I/O; :func:`live_window` is pure. An arm's call counts as an error by the router's
live SLO rule (:meth:`workbench.live.router.Router._complete`): no answer or a non-2xx status, except a
candidate 4xx that the baseline gave for the same request (the client's error).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.live.trafficlog import PREFIX
from workbench.roles import BASELINE, CANDIDATE, ROLES

ARM_FIELDS = ("status", "latency_ms")
COLUMNS = ("request_id", "event_time", *(f"{PREFIX}{a}_{k}" for a in ROLES for k in ARM_FIELDS))
SCHEMA = pa.schema(
    [("request_id", pa.string()), ("event_time", pa.timestamp("us"))]
    + [(f"{PREFIX}{a}_{k}", pa.int32() if k == "status" else pa.float64()) for a in ROLES for k in ARM_FIELDS]
)


def log_dir(home: Path, model: str) -> Path:
    """Where ``workbench route MODEL`` writes its traffic log by default."""
    return Path(home) / "live" / model


def log_files(directory: Path) -> list[Path]:
    """The complete log files of ``directory``, oldest first (none when it does not exist)."""
    if not Path(directory).is_dir():
        return []
    return sorted(Path(directory).glob("*.parquet"), key=lambda p: (p.stat().st_mtime, p.name))


def read_log(directory: Path, window_s: float) -> pa.Table:
    """The rows (``COLUMNS``) of the complete log files that can hold requests of the last ``window_s``
    seconds before the newest file was closed (a file is closed after its last request)."""
    files = log_files(directory)
    if not files:
        return SCHEMA.empty_table()
    newest = files[-1].stat().st_mtime
    tables = [
        pq.read_table(f, columns=list(COLUMNS), pre_buffer=False).cast(SCHEMA)
        for f in files
        if f.stat().st_mtime >= newest - window_s
    ]
    return pa.concat_tables(tables)


@dataclass(frozen=True)
class ArmRates:
    """One arm over the window: calls (routed, retried and mirrored alike), calls per second, errors, error
    rate and latency percentiles in ms (None without calls)."""

    arm: str
    requests: int
    per_s: float
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LiveWindow:
    """Both arms over ``[start, end)``, and the same numbers per bucket of the window (``series``: one dict per
    bucket and arm with ``time``, ``arm``, ``per_s``, ``error_rate``, ``p99_ms``)."""

    start: datetime | None
    end: datetime | None
    window_s: float
    arms: tuple[ArmRates, ...]
    series: tuple[dict, ...]

    @property
    def empty(self) -> bool:
        return all(a.requests == 0 for a in self.arms)

    def arm(self, name: str) -> ArmRates:
        return next(a for a in self.arms if a.arm == name)

    def to_dict(self) -> dict:
        return {
            "start": self.start,
            "end": self.end,
            "window_s": self.window_s,
            "arms": [a.to_dict() for a in self.arms],
            "series": [dict(s) for s in self.series],
        }


def _requests(table: pa.Table) -> pd.DataFrame:
    """One row per request: the rows of a multi-row request (ids ``<id>:<i>``) share their arms' outcomes."""
    df = table.select(list(COLUMNS)).to_pandas()
    df["event_time"] = pd.to_datetime(df["event_time"]).dt.tz_localize(UTC)
    key = df["request_id"].astype("string").str.replace(r":\d+$", "", regex=True)
    return df.loc[~pd.DataFrame({"k": key, "t": df["event_time"]}).duplicated()]


def _failed(df: pd.DataFrame, arm: str) -> np.ndarray:
    status = df[f"{PREFIX}{arm}_status"].to_numpy(dtype=np.float64, na_value=np.nan)
    failed = ~((status >= 200) & (status < 300))  # no answer (NaN) or not 2xx
    if arm == CANDIDATE:
        base = df[f"{PREFIX}{BASELINE}_status"].to_numpy(dtype=np.float64, na_value=np.nan)
        failed &= ~((status >= 400) & (status < 500) & (base == status))
    return failed


def _rates(arm: str, latency: np.ndarray, failed: np.ndarray, seconds: float) -> ArmRates:
    n = len(latency)
    if n == 0:
        return ArmRates(arm, 0, 0.0, 0, None, None, None)
    p50, p99 = np.percentile(latency, [50, 99])  # as the router's SLO windows
    errors = int(failed.sum())
    return ArmRates(arm, n, n / seconds, errors, errors / n, float(p50), float(p99))


def live_window(table: pa.Table, window_s: float, end: datetime | None = None, buckets: int = 30) -> LiveWindow:
    """Per-arm rates of the requests logged in ``[end - window_s, end)`` (``end``: aware UTC, default just after
    the latest logged request), and per bucket of ``window_s / buckets`` seconds for a chart."""
    if window_s <= 0 or buckets < 1:
        raise ValueError(f"window_s must be positive and buckets at least 1, got {window_s} and {buckets}")
    df = _requests(table)
    if end is None:
        if df.empty:
            return LiveWindow(None, None, window_s, tuple(_rates(a, np.array([]), np.array([]), 1) for a in ROLES), ())
        end = df["event_time"].max().to_pydatetime() + timedelta(microseconds=1)
    start = end - timedelta(seconds=window_s)
    df = df[(df["event_time"] >= start) & (df["event_time"] < end)]
    width = window_s / buckets
    slot = np.minimum(((df["event_time"] - start).dt.total_seconds().to_numpy() // width).astype(int), buckets - 1)
    arms, series = [], []
    for arm in ROLES:
        got = df[f"{PREFIX}{arm}_latency_ms"].notna().to_numpy()
        latency = df[f"{PREFIX}{arm}_latency_ms"].to_numpy(dtype=np.float64, na_value=np.nan)[got]
        failed, where = _failed(df, arm)[got], slot[got]
        arms.append(_rates(arm, latency, failed, window_s))
        for b in range(buckets):
            r = _rates(arm, latency[where == b], failed[where == b], width)
            t = start + timedelta(seconds=b * width)
            series.append({"time": t, "arm": arm, "per_s": r.per_s, "error_rate": r.error_rate, "p99_ms": r.p99_ms})
    return LiveWindow(start, end, window_s, tuple(arms), tuple(series))


def log_token(directory: Path) -> tuple:
    """Changes whenever a complete log file appears or changes (a cache key for the app)."""
    return tuple((f.name, os.stat(f).st_mtime_ns) for f in log_files(directory))
