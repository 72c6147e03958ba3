"""Runs: the run lifecycle, commit units, paired predictions and what evaluation reads from them.

A run is opened (:meth:`RunStore.open_run`: created, or found with what it has committed), fills with
commit units (:meth:`RunStore.commit_batch`: a unit's paired rows and the ``_row`` range they cover, in
one transaction, so a resume skips exactly what was committed) and is finished
(:meth:`RunStore.finish_run`), after which it is immutable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.roles import ROLES
from workbench.store.names import label_source, qident, traffic_table
from workbench.store.traffic import TrafficStore
from workbench.tasks import MULTICLASS, run_classes, run_quantiles, run_task

#: a multi-class run's class probabilities beside its paired rows ``p``
_PROBABILITIES = "LEFT JOIN prediction_probabilities pp ON pp.run_id = p.run_id AND pp._row = p._row"

#: a regression run's quantiles beside its paired rows ``p``
_QUANTILES = "LEFT JOIN prediction_quantiles pq ON pq.run_id = p.run_id AND pq._row = p._row"

#: every run with ``rows_done``, the rows of its committed units
RUNS_SQL = """SELECT r.*, coalesce(b.rows, 0) AS rows_done FROM runs r
              LEFT JOIN (SELECT run_id, sum(rows) AS rows FROM run_batches GROUP BY run_id) b USING (run_id)"""
# when each traffic set's requests or labels last changed (``data_at``: its latest ingest of either)
DATA_AT_SQL = "SELECT traffic, max(ingested_at) AS data_at FROM ingests GROUP BY traffic"


@dataclass(frozen=True)
class RunState:
    """A run as :meth:`RunStore.open_run` found or created it, and what it has done."""

    run_id: str
    traffic: str
    baseline: dict  # the models' references the run was started with
    candidate: dict
    status: str  # "running" or "finished"
    created: bool  # this call created the run (False: it existed, to resume or finished)
    rows_total: int  # rows of its traffic set now: what a replay of the run covers
    rows_done: int  # rows of its committed units
    committed: tuple[tuple[int, int], ...]  # the ``_row`` ranges committed, merged (see ``committed_ranges``)
    next_batch: int  # the number its next commit unit takes

    @property
    def finished(self) -> bool:
        """The run is finished, and so immutable."""
        return self.status == "finished"

    def to_dict(self) -> dict:
        return asdict(self) | {"committed": [list(r) for r in self.committed]}


@dataclass(frozen=True)
class RunCounts:
    """A run's committed rows and the rows each model failed on."""

    run_id: str
    rows: int
    baseline_errors: int
    candidate_errors: int

    def to_dict(self) -> dict:
        return asdict(self)


class AlreadyCommitted(WorkbenchError):
    """A commit unit's batch number or rows are committed already: nothing was written."""


