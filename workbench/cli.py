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
from .config import Settings, load_settings

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
    baseline = load_predictor(args.baseline, args.device)
    candidate = load_predictor(args.candidate, args.device)
    with open_store(settings) as store, progress_bar("replay") as prog:
        res = replay(store, args.traffic, baseline, candidate, run_id=args.run_id,
                     options=ReplayOptions(batch_size=args.batch_size), progress=prog)
    if res.status == "already_complete":
        log.info("run %s is already complete; nothing to do", res.run_id)
    emit(args, res.to_dict(), lambda d: f"run {d['run_id']} ({d['status']}): {d['rows']} rows in {d['seconds']} s; "
                                        f"errors baseline {d['baseline_errors']}, candidate {d['candidate_errors']}")


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


# -- evaluation (issue 4): metrics with intervals, paired deltas, latency, slices -------------------
def cmd_evaluate(args) -> None:
    from .evaluation import evaluate_run

    settings = settings_for(args)
    with open_store(settings) as store:
        res = evaluate_run(store, args.run_id, segment=args.segment, window=args.window,
                           confidence=args.confidence, seed=args.seed, top_k=args.top_k).to_dict()
    emit(args, res, _evaluation_text)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _ci(e: dict) -> str:
    return "-" if e["ci_low"] is None else f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]"


def _evaluation_text(d: dict) -> str:
    lines = [f"run {d['run_id']}: {d['labeled_rows']} labelled rows (coverage {d['label_coverage']:.1%}), "
             f"rows scored baseline {d['rows']['baseline']}, candidate {d['rows']['candidate']}, "
             f"both {d['rows']['paired']}; {d['confidence']:.0%} intervals",
             _table([(m, _f(d["baseline"][m]["value"]), _ci(d["baseline"][m]), _f(d["candidate"][m]["value"]),
                      _ci(d["candidate"][m]), _f(dl["value"]), _ci(dl), _f(dl["p_value"]), _f(dl["mde"]))
                     for m, dl in d["delta"].items()],
                    ("metric", "baseline", "ci", "candidate", "ci", "delta", "ci", "p", "mde")),
             "", _table([(k, _f(d["latency"]["baseline"][k]), _f(d["latency"]["candidate"][k]),
                          _f(v["value"]), _ci(v)) for k, v in d["latency"]["delta"].items()],
                        ("latency ms", "baseline", "candidate", "delta", "ci")),
             f"Mann-Whitney p = {_f(d['latency']['mann_whitney_p'])}; errors: " + ", ".join(
                 f"{r} {e['count']}/{e['rows']}" for r, e in d["errors"].items())]
    for kind in ("segments", "windows"):
        for col, slices in d.get(kind, {}).items():
            lines += ["", _table([(v, s["rows"], "yes" if s["small"] else "", _f(s["delta"]["accuracy"]["value"]),
                                   _f(s["delta"]["accuracy"]["p_value"]), _f(s["delta"]["roc_auc"]["value"]),
                                   _f(s["delta"]["roc_auc"]["p_value"])) for v, s in slices.items()],
                                 (col, "rows", "small", "d accuracy", "p", "d roc_auc", "p"))]
    if d["undefined"]:
        lines += ["", "undefined: " + "; ".join(f"{k}: {v}" for k, v in d["undefined"].items())]
    return "\n".join(lines)


def add_evaluate_parser(sub, common) -> None:
    s = sub.add_parser("evaluate", parents=[common],
                       help="metrics with intervals, paired deltas, latency and slices of a run's labelled rows")
    s.add_argument("run_id")
    s.add_argument("--segment", default=None, metavar="COL",
                   help="also evaluate per value of this traffic column (top --top-k by volume plus 'other')")
    s.add_argument("--window", default=None, choices=["hour", "day", "week"],
                   help="also evaluate per time window of the event time")
    s.add_argument("--confidence", type=float, default=0.95, help="confidence level of every interval")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    s.add_argument("--top-k", type=int, default=10, help="segment values to keep before 'other'")
    s.set_defaults(fn=cmd_evaluate)


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
    s.set_defaults(fn=cmd_replay)

    add_evaluate_parser(sub, common)

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
