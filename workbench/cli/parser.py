"""The ``workbench`` argument parser and entry point: parses, dispatches, turns errors into one line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from workbench import WorkbenchError
from workbench.cli.app import NO_MLFLOW_UI_HELP, add_app_commands
from workbench.cli.data import cmd_demo, cmd_ingest, cmd_labels, cmd_replay, cmd_runs
from workbench.cli.decide import add_decision_commands
from workbench.cli.evaluate import add_drift_parser, add_evaluate_parser
from workbench.cli.jobs import add_job_commands
from workbench.cli.live import add_live_commands
from workbench.cli.storage import add_storage_commands
from workbench.config import configure_runtime


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    common.add_argument("--home", default=None, help="workbench home (default: $WORKBENCH_HOME or ./.workbench)")
    p = argparse.ArgumentParser(
        prog="workbench", description="Shadow replay, paired evaluation and signed canary decisions for ML models."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("ingest", parents=[common], help="ingest a traffic log (Parquet, CSV, JSON lines)")
    s.add_argument("path")
    s.add_argument("--name", required=True, help="traffic set name")
    s.add_argument("--id-col", default="request_id")
    s.add_argument("--time-col", default="event_time")
    s.add_argument("--entity-col", default=None, help="entity key for sticky routing (may be null)")
    s.add_argument("--label-col", default=None, help="a label column in the traffic file, stored as labels")
    s.add_argument(
        "--nullable",
        action="append",
        default=[],
        metavar="COL",
        help="let a feature column hold nulls (repeatable; a pattern such as 'live_*' names several)",
    )
    s.add_argument(
        "--segment",
        action="append",
        default=[],
        metavar="COL",
        help="declare a column a segment (repeatable): decisions gate the candidate on each of its values",
    )
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("labels", parents=[common], help="ingest labels that arrived for a traffic set")
    s.add_argument("path")
    s.add_argument("--traffic", required=True)
    s.add_argument("--id-col", default="request_id")
    s.add_argument("--label-col", default="label")
    s.add_argument("--time-col", default="label_time")
    s.add_argument(
        "--task",
        default="binary",
        choices=["binary", "regression", "multiclass"],
        help="what the label column holds: 0/1 classes (binary), numbers, the targets of regression runs, or "
        "class names or numbers, the targets of multi-class runs",
    )
    s.add_argument(
        "--classes",
        default=None,
        metavar="A,B,...",
        help="multi-class labels: the classes a label may name (comma-separated); others are quarantined",
    )
    s.set_defaults(fn=cmd_labels)

    s = sub.add_parser("replay", parents=[common], help="shadow-replay traffic through baseline and candidate")
    s.add_argument("--baseline", required=True, help="model URI, e.g. models:/flight-delay@champion")
    s.add_argument("--candidate", required=True, help="model URI, e.g. models:/flight-delay@challenger")
    s.add_argument("--traffic", required=True)
    s.add_argument("--run-id", default=None)
    s.add_argument("--batch-size", type=int, default=8192)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument(
        "--online",
        action="store_true",
        help="time requests one at a time (or in --online-batch micro-batches), as a server would",
    )
    s.add_argument("--online-batch", type=int, default=1, metavar="N")
    s.add_argument(
        "--task",
        default=None,
        choices=["binary", "regression", "multiclass"],
        help="what both models predict (default: inferred from each model: its metadata's task, else its API)",
    )
    s.add_argument(
        "--model-timeout",
        type=float,
        default=None,
        metavar="S",
        help="a model call running past S seconds marks its rows as timeout errors",
    )
    s.add_argument(
        "--isolate",
        action="store_true",
        help="score each model in worker processes: a model that crashes its process, hangs or leaks "
        "memory fails only its own rows (the worker is replaced)",
    )
    s.add_argument(
        "--worker-memory",
        type=float,
        default=4096.0,
        metavar="MB",
        help="with --isolate: replace a worker whose resident memory passes MB (default 4096)",
    )
    s.add_argument(
        "--writers",
        type=int,
        default=None,
        help="threads committing results to DuckDB (default: half the cores, at most 8)",
    )
    s.add_argument("--executor", default="local", choices=["local", "ray"])
    s.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    s.add_argument("--ray-actors", type=int, default=None, help="model-pair actors (default: one per GPU or CPU)")
    s.add_argument(
        "--source",
        default=None,
        metavar="GLOB",
        help="Parquet/CSV/JSONL files to ingest (streamed, under the traffic contract) into --traffic before replaying",
    )
    s.add_argument("--id-col", default="request_id")
    s.add_argument("--time-col", default="event_time")
    s.add_argument("--entity-col", default=None)
    s.add_argument("--nullable", action="append", default=[], metavar="COL")
    s.add_argument(
        "--segment", action="append", default=[], metavar="COL", help="declare a segment column (with --source)"
    )
    s.set_defaults(fn=cmd_replay)

    add_evaluate_parser(sub, common)
    add_drift_parser(sub, common)

    s = sub.add_parser("runs", parents=[common], help="list replay runs")
    s.set_defaults(fn=cmd_runs)

    s = sub.add_parser("demo", parents=[common], help="the full demo on NYC flights 2013")
    s.add_argument("--no-app", action="store_true", help="do not start the Streamlit app at the end")
    s.add_argument("--data-dir", default="data")
    s.add_argument("--limit", type=int, default=None, help="use a sample of this many flights")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--no-mlflow-ui", action="store_true", help=NO_MLFLOW_UI_HELP)
    s.set_defaults(fn=cmd_demo)

    canary = add_decision_commands(sub, common)
    add_live_commands(sub, common, canary)
    add_job_commands(sub, common)
    add_app_commands(sub, common)
    add_storage_commands(sub, common)
    return p


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in ("mlflow", "alembic", "urllib3", "streamlit", "httpx", "httpcore"):
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
        print("error: " + " ".join(str(e).split("\n")), file=sys.stderr)  # one line, whatever the message
        return int(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # last line of defence: one line for the user, the traceback on request
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        from workbench.store.lake import storage_problem

        if (problem := storage_problem(e)) is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        first = str(e).splitlines()[0] if str(e) else ""
        print(
            f"error: internal error {type(e).__name__}: {first} (set WORKBENCH_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
