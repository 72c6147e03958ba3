"""The app's reads: small aggregates the Streamlit workbench charts, and the snapshot /metrics exports.

Large runs are reduced here, in DuckDB, to at most a few thousand numbers before anything reaches the
browser: score histograms per label, confusion counts, latency histograms and percentiles, breakdowns per
segment or time window, each model's predicted-class counts per day (a multi-class run), and a LIMITed sample
of the rows where the two models disagree. A multi-class run's labels are its class labels, as the index of
their class in the run's ``meta.classes`` (the predicted classes' numbering), a binary run's its 0/1 labels.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.store.names import qident, traffic_table
from workbench.store.runs import DATA_AT_SQL, RUNS_SQL, RunStore
from workbench.tasks import MULTICLASS, run_classes, run_task


def run_token(r: dict) -> str:
    """The state of a run's data: changes when the run gains rows, finishes, or its traffic or labels change
    (``r``: a row of :meth:`AppStore.app_runs` or a run of :meth:`~workbench.store.runs.RunStore.get_run`)."""
    return f"{r['status']}|{r['rows_done']}|{r.get('data_at')}|{r.get('finished_at')}"


class AppStore(RunStore):
    """Read-only aggregates over runs, traffic, labels, decisions and jobs.

    Builds on :class:`~workbench.store.runs.RunStore` (and so ``TrafficStore``) to find runs and traffic sets.
    """

    _APP_DISCRETE = {
        "VARCHAR",
        "BOOLEAN",
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
    }

    def app_runs(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every run (or only ``run_id``) with its models, ``rows_done``, ``data_at`` (when its traffic or labels
        last changed) and ``task``."""
        rows = self._rows(
            f"""SELECT r.run_id, r.traffic, r.status, r.rows_total, r.rows_done, r.device, r.mode, r.started_at,
                       r.finished_at, r.baseline, r.candidate, i.data_at,
                       coalesce(json_extract_string(r.meta, '$.task'), 'binary') AS task
                FROM ({RUNS_SQL}) r
                LEFT JOIN ({DATA_AT_SQL}) i USING (traffic)
                WHERE CAST(? AS VARCHAR) IS NULL OR r.run_id = ?
                ORDER BY r.started_at DESC""",
            [run_id, run_id],
        )
        for r in rows:
            r["baseline"], r["candidate"] = json.loads(r["baseline"]), json.loads(r["candidate"])
        return rows

    def stored_summary(self, run_id: str, name: str, key: str, token: str) -> str | None:
        """The stored summary ``name`` (with ``key``) of a run, as text, when it was stored under ``token`` (the
        state of the data it summarizes); None when it is missing, stale, or the storage predates the table."""
        if not self._table_columns("run_summaries"):
            return None
        rows = (
            self.cursor()
            .execute(
                "SELECT value FROM run_summaries WHERE run_id = ? AND name = ? AND key = ? AND token = ? "
                "ORDER BY created_at DESC LIMIT 1",
                [run_id, name, key, token],
            )
            .fetchall()
        )
        return rows[0][0] if rows else None

    def save_summary(self, run_id: str, name: str, key: str, token: str, value: str) -> None:
        """Store a summary of a run (text), replacing what was stored for the same run, name and key."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM run_summaries WHERE run_id = ? AND name = ? AND key = ?", [run_id, name, key])
            cur.execute(
                "INSERT INTO run_summaries VALUES (?, ?, ?, ?, ?, ?)",
                [run_id, name, key, token, value, db_time(utc_now())],
            )

    def app_decided_models(self) -> list[str]:
        """Models with at least one decision."""
        return [r[0] for r in self.cursor().execute("SELECT DISTINCT model FROM decisions ORDER BY 1").fetchall()]

    def _app_run(self, run_id: str) -> dict[str, Any]:
        run = self.require_run(run_id)
        self.require_traffic(run["traffic"])
        return run

    @staticmethod
    def _app_labels(run: dict[str, Any]) -> tuple[str, list]:
        """The join that gives a run's traffic rows ``t`` their label ``l.label`` as a number (null where none),
        and its parameters: a binary run's 0/1 label, a multi-class run's class index in ``meta.classes``."""
        if run_task(run) == MULTICLASS:
            return (
                """LEFT JOIN (SELECT request_id, list_position(?::VARCHAR[], label) - 1 AS label
                              FROM label_classes WHERE traffic = ?) l ON l.request_id = t.request_id""",
                [run_classes(run), run["traffic"]],
            )
        return "LEFT JOIN labels l ON l.traffic = ? AND l.request_id = t.request_id", [run["traffic"]]

    def app_score_summary(self, run_id: str, score_bins: int, latency_bins_per_decade: int) -> dict[str, list]:
        """One pass over a run's paired rows (labels joined), grouped several ways at once:

        ``scores``: (role, label, bin, rows, sum of scores) with bin = floor(score * score_bins), scored rows;
        ``pairs``: (label, baseline class, candidate class, rows), label null for unlabelled rows;
        ``latency``: (role, bin, rows) with bin = floor(log10(ms) * latency_bins_per_decade), ms >= 1e-6.
        """
        run = self._app_run(run_id)
        labels, params = self._app_labels(run)
        nb, kl = int(score_bins), int(latency_bins_per_decade)
        rows = (
            self.cursor()
            .execute(
                f"""WITH p AS (
                    SELECT l.label, p.baseline_class AS bc, p.candidate_class AS cc,
                           p.baseline_score AS bs, p.candidate_score AS cs,
                           {self._app_bin("p.baseline_score", nb)} AS bb,
                           {self._app_bin("p.candidate_score", nb)} AS cb,
                           {self._app_log_bin("p.baseline_latency_ms", kl)} AS bl,
                           {self._app_log_bin("p.candidate_latency_ms", kl)} AS cl
                    FROM predictions p JOIN {traffic_table(run["traffic"])} t USING (_row)
                    {labels}
                    WHERE p.run_id = ?)
                SELECT grouping(label, bb, cb, bc, cc, bl, cl) AS g, label, bb, cb, bc, cc, bl, cl, count(*) AS n,
                       sum(bs) AS sb, sum(cs) AS sc
                FROM p GROUP BY GROUPING SETS ((label, bb), (label, cb), (label, bc, cc), (bl), (cl))
                ORDER BY ALL""",
                [*params, run_id],
            )
            .fetchall()
        )
        out: dict[str, list] = {"scores": [], "pairs": [], "latency": []}
        for g, label, bb, cb, bc, cc, bl, cl, n, sb, sc in rows:
            n = int(n)
            if g == 0b0011111 and bb is not None and label is not None:
                out["scores"].append(("baseline", int(label), int(bb), n, float(sb)))
            elif g == 0b0101111 and cb is not None and label is not None:
                out["scores"].append(("candidate", int(label), int(cb), n, float(sc)))
            elif g == 0b0110011:
                out["pairs"].append((None if label is None else int(label), bc, cc, n))
            elif g == 0b1111101 and bl is not None:
                out["latency"].append(("baseline", int(bl), n))
            elif g == 0b1111110 and cl is not None:
                out["latency"].append(("candidate", int(cl), n))
        return out

    @staticmethod
    def _app_bin(x: str, bins: int) -> str:
        """floor(x * bins) clamped to [0, bins - 1]; NULL stays NULL (least/greatest would skip it)."""
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} >= 1 THEN {bins - 1} WHEN {x} < 0 THEN 0 "
            f"ELSE CAST(floor({x} * {bins}) AS INTEGER) END"
        )

    @staticmethod
    def _app_log_bin(x: str, per_decade: int) -> str:
        """floor(log10(x) * per_decade) for x >= 1e-6 ms (smaller values share the lowest bin); NULL stays NULL."""
        return (
            f"CASE WHEN {x} IS NULL THEN NULL ELSE CAST(floor(log10(greatest({x}, 1e-6)) * {per_decade}) "
            "AS INTEGER) END"
        )

    def app_latency_quantiles(self, run_id: str, probs: list[float]) -> dict[str, list[float | None]]:
        """Exact latency percentiles (ms) of each model over a run's rows."""
        row = (
            self.cursor()
            .execute(
                "SELECT quantile_cont(baseline_latency_ms, CAST(? AS DOUBLE[])), "
                "quantile_cont(candidate_latency_ms, CAST(? AS DOUBLE[])) FROM predictions WHERE run_id = ?",
                [list(probs), list(probs), run_id],
            )
            .fetchall()[0]
        )
        return {"baseline": list(row[0] or [None] * len(probs)), "candidate": list(row[1] or [None] * len(probs))}

    _APP_SUMS = {
        "rows": "count(*)",
        "labelled": "count(l.label)",
        "positives": "sum(l.label)",
        "baseline_correct": "sum(CASE WHEN p.baseline_class = l.label THEN 1 ELSE 0 END)",
        "candidate_correct": "sum(CASE WHEN p.candidate_class = l.label THEN 1 ELSE 0 END)",
        "baseline_errors": "count(p.baseline_error)",
        "candidate_errors": "count(p.candidate_error)",
        "disagree": "sum(CASE WHEN p.baseline_class <> p.candidate_class THEN 1 ELSE 0 END)",
        "baseline_scored": "count(p.baseline_score)",
        "candidate_scored": "count(p.candidate_score)",
        "baseline_score_sum": "sum(p.baseline_score)",
        "candidate_score_sum": "sum(p.candidate_score)",
        "baseline_latency_n": "count(p.baseline_latency_ms)",
        "candidate_latency_n": "count(p.candidate_latency_ms)",
        "baseline_latency_sum": "sum(p.baseline_latency_ms)",
        "candidate_latency_sum": "sum(p.candidate_latency_ms)",
    }

    def app_breakdowns(self, run_id: str, columns: list[str]) -> dict[str, list[dict[str, Any]]]:
        """In one pass over a run's rows (traffic and labels joined), sums per event-time day (key ``"day"``)
        and per value of each of ``columns``: rows, labelled rows, positives, each model's correct
        predictions, errors, scored rows, score sum and latency sum, and the rows whose classes differ (a
        multi-class run has no positives: 0)."""
        run = self._app_run(run_id)
        labels, params = self._app_labels(run)
        known = self.require_traffic(run["traffic"])["columns"]
        bad = [c for c in columns if c not in known]
        if bad:
            raise WorkbenchError(f"traffic {run['traffic']!r} has no column(s) {', '.join(bad)}")
        dims = ["date_trunc('day', t.event_time)"] + [f"t.{qident(c)}" for c in columns]
        names = ["day"] + list(columns)
        exprs = self._APP_SUMS | ({"positives": "0"} if run_task(run) == MULTICLASS else {})
        sums = ", ".join(f"{v} AS {k}" for k, v in exprs.items())
        rows = (
            self.cursor()
            .execute(
                f"""SELECT grouping({", ".join(dims)}) AS g, {", ".join(dims)}, {sums}
                FROM predictions p JOIN {traffic_table(run["traffic"])} t USING (_row)
                {labels}
                WHERE p.run_id = ? GROUP BY GROUPING SETS ({", ".join(f"({d})" for d in dims)}) ORDER BY ALL""",
                [*params, run_id],
            )
            .fetchall()
        )
        full = (1 << len(dims)) - 1
        out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for row in rows:
            g = row[0]
            for i, n in enumerate(names):
                if g == full ^ (1 << (len(dims) - 1 - i)):
                    vals = row[1 + len(dims) :]
                    totals = {k: (v or 0) for k, v in zip(self._APP_SUMS, vals, strict=True)}
                    out[n].append({"key": row[1 + i], **totals})
        for n in names:
            out[n].sort(key=lambda r: (r["key"] is None, r["key"]))
        return out

    def app_class_counts(self, run_id: str) -> dict[str, Any]:
        """A multi-class run's predicted classes per event-time day, in one pass over its rows: ``classes`` (the
        run's, whose indices the counts use) and ``counts``, (role, day, class index, rows) for the rows each model
        predicted (its failed rows have no class)."""
        run = self._app_run(run_id)
        rows = (
            self.cursor()
            .execute(
                f"""SELECT grouping(day, bc, cc) AS g, day, bc, cc, count(*) AS n
                FROM (SELECT date_trunc('day', t.event_time) AS day, p.baseline_class AS bc, p.candidate_class AS cc
                      FROM predictions p JOIN {traffic_table(run["traffic"])} t USING (_row) WHERE p.run_id = ?)
                GROUP BY GROUPING SETS ((day, bc), (day, cc)) ORDER BY ALL""",
                [run_id],
            )
            .fetchall()
        )
        counts = []
        for g, day, bc, cc, n in rows:
            role, cls = ("baseline", bc) if g == 0b001 else ("candidate", cc)
            if cls is not None and day is not None:
                counts.append((role, day, int(cls), int(n)))
        return {"classes": run_classes(run), "counts": sorted(counts)}

    def app_disagreements(self, run_id: str, limit: int) -> pa.Table:
        """Up to ``limit`` rows where the two models' classes differ, the largest score gaps first, with their
        label, event time and every traffic column."""
        run = self._app_run(run_id)
        info = self.require_traffic(run["traffic"])
        feats = ", ".join(f"t.{qident(c)}" for c in info["columns"])
        return (
            self.cursor()
            .execute(
                f"""WITH d AS (SELECT _row, baseline_score, candidate_score, baseline_class, candidate_class
                           FROM predictions WHERE run_id = ? AND baseline_class <> candidate_class
                           ORDER BY abs(candidate_score - baseline_score) DESC, _row LIMIT ?)
                SELECT t.request_id, t.event_time, l.label, d.baseline_class, d.candidate_class, d.baseline_score,
                       d.candidate_score, {feats}
                FROM d JOIN {traffic_table(run["traffic"])} t USING (_row)
                LEFT JOIN labels l ON l.traffic = ? AND l.request_id = t.request_id
                ORDER BY abs(d.candidate_score - d.baseline_score) DESC, d._row""",
                [run_id, int(limit), run["traffic"]],
            )
            .to_arrow_table()
        )

    def app_regression_summary(self, run_id: str, bins: int, columns: list[str]) -> dict[str, Any]:
        """A regression run's labelled rows (numeric labels joined) reduced in DuckDB in one pass over the join,
        whatever their number:

        ``range``: (low, high), the approximate 0.5 % and 99.5 % quantiles of the targets and both models'
        predictions (outliers fall in the edge bins); ``cells``: (role, actual bin, predicted bin, rows) with
        ``bins`` equal bins over the range (predicted vs actual); ``segments``: {column: [(value, rows, baseline
        |residual| sum, candidate |residual| sum, baseline residual sum, candidate residual sum)]}, residual =
        prediction - y, per value of each of ``columns``, over the rows both models predicted."""
        run = self._app_run(run_id)
        known = self.require_traffic(run["traffic"])["columns"]
        bad = [c for c in columns if c not in known]
        if bad:
            raise WorkbenchError(f"traffic {run['traffic']!r} has no column(s) {', '.join(bad)}")
        segs = [f"s{i}" for i in range(len(columns))]
        dims = "".join(", " + n for n in segs)
        picked = "".join(f", CAST(t.{qident(c)} AS VARCHAR) AS {n}" for c, n in zip(columns, segs, strict=True))

        def cell(x: str) -> str:
            return (
                f"CASE WHEN isfinite({x}) THEN least(greatest(CAST(floor(({x} - lo) / w) AS INTEGER), 0), "
                f"{bins - 1}) END"
            )

        sums = ", ".join(
            f"{f} FILTER (WHERE ok)"
            for f in ("count(*)", "sum(abs(pb - y))", "sum(abs(pc - y))", "sum(pb - y)", "sum(pc - y)")
        )
        rows = (
            self.cursor()
            .execute(
                f"""WITH j AS MATERIALIZED (
                    SELECT l.value AS y, p.baseline_score AS pb, p.candidate_score AS pc{picked}
                    FROM predictions p JOIN {traffic_table(run["traffic"])} t USING (_row)
                    JOIN label_values l ON l.traffic = ? AND l.request_id = t.request_id
                    WHERE p.run_id = ? AND isfinite(l.value)),
                r AS (SELECT least(approx_quantile(y, 0.005), approx_quantile(pb, 0.005), approx_quantile(pc, 0.005))
                             AS lo,
                             greatest(approx_quantile(y, 0.995), approx_quantile(pb, 0.995),
                                      approx_quantile(pc, 0.995)) AS hi
                      FROM j WHERE isfinite(pb) AND isfinite(pc)),
                b AS (SELECT j.*, lo, hi, CASE WHEN hi > lo THEN (hi - lo) / {bins} ELSE 1.0 END AS w FROM j, r),
                c AS (SELECT *, {cell("y")} AS a, {cell("pb")} AS bb, {cell("pc")} AS cb,
                             isfinite(pb) AND isfinite(pc) AS ok FROM b)
                SELECT grouping(a, bb, cb{dims}) AS g, a, bb, cb{dims},
                       count(*), {sums}, any_value(lo), any_value(hi)
                FROM c GROUP BY GROUPING SETS ((a, bb), (a, cb){"".join(f", ({n})" for n in segs)}) ORDER BY ALL""",
                [run["traffic"], run_id],
            )
            .fetchall()
        )
        k = len(segs)
        full = (1 << (3 + k)) - 1
        out: dict[str, Any] = {"range": None, "cells": [], "segments": {c: [] for c in columns}}
        for row in rows:
            g, a, bb, cb, values = row[0], row[1], row[2], row[3], row[4 : 4 + k]
            n, ok, abs_b, abs_c, sum_b, sum_c, lo, hi = row[4 + k :]
            if lo is not None:
                out["range"] = (float(lo), float(hi))
            if g == full ^ 0b110 << k and a is not None and bb is not None:  # grouped by (a, bb)
                out["cells"].append(("baseline", int(a), int(bb), int(n)))
            elif g == full ^ 0b101 << k and a is not None and cb is not None:  # grouped by (a, cb)
                out["cells"].append(("candidate", int(a), int(cb), int(n)))
            for i, c in enumerate(columns):
                if g == full ^ (1 << (k - 1 - i)) and ok:
                    out["segments"][c].append((values[i], int(ok), *(float(v) for v in (abs_b, abs_c, sum_b, sum_c))))
        if out["range"] is None:
            out["cells"] = []
        return out

    def app_segment_columns(self, traffic: str, max_values: int = 60) -> list[str]:
        """Traffic columns worth segmenting by: text, booleans and integers (with at most ``max_values``
        distinct values, approximately)."""
        info = self.require_traffic(traffic)
        types = self._table_columns("traffic_" + traffic)
        cands = [c for c in info["columns"] if types.get(c) in self._APP_DISCRETE]
        if not cands:
            return []
        sel = ", ".join(f"approx_count_distinct({qident(c)})" for c in cands)
        counts = self.cursor().execute(f"SELECT {sel} FROM {traffic_table(traffic)}").fetchall()[0]
        return [c for c, n in zip(cands, counts, strict=True) if n is not None and n <= max_values]

    def metrics_snapshot(self) -> dict[str, list[tuple]]:
        """What /metrics exports, read in one go: jobs per spec and status, durations of finished jobs and
        stages, the last success per spec, the latest finished replay per model (canary weights and verdicts
        come from the verified chain, not from here)."""
        cur = self.cursor()
        q = {
            "jobs": """SELECT coalesce(spec, 'unassigned'), status, count(*) FROM jobs GROUP BY 1, 2""",
            "job_durations": """SELECT spec, count(*), sum(epoch(finished_at) - epoch(started_at)),
                                       arg_max(epoch(finished_at) - epoch(started_at), finished_at),
                                       max(epoch(finished_at))
                                FROM jobs WHERE status = 'finished' AND spec IS NOT NULL GROUP BY spec""",
            "stage_durations": """SELECT j.spec, s.stage, count(*), sum(s.seconds) FROM job_stages s
                                  JOIN jobs j USING (job_id) WHERE s.status = 'finished' AND j.spec IS NOT NULL
                                  GROUP BY 1, 2""",
            "replays": f"""SELECT model, rows, seconds FROM (
                               SELECT json_extract_string(r.candidate, '$.name') AS model, r.rows_done AS rows,
                                      epoch(r.finished_at) - epoch(r.started_at) AS seconds,
                                      row_number() OVER (PARTITION BY json_extract_string(r.candidate, '$.name')
                                                         ORDER BY r.finished_at DESC) AS k
                               FROM ({RUNS_SQL}) r
                               WHERE r.status = 'finished' AND json_extract_string(r.candidate, '$.name') IS NOT NULL)
                           WHERE k = 1""",
        }
        return {k: cur.execute(sql).fetchall() for k, sql in q.items()}
