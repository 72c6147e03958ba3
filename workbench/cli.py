"""The ``workbench`` command: parses arguments, calls the library, prints.

With ``--json`` every command prints exactly one JSON object on stdout; logs and progress go to stderr.
Errors print one line (``error: ...``) and exit non-zero, without a traceback (``WORKBENCH_DEBUG=1``
shows it).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Callable

from . import WorkbenchError
from .config import Settings, configure_runtime, load_settings

log = logging.getLogger("workbench")


# -- output helpers --------------------------------------------------------------------------------
def emit(args, obj: dict, human: Callable[[dict], str] | None = None) -> None:
    if args.json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
    else:
        sys.stdout.write((human(obj) if human else json.dumps(obj, indent=2, default=str)) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(desc: str, unit: str = "rows"):
    """A tqdm bar on stderr, yielding a ``progress(done, total)`` callback."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def update(done: int, total: int | None = None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def settings_for(args) -> Settings:
    return load_settings(getattr(args, "home", None)).ensure()


def open_store(settings: Settings, read_only: bool = False):
    from .store import Store

    return Store(settings.db_path, read_only=read_only)


def use_mlflow(settings: Settings) -> None:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)


def _table(rows: list[tuple], header: tuple) -> str:
    cells = [tuple("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r)
             for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- commands --------------------------------------------------------------------------------------
def cmd_ingest(args) -> None:
    from .traffic import ingest

    settings = settings_for(args)
    with open_store(settings) as store:
        res = ingest(store, args.path, args.name, id_col=args.id_col, time_col=args.time_col,
                     entity_col=args.entity_col, label_col=args.label_col, nullable=args.nullable)
    emit(args, res.to_dict(), lambda d: f"traffic {d['traffic']}: read {d['rows_read']}, ingested {d['rows']}, "
                                        f"quarantined {d['quarantined']} {d['reasons'] or ''}")


def cmd_labels(args) -> None:
    from .traffic import ingest_labels

    settings = settings_for(args)
    with open_store(settings) as store:
        res = ingest_labels(store, args.path, args.traffic, id_col=args.id_col, label_col=args.label_col,
                            time_col=args.time_col)
    emit(args, res.to_dict(), lambda d: f"labels for {d['traffic']}: {d['labels']} stored, {d['unmatched']} "
                                        f"unmatched, {d['quarantined']} quarantined")


def cmd_replay(args) -> None:
    from .models import load_predictor
    from .replay import ReplayOptions, replay

    settings = settings_for(args)
    use_mlflow(settings)
    options = ReplayOptions(batch_size=args.batch_size, mode="online" if args.online else "throughput",
                            online_batch=args.online_batch, model_timeout=args.model_timeout,
                            **({"writers": args.writers} if args.writers else {}))
    executor = None
    if args.executor == "ray":
        from .replay_ray import RayExecutor, _ray

        _ray()   # a clear error before any work when Ray is missing
        executor = RayExecutor(address=args.ray_address, actors=args.ray_actors, device=args.device)
    baseline = load_predictor(args.baseline, args.device)
    candidate = load_predictor(args.candidate, args.device)
    with open_store(settings) as store:
        if args.source:
            from .traffic import ingest

            with progress_bar("ingest") as prog:
                res = ingest(store, args.source, args.traffic, id_col=args.id_col, time_col=args.time_col,
                             entity_col=args.entity_col, nullable=args.nullable, progress=prog)
            log.info("ingested %s rows into %s (%s quarantined)", res.rows, args.traffic, res.quarantined)
        with progress_bar("replay") as prog:
            res = replay(store, args.traffic, baseline, candidate, run_id=args.run_id, options=options,
                         progress=prog, executor=executor)
    if res.status == "already_complete":
        log.info("run %s is already complete; nothing to do", res.run_id)
    emit(args, res.to_dict(), lambda d: f"run {d['run_id']} ({d['status']}): {d['rows']} rows in {d['seconds']} s; "
                                        f"errors baseline {d['baseline_errors']}, candidate {d['candidate_errors']}")


def cmd_evaluate(args) -> None:
    from .evaluation import evaluate_run

    settings = settings_for(args)
    with open_store(settings) as store:
        res = evaluate_run(store, args.run_id).to_dict()

    def human(d: dict) -> str:
        rows = [(m, d["baseline"][m], d["candidate"][m]) for m in d["baseline"]]
        return (f"run {d['run_id']}: {d['labeled_rows']} labelled rows "
                f"(coverage {d['label_coverage']:.1%})\n" + _table(rows, ("metric", "baseline", "candidate")))

    emit(args, res, human)


def cmd_runs(args) -> None:
    settings = settings_for(args)
    with open_store(settings) as store:
        runs = store.list_runs()
    emit(args, {"runs": runs}, lambda d: _table([(r["run_id"], r["traffic"], r["status"], r["rows_done"],
                                                  r["device"]) for r in d["runs"]],
                                                ("run", "traffic", "status", "rows", "device")))


def cmd_demo(args) -> None:
    from pipelines.demo import run_demo

    settings = settings_for(args)
    summary = run_demo(settings, data_dir=args.data_dir, limit=args.limit, app=not args.no_app,
                       port=args.port, log=lambda m: print(m, file=sys.stderr, flush=True))
    emit(args, summary)


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    common.add_argument("--home", default=None, help="workbench home (default: $WORKBENCH_HOME or ./.workbench)")
    p = argparse.ArgumentParser(prog="workbench", description="Shadow replay, paired evaluation and signed "
                                                              "canary decisions for ML models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("ingest", parents=[common], help="ingest a traffic log (Parquet, CSV, JSON lines)")
    s.add_argument("path")
    s.add_argument("--name", required=True, help="traffic set name")
    s.add_argument("--id-col", default="request_id")
    s.add_argument("--time-col", default="event_time")
    s.add_argument("--entity-col", default=None, help="entity key for sticky routing (may be null)")
    s.add_argument("--label-col", default=None, help="a label column in the traffic file, stored as labels")
    s.add_argument("--nullable", action="append", default=[], metavar="COL",
                   help="let a feature column hold nulls (repeatable)")
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("labels", parents=[common], help="ingest labels that arrived for a traffic set")
    s.add_argument("path")
    s.add_argument("--traffic", required=True)
    s.add_argument("--id-col", default="request_id")
    s.add_argument("--label-col", default="label")
    s.add_argument("--time-col", default="label_time")
    s.set_defaults(fn=cmd_labels)

    s = sub.add_parser("replay", parents=[common], help="shadow-replay traffic through baseline and candidate")
    s.add_argument("--baseline", required=True, help="model URI, e.g. models:/flight-delay@champion")
    s.add_argument("--candidate", required=True, help="model URI, e.g. models:/flight-delay@challenger")
    s.add_argument("--traffic", required=True)
    s.add_argument("--run-id", default=None)
    s.add_argument("--batch-size", type=int, default=8192)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--online", action="store_true",
                   help="time requests one at a time (or in --online-batch micro-batches), as a server would")
    s.add_argument("--online-batch", type=int, default=1, metavar="N")
    s.add_argument("--model-timeout", type=float, default=None, metavar="S",
                   help="a model call running past S seconds marks its rows as timeout errors")
    s.add_argument("--writers", type=int, default=None,
                   help="threads committing results to DuckDB (default: a quarter of the cores, at most 4)")
    s.add_argument("--executor", default="local", choices=["local", "ray"])
    s.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    s.add_argument("--ray-actors", type=int, default=None, help="model-pair actors (default: one per GPU or CPU)")
    s.add_argument("--source", default=None, metavar="GLOB",
                   help="Parquet/CSV/JSONL files to ingest (streamed, under the traffic contract) into "
                        "--traffic before replaying")
    s.add_argument("--id-col", default="request_id")
    s.add_argument("--time-col", default="event_time")
    s.add_argument("--entity-col", default=None)
    s.add_argument("--nullable", action="append", default=[], metavar="COL")
    s.set_defaults(fn=cmd_replay)

    s = sub.add_parser("evaluate", parents=[common], help="metrics of both models on a run's labelled rows")
    s.add_argument("run_id")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("runs", parents=[common], help="list replay runs")
    s.set_defaults(fn=cmd_runs)

    s = sub.add_parser("demo", parents=[common], help="the full demo on NYC flights 2013")
    s.add_argument("--no-app", action="store_true", help="do not start the Streamlit app at the end")
    s.add_argument("--data-dir", default="data")
    s.add_argument("--limit", type=int, default=None, help="use a sample of this many flights")
    s.add_argument("--port", type=int, default=8501)
    s.set_defaults(fn=cmd_demo)
    return p


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in ("mlflow", "alembic", "urllib3", "streamlit"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    configure_runtime()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        args.fn(args)
        return 0
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # last line of defence: one line for the user, the traceback on request
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"error: internal error {type(e).__name__}: {first} (set WORKBENCH_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
