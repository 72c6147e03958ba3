"""Scheduled replay jobs: the lock and a resumable runner of a job spec (:mod:`workbench.ops.jobspec`).

:func:`run_job` runs ``resolve -> ingest -> replay -> evaluate -> drift -> decide`` as one job with one job
id. Each stage's state lives in DuckDB (``job_stages``): a rerun skips finished stages and a crashed job
resumes where it stopped (the replay itself resumes by run id). A job of a scheduled spec is named after its
schedule slot (``job_<spec>_<YYYYmmddTHHMM>``), so running the same slot again resumes it or reports it
complete. A ``flock`` on ``$WORKBENCH_HOME/locks/<spec>.lock`` keeps two runs of one spec from overlapping
across processes; the lock file names the holder, so a refused run says which job holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from workbench import WorkbenchError
from workbench.clock import iso, parse_duration, parse_time, utc_now
from workbench.config import Settings
from workbench.decide.signing import KeyRing
from workbench.ops.flow import STAGES as FLOW_STAGES
from workbench.ops.flow import Flow, FlowEvents, StageSkipped, run_flow
from workbench.ops.jobsource import JobSource, latest_event
from workbench.ops.jobspec import JobSpec, LoadedSpec, last_fire, manual_job_id, slot_job_id
from workbench.ops.observability import log_context
from workbench.replay.pipeline import ReplayOptions
from workbench.store import Store, check_name

log = logging.getLogger(__name__)
JOB_KIND = "replay_evaluate_decide"
STAGES = ("resolve", *FLOW_STAGES)
DONE = ("finished", "skipped")
STORE_WAIT_S = 60.0  # a job waits this long for another process's DuckDB write lock


class JobRefused(WorkbenchError):
    """A job that cannot start (its spec is already running, or a precondition fails); the message says why."""


class JobFailed(WorkbenchError):
    """A stage of a job raised; the job's history row holds the traceback."""


class JobIncomplete(WorkbenchError):
    """A job ended without reaching every stage its spec turns on (it was skipped); the CLI exits 3."""

    exit_code = 3


def check_complete(res: JobResult) -> JobResult:
    """``res`` when the job finished; raises :class:`JobIncomplete` naming the stages it did not reach."""
    if res.status == "finished":
        return res
    unreached = res.summary.get("unreached") or []
    raise JobIncomplete(
        f"job {res.job_id} ended {res.status} without reaching stage(s) {', '.join(unreached) or 'all'}: "
        f"{res.summary.get('reason') or 'no reason recorded'}"
    )


# -- the lock ---------------------------------------------------------------------------------------
class SpecLock:
    """An exclusive ``flock`` on ``$WORKBENCH_HOME/locks/<spec>.lock``, held for a whole job.

    The kernel drops it when the process dies, so a crashed job never blocks the next run. The file holds
    the holder's job id, pid, host and start time, which a refused run reports.
    """

    def __init__(self, home: Path, spec: str):
        self.path = home / "locks" / f"{spec}.lock"
        self.spec = spec
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            who = (
                (
                    f"job {holder.get('job_id') or '(starting)'} (pid {holder.get('pid')} on {holder.get('host')}, "
                    f"since {holder.get('since')})"
                )
                if holder
                else "another process"
            )
            raise JobRefused(
                f"cannot start job spec {self.spec}: it is already running: {who}; two runs of one spec never overlap"
            ) from None
        self._fd = fd
        self.describe(None)

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}

    def describe(self, job_id: str | None) -> None:
        """Write who holds the lock (read by a refused run)."""
        if self._fd is None:
            raise WorkbenchError(f"the lock of job spec {self.spec} is not held: acquire it first")
        info = json.dumps({"job_id": job_id, "pid": os.getpid(), "host": platform.node(), "since": iso(utc_now())})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, info.encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# -- results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobResult:
    job_id: str
    spec: str
    status: str
    triggered_by: str | None
    as_of: str | None
    stages: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    already_complete: bool = False

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "spec": self.spec,
            "status": self.status,
            "triggered_by": self.triggered_by,
            "as_of": self.as_of,
            "already_complete": self.already_complete,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error": self.error,
            **self.summary,
            "stages": {
                k: {"status": v["status"], "attempts": v["attempts"], "seconds": v["seconds"], "result": v["result"]}
                for k, v in self.stages.items()
            },
        }