class RunStore(TrafficStore):
    """Runs, their commit units (``run_batches``) and paired predictions (one row per request, both models).

    Builds on :class:`~workbench.store.traffic.TrafficStore`: a run replays a traffic set.
    """

    EVALUATION_MEMORY_LIMIT = "768MB"

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """A run with its model refs, metadata, ``rows_done`` (the rows of its committed batches) and ``data_at``
        (when its traffic or labels last changed): the state of its data, read in the same statement
        (:func:`~workbench.store.app.run_token`)."""
        rows = self._rows(
            f"SELECT r.*, i.data_at FROM ({RUNS_SQL}) r LEFT JOIN ({DATA_AT_SQL}) i USING (traffic) WHERE r.run_id = ?",
            [run_id],
        )
        if not rows:
            return None
        run = rows[0]
        for k in ("baseline", "candidate", "meta"):
            run[k] = json.loads(run[k]) if run[k] else {}
        return run

    def require_run(self, run_id: str) -> dict[str, Any]:
        """:meth:`get_run`, or an error when the run is unknown."""
        run = self.get_run(run_id)
        if run is None:
            raise WorkbenchError(f"unknown run {run_id!r}")
        return run

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with ``rows_done``."""
        return self._rows(
            "SELECT run_id, traffic, status, rows_total, rows_done, device, mode, started_at, "
            f"finished_at FROM ({RUNS_SQL}) ORDER BY started_at DESC"
        )

    def create_run(
        self, *, run_id, traffic, baseline: dict, candidate: dict, rows_total, batch_size, device, mode, meta: dict
    ) -> None:
        """Register a new run, status ``running``."""
        with self.transaction() as cur:
            if cur.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
                raise WorkbenchError(f"run {run_id!r} already exists; choose another run id")
            cur.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, NULL)",
                [
                    run_id,
                    traffic,
                    json.dumps(baseline),
                    json.dumps(candidate),
                    rows_total,
                    batch_size,
                    device,
                    mode,
                    json.dumps(meta),
                    db_time(utc_now()),
                ],
            )

    def open_run(
        self,
        *,
        run_id: str,
        traffic: str,
        baseline: dict,
        candidate: dict,
        batch_size: int,
        device: str,
        mode: str,
        meta: dict,
    ) -> RunState:
        """Open a run: create it when ``run_id`` is new, else find it as it was left (the arguments then
        only describe what the caller expects: compare them with the state's ``traffic`` and models)."""
        run = self.get_run(run_id)
        created = run is None
        if run is None:
            self.require_traffic(traffic)
            rows_total = self.traffic_count(traffic)
            self.create_run(
                run_id=run_id,
                traffic=traffic,
                baseline=baseline,
                candidate=candidate,
                rows_total=rows_total,
                batch_size=batch_size,
                device=device,
                mode=mode,
                meta=meta,
            )
            run = self.require_run(run_id)
        else:
            rows_total = self.traffic_count(run["traffic"])
        return RunState(
            run_id=run_id,
            traffic=run["traffic"],
            baseline=run["baseline"],
            candidate=run["candidate"],
            status=run["status"],
            created=created,
            rows_total=rows_total,
            rows_done=int(run["rows_done"]),
            committed=tuple(self.committed_ranges(run_id)),
            next_batch=self._next_batch_no(run_id),
        )

    def committed_ranges(self, run_id: str) -> list[tuple[int, int]]:
        """The traffic ``_row`` ranges a run has committed, merged; every row in them is scored exactly once."""
        rows = (
            self.cursor()
            .execute(
                "SELECT first_row, first_row + span - 1 FROM run_batches WHERE run_id = ? ORDER BY first_row", [run_id]
            )
            .fetchall()
        )
        merged: list[tuple[int, int]] = []
        for a, b in rows:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((int(a), int(b)))
        return merged

    def _next_batch_no(self, run_id: str) -> int:
        r = (
            self.cursor()
            .execute("SELECT coalesce(max(batch_no) + 1, 0) FROM run_batches WHERE run_id = ?", [run_id])
            .fetchall()[0]
        )
        return int(r[0])

    def commit_batch(
        self,
        run_id: str,
        batch_no: int | None,
        first_row: int,
        last_row: int,
        rows: int,
        seconds: float,
        paired: pa.Table,
    ) -> int:
        """Store one batch's paired results and mark the batch committed, atomically (a multi-class run's
        ``*_proba`` columns go to ``prediction_probabilities``, a regression run's ``*_quantiles`` to
        ``prediction_quantiles``); returns its number.

        ``batch_no`` None (writers that commit out of order, such as Ray's actors): the next free number, and
        the unit is refused when a committed unit covers any row from ``first_row`` to ``last_row``."""
        with self.transaction() as cur:
            if batch_no is None:
                if cur.execute(
                    "SELECT count(*) FROM run_batches WHERE run_id = ? AND first_row <= ? AND first_row + span > ?",
                    [run_id, last_row, first_row],
                ).fetchall()[0][0]:
                    raise AlreadyCommitted(
                        f"rows {first_row}-{last_row} of run {run_id} are already committed; nothing was written"
                    )
                batch_no = int(
                    cur.execute(
                        "SELECT coalesce(max(batch_no) + 1, 0) FROM run_batches WHERE run_id = ?", [run_id]
                    ).fetchall()[0][0]
                )
            elif cur.execute(
                "SELECT count(*) FROM run_batches WHERE run_id = ? AND batch_no = ?", [run_id, batch_no]
            ).fetchall()[0][0]:
                raise AlreadyCommitted(f"batch {batch_no} of run {run_id} is already committed; nothing was written")
            cur.register("_wb_paired", paired)
            names = paired.column_names
            cols = ", ".join(qident(c) for c in names if not c.endswith(("_proba", "_quantiles")))
            cur.execute(f"INSERT INTO predictions (run_id, {cols}) SELECT ?, {cols} FROM _wb_paired", [run_id])
            if "baseline_proba" in names:  # a multi-class run: the class probabilities beside the rows
                probabilities = "_row, baseline_proba, candidate_proba"
                cur.execute(f"INSERT INTO prediction_probabilities SELECT ?, {probabilities} FROM _wb_paired", [run_id])
            if "baseline_quantiles" in names:  # a regression run with quantiles: them beside the rows
                quantiles = "_row, baseline_quantiles, candidate_quantiles"
                cur.execute(f"INSERT INTO prediction_quantiles SELECT ?, {quantiles} FROM _wb_paired", [run_id])
            cur.unregister("_wb_paired")
            cur.execute(
                "INSERT INTO run_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                [run_id, batch_no, first_row, last_row - first_row + 1, rows, seconds, db_time(utc_now())],
            )
            return batch_no

    def save_run_resources(self, run_id: str, resources: dict) -> None:
        """Keep what the replay measured about each model's costs in the run's ``meta.resources``."""
        meta = self.require_run(run_id)["meta"] | {"resources": resources}
        self.write("UPDATE runs SET meta = ? WHERE run_id = ?", [json.dumps(meta), run_id])

    def run_resources(self, run_id: str) -> dict | None:
        """The resources a run's replay measured (:meth:`save_run_resources`), or None."""
        return self.recorded_resources(self.require_run(run_id))

    @staticmethod
    def recorded_resources(run: dict[str, Any]) -> dict | None:
        """:meth:`run_resources` from the run's record (:meth:`get_run`) when the caller has it."""
        return run["meta"].get("resources")

    def finish_run(self, run_id: str) -> RunCounts:
        """Mark a run finished; returns its counts."""
        self.write(
            "UPDATE runs SET status = 'finished', finished_at = ? WHERE run_id = ?", [db_time(utc_now()), run_id]
        )
        return self.run_counts(run_id)

    def run_counts(self, run_id: str) -> RunCounts:
        """A run's committed rows and each model's failed rows."""
        rows = self.require_run(run_id)["rows_done"]
        _, baseline, candidate = self._prediction_counts(run_id)
        return RunCounts(run_id, int(rows), baseline, candidate)

    def prediction_counts(self, run_id: str) -> dict[str, dict[str, int]]:
        """Rows replayed and rows failed per role: ``{role: {"rows", "errors"}}``."""
        n, b, c = self._prediction_counts(run_id)
        if not n:
            return {}
        return {"baseline": {"rows": n, "errors": b}, "candidate": {"rows": n, "errors": c}}

    def _prediction_counts(self, run_id: str) -> tuple[int, int, int]:
        """Rows of a run's predictions, and the rows the baseline and the candidate failed on."""
        row = (
            self.cursor()
            .execute(
                "SELECT count(*), count(baseline_error), count(candidate_error) FROM predictions WHERE run_id = ?",
                [run_id],
            )
            .fetchall()[0]
        )
        return int(row[0]), int(row[1]), int(row[2])

    @staticmethod
    def counts_of(rows: pa.Table) -> dict[str, dict[str, int]]:
        """:meth:`prediction_counts` of the rows :meth:`prediction_rows` read (their ``*_failed``), without
        another scan."""
        n = rows.num_rows
        if not n:
            return {}
        return {r: {"rows": n, "errors": int(pc.sum(rows.column(f"{r}_failed")).as_py() or 0)} for r in ROLES}

    def evaluation_rows(
        self, run: str | dict[str, Any], *, segment: str | None = None, window: str | None = None
    ) -> pa.Table:
        """Every replayed request of a run (its id, or its record from :meth:`require_run`), in one scan and in no
        particular order: ``label`` (null where the request has none), per model ``*_score`` and
        ``*_latency_ms`` (null where that model failed) and ``*_failed``, plus ``segment`` (the traffic column
        ``segment`` as text) and ``window_start`` (the event time truncated to ``window``) on request. The
        labels are the run's task's (:func:`~workbench.store.names.label_source`): numbers for a regression run,
        class names for a multi-class run, which also has per model ``*_class`` (the index of the predicted
        class in ``meta.classes``) and ``*_proba`` (the class probabilities), null where the model failed; a
        regression run with quantiles has per model ``*_quantiles`` (at the levels of ``meta.quantiles``), null
        where the model failed. :meth:`prediction_rows` then :meth:`with_labels`, for a caller with work to do
        between the two."""
        run = self.require_run(run) if isinstance(run, str) else run
        return self.with_labels(run, self.prediction_rows(run, segment=segment, window=window))

    def prediction_rows(
        self, run: dict[str, Any], *, segment: str | None = None, window: str | None = None
    ) -> pa.Table:
        """:meth:`evaluation_rows` without the labels: ``_row`` (the request's traffic row) instead."""
        run_id, task = run["run_id"], run_task(run)
        quantiles = bool(run_quantiles(run))
        select = ["p._row"]
        for r in ROLES:
            select += [
                f"CASE WHEN p.{r}_error IS NULL THEN p.{r}_score END AS {r}_score",
                f"CASE WHEN p.{r}_error IS NULL THEN p.{r}_latency_ms END AS {r}_latency_ms",
                f"p.{r}_error IS NOT NULL AS {r}_failed",
            ]
        if task == MULTICLASS:
            select += [
                f"CASE WHEN p.{r}_error IS NULL THEN p.{r}_class END AS {r}_class, "
                f"CASE WHEN p.{r}_error IS NULL THEN pp.{r}_proba END AS {r}_proba"
                for r in ROLES
            ]
        if quantiles:
            select += [f"CASE WHEN p.{r}_error IS NULL THEN pq.{r}_quantiles END AS {r}_quantiles" for r in ROLES]
        per_row: list[str] = []  # the traffic columns a slice needs, looked up like the labels
        params: list = []
        if segment is not None:
            info = self.require_traffic(run["traffic"])
            column = "entity_key" if segment == info["entity_col"] else segment
            if column != "entity_key" and segment not in info["columns"]:
                known = ", ".join(sorted([*info["columns"], *([info["entity_col"]] if info["entity_col"] else [])]))
                raise WorkbenchError(
                    f"traffic {run['traffic']!r} has no column {segment!r} to segment by (columns: {known})"
                )
            per_row.append(f"CAST({qident(column)} AS VARCHAR) AS segment")
        if window is not None:
            per_row.append("date_trunc(?, event_time) AS window_start")
            params.append(window)
        # execute, not sql(params=...): a relation built with parameters is materialized first, which took 6x
        # the time of the query itself
        extra = _PROBABILITIES if task == MULTICLASS else _QUANTILES if quantiles else ""
        sql = f"SELECT {', '.join(select)} FROM predictions p {extra} WHERE p.run_id = ?"
        if extra:  # a bounded buffer: the join of the class probabilities or quantiles spills rather than grow
            with self.limits(memory=self.EVALUATION_MEMORY_LIMIT):
                table = self.cursor().execute(sql, [run_id]).to_arrow_table()
        else:
            table = self.cursor().execute(sql, [run_id]).to_arrow_table()
        if per_row:
            rows = table.column("_row").to_numpy()
            traffic = self._at_rows(", ".join(per_row), traffic_table(run["traffic"]), rows, params=params)
            for name in traffic.column_names:
                table = table.append_column(name, traffic.column(name))
        return table

    def with_labels(self, run: dict[str, Any], rows: pa.Table, labels: pa.Table | None = None) -> pa.Table:
        """The rows :meth:`prediction_rows` read, with each request's ``label`` (null where it has none) in
        place of its ``_row``; ``labels``: those :meth:`read_labels` read (read here when not given)."""
        at = rows.column("_row").to_numpy()
        if labels is None:
            label = self._labels_at(run["traffic"], run_task(run), at)
        else:
            label = _aligned(labels, at).column(0)
        return rows.drop_columns(["_row"]).add_column(0, "label", label)

    def read_labels(self, run: dict[str, Any], handle: Callable[[pa.Table], None]) -> dict[str, Any]:
        """The labels of the traffic rows a run's committed units cover (``_row`` and ``label``, the run's task's
        labels; for :meth:`with_labels`), handed to ``handle`` as soon as they are read, then the state of the
        traffic's labels (:meth:`labels_state`) in the same snapshot (:meth:`snapshot`), returned: a caller
        computes with the labels while their state is read, and the state it records is that of the labels it
        used. On the calling thread's cursor, so it can run on a thread beside :meth:`prediction_rows`."""
        table, column = label_source(run_task(run))
        with self.snapshot() as cur:
            lo, hi = cur.execute(
                "SELECT coalesce(min(first_row), 0), coalesce(max(first_row + span), 0) - 1 FROM run_batches "
                "WHERE run_id = ?",
                [run["run_id"]],
            ).fetchall()[0]
            sql = f"SELECT _row, {column} FROM {table} WHERE traffic = ? AND _row BETWEEN ? AND ?"
            handle(cur.execute(sql, [run["traffic"], lo, hi]).to_arrow_table())
            return self.labels_state(run["traffic"], run_task(run), cur)

    def _labels_at(self, traffic: str, task: str, rows: np.ndarray) -> pa.ChunkedArray:
        """The label of each traffic row in ``rows`` (null where it has none): the task's labels, :meth:`_at_rows`."""
        table, column = label_source(task)
        return self._at_rows(column, table, rows, "traffic = ?", [traffic]).column(0)

    def _at_rows(
        self, columns: str, table: str, rows: np.ndarray, where: str | None = None, params: Sequence = ()
    ) -> pa.Table:
        """``columns`` of ``table`` (rows matching ``where``, both with ``params`` in that order) for each traffic
        row in ``rows``, null where there is none, looked up through an index over the rows' span. Labels and
        traffic rows carry the request's ``_row``: this costs 60 % of a hash join on it (labels), 70 % (traffic)."""
        lo, hi = (int(rows.min()), int(rows.max())) if len(rows) else (0, -1)
        sql = f"SELECT _row, {columns} FROM {table} WHERE {where + ' AND ' if where else ''}_row BETWEEN ? AND ?"
        return _aligned(self.cursor().execute(sql, [*params, lo, hi]).to_arrow_table(), rows)

    def pair_runs(self, model: str, baseline_version: str, candidate_version: str) -> list[dict[str, Any]]:
        """The finished runs of one registered baseline/candidate pair of ``model``, oldest first (id, traffic,
        mode): the growing sample a decision on that pair judges."""
        rows = self._rows(
            "SELECT run_id, traffic, mode, started_at FROM runs WHERE status = 'finished' "
            "AND json_extract_string(candidate, '$.name') = ? "
            "AND json_extract_string(baseline, '$.version') = ? AND json_extract_string(candidate, '$.version') = ? "
            "ORDER BY started_at, run_id",
            [model, str(baseline_version), str(candidate_version)],
        )
        return rows

    def decision_rows(self, run_id: str, segments: list[str], features: Sequence[str] = ()) -> pa.Table:
        """Every replayed request of a run with what a decision judges: ``request_id``, ``event_time``,
        ``label`` (null when unlabelled), per model ``*_score`` (null where it failed), ``*_failed`` and
        ``*_latency_ms``, each of ``segments`` as text (columns named ``segment:<column>``) and each of
        ``features`` as stored (``feature:<column>``); ``label`` is a number for a regression run. For a
        multi-class run ``label`` is the index of the label's class in ``meta.classes`` (null when unlabelled or
        another class), ``*_score`` the index of the predicted class and ``*_true_p`` the probability the model
        gave the label's class. A regression run with quantiles has per model ``*_quantiles`` too (a list at the
        levels of ``meta.quantiles``, null where the model failed)."""
        run = self.require_run(run_id)
        info = self.require_traffic(run["traffic"])
        task = run_task(run)
        quantiles = bool(run_quantiles(run))
        labels, column = label_source(task)
        params: list = []
        if task == MULTICLASS:
            select = ["t.request_id", "t.event_time", f"list_position(?::VARCHAR[], l.{column}) - 1 AS label"]
            params.append(run_classes(run))
        else:  # the label is looked up by the request's row afterwards (:meth:`_labels_at`), not joined by its id
            select = ["t.request_id", "t.event_time", "p._row"]
        for r in ("baseline", "candidate"):
            predicted = f"p.{r}_class" if task == MULTICLASS else f"p.{r}_score"
            select += [
                f"CASE WHEN p.{r}_error IS NULL THEN {predicted} END AS {r}_score",
                f"p.{r}_error IS NOT NULL AS {r}_failed",
                f"p.{r}_latency_ms AS {r}_latency_ms",
            ]
            if task == MULTICLASS:
                select.append(f"list_extract(pp.{r}_proba, list_position(?::VARCHAR[], l.{column})) AS {r}_true_p")
                params.append(run_classes(run))
            if quantiles:
                select.append(f"CASE WHEN p.{r}_error IS NULL THEN pq.{r}_quantiles END AS {r}_quantiles")
        for col in segments:
            column = "entity_key" if col == info["entity_col"] else col
            if column != "entity_key" and col not in info["columns"]:
                raise WorkbenchError(f"traffic {run['traffic']!r} has no segment column {col!r}")
            select.append(f"CAST(t.{qident(column)} AS VARCHAR) AS {qident('segment:' + col)}")
        for col in features:
            if col not in info["columns"]:
                raise WorkbenchError(f"traffic {run['traffic']!r} has no feature column {col!r}")
            select.append(f"t.{qident(col)} AS {qident('feature:' + col)}")
        if task == MULTICLASS:
            sql = f"""SELECT {", ".join(select)}
                      FROM predictions p
                      JOIN {traffic_table(run["traffic"])} t USING (_row)
                      LEFT JOIN {labels} l ON l.traffic = ? AND l.request_id = t.request_id
                      {_PROBABILITIES}
                      WHERE p.run_id = ?"""
            params.append(run["traffic"])
        else:
            sql = f"""SELECT {", ".join(select)} FROM predictions p JOIN {traffic_table(run["traffic"])} t USING (_row)
                      {_QUANTILES if quantiles else ""}
                      WHERE p.run_id = ?"""
        with self.limits(memory=self.EVALUATION_MEMORY_LIMIT):
            table = self.cursor().execute(sql, [*params, run_id]).to_arrow_table()
        if task == MULTICLASS:
            return table
        label = self._labels_at(run["traffic"], task, table.column("_row").to_numpy())
        return table.drop_columns(["_row"]).add_column(2, "label", label)


def _aligned(found: pa.Table, rows: np.ndarray) -> pa.Table:
    """The columns after the first (``_row``) of ``found``, one row per traffic row in ``rows`` (null where
    ``found`` has none), looked up through an index over the rows' span."""
    at_rows = found.column(0).to_numpy()
    found = found.drop_columns([found.column_names[0]])
    if np.array_equal(at_rows, rows):  # they came in the rows' order (both written in traffic order)
        return found
    spans = [a for a in (rows, at_rows) if len(a)]
    lo, hi = (min(int(a.min()) for a in spans), max(int(a.max()) for a in spans)) if spans else (0, -1)
    at = np.full(hi - lo + 1, -1, dtype=np.int64 if found.num_rows >= 2**31 else np.int32)
    at[at_rows - lo] = np.arange(found.num_rows, dtype=at.dtype)
    index = at[rows - lo]
    return found.take(pa.array(index, mask=index < 0))
