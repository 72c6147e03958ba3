"""Commands that bring data in and replay it: ``ingest``, ``labels``, ``replay``, ``runs``, ``demo``."""

from __future__ import annotations

import sys
from contextlib import ExitStack

from workbench import WorkbenchError
from workbench.cli.common import _table, emit, log, open_store, progress_bar, settings_for, use_mlflow
from workbench.ops.events import FlowEvents


# -- commands --------------------------------------------------------------------------------------
def cmd_ingest(args) -> None:
    from workbench.ingest.traffic import ingest

    settings = settings_for(args)
    with open_store(settings) as store, progress_bar("ingest") as prog:
        res = ingest(
            store,
            args.path,
            args.name,
            id_col=args.id_col,
            time_col=args.time_col,
            entity_col=args.entity_col,
            label_col=args.label_col,
            nullable=args.nullable,
            progress=prog,
        )
        if args.segment:
            store.declare_segments(args.name, args.segment)
    emit(
        args,
        res.to_dict(),
        lambda d: (
            f"traffic {d['traffic']}: read {d['rows_read']}, ingested {d['rows']}, "
            f"quarantined {d['quarantined']} {d['reasons'] or ''}"
        ),
    )


def cmd_labels(args) -> None:
    from workbench.ingest.traffic import ingest_labels

    settings = settings_for(args)
    with open_store(settings) as store:
        res = ingest_labels(
            store,
            args.path,
            args.traffic,
            id_col=args.id_col,
            label_col=args.label_col,
            time_col=args.time_col,
            task=args.task,
            classes=args.classes.split(",") if args.classes is not None else None,
        )
    emit(
        args,
        res.to_dict(),
        lambda d: (
            f"labels for {d['traffic']}: {d['labels']} stored, {d['unmatched']} "
            f"unmatched, {d['quarantined']} quarantined"
        ),
    )


class _ReplayEvents(FlowEvents):
    """The replay command's view of the flow: a progress bar per stage, and the run's progress file (which lets
    the app follow this replay while it holds the database's write lock)."""

    def __init__(self, pfile):
        self.pfile, self.bars, self.bar = pfile, ExitStack(), None

    def begin(self, stage: str) -> None:
        self.pfile.stage({"ingest": "ingesting", "replay": "replaying"}.get(stage, stage))
        self.bar = self.bars.enter_context(progress_bar(stage))

    def progress(self, stage: str, done: int, total: int | None) -> None:
        self.bar(done, total)
        if stage == "replay":
            self.pfile(done, total)

    def end(self, stage: str, summary: dict, seconds: float) -> None:
        self.bars.close()
        if stage == "ingest":
            log.info(
                "ingested %s rows into %s (%s quarantined)", summary["rows"], summary["traffic"], summary["quarantined"]
            )

    def skip(self, stage: str, reason: str) -> None:
        self.bars.close()


def cmd_replay(args) -> None:
    from workbench.ops.flow import Flow, TrafficSource, run_flow
    from workbench.ops.progress import ProgressFile
    from workbench.replay.models import load_predictor
    from workbench.replay.pipeline import ReplayOptions, new_run_id

    settings = settings_for(args)
    use_mlflow(settings)
    options = ReplayOptions(
        batch_size=args.batch_size,
        mode="online" if args.online else "throughput",
        online_batch=args.online_batch,
        model_timeout=args.model_timeout,
        isolate=args.isolate,
        worker_memory_mb=args.worker_memory,
        task=args.task,
        **({"writers": args.writers} if args.writers else {}),
    )
    executor = None
    if args.isolate and args.executor != "local":
        raise WorkbenchError("--isolate works with the local executor (Ray's actors are worker processes already)")
    if args.executor == "ray":
        from workbench.replay.ray_executor import RayExecutor, _ray

        _ray()  # a clear error before any work when Ray is missing
        executor = RayExecutor(address=args.ray_address, actors=args.ray_actors, device=args.device)
    run_id = args.run_id or new_run_id()
    source = None
    if args.source:
        source = TrafficSource(
            paths=args.source,
            id_col=args.id_col,
            time_col=args.time_col,
            entity_col=args.entity_col,
            nullable=tuple(args.nullable or ()),
            segments=tuple(args.segment or ()),
        )
    elif args.segment:
        raise WorkbenchError("--segment declares columns of the traffic --source ingests: add --source")
    flow = Flow(
        traffic=args.traffic,
        baseline=args.baseline,
        candidate=args.candidate,
        run_id=run_id,
        source=source,
        replay=options,
        device=args.device,
        executor=executor,
        evaluate=False,
        drift=False,
    )
    pfile = ProgressFile(
        settings.home,
        run_id,
        source="cli replay",
        traffic=args.traffic,
        baseline=args.baseline,
        candidate=args.candidate,
    )
    events = _ReplayEvents(pfile)
    try:
        pfile.stage("loading models")
        result = run_flow(settings, flow, store=lambda: open_store(settings), load=load_predictor, events=events)
    except BaseException as e:
        events.bars.close()
        pfile.finish(error=str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    pfile.finish()
    res = result.outputs["replay"]
    if res.status == "already_complete":
        log.info("run %s is already complete; nothing to do", res.run_id)
    emit(
        args,
        res.to_dict(),
        lambda d: (
            f"run {d['run_id']} ({d['status']}): {d['rows']} rows in {d['seconds']} s; "
            f"errors baseline {d['baseline_errors']}, candidate {d['candidate_errors']}"
        ),
    )


def cmd_runs(args) -> None:
    settings = settings_for(args)
    with open_store(settings) as store:
        runs = store.list_runs()
    emit(
        args,
        {"runs": runs},
        lambda d: _table(
            [(r["run_id"], r["traffic"], r["status"], r["rows_done"], r["device"]) for r in d["runs"]],
            ("run", "traffic", "status", "rows", "device"),
        ),
    )


def cmd_demo(args) -> None:
    from pipelines.demo import run_demo

    settings = settings_for(args)
    summary = run_demo(
        settings,
        data_dir=args.data_dir,
        limit=args.limit,
        app=not args.no_app,
        port=args.port,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        with_mlflow_ui=not args.no_mlflow_ui,
    )
    emit(args, summary)