def job_result(store: Store, job_id: str, already_complete: bool = False) -> JobResult:
    job = store.get_job(job_id)
    if job is None:
        raise WorkbenchError(f"unknown job {job_id!r}")
    return JobResult(
        job_id,
        job["spec"],
        job["status"],
        job["triggered_by"],
        job["params"].get("as_of"),
        store.job_stages(job_id),
        job["result"] or {},
        job["error"],
        job["started_at"],
        job["finished_at"],
        already_complete,
    )


def job_history(store: Store, spec: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]:
    """The job history, newest first, for the CLI and the app: id, spec, trigger, status, current stage,
    start, end, seconds, error (with the traceback), summary and each stage's state."""
    out = []
    for job in store.job_history(spec, status, limit):
        start, end = job["started_at"], job["finished_at"]
        out.append(
            {
                "job_id": job["job_id"],
                "kind": job["kind"],
                "spec": job["spec"],
                "triggered_by": job["triggered_by"] or ("webhook" if job["delivery_id"] else None),
                "event": job["event"],
                "status": job["status"],
                "stage": job["stage"],
                "created_at": iso(job["created_at"]),
                "started_at": iso(start),
                "finished_at": iso(end),
                "seconds": round((end - start).total_seconds(), 3) if start and end else None,
                "error": job["error"],
                "result": job["result"],
                "params": job["params"],
                "pid": job["pid"],
                "host": job["host"],
                "stages": {
                    k: {
                        "status": v["status"],
                        "attempts": v["attempts"],
                        "seconds": v["seconds"],
                        "started_at": iso(v["started_at"]),
                        "finished_at": iso(v["finished_at"]),
                        "result": v["result"],
                        "error": v["error"],
                    }
                    for k, v in job["stages"].items()
                },
            }
        )
    return out


# -- stages -----------------------------------------------------------------------------------------
@dataclass
class _Job:
    settings: Settings
    loaded: LoadedSpec
    job_id: str
    params: dict
    keys: KeyRing
    results: dict = field(default_factory=dict)

    @property
    def spec(self) -> JobSpec:
        return self.loaded.spec

    @property
    def plan(self) -> dict:
        return self.results["resolve"]

    def store(self) -> Store:
        return Store(self.settings.db_path, wait_s=STORE_WAIT_S)


def _resolve_model(model: str, selector: str) -> dict:
    from workbench.replay.models import describe

    uri = f"models:/{model}/{selector}" if selector.isdigit() else f"models:/{model}@{selector}"
    ref = describe(uri)
    return {"selector": selector, "version": ref.version, "uri": f"models:/{model}/{ref.version}"}


def _stage_resolve(job: _Job) -> dict:
    """Pin both model versions and the traffic window, so a resumed job replays exactly the same thing."""
    spec, p = job.spec, job.params
    baseline = _resolve_model(spec.model, spec.baseline)
    candidate = _resolve_model(spec.model, str(p.get("candidate_version") or spec.candidate))
    plan: dict[str, Any] = {
        "model": spec.model,
        "baseline": baseline,
        "candidate": candidate,
        "run_id": "run_" + job.job_id.removeprefix("job_"),
        "traffic": spec.traffic.table or job.job_id,
        "window": None,
    }
    if spec.traffic.window:
        if spec.traffic.anchor == "now":
            end = parse_time(p["as_of"])
        elif spec.traffic.path is None:  # TrafficSpec refuses a window without path
            raise WorkbenchError("a window cuts files by event time: it needs path, not table")
        else:
            end = latest_event(job.loaded.files(spec.traffic.path), spec.traffic.time_col)
        plan["window"] = {
            "start": iso(end - parse_duration(spec.traffic.window)),
            "end": iso(end),
            "anchor": spec.traffic.anchor,
        }
    if baseline["version"] == candidate["version"]:
        raise StageSkipped(
            f"baseline ({spec.baseline}) and candidate ({candidate['selector']}) are both version "
            f"{baseline['version']} of {spec.model}: nothing to compare"
        )
    return plan


