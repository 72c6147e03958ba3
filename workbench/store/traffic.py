"""Traffic: traffic sets and their rows, ingest records, quarantine and labels."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.store.base import ArrowView, StoreBase
from workbench.store.names import check_name, label_source, qident, sql_literal, traffic_table
from workbench.tasks import BINARY, TASKS

SCAN_ROWS = 1 << 20  # rows per sorted range when streaming a traffic set in ingest order


def _skip_sql(skip: Sequence[tuple[int, int]]) -> str:
    """A filter leaving out ``_row`` ranges (integers only, so they are safe to inline)."""
    return " AND ".join(["TRUE"] + [f"_row NOT BETWEEN {int(a)} AND {int(b)}" for a, b in skip])


class TrafficStore(StoreBase):
    """Traffic sets (one table per set, rows numbered by ``_row`` in ingest order), ingests, quarantine, labels."""

    def traffic_info(self, name: str) -> dict[str, Any] | None:
        """A traffic set's columns, key columns, fingerprint and counts; None when unknown."""
        rows = self._rows("SELECT * FROM traffic_sets WHERE name = ?", [check_name(name, "traffic name")])
        if not rows:
            return None
        info = rows[0]
        info["columns"] = json.loads(info["columns"])
        return info

    def require_traffic(self, name: str) -> dict[str, Any]:
        """:meth:`traffic_info`, or an error that lists the known traffic sets."""
        info = self.traffic_info(name)
        if info is None:
            known = ", ".join(r["name"] for r in self.list_traffic()) or "none"
            raise WorkbenchError(f"unknown traffic {name!r} (known: {known})")
        return info

    def list_traffic(self) -> list[dict[str, Any]]:
        """Every traffic set with its rows, quarantined rows, fingerprint and last update."""
        return self._rows("SELECT name, rows, quarantined, fingerprint, updated_at FROM traffic_sets ORDER BY name")

    def upsert_traffic_set(
        self,
        cur,
        name: str,
        *,
        id_col,
        time_col,
        entity_col,
        columns: list[str],
        fingerprint: str,
        added_rows: int,
        added_quarantined: int,
    ) -> None:
        """Register a traffic set or add an ingest's rows to it (in ``cur``'s transaction)."""
        now = db_time(utc_now())
        existing = cur.execute("SELECT rows FROM traffic_sets WHERE name = ?", [name]).fetchall()
        if not existing:
            cur.execute(
                "INSERT INTO traffic_sets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    name,
                    "traffic_" + name,
                    id_col,
                    time_col,
                    entity_col,
                    json.dumps(columns),
                    fingerprint,
                    added_rows,
                    added_quarantined,
                    now,
                    now,
                ],
            )
        else:
            cur.execute(
                "UPDATE traffic_sets SET fingerprint = ?, rows = rows + ?, quarantined = quarantined + ?, "
                "updated_at = ? WHERE name = ?",
                [fingerprint, added_rows, added_quarantined, now, name],
            )

    def record_ingest(
        self, cur, *, ingest_id, traffic, kind, source, file_sha256, rows_read, rows_ingested, rows_quarantined
    ) -> None:
        """Record one ingest of a file (in ``cur``'s transaction)."""
        cur.execute(
            "INSERT INTO ingests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ingest_id,
                traffic,
                kind,
                source,
                file_sha256,
                rows_read,
                rows_ingested,
                rows_quarantined,
                db_time(utc_now()),
            ],
        )

    def declare_segments(self, name: str, columns: Sequence[str]) -> None:
        """Declare ``columns`` of traffic set ``name`` as its segments (added to those declared before)."""
        info = self.require_traffic(name)
        known = set(info["columns"]) | ({info["entity_col"]} if info["entity_col"] else set())
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise WorkbenchError(
                f"traffic {name!r} has no column {', '.join(map(repr, unknown))} to declare as a segment "
                f"(columns: {', '.join(sorted(known))})"
            )
        with self.transaction() as cur:
            for c in columns:
                cur.execute(
                    "INSERT INTO traffic_segments SELECT ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM traffic_segments WHERE traffic = $1 AND column_name = $2)",
                    [name, c],
                )

    def declared_segments(self, name: str) -> list[str]:
        """The segment columns traffic set ``name`` declares, in name order."""
        rows = self.cursor().execute(
            "SELECT column_name FROM traffic_segments WHERE traffic = ? ORDER BY column_name", [name]
        )
        return [r[0] for r in rows.fetchall()]

    def quarantine_summary(self, traffic: str) -> dict[str, int]:
        """Quarantined rows of a traffic set per reason, most frequent first."""
        rows = (
            self.cursor()
            .execute(
                "SELECT reason, count(*) FROM quarantine WHERE traffic = ? GROUP BY reason ORDER BY 2 DESC", [traffic]
            )
            .fetchall()
        )
        return {r: int(n) for r, n in rows}

    def traffic_count(self, name: str) -> int:
        """Rows of a traffic set."""
        return int(self.cursor().execute(f"SELECT count(*) FROM {traffic_table(name)}").fetchall()[0][0])

    def traffic_batches(
        self, name: str, columns: list[str], batch_size: int, skip: Sequence[tuple[int, int]] = ()
    ) -> pa.RecordBatchReader:
        """Stream ``columns`` of a traffic set in ingest order, leaving out the ``_row`` ranges in ``skip``.

        A table spread over several data files is not scanned in insertion order, and one ORDER BY over the
        whole table would sort it all at once; so it is read in ``_row`` ranges of :data:`SCAN_ROWS`, each
        sorted (each range touches the few files whose ``_row`` statistics overlap it). The replay checks the
        order as it reads.
        """
        cols = ", ".join(["_row"] + [qident(c) for c in columns if c != "_row"])
        table, keep = traffic_table(name), _skip_sql(skip)
        cur = self.new_cursor()
        lo, hi = cur.execute(f"SELECT min(_row), max(_row) FROM {table} WHERE {keep}").fetchall()[0]
        schema = cur.execute(f"SELECT {cols} FROM {table} LIMIT 0").to_arrow_table().schema

        def ranges() -> Iterator[pa.RecordBatch]:
            for start in range(int(lo), int(hi) + 1, SCAN_ROWS) if lo is not None else ():
                cur.execute(
                    f"SELECT {cols} FROM {table} WHERE _row >= {start} AND _row < {start + SCAN_ROWS} AND {keep} "
                    "ORDER BY _row"
                )
                yield from cur.to_arrow_reader(batch_size)

        return pa.RecordBatchReader.from_batches(schema, ranges())

    def export_traffic_parquet(
        self, name: str, columns: list[str], skip: Sequence[tuple[int, int]], path: Path, row_group_rows: int
    ) -> None:
        """Write ``_row``, ``_prev_row`` and ``columns`` of rows outside ``skip`` to one Parquet file, in order.
        ``_prev_row`` is the ``_row`` before the row's own in the traffic set, in ``skip`` or not (null for the
        first): two rows next to each other in the file with no traffic row between them are those where it is
        the other's ``_row``."""
        cols = ", ".join(["_row", "lag(_row) OVER (ORDER BY _row) AS _prev_row"] + [qident(c) for c in columns])
        self.cursor().execute(
            f"COPY (SELECT * FROM (SELECT {cols} FROM {traffic_table(name)}) WHERE {_skip_sql(skip)} ORDER BY _row) "
            f"TO {sql_literal(str(path))} (FORMAT parquet, ROW_GROUP_SIZE {int(row_group_rows)})"
        )

    def upsert_labels(self, cur, traffic: str, data: pa.Table, task: str = BINARY) -> int:
        """Insert labels (request_id, label, label_time, and the request's ``_row`` where the caller has it)
        into the table of ``task``'s labels (:func:`~workbench.store.names.label_source`); a later label for an
        id replaces it. Returns how many of them the traffic set does not hold (yet)."""
        table, column = label_source(task)
        view = ArrowView(cur, "_wb_labels", data)
        name = sql_literal(traffic)
        view.execute(
            f"DELETE FROM {table} WHERE traffic = {name} "
            "AND request_id IN (SELECT CAST(request_id AS VARCHAR) FROM _wb_labels)"
        )
        request_id, label, label_time = (qident(c) for c in data.column_names[:3])
        if "_row" in data.column_names:
            rows = f"SELECT {request_id}, {label}, {label_time}, _row FROM _wb_labels"
        else:  # each label with the _row of its request
            rows = (
                f"SELECT l.{request_id}, l.{label}, l.{label_time}, t._row FROM _wb_labels l "
                f"LEFT JOIN {traffic_table(traffic)} t ON t.request_id = CAST(l.{request_id} AS VARCHAR)"
            )
        view.execute(f"CREATE OR REPLACE TEMP TABLE _wb_label_rows AS {rows}")
        view.execute(
            f"INSERT INTO {table} (traffic, request_id, {column}, label_time, _row) "
            f"SELECT {name}, * FROM _wb_label_rows"
        )
        unmatched = view.execute("SELECT count(*) - count(_row) FROM _wb_label_rows").fetchall()[0][0]
        view.execute("DROP TABLE _wb_label_rows")
        view.close()
        return int(unmatched)

    def labels_state(
        self, traffic: str, task: str = BINARY, cur: duckdb.DuckDBPyConnection | None = None
    ) -> dict[str, Any]:
        """The labels of a traffic set as they are now (the numeric ones for a regression ``task``): their count
        and an order-free digest of (request id, label) pairs, which changes when a label is added, removed or
        changed (each pair's hash is hashed again: DuckDB combines ``hash(a, b)`` from the hashes of ``a`` and ``b``
        in a way the XOR over the rows would take apart, and two labels that swap would cancel out). ``cur``: read
        on that cursor (in its transaction's snapshot) instead of the thread's."""
        table, column = label_source(task)
        n, digest = (
            (cur or self.cursor())
            .execute(
                f"SELECT count(*), coalesce(bit_xor(hash(hash(request_id, {column}))), 0) FROM {table} "
                "WHERE traffic = ?",
                [traffic],
            )
            .fetchall()[0]
        )
        return {"rows": int(n), "digest": f"{int(digest):016x}"}

    def fill_label_rows(self, cur, traffic: str | None = None) -> None:
        """Give the labels of ``traffic`` (default: every traffic set) that came before their requests the
        requests' ``_row`` (in ``cur``'s transaction): after traffic is appended, or a storage upgraded."""
        names = [traffic] if traffic else [r[0] for r in cur.execute("SELECT name FROM traffic_sets").fetchall()]
        tables = sorted({label_source(task)[0] for task in TASKS})
        for name in names:
            for table in tables:
                pending = f"FROM {table} WHERE traffic = ? AND _row IS NULL"
                if not cur.execute(f"SELECT count(*) {pending}", [name]).fetchall()[0][0]:
                    continue
                cur.execute(
                    f"UPDATE {table} SET _row = t._row FROM {traffic_table(name)} t "
                    f"WHERE {table}.traffic = ? AND {table}._row IS NULL AND {table}.request_id = t.request_id",
                    [name],
                )

    def _fill_added_columns(self, cur) -> None:
        self.fill_label_rows(cur)
