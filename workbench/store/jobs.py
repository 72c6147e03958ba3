"""Jobs: the job queue, the job history and each job's stages.

A job row is queued by the webhook endpoint or created by the runner; the runner marks it
running/finished/failed/skipped/interrupted and records its spec, trigger, current stage and process.
"""

from __future__ import annotations

import json
from typing import Any

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.store.base import StoreBase


def _result_json(result: dict | None) -> str | None:
    return json.dumps(result, default=str) if result is not None else None


def _decoded(job: dict[str, Any]) -> dict[str, Any]:
    """A job row with its JSON ``params`` and ``result`` decoded."""
    job["params"] = json.loads(job["params"])
    job["result"] = json.loads(job["result"]) if job["result"] else None
    return job


class JobStore(StoreBase):
    """Jobs (``jobs``: queue and history) and their stages (``job_stages``), so a rerun skips finished stages."""

    def enqueue_job(
        self, *, job_id: str, kind: str, delivery_id: str | None, event: str | None, params: dict
    ) -> tuple[dict[str, Any], bool]:
        """Queue a job; a delivery id seen before returns the existing job and False (idempotent)."""
        with self.transaction() as cur:
            seen = (
                cur.execute("SELECT job_id FROM jobs WHERE delivery_id = ?", [delivery_id]).fetchall()
                if delivery_id is not None
                else []
            )
            stored = seen[0][0] if seen else job_id
            if not seen:
                cur.execute(
                    "INSERT INTO jobs (job_id, kind, delivery_id, event, params, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                    [job_id, kind, delivery_id, event, json.dumps(params), db_time(utc_now())],
                )
        job = self.get_job(stored)
        if job is None:
            raise WorkbenchError(f"job {stored} is not in the jobs table right after it was queued")
        return job, stored == job_id

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """A job with its params and result, or None."""
        rows = self._rows("SELECT * FROM jobs WHERE job_id = ?", [job_id])
        return _decoded(rows[0]) if rows else None

    def list_jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        """Jobs (in ``status``, or all) in the order they were queued."""
        rows = self._rows(
            "SELECT * FROM jobs WHERE ? IS NULL OR status = ? ORDER BY created_at, job_id", [status, status]
        )
        return [_decoded(job) for job in rows]

    def _job_rows(self, where: str, params: list, limit: int | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT * FROM jobs WHERE {where} ORDER BY coalesce(started_at, created_at) DESC, job_id DESC"
        rows = self._rows(sql + (" LIMIT ?" if limit else ""), params + ([limit] if limit else []))
        return [_decoded(job) for job in rows]

    def job_begin(
        self, *, job_id: str, kind: str, spec: str, triggered_by: str, params: dict, pid: int, host: str
    ) -> None:
        """Mark a job running, creating its row when new (a queued or interrupted row is taken over)."""
        now = db_time(utc_now())
        with self.transaction() as cur:
            if cur.execute("SELECT count(*) FROM jobs WHERE job_id = ?", [job_id]).fetchall()[0][0]:
                cur.execute(
                    """UPDATE jobs SET params = ?, status = 'running', started_at = coalesce(started_at, ?),
                               finished_at = NULL, error = NULL, spec = ?, triggered_by = coalesce(triggered_by, ?),
                               pid = ?, host = ? WHERE job_id = ?""",
                    [json.dumps(params, default=str), now, spec, triggered_by, pid, host, job_id],
                )
            else:
                cur.execute(
                    """INSERT INTO jobs (job_id, kind, params, status, created_at, started_at, spec,
                               triggered_by, pid, host) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)""",
                    [job_id, kind, json.dumps(params, default=str), now, now, spec, triggered_by, pid, host],
                )

    def job_end(
        self, job_id: str, status: str, *, error: str | None = None, result: dict | None = None, spec: str | None = None
    ) -> None:
        """Close a job: finished, failed (with the traceback), skipped (with the reason) or interrupted."""
        self.write(
            "UPDATE jobs SET status = ?, finished_at = ?, error = ?, result = ?, spec = coalesce(spec, ?) "
            "WHERE job_id = ?",
            [status, db_time(utc_now()), error, _result_json(result), spec, job_id],
        )

    def mark_interrupted(self, spec: str) -> list[str]:
        """Running jobs of ``spec`` left behind by a process that died (the caller holds the spec's lock)."""
        with self.transaction() as cur:
            ids = [
                r[0]
                for r in cur.execute("SELECT job_id FROM jobs WHERE spec = ? AND status = 'running'", [spec]).fetchall()
            ]
            cur.execute("UPDATE jobs SET status = 'interrupted' WHERE spec = ? AND status = 'running'", [spec])
        return ids

    def latest_job(self, spec: str, statuses: tuple[str, ...]) -> dict[str, Any] | None:
        """The most recent job of ``spec`` in one of ``statuses``."""
        rows = self._job_rows("spec = ? AND list_contains(?, status)", [spec, list(statuses)], limit=1)
        return rows[0] if rows else None

    def jobs_for_candidate(self, spec: str, candidate_version: str) -> list[dict[str, Any]]:
        """Jobs of ``spec`` that evaluated (or are evaluating) ``candidate_version``."""
        return self._job_rows(
            "spec = ? AND status IN ('running', 'finished') AND job_id IN (SELECT job_id FROM "
            "job_stages WHERE stage = 'resolve' AND status = 'finished' AND "
            "json_extract_string(result, '$.candidate.version') = ?)",
            [spec, candidate_version],
        )

    def stage_begin(self, job_id: str, stage: str) -> None:
        """Mark a job's stage running (one more attempt when it ran before) and make it the job's stage."""
        with self.transaction() as cur:
            cur.execute("UPDATE jobs SET stage = ? WHERE job_id = ?", [stage, job_id])
            now = db_time(utc_now())
            if cur.execute(
                "SELECT count(*) FROM job_stages WHERE job_id = ? AND stage = ?", [job_id, stage]
            ).fetchall()[0][0]:
                cur.execute(
                    """UPDATE job_stages SET status = 'running', attempts = attempts + 1, started_at = ?,
                               finished_at = NULL, error = NULL WHERE job_id = ? AND stage = ?""",
                    [now, job_id, stage],
                )
            else:
                cur.execute(
                    "INSERT INTO job_stages VALUES (?, ?, 'running', 1, ?, NULL, NULL, NULL, NULL)",
                    [job_id, stage, now],
                )

    def stage_end(
        self,
        job_id: str,
        stage: str,
        status: str,
        seconds: float,
        *,
        result: dict | None = None,
        error: str | None = None,
    ) -> None:
        """Close a job's stage with its status, duration and result or error."""
        self.write(
            "UPDATE job_stages SET status = ?, finished_at = ?, seconds = ?, result = ?, error = ? "
            "WHERE job_id = ? AND stage = ?",
            [status, db_time(utc_now()), seconds, _result_json(result), error, job_id, stage],
        )

    def job_stages(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Each stage of a job by name, in the order they first started."""
        rows = self._rows("SELECT * FROM job_stages WHERE job_id = ? ORDER BY started_at NULLS LAST", [job_id])
        out = {}
        for r in rows:
            r["result"] = json.loads(r["result"]) if r["result"] else None
            out[r.pop("stage")] = r
        return out

    def job_history(self, spec: str | None = None, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Jobs, newest first, each with its stages (``stages``: {stage: {status, attempts, seconds, ...}})."""
        jobs = self._job_rows(
            "(? IS NULL OR spec = ?) AND (? IS NULL OR status = ?)", [spec, spec, status, status], limit=limit
        )
        for job in jobs:
            job["stages"] = self.job_stages(job["job_id"])
        return jobs