def _flow(job: _Job) -> Flow:
    """The flow a job runs, from its spec and its pinned plan."""
    spec, plan, t, r = job.spec, job.plan, job.spec.traffic, job.spec.replay
    lab = spec.labels
    label_columns: dict[str, Any] = (
        {"label_id_col": lab.id_col, "label_col": lab.label_col, "label_time_col": lab.time_col} if lab else {}
    )
    source = JobSource(
        paths=job.loaded.resolve(t.path) if t.path else None,
        id_col=t.id_col,
        time_col=t.time_col,
        entity_col=t.entity_col,
        nullable=t.nullable,
        if_exists="reuse",
        labels=job.loaded.resolve(lab.path) if lab else None,
        label_files=tuple(job.loaded.files(lab.path)) if lab else (),
        **label_columns,
        window=plan["window"],
        work=job.settings.home / "jobs" / job.job_id,
    )
    return Flow(
        traffic=plan["traffic"],
        baseline=plan["baseline"]["uri"],
        candidate=plan["candidate"]["uri"],
        run_id=plan["run_id"],
        source=source,
        device=r.device,
        replay=ReplayOptions(batch_size=r.batch_size, mode=r.mode, model_timeout=r.model_timeout),
        drift=spec.drift.enabled,
        drift_reference=spec.drift.reference,
        decide="apply" if spec.verdict == "apply" else "sign",
        policy=job.loaded.resolve(spec.policy) if spec.policy else None,
    )


class _JobEvents(FlowEvents):
    """Persist each flow stage of a job in ``job_stages`` and log it with the job's ids."""

    def __init__(self, job: _Job):
        self.job, self._log = job, ExitStack()
        self.stage: str | None = None
        self.started = self._last_progress = 0.0

    def begin(self, stage: str) -> None:
        self.stage, self.started = stage, time.monotonic()
        self._log.enter_context(log_context(stage=stage, run_id=self.job.plan["run_id"]))
        with self.job.store() as store:
            store.stage_begin(self.job.job_id, stage)
        log.info("stage %s started", stage, extra={"event": "stage_started"})

    def progress(self, stage: str, done: int, total: int | None) -> None:  # called from the replay's writers
        now = time.monotonic()
        if stage == "replay" and (now - self._last_progress >= 5 or done == total):
            self._last_progress = now
            log.info(
                "replay progress",
                extra={
                    "event": "replay_progress",
                    "job_id": self.job.job_id,
                    "run_id": self.job.plan["run_id"],
                    "rows_done": done,
                    "rows_total": total,
                },
            )

    def end(self, stage: str, summary: dict, seconds: float) -> None:
        self.job.results[stage] = summary
        with self.job.store() as store:
            store.stage_end(self.job.job_id, stage, "finished", seconds, result=summary)
        log.info(
            "stage %s finished",
            stage,
            extra={"event": "stage_finished", "seconds": round(seconds, 3), "result": summary},
        )
        self.close()

    def skip(self, stage: str, reason: str) -> None:
        with self.job.store() as store:
            if self.stage != stage:
                store.stage_begin(self.job.job_id, stage)
            store.stage_end(self.job.job_id, stage, "skipped", 0.0, result={"reason": reason})
        log.info("stage %s skipped: %s", stage, reason, extra={"event": "stage_skipped", "stage": stage})
        self.close()

    def close(self) -> None:
        self.stage = None
        self._log.close()


# -- the runner -------------------------------------------------------------------------------------
def preflight(settings: Settings, loaded: LoadedSpec) -> KeyRing:
    """Check what a job needs before it starts: the policy, the signing key, the traffic and labels files.
    Returns the job's key ring (with its signer); raises :class:`JobRefused` naming the problem."""
    from workbench.decide.policy import load_policy

    spec = loaded.spec
    try:
        load_policy(loaded.resolve(spec.policy) if spec.policy else None)
        keys = KeyRing.from_settings(settings, sign=True)
        if spec.traffic.path:
            loaded.files(spec.traffic.path)
        if spec.labels:
            loaded.files(spec.labels.path)
    except JobRefused:
        raise
    except WorkbenchError as e:
        raise JobRefused(f"cannot start job spec {spec.name}: {e}") from None
    return keys


