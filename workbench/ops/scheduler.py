"""The job scheduler: one long-lived process that runs job specs on their cron schedules (UTC) and the jobs
that registry events queued (the webhook endpoint's ``jobs`` rows), one job at a time.

Each schedule slot is one job (:func:`workbench.ops.jobspec.slot_job_id`); a slot missed while another job ran
is run once, late, for the latest missed time (no backfill, as ``cron`` and Kubernetes CronJobs without
``startingDeadlineSeconds`` do). A queued registry event runs the spec of its model with the candidate
pinned to the event's version; events of a model without a spec, of an alias the spec does not follow, or
of a version the spec already evaluated are marked ``skipped`` with the reason. At start the scheduler
resumes jobs that a dead process left running. The clock is injected, so tests drive it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from workbench import WorkbenchError
from workbench.clock import iso, utc_now
from workbench.config import Settings
from workbench.ops.jobs import JOB_KIND, STORE_WAIT_S, JobRefused, run_job
from workbench.ops.jobspec import LoadedSpec, last_fire, next_fire, slot_job_id
from workbench.ops.observability import log_context
from workbench.store import Store

log = logging.getLogger(__name__)


class Scheduler:
    """Runs ``specs`` on their schedules and the queued registry events, through ``run`` (:func:`run_job`)."""

    def __init__(
        self,
        settings: Settings,
        specs: list[LoadedSpec],
        *,
        clock: Callable[[], datetime] = utc_now,
        run: Callable = run_job,
    ):
        self.settings, self.clock, self.run = settings, clock, run
        self.specs = {s.name: s for s in specs}
        self.by_model: dict[str, LoadedSpec] = {}
        for s in specs:
            t = s.spec.triggers
            if not (t.new_versions or t.aliases):
                continue
            if s.spec.model in self.by_model:
                raise WorkbenchError(
                    f"job specs {self.by_model[s.spec.model].path} and {s.path} both run on registry "
                    f"events of model {s.spec.model}: set triggers.new_versions = false and "
                    "triggers.aliases = [] in one of them"
                )
            self.by_model[s.spec.model] = s
        start = clock()
        self._schedules = {s.name: s.spec.schedule for s in specs if s.spec.schedule}
        self.next = {name: next_fire(cron, start) for name, cron in self._schedules.items()}
        self._refusals: dict[str, str] = {}
        self._stop = threading.Event()  # set by run_forever's caller: no new job starts after it

    # -- one pass ------------------------------------------------------------------------------------
    def due(self, now: datetime) -> list[tuple[LoadedSpec, datetime]]:
        """Specs whose next fire time has come, each with its latest fire time at or before ``now``."""
        return [
            (self.specs[name], last_fire(self._schedules[name], now))
            for name, at in sorted(self.next.items(), key=lambda kv: kv[1])
            if at <= now
        ]

    def tick(self) -> list[dict]:
        """Run the due specs, then the queued registry events; return one outcome per job touched."""
        now = self.clock()
        outcomes: list[dict] = []
        for loaded, fire in self.due(now):
            if self._stop.is_set():
                return outcomes
            self.next[loaded.name] = next_fire(self._schedules[loaded.name], now)
            log.info(
                "schedule fired",
                extra={
                    "event": "schedule_fired",
                    "spec": loaded.name,
                    "fire_time": iso(fire),
                    "next_fire": iso(self.next[loaded.name]),
                },
            )
            outcomes.append(
                self._run(loaded, job_id=slot_job_id(loaded.name, fire), as_of=fire, triggered_by="schedule")
            )
        return outcomes + self.process_queue()

    def recover(self) -> list[dict]:
        """Resume the jobs of these specs that a dead process left running (or interrupted)."""
        outcomes = []
        for loaded in self.specs.values():
            if self._stop.is_set():
                break
            with Store(self.settings.db_path, wait_s=STORE_WAIT_S) as store:
                job = store.latest_job(loaded.name, ("running", "interrupted"))
            if job is not None:
                log.info(
                    "resuming an interrupted job",
                    extra={"event": "job_recover", "job_id": job["job_id"], "spec": loaded.name},
                )
                outcomes.append(self._run(loaded, job_id=job["job_id"], triggered_by=job["triggered_by"] or "schedule"))
        return outcomes

    def process_queue(self) -> list[dict]:
        """Run (or skip, with the reason) each job that a registry event queued."""
        with Store(self.settings.db_path, wait_s=STORE_WAIT_S) as store:
            queued = [j for j in store.list_jobs("queued") if j["kind"] == JOB_KIND]
        outcomes = []
        for job in queued:
            if self._stop.is_set():
                break
            with log_context(job_id=job["job_id"]):
                loaded, reason = self._route(job)
                if loaded is None:
                    with Store(self.settings.db_path, wait_s=STORE_WAIT_S) as store:
                        store.job_end(job["job_id"], "skipped", result={"reason": reason})
                    log.info("registry event skipped: %s", reason, extra={"event": "event_skipped"})
                    outcomes.append({"job_id": job["job_id"], "spec": None, "status": "skipped", "reason": reason})
                    continue
                outcomes.append(
                    self._run(
                        loaded,
                        job_id=job["job_id"],
                        triggered_by="webhook",
                        candidate_version=str(job["params"]["version"]),
                    )
                )
        return outcomes

    def _route(self, job: dict) -> tuple[LoadedSpec | None, str | None]:
        p, event = job["params"], job["event"]
        loaded = self.by_model.get(p.get("model"))
        if loaded is None:
            return None, f"no job spec runs on registry events of model {p.get('model')!r}"
        t = loaded.spec.triggers
        if event == "model_version.created" and not t.new_versions:
            return None, f"job spec {loaded.name} does not run on new versions (triggers.new_versions = false)"
        if event == "model_version_alias.created" and p.get("alias") not in t.aliases:
            return None, (f"job spec {loaded.name} follows aliases {list(t.aliases)}, not {p.get('alias')!r}")
        with Store(self.settings.db_path, wait_s=STORE_WAIT_S) as store:
            seen = store.jobs_for_candidate(loaded.name, str(p.get("version")))
        if seen:
            return None, (
                f"version {p.get('version')} of {p.get('model')} is already evaluated by job {seen[0]['job_id']}"
            )
        return loaded, None

    def _run(self, loaded: LoadedSpec, **kwargs) -> dict:
        out = {"job_id": kwargs.get("job_id"), "spec": loaded.name}
        try:
            res = self.run(self.settings, loaded, **kwargs)
        except JobRefused as e:
            key = f"{loaded.name}:{kwargs.get('job_id')}"
            if self._refusals.get(key) != str(e):  # say it once, not at every poll
                log.warning("%s", e, extra={"event": "job_refused", "spec": loaded.name})
                self._refusals[key] = str(e)
            return out | {"status": "refused", "reason": str(e)}
        except WorkbenchError as e:
            log.error("%s", e, extra={"event": "job_failed", "spec": loaded.name})
            return out | {"status": "failed", "error": str(e)}
        except Exception as e:  # a scheduler outlives any one job; the job's row holds its traceback
            log.exception("job crashed: %s", e, extra={"event": "job_failed", "spec": loaded.name})
            return out | {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        return out | {"job_id": res.job_id, "status": res.status, "already_complete": res.already_complete}

    # -- the loop ------------------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event, poll_s: float = 30.0) -> dict[str, int]:
        """Recover, then tick until ``stop`` is set, sleeping until the next fire time or ``poll_s`` (for queued
        events), whichever comes first. Returns the number of jobs per outcome."""
        log.info(
            "scheduler started",
            extra={
                "event": "scheduler_started",
                "specs": sorted(self.specs),
                "next_fire": {k: iso(v) for k, v in self.next.items()},
            },
        )
        self._stop = stop
        counts: Counter = Counter(o["status"] for o in self.recover())
        while not stop.is_set():
            counts.update(o["status"] for o in self.tick())
            now = self.clock()
            wait = min([poll_s] + [(at - now).total_seconds() for at in self.next.values()])
            stop.wait(max(0.05, wait))
        log.info("scheduler stopped", extra={"event": "scheduler_stopped", "jobs": dict(counts)})
        return dict(counts)
