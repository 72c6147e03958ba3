"""Time: aware UTC datetimes everywhere, and one ISO-8601 text form for them.

``iso`` writes UTC with a ``Z`` and the precision the value has (whole seconds, else microseconds, the
precision of DuckDB's TIMESTAMP), so an event time survives a round trip through text unchanged. The text's
length varies with the precision: order times by :func:`parse_time`, never as strings.
DuckDB's TIMESTAMP columns hold naive UTC; :func:`db_time` converts at that boundary only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import numpy as np

from workbench.errors import WorkbenchError

DURATION_RE = re.compile(r"^\s*(?:last\s+)?(\d+)\s*(m|mins?|minutes?|h|hours?|d|days?|w|weeks?)\s*$", re.IGNORECASE)
DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


def to_utc(t: Any) -> datetime:
    """A datetime (naive means UTC), pandas Timestamp or numpy datetime64 as an aware UTC datetime."""
    if hasattr(t, "to_pydatetime"):
        t = t.to_pydatetime()
    if isinstance(t, np.datetime64):
        t = t.astype("datetime64[us]").astype(datetime)
    if not isinstance(t, datetime):
        raise TypeError(f"not a time: {t!r}")
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def db_time(t: Any) -> datetime:
    """A time as DuckDB's TIMESTAMP columns hold it: naive UTC."""
    return to_utc(t).replace(tzinfo=None)


@overload
def iso(t: None) -> None: ...
@overload
def iso(t: datetime | np.datetime64) -> str: ...
def iso(t: Any) -> str | None:
    """ISO-8601 UTC text with a ``Z`` (None stays None)."""
    if t is None:
        return None
    return to_utc(t).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An ISO-8601 date or time (naive means UTC) as an aware UTC datetime."""
    try:
        t = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise WorkbenchError(f"invalid time {text!r}: use ISO-8601, e.g. 2013-07-01 or 2013-07-01T12:00:00Z") from None
    return to_utc(t)


def parse_window(spec: str) -> tuple[datetime | None, datetime | None]:
    """``START..END`` (ISO dates or times, either side may be empty) as aware UTC datetimes."""
    if ".." not in spec:
        raise WorkbenchError(f"invalid time window {spec!r}: use START..END, e.g. 2013-07-01..2013-08-01")
    start, end = (parse_time(p) if p.strip() else None for p in spec.split("..", 1))
    if start and end and start >= end:
        raise WorkbenchError(f"empty time window {spec!r}: the start must come before the end")
    return start, end


def parse_duration(text: str) -> timedelta:
    """``"24h"``, ``"last 24 h"``, ``"90 minutes"``, ``"7d"``, ``"2w"`` as a timedelta."""
    m = DURATION_RE.match(str(text))
    if not m or int(m[1]) <= 0:
        raise ValueError(f"window {text!r}: use a positive count and a unit, e.g. '24h', 'last 24 h', '7d', '90m'")
    return timedelta(**{DURATION_UNITS[m[2][0].lower()]: int(m[1])})