def _choose(
    store: Store, spec: JobSpec, job_id: str | None, as_of: datetime | None, new: bool, clock: Callable[[], datetime]
) -> tuple[str, datetime, dict | None]:
    """(job id, as-of time, existing row or None) of the job to run."""
    if job_id is None and not new:
        if spec.schedule:
            as_of = last_fire(spec.schedule, as_of or clock())
            job_id = slot_job_id(spec.name, as_of)
        else:
            pending = store.latest_job(spec.name, ("running", "interrupted", "failed"))
            if pending is not None:
                job_id = pending["job_id"]
    if job_id is None:
        as_of = as_of or clock()
        job_id = manual_job_id(spec.name, as_of)
    check_name(job_id, "job id")
    existing = store.get_job(job_id)
    if existing is not None:
        if existing.get("spec") not in (None, spec.name):
            raise JobRefused(f"job {job_id} belongs to job spec {existing['spec']}, not {spec.name}")
        if existing["params"].get("as_of"):
            as_of = parse_time(existing["params"]["as_of"])
    return job_id, as_of or clock(), existing


def run_job(
    settings: Settings,
    loaded: LoadedSpec,
    *,
    job_id: str | None = None,
    as_of: datetime | None = None,
    new: bool = False,
    triggered_by: str = "manual",
    candidate_version: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> JobResult:
    """Run (or resume) one job of a spec; see the module docstring for which job that is.

    Raises :class:`JobRefused` when it cannot start (the spec is running elsewhere, a precondition fails)
    and :class:`JobFailed` when a stage raises (the job's row keeps the traceback; a rerun resumes it).
    A job whose id finished or was skipped before is returned as it is, with ``already_complete``.
    """
    import mlflow

    spec = loaded.spec
    keys = preflight(settings, loaded)
    lock = SpecLock(settings.ensure().home, spec.name)
    lock.acquire()
    try:
        with Store(settings.db_path, wait_s=STORE_WAIT_S) as store:
            stale = store.mark_interrupted(spec.name)
            job_id, as_of, existing = _choose(store, spec, job_id, as_of, new, clock)
            if existing is not None and existing["status"] in DONE:
                return job_result(store, job_id, already_complete=True)
            params = dict(existing["params"]) if existing else {}
            version = candidate_version or (params.get("version") if existing and existing["delivery_id"] else None)
            params.update(spec=spec.name, spec_path=str(loaded.path), as_of=iso(as_of))
            if version:
                params["candidate_version"] = str(version)
            store.job_begin(
                job_id=job_id,
                kind=JOB_KIND,
                spec=spec.name,
                triggered_by=triggered_by,
                params=params,
                pid=os.getpid(),
                host=platform.node(),
            )
            done = {k: v for k, v in store.job_stages(job_id).items() if v["status"] in DONE}
        lock.describe(job_id)
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        job = _Job(settings, loaded, job_id, params, keys, {k: v["result"] for k, v in done.items()})
        with log_context(job_id=job_id, spec=spec.name):
            if stale:
                log.warning(
                    "found interrupted job(s) of this spec", extra={"event": "job_interrupted", "interrupted": stale}
                )
            log.info(
                "job %s",
                "resumed" if existing and existing["status"] != "queued" else "started",
                extra={
                    "event": "job_started",
                    "triggered_by": triggered_by,
                    "as_of": iso(as_of),
                    "resumed_after": sorted(done),
                },
            )
            _run_stages(job, done)
        with job.store() as store:
            return job_result(store, job_id)
    finally:
        lock.release()


def _run_stages(job: _Job, done: dict) -> None:
    t_job = time.monotonic()
    if "resolve" in done:
        log.info(
            "stage resolve already %s: not redone",
            done["resolve"]["status"],
            extra={"event": "stage_skipped", "stage": "resolve"},
        )
    else:
        with log_context(stage="resolve"):
            with job.store() as store:
                store.stage_begin(job.job_id, "resolve")
            log.info("stage resolve started", extra={"event": "stage_started"})
            t0 = time.monotonic()
            try:
                plan = _stage_resolve(job)
            except StageSkipped as e:
                _end_skipped(job, "resolve", str(e), time.monotonic() - t0)
                return
            except BaseException as e:
                _fail(job, "resolve", e, time.monotonic() - t0)
            seconds = time.monotonic() - t0
            job.results["resolve"] = plan
            with job.store() as store:
                store.stage_end(job.job_id, "resolve", "finished", seconds, result=plan)
            log.info(
                "stage resolve finished",
                extra={"event": "stage_finished", "seconds": round(seconds, 3), "result": plan},
            )
    for stage in STAGES[1:]:
        if stage in done:
            log.info(
                "stage %s already %s: not redone",
                stage,
                done[stage]["status"],
                extra={"event": "stage_skipped", "stage": stage},
            )
    events = _JobEvents(job)
    try:
        flow = _flow(job)
        res = run_flow(job.settings, flow, store=job.store, keys=job.keys, events=events, done=frozenset(done))
    except BaseException as e:
        stage = events.stage or "ingest"
        events.close()
        _fail(job, stage, e, time.monotonic() - events.started)
    # a stage the spec turns off is skipped with its reason and the others run; every other stage must have
    # run now or in an earlier attempt, or the job is not finished, whatever stopped it
    unreached = [s for s in FLOW_STAGES if s not in done and s not in res.summaries and flow.reason_off(s) is None]
    if res.stopped is not None or unreached:
        reason = res.stopped or f"the flow ended before stage(s) {', '.join(unreached)}"
        with job.store() as store:
            store.job_end(job.job_id, "skipped", result={"reason": reason, "unreached": unreached, **_summary(job)})
        log.info("job skipped: %s", reason, extra={"event": "job_skipped", "unreached": unreached})
        return
    with job.store() as store:
        store.job_end(job.job_id, "finished", result=_summary(job))
    log.info(
        "job finished", extra={"event": "job_finished", "seconds": round(time.monotonic() - t_job, 3), **_summary(job)}
    )


def _end_skipped(job: _Job, stage: str, reason: str, seconds: float) -> None:
    with job.store() as store:
        store.stage_end(job.job_id, stage, "skipped", seconds, result={"reason": reason})
        store.job_end(job.job_id, "skipped", result={"reason": reason, "unreached": list(FLOW_STAGES), **_summary(job)})
    log.info("job skipped at stage %s: %s", stage, reason, extra={"event": "job_skipped"})


def _fail(job: _Job, stage: str, e: BaseException, seconds: float) -> NoReturn:
    """Record a stage's failure (or interruption) with its traceback and raise :class:`JobFailed`."""
    status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
    tb = traceback.format_exc()
    with job.store() as store:
        store.stage_end(job.job_id, stage, status, seconds, error=tb)
        store.job_end(job.job_id, status, error=tb, result=_summary(job))
    log.error(
        "stage %s %s: %s",
        stage,
        status,
        e,
        extra={"event": f"stage_{status}", "stage": stage, "seconds": round(seconds, 3)},
    )
    if not isinstance(e, Exception):
        raise e
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise JobFailed(
        f"job {job.job_id} failed at stage {stage}: {first} (a rerun resumes it; "
        "`workbench jobs list` shows the traceback)"
    ) from e


def _summary(job: _Job) -> dict:
    """The headline of a job: what it replayed and decided."""
    r = job.results
    plan, decide = r.get("resolve") or {}, r.get("decide") or {}
    out = {k: plan.get(k) for k in ("run_id", "traffic", "window")}
    out["baseline_version"] = (plan.get("baseline") or {}).get("version")
    out["candidate_version"] = (plan.get("candidate") or {}).get("version")
    out["rows"] = (r.get("replay") or {}).get("rows")
    out.update({k: decide.get(k) for k in ("verdict", "weight_before", "weight_after", "decision_id", "applied")})
    return out
