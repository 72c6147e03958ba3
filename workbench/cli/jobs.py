"""``workbench jobs ...``: run a job spec, the scheduler, the job history, spec validation."""

from __future__ import annotations

import argparse

from workbench.cli.common import _table, emit, open_store, settings_for


# -- scheduled jobs ----------------------------------------------------------------------
def _job_logs(args) -> None:
    if args.log_format == "json":
        from workbench.ops.observability import use_json_logs

        use_json_logs()


def _job_text(d: dict) -> str:
    lines = [
        f"job {d['job_id']} ({d['spec']}): {d['status']}" + (" (already complete)" if d["already_complete"] else "")
    ]
    for name, st in d["stages"].items():
        secs = "" if st["seconds"] is None else f"{st['seconds']:.2f} s"
        lines.append(f"  {name:<9} {st['status']:<11} attempts {st['attempts']}  {secs}")
    if d.get("verdict"):
        lines.append(
            f"run {d['run_id']}: {d['rows']} rows, v{d['baseline_version']} vs v{d['candidate_version']}; "
            f"verdict {d['verdict']}, weight {d['weight_before']}% -> {d['weight_after']}% "
            f"({'applied' if d['applied'] else 'recorded'})"
        )
    elif d.get("reason"):
        lines.append(f"skipped: {d['reason']}")
    return "\n".join(lines)


def cmd_jobs_run(args) -> None:
    from workbench.clock import parse_time
    from workbench.ops.jobs import check_complete, run_job
    from workbench.ops.jobspec import load_spec

    _job_logs(args)
    res = run_job(
        settings_for(args),
        load_spec(args.spec),
        job_id=args.job_id,
        new=args.new,
        as_of=parse_time(args.as_of) if args.as_of else None,
    )
    emit(args, res.to_dict(), _job_text)
    check_complete(res)  # a skipped job printed its result; it exits 3, not 0


def cmd_jobs_scheduler(args) -> None:
    import signal
    import threading

    from workbench.ops.jobspec import load_specs
    from workbench.ops.scheduler import Scheduler

    _job_logs(args)
    scheduler = Scheduler(settings_for(args), load_specs(args.specs))
    if args.once:
        outcomes = scheduler.recover() + scheduler.tick()
        emit(
            args,
            {"jobs": outcomes},
            lambda d: "\n".join(f"{o['job_id']} ({o['spec']}): {o['status']}" for o in d["jobs"]) or "nothing to do",
        )
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())  # the running job finishes (or resumes after a restart)
    counts = scheduler.run_forever(stop, poll_s=args.poll)
    emit(args, {"jobs": counts})


def cmd_jobs_list(args) -> None:
    from workbench.ops.jobs import job_history

    settings = settings_for(args)
    if not settings.db_path.exists():
        jobs = []
    else:
        with open_store(settings) as store:
            jobs = job_history(store, args.spec, args.status, args.limit)

    def why(j: dict) -> str:  # the last line of a traceback is the error itself
        lines = (j["error"] or (j["result"] or {}).get("reason") or "").strip().splitlines()
        return lines[-1][:100] if lines else ""

    def human(d: dict) -> str:
        rows = [
            (
                j["job_id"],
                j["spec"] or "-",
                j["triggered_by"] or "-",
                j["status"],
                j["stage"] or "-",
                j["started_at"] or "-",
                j["seconds"],
                why(j),
            )
            for j in d["jobs"]
        ]
        return _table(rows, ("job", "spec", "trigger", "status", "stage", "started", "seconds", "error / reason"))

    emit(args, {"jobs": jobs}, human)


def cmd_jobs_validate(args) -> None:
    from workbench.clock import iso, utc_now
    from workbench.ops.jobspec import load_specs, next_fire

    now = utc_now()
    specs = [
        {
            "name": s.name,
            "path": str(s.path),
            "model": s.spec.model,
            "schedule": s.spec.schedule,
            "next_fire": iso(next_fire(s.spec.schedule, now)) if s.spec.schedule else None,
            "spec": s.spec.model_dump(mode="json"),
        }
        for s in load_specs(args.specs)
    ]
    emit(
        args,
        {"specs": specs},
        lambda d: "\n".join(
            f"{s['name']} ({s['path']}): model {s['model']}, schedule "
            f"{s['schedule'] or 'none'}, next {s['next_fire'] or '-'}"
            for s in d["specs"]
        ),
    )


def add_job_commands(sub, common) -> None:
    """Parser entries of `workbench jobs ...`."""
    logs = argparse.ArgumentParser(add_help=False, parents=[common])
    logs.add_argument(
        "--log-format",
        choices=["json", "text"],
        default="json",
        help="stderr logs as JSON lines with job and run ids (default) or text",
    )
    jobs = sub.add_parser("jobs", help="scheduled replay jobs: run a spec, the scheduler, the history").add_subparsers(
        dest="jobs_command", required=True, metavar="ACTION"
    )
    s = jobs.add_parser(
        "run", parents=[logs], help="run (or resume) one job of a spec: ingest, replay, evaluate, drift, decide"
    )
    s.add_argument("spec", metavar="SPEC", help="job spec file (.toml, .yaml)")
    s.add_argument("--job-id", default=None, help="resume (or create) this job id")
    s.add_argument(
        "--as-of",
        default=None,
        metavar="TIME",
        help="the job's time (ISO-8601 UTC): its schedule slot and the end of a 'now' window",
    )
    s.add_argument("--new", action="store_true", help="start a new job now instead of resuming the pending one")
    s.set_defaults(fn=cmd_jobs_run)
    s = jobs.add_parser(
        "scheduler", parents=[logs], help="run specs on their schedules and registry events, until stopped"
    )
    s.add_argument("specs", nargs="+", metavar="PATH", help="job spec files or folders of them")
    s.add_argument("--poll", type=float, default=30.0, metavar="S", help="check the webhook queue every S seconds")
    s.add_argument("--once", action="store_true", help="one pass (resume, due specs, queued events), then exit")
    s.set_defaults(fn=cmd_jobs_scheduler)
    s = jobs.add_parser("list", parents=[common], help="the job history (start, end, stage, outcome, error)")
    s.add_argument("--spec", default=None)
    s.add_argument(
        "--status", default=None, choices=["queued", "running", "finished", "failed", "skipped", "interrupted"]
    )
    s.add_argument("--limit", type=int, default=100)
    s.set_defaults(fn=cmd_jobs_list)
    s = jobs.add_parser("validate", parents=[common], help="check job specs and show their next fire times")
    s.add_argument("specs", nargs="+", metavar="PATH")
    s.set_defaults(fn=cmd_jobs_validate)
