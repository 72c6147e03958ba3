"""A job's traffic: the spec's files cut to the job's event-time window, and the labels of those requests.

:class:`JobSource` is the :class:`~workbench.ops.flow.TrafficSource` a job hands the flow; it stages the
window (Parquet only: a window needs typed event times) and the matching labels under the job's folder for
the ingest and removes them after it. :func:`latest_event` anchors a window at the newest event.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from workbench import WorkbenchError
from workbench.clock import db_time, parse_time, to_utc
from workbench.ops.flow import StageSkipped, TrafficSource


def _time_bound(t: datetime, typ):
    import pyarrow as pa

    if not pa.types.is_timestamp(typ):
        raise WorkbenchError(f"a window needs a timestamp event-time column; it is {typ}")
    return pa.scalar(to_utc(t)).cast(typ) if typ.tz else pa.scalar(db_time(t)).cast(typ)


def _parquet_only(files: list[Path]) -> None:
    bad = [f.name for f in files if not f.name.lower().endswith((".parquet", ".pq"))]
    if bad:
        raise WorkbenchError(f"a window reads typed event times from Parquet files; not: {', '.join(bad[:5])}")


def latest_event(files: list[Path], time_col: str) -> datetime:
    import pyarrow.compute as pc

    from workbench.ingest.traffic import read_batches

    _parquet_only(files)
    latest = None
    for batch in read_batches(files):
        if time_col not in batch.schema.names:
            raise WorkbenchError(f"traffic files lack the event-time column {time_col!r}")
        m = pc.max(batch.column(time_col)).as_py()
        if m is not None and (latest is None or m > latest):
            latest = m
    if latest is None:
        raise StageSkipped(f"the traffic files hold no event times in {time_col!r}")
    return to_utc(latest)


def _write_filtered(batches, out: Path, keep: Callable) -> int:
    """Write the rows of ``batches`` that ``keep(batch)`` selects to one Parquet file; return their number."""
    import pyarrow.parquet as pq

    writer, n = None, 0
    try:
        for batch in batches:
            part = batch.filter(keep(batch))
            if writer is None:
                writer = pq.ParquetWriter(out, part.schema)
            if part.num_rows:
                writer.write_batch(part)
                n += part.num_rows
    finally:
        if writer is not None:
            writer.close()
    return n


def _stage_window(files: list[Path], time_col: str, window: dict, out: Path) -> int:
    """Copy the rows with ``start < event time <= end`` to ``out`` (streamed)."""
    import pyarrow.compute as pc

    from workbench.ingest.traffic import read_batches

    _parquet_only(files)
    start, end = parse_time(window["start"]), parse_time(window["end"])

    def keep(batch):
        col = batch.column(time_col)
        return pc.and_(pc.greater(col, _time_bound(start, col.type)), pc.less_equal(col, _time_bound(end, col.type)))

    return _write_filtered(read_batches(files), out, keep)


def _stage_labels(files: list[Path], id_col: str, ids, out: Path) -> int:
    """Copy the labels whose request id is in ``ids`` to ``out`` (a job keeps only its own labels)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from workbench.ingest.traffic import read_batches

    def keep(batch):
        if id_col not in batch.schema.names:
            raise WorkbenchError(f"labels file lacks column {id_col!r}")
        return pc.fill_null(pc.is_in(pc.cast(batch.column(id_col), pa.string()), value_set=ids), False)

    return _write_filtered(read_batches(files), out, keep)


def _traffic_ids(files: list[Path], id_col: str):
    import pyarrow as pa

    from workbench.ingest.traffic import read_batches

    chunks = [b.column(id_col).cast(pa.string()) for b in read_batches(files) if id_col in b.schema.names]
    return pa.chunked_array(chunks, pa.string()).combine_chunks() if chunks else pa.array([], pa.string())


@dataclass(frozen=True)
class JobSource(TrafficSource):
    """A job's traffic: the spec's files, cut to the job's event-time window when it has one, and the labels
    of exactly those requests; staged under the job's folder for the ingest and removed after it."""

    window: dict | None = None
    label_files: tuple[Path, ...] = ()
    work: Path | None = None

    @contextmanager
    def files(self) -> Iterator[tuple[Any, Any]]:
        assert self.work is not None  # _source() always sets it
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            traffic = self.paths
            if self.window and traffic is not None:
                staged = self.work / "traffic.parquet"
                if _stage_window(files_of(traffic), self.time_col, self.window, staged) == 0:
                    raise StageSkipped(
                        f"no traffic between {self.window['start']} and {self.window['end']} in {traffic}"
                    )
                traffic = staged
            labels = self.labels
            if labels is not None and traffic is not None:
                labels = self.work / "labels.parquet"
                _stage_labels(
                    list(self.label_files), self.label_id_col, _traffic_ids(files_of(traffic), self.id_col), labels
                )
            yield traffic, labels
        finally:
            shutil.rmtree(self.work, ignore_errors=True)


def files_of(path: str | Path) -> list[Path]:
    from workbench.ingest.traffic import resolve_paths

    return resolve_paths(path)
