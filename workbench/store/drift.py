"""Drift: the rows drift reads, reference sketches, the aggregates the stat tests are computed from, reports.

A RowSet (:mod:`workbench.drift.sketch`) names the rows drift reads: a traffic set (optionally only the rows a
run replayed, within ranges of (event_time, _row)) or a stored reference table; with ``role`` set it names
those rows' scores by that model. A ColumnSource names one column of a RowSet (raw rows) or the stored
value counts of a lossless sketch; both are read as a weighted relation (v, w). The store answers with
counts, sums and cumulative sums; the statistics built from them live in :mod:`workbench.drift`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pyarrow as pa

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.store.base import StoreBase
from workbench.store.names import check_name, check_role, label_source, qident, traffic_table
from workbench.tasks import BINARY, REGRESSION


class DriftStore(StoreBase):
    """Drift's reads over row sets and column sources, reference sketches and stored reference scores."""

    def _drift_from(self, rs, joins: str = "", join_params: list | None = None) -> tuple[str, list]:
        """``FROM ... WHERE ...`` over a RowSet (alias ``t``; with a role, its scores as ``s.score``), with
        optional extra ``joins`` (and their parameters) placed before the conditions."""
        params: list = []
        if rs.kind == "table":
            src = qident(check_name(rs.source, "table name"))
        else:
            src = traffic_table(rs.source)
        sql = f"FROM {src} t"
        if rs.role is not None:
            # a multi-class run's score is its predicted class, by name (stored references keep its index)
            named = "(?::VARCHAR[])[CAST({} AS INTEGER) + 1]" if rs.classes else "{}"
            params += [list(rs.classes)] if rs.classes else []
            if rs.run_id is not None:
                check_role(rs.role)
                score = named.format(f"{rs.role}_class" if rs.classes else f"{rs.role}_score")
                sql += (
                    f" JOIN (SELECT _row, {score} AS score FROM predictions WHERE run_id = ? "
                    f"AND {rs.role}_error IS NULL) s ON s._row = t._row"
                )
                params += [rs.run_id]
            else:
                sql += (
                    f" JOIN (SELECT _row, {named.format('score')} AS score FROM drift_ref_scores WHERE key = ? "
                    "AND role = ? AND score IS NOT NULL) s ON s._row = t._row"
                )
                params += [rs.score_key, rs.role]
        sql += joins
        params += join_params or []
        conds: list[str] = []
        if rs.max_row is not None:
            conds.append("t._row <= ?")
            params.append(rs.max_row)
        ors = []
        for lo, hi in rs.ranges:
            parts = []
            if lo is not None:
                parts.append("(t.event_time > ? OR (t.event_time = ? AND t._row > ?))")
                params += [lo[0], lo[0], lo[1]]
            if hi is not None:
                parts.append("(t.event_time < ? OR (t.event_time = ? AND t._row <= ?))")
                params += [hi[0], hi[0], hi[1]]
            ors.append("(" + (" AND ".join(parts) or "TRUE") + ")")
        if ors:
            conds.append("(" + " OR ".join(ors) + ")")
        sql += " WHERE " + (" AND ".join(conds) or "TRUE")
        return sql, params

    def _drift_col(self, rs, column: str) -> str:
        return "s.score" if rs.role is not None and column == "score" else "t." + qident(column)

    def _drift_weighted(self, src) -> tuple[str, list]:
        """A relation ``(v, w)`` of the finite, non-null values of a ColumnSource with their weights."""
        if src.key is not None:
            col = "num_value" if src.domain == "num" else "str_value"
            return (
                f"SELECT {col} AS v, n AS w FROM drift_sketch_values WHERE key = ? AND column_name = ?",
                [src.key, src.column],
            )
        frm, params = self._drift_from(src.rows)
        if src.domain == "num":
            v = f"CAST({self._drift_col(src.rows, src.column)} AS DOUBLE)"
            return f"SELECT {v} AS v, 1 AS w {frm} AND isfinite({v})", params
        v = f"CAST({self._drift_col(src.rows, src.column)} AS VARCHAR)"
        return f"SELECT {v} AS v, 1 AS w {frm} AND {v} IS NOT NULL", params

    def drift_column_types(self, rs, columns: list[str]) -> dict[str, str]:
        """DuckDB type of each column of a RowSet."""
        frm, params = self._drift_from(rs)
        cols = ", ".join(f"{self._drift_col(rs, c)} AS {qident(c)}" for c in columns)
        rows = self.cursor().execute(f"DESCRIBE SELECT {cols} {frm}", params).fetchall()
        return {r[0]: r[1] for r in rows}

    def drift_table_columns(self, name: str) -> dict[str, str] | None:
        """Column types of a stored reference table, or None when it does not exist."""
        return self._table_columns(check_name(name, "table name")) or None

    def drift_import_table(self, name: str, data: pa.Table) -> None:
        """Store a reference dataset as table ``name`` with a ``_row`` number (replaces an older copy)."""
        with self.transaction() as cur:
            cur.register("_wb_ref", data)
            cur.execute(
                f"CREATE OR REPLACE TABLE {qident(check_name(name, 'table name'))} AS "
                "SELECT (row_number() OVER () - 1) AS _row, * FROM _wb_ref"
            )
            cur.unregister("_wb_ref")

    def drift_profile(
        self, rs, domains: dict[str, str], bounds: dict[str, tuple[float, float]] | None = None
    ) -> tuple[int, dict[str, dict]]:
        """One pass over a RowSet: rows, and per column the finite count, missing (null or NaN), non-finite,
        min, max, mean, population std, approximate distinct count and (with ``bounds``) the count outside.

        Non-finite values become NULL in a subquery first: aggregates with FILTER clauses cost ~10x more.
        """
        bounds = bounds or {}
        frm, params = self._drift_from(rs)
        inner, sel, bparams = [], ["count(*)"], []
        for i, (c, dom) in enumerate(domains.items()):
            x = self._drift_col(rs, c)
            if dom == "num":
                inner += [
                    f"CAST({x} AS DOUBLE) AS r{i}",
                    f"CASE WHEN isfinite(CAST({x} AS DOUBLE)) THEN CAST({x} AS DOUBLE) END AS f{i}",
                ]
                oor = "NULL"
                if c in bounds:
                    oor = f"sum(CASE WHEN f{i} < ? OR f{i} > ? THEN 1 ELSE 0 END)"
                    bparams += [float(bounds[c][0]), float(bounds[c][1])]
                sel += [
                    f"count(f{i})",
                    f"count(*) - count(f{i}) - sum(CASE WHEN isinf(r{i}) THEN 1 ELSE 0 END)",
                    f"sum(CASE WHEN isinf(r{i}) THEN 1 ELSE 0 END)",
                    f"min(f{i})",
                    f"max(f{i})",
                    f"avg(f{i})",
                    f"stddev_pop(f{i})",
                    f"approx_count_distinct(f{i})",
                    oor,
                ]
            else:
                inner.append(f"{x} AS f{i}")
                sel += [
                    f"count(f{i})",
                    f"count(*) - count(f{i})",
                    "0",
                    "NULL",
                    "NULL",
                    "NULL",
                    "NULL",
                    f"approx_count_distinct(f{i})",
                    "NULL",
                ]
        row = (
            self.cursor()
            .execute(f"SELECT {', '.join(sel)} FROM (SELECT {', '.join(inner) or '1'} {frm})", bparams + params)
            .fetchall()[0]
        )
        keys = ("n", "missing", "nonfinite", "min", "max", "mean", "std", "approx_unique", "out_of_range")
        return int(row[0]), {
            c: dict(zip(keys, row[1 + 9 * i : 10 + 9 * i], strict=True)) for i, c in enumerate(domains)
        }

    def drift_approx_quantiles(self, rs, columns: list[str], probs: list[float]) -> dict[str, list[float]]:
        """Approximate quantiles (DuckDB's t-digest ``approx_quantile``) of the finite values of numeric columns,
        in one pass (an exact ``quantile_cont`` sorts every column)."""
        if not columns:
            return {}
        frm, params = self._drift_from(rs)
        inner = [
            f"CASE WHEN isfinite(CAST({self._drift_col(rs, c)} AS DOUBLE)) "
            f"THEN CAST({self._drift_col(rs, c)} AS DOUBLE) END AS f{i}"
            for i, c in enumerate(columns)
        ]
        sel = [f"approx_quantile(f{i}, CAST(? AS FLOAT[]))" for i in range(len(columns))]
        row = (
            self.cursor()
            .execute(
                f"SELECT {', '.join(sel)} FROM (SELECT {', '.join(inner)} {frm})", [list(probs)] * len(columns) + params
            )
            .fetchall()[0]
        )
        return dict(zip(columns, row, strict=True))

    def drift_sketch_load(self, key: str) -> dict[str, dict]:
        """The stored sketches under ``key``, by column."""
        rows = self.cursor().execute("SELECT column_name, sketch FROM drift_sketches WHERE key = ?", [key]).fetchall()
        return {c: json.loads(s) for c, s in rows}

    def drift_store_values(self, key: str, column: str, values, cap: int) -> int | None:
        """Store the value counts of a raw ColumnSource under sketch ``key``; kept (and their number returned)
        only when there are at most ``cap`` distinct values, else None."""
        rel, params = self._drift_weighted(values)
        num, txt = ("v", "NULL") if values.domain == "num" else ("NULL", "v")
        with self.transaction() as cur:
            cur.execute("DELETE FROM drift_sketch_values WHERE key = ? AND column_name = ?", [key, column])
            cur.execute(
                f"INSERT INTO drift_sketch_values SELECT ?, ?, {num}, {txt}, sum(w) FROM ({rel}) GROUP BY v",
                [key, column] + params,
            )
            n = int(
                cur.execute(
                    "SELECT count(*) FROM drift_sketch_values WHERE key = ? AND column_name = ?", [key, column]
                ).fetchall()[0][0]
            )
            if n > cap:
                cur.execute("DELETE FROM drift_sketch_values WHERE key = ? AND column_name = ?", [key, column])
                return None
        return n

    def drift_sketch_save(self, key: str, column: str, sketch: dict) -> None:
        """Store the sketch of one column under ``key``, replacing an older one."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM drift_sketches WHERE key = ? AND column_name = ?", [key, column])
            cur.execute(
                "INSERT INTO drift_sketches VALUES (?, ?, ?, ?)", [key, column, json.dumps(sketch), db_time(utc_now())]
            )

    def drift_counts(self, src) -> list[tuple[Any, int]]:
        """Value counts of a ColumnSource."""
        rel, params = self._drift_weighted(src)
        return [
            (v, int(n))
            for v, n in self.cursor().execute(f"SELECT v, sum(w) FROM ({rel}) GROUP BY v", params).fetchall()
        ]

    def drift_weights(self, src) -> tuple[list, list]:
        """(values, weights) of a ColumnSource, values sorted."""
        rel, params = self._drift_weighted(src)
        rows = self.cursor().execute(f"SELECT v, sum(w) FROM ({rel}) GROUP BY v ORDER BY v", params).fetchall()
        return [r[0] for r in rows], [int(r[1]) for r in rows]

    def drift_unseen(self, src, key: str) -> list[tuple[Any, int]]:
        """Values of a ColumnSource (with counts, most frequent first) that the sketch ``key`` never saw."""
        rel, params = self._drift_weighted(src)
        col = "num_value" if src.domain == "num" else "str_value"
        return [
            (v, int(n))
            for v, n in self.cursor()
            .execute(
                f"""SELECT v, sum(w) FROM ({rel}) WHERE v NOT IN (SELECT {col} FROM drift_sketch_values
                WHERE key = ? AND column_name = ? AND {col} IS NOT NULL) GROUP BY v ORDER BY 2 DESC, 1""",
                params + [key, src.column],
            )
            .fetchall()
        ]

    def drift_distinct_union(self, a, b) -> int:
        """Number of distinct values in two ColumnSources together."""
        ra, pa_ = self._drift_weighted(a)
        rb, pb = self._drift_weighted(b)
        return int(
            self.cursor()
            .execute(f"SELECT count(*) FROM (SELECT v FROM ({ra}) UNION SELECT v FROM ({rb}))", pa_ + pb)
            .fetchall()[0][0]
        )

    def drift_cdf_gap(self, ref, cur, n_ref: int, n_cur: int) -> tuple[float, float, float]:
        """Aggregates of the gap between the cumulative counts of two numeric ColumnSources, in one sort.

        Over the sorted values x of both, with R(x) and C(x) the weight of each source's values up to x and
        ``n_ref``, ``n_cur`` their totals, the gap G(x) = n_cur * R(x) - n_ref * C(x) is a step function
        (exact in integers); returned: (max |G|, integral |G| dx, integral G^2 dx).
        """
        rr, pr = self._drift_weighted(ref)
        rc, pc = self._drift_weighted(cur)
        row = (
            self.cursor()
            .execute(
                f"""WITH u AS (SELECT v, w * ? AS w FROM ({rr}) UNION ALL SELECT v, -w * ? FROM ({rc})),
                s AS (SELECT v, sum(w) OVER o AS g, lead(v) OVER o AS nv FROM u
                      WINDOW o AS (ORDER BY v ROWS UNBOUNDED PRECEDING)),
                d AS (SELECT CAST(g AS DOUBLE) AS g, nv - v AS dx FROM s WHERE nv IS NULL OR nv <> v)
                SELECT max(abs(g)), sum(abs(g) * dx), sum(g * g * dx) FROM d""",
                [n_cur] + pr + [n_ref] + pc,
            )
            .fetchall()[0]
        )
        return float(row[0]), float(row[1] or 0.0), float(row[2] or 0.0)

    def drift_histogram(self, src, edges: list[float]) -> list[int]:
        """Counts per bin with numpy's ``histogram`` semantics for the given increasing edges: bins
        ``[e_i, e_i+1)``, the last one closed, values outside ignored."""
        rel, params = self._drift_weighted(src)
        nb = len(edges) - 1
        guess = f"least(greatest(CAST(floor((v - ?) / ? * {nb}) AS BIGINT), 0), {nb - 1})"
        rows = (
            self.cursor()
            .execute(
                f"""WITH g AS (SELECT v, w, {guess} AS i FROM ({rel}) WHERE v >= ? AND v <= ?),
                b AS (SELECT w, CASE WHEN v < list_extract(CAST(? AS DOUBLE[]), i + 1) THEN i - 1
                                     WHEN i < {nb - 1} AND v >= list_extract(CAST(? AS DOUBLE[]), i + 2) THEN i + 1
                                     ELSE i END AS i FROM g)
                SELECT i, sum(w) FROM b GROUP BY i""",
                [edges[0], edges[-1] - edges[0]] + params + [edges[0], edges[-1], edges, edges],
            )
            .fetchall()
        )
        out = [0] * nb
        for i, n in rows:
            out[int(i)] = int(n)
        return out

    def drift_rank_bound(self, traffic: str, max_row: int, k: int) -> tuple[datetime, int]:
        """(event_time, _row) of the k-th row (1-based) of a traffic set in event-time order, up to ``max_row``."""
        r = (
            self.cursor()
            .execute(
                f"SELECT event_time, _row FROM {traffic_table(traffic)} WHERE _row <= ? "
                "ORDER BY event_time, _row LIMIT 1 OFFSET ?",
                [max_row, k - 1],
            )
            .fetchall()
        )
        if not r:
            raise WorkbenchError(f"traffic {traffic!r} has fewer than {k} rows")
        return r[0][0], int(r[0][1])

    def drift_describe(self, rs) -> dict[str, Any]:
        """Rows of a RowSet and, for traffic, its first and last event time (``first_event``, ``last_event``)."""
        frm, params = self._drift_from(rs)
        if rs.kind == "table":
            return {"rows": int(self.cursor().execute(f"SELECT count(*) {frm}", params).fetchall()[0][0])}
        n, lo, hi = (
            self.cursor().execute(f"SELECT count(*), min(t.event_time), max(t.event_time) {frm}", params).fetchall()[0]
        )
        return {"rows": int(n), "first_event": lo, "last_event": hi}

    def drift_batches(self, rs, columns: list[str], batch_size: int) -> pa.RecordBatchReader:
        """Stream ``_row`` and ``columns`` of a RowSet in ``_row`` order."""
        frm, params = self._drift_from(rs)
        cols = ", ".join(["t._row"] + [f"t.{qident(c)}" for c in columns])
        return self.new_cursor().execute(f"SELECT {cols} {frm} ORDER BY t._row", params).to_arrow_reader(batch_size)

    def drift_frame(self, rs, columns: list[str]) -> pa.Table:
        """``columns`` of a RowSet as one Arrow table (for reports that need the rows themselves)."""
        frm, params = self._drift_from(rs)
        cols = ", ".join(f"{self._drift_col(rs, c)} AS {qident(c)}" for c in columns)
        return self.cursor().execute(f"SELECT {cols} {frm} ORDER BY t._row", params).to_arrow_table()

    def drift_ref_scores_count(self, key: str, role: str) -> int:
        """How many scores by ``role`` are stored for the reference ``key``."""
        return int(
            self.cursor()
            .execute("SELECT count(*) FROM drift_ref_scores WHERE key = ? AND role = ?", [key, role])
            .fetchall()[0][0]
        )

    def drift_save_ref_scores(self, key: str, role: str, data: pa.Table) -> None:
        """Store a reference's scores by one model (``_row``, ``score``), replacing earlier ones."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM drift_ref_scores WHERE key = ? AND role = ?", [key, role])
            cur.register("_wb_scores", data)
            cur.execute("INSERT INTO drift_ref_scores SELECT ?, ?, _row, score FROM _wb_scores", [key, role])
            cur.unregister("_wb_scores")

    def drift_scored(self, rs, as_of: datetime | None = None, task: str = BINARY) -> pa.Table:
        """Scored rows of a RowSet with a role, in event-time order: ``event_time``, ``score``, ``label`` (null
        when none exists; the numeric label of a regression ``task``) and ``label_known`` (the label had arrived
        by ``as_of``; always, without it). For a multi-class run's rows (``rs.classes``) ``score`` and ``label``
        are class indices (a label of another class is null)."""
        kind = "DOUBLE" if task == REGRESSION else "INTEGER"
        classes = [list(rs.classes)] if rs.classes else []
        index = "(list_position(?::VARCHAR[], CAST({} AS VARCHAR)) - 1)" if rs.classes else "{}"
        score = index.format("s.score")
        if rs.kind == "table":
            has_label = "label" in (self.drift_table_columns(rs.source) or {})
            frm, params = self._drift_from(rs)
            lab = index.format("t.label") if rs.classes else f"CAST(t.label AS {kind})"
            lab, lab_params = (lab, classes) if has_label else (f"CAST(NULL AS {kind})", [])
            return (
                self.cursor()
                .execute(
                    f"SELECT CAST(NULL AS TIMESTAMP) AS event_time, {score} AS score, {lab} AS label, "
                    f"{lab} IS NOT NULL AS label_known {frm} ORDER BY t._row",
                    classes + lab_params * 2 + params,
                )
                .to_arrow_table()
            )
        table, column = label_source(task)
        lab = index.format(f"l.{column}") if rs.classes else f"CAST(l.{column} AS {kind})"
        frm, params = self._drift_from(
            rs, f" LEFT JOIN {table} l ON l.traffic = ? AND l.request_id = t.request_id", [rs.source]
        )
        return (
            self.cursor()
            .execute(
                f"""SELECT t.event_time, {score} AS score, {lab} AS label,
                       {lab} IS NOT NULL AND (CAST(? AS TIMESTAMP) IS NULL OR l.label_time IS NULL
                                              OR l.label_time <= CAST(? AS TIMESTAMP)) AS label_known
                {frm} ORDER BY t.event_time, t._row""",
                classes * 3 + [as_of, as_of] + params,
            )
            .to_arrow_table()
        )

    def drift_paired(self, rs, thresholds: dict[str, float] | None) -> dict[str, Any]:
        """Baseline against candidate on the same rows of a run: rows both scored, mean |score difference|, and
        for classifiers the share of rows whose predicted classes differ (at the models' ``thresholds``, or a
        multi-class run's classes, ``rs.classes``)."""
        frm, params = self._drift_from(
            rs,
            " JOIN predictions p ON p.run_id = ? AND p._row = t._row "
            "AND p.baseline_error IS NULL AND p.candidate_error IS NULL",
            [rs.run_id],
        )
        cut: list[float | None] = []
        if rs.classes:
            differ = "p.baseline_class <> p.candidate_class"
        else:
            differ = "(p.baseline_score >= ?) <> (p.candidate_score >= ?)"
            cut = [thresholds["baseline"], thresholds["candidate"]] if thresholds else [None, None]
        row = (
            self.cursor()
            .execute(
                f"""SELECT count(*), avg(abs(p.baseline_score - p.candidate_score)),
                       avg(CASE WHEN {differ} THEN 1.0 ELSE 0.0 END)
                {frm}""",
                cut + params,
            )
            .fetchall()[0]
        )
        out = {"rows": int(row[0]), "mean_abs_score_diff": row[1]}
        return out if thresholds is None and not rs.classes else out | {"class_disagreement": row[2]}

    def drift_quarantine_counts(self, traffic: str) -> dict[str, int]:
        """Quarantined rows of a traffic set per column whose value broke its type (``type:``, ``nonfinite:``)."""
        rows = (
            self.cursor()
            .execute(
                "SELECT split_part(reason, ':', 2), count(*) FROM quarantine WHERE traffic = ? AND kind = 'traffic' "
                "AND (reason LIKE 'type:%' OR reason LIKE 'nonfinite:%') GROUP BY 1",
                [traffic],
            )
            .fetchall()
        )
        return {c: int(n) for c, n in rows}

    def save_drift(self, run_id: str, params: dict, result: dict) -> None:
        """Append a drift report of a run (values JSON has no form for are written as text)."""
        self._save_report("drift_reports", run_id, params, result, default=str)

    def latest_drift(self, run_id: str) -> dict[str, Any] | None:
        """The latest drift report of a run, as the dict ``workbench drift --json`` printed."""
        return self._latest_report("drift_reports", run_id)
