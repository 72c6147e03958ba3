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
    from .progress import ProgressFile
    from .replay import ReplayOptions, new_run_id, replay

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
    run_id = args.run_id or new_run_id()
    # the progress file lets the app follow this replay while it holds the database's write lock
    pfile = ProgressFile(settings.home, run_id, source="cli replay", traffic=args.traffic, baseline=args.baseline,
                         candidate=args.candidate)
    try:
        pfile.stage("loading models")
        baseline = load_predictor(args.baseline, args.device)
        candidate = load_predictor(args.candidate, args.device)
        with open_store(settings) as store:
            if args.source:
                from .traffic import ingest

                pfile.stage("ingesting")
                with progress_bar("ingest") as prog:
                    res = ingest(store, args.source, args.traffic, id_col=args.id_col, time_col=args.time_col,
                                 entity_col=args.entity_col, nullable=args.nullable, progress=prog)
                log.info("ingested %s rows into %s (%s quarantined)", res.rows, args.traffic, res.quarantined)
            pfile.stage("replaying")
            with progress_bar("replay") as prog:
                def both(done: int, total: int) -> None:
                    prog(done, total)
                    pfile(done, total)

                res = replay(store, args.traffic, baseline, candidate, run_id=run_id, options=options,
                             progress=both, executor=executor)
    except BaseException as e:
        pfile.finish(error=str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    pfile.finish()
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


# -- decisions, keys, canary weight, service (policy / signing / canary / registry / service) -------
def _trusted(settings: Settings) -> dict:
    from .review import trusted

    return trusted(settings)


def _signer(settings: Settings):
    from .canary import Signer

    return Signer.from_keys_dir(settings.keys_dir, settings.signer)


def _sync(settings: Settings, store, signed) -> dict:
    """Publish an applied record to MLflow, with the evaluation and drift report it was judged on."""
    from .review import publish

    return publish(settings, store, signed)


def _scorecard_text(d: dict) -> str:
    rows = [(c["gate"], c["outcome"].upper() if c["outcome"] == "fail" else c["outcome"],
             "yes" if c["critical"] else "", c["reason"]) for c in d["checks"]]
    lines = [_table(rows, ("gate", "outcome", "critical", "reason"))]
    lines += [f"skipped {s['gate']}: {s['reason']}" for s in d.get("skipped", [])]
    lines.append(f"verdict {d['verdict']} ({d['reason']}); weight {d['weight_before']}% -> {d['weight_after']}%"
                 + ("" if d.get("applied", True) else " (not applied)"))
    lines.append(f"decision {d['decision_id']} signed by {d['record']['signer']}")
    if d.get("pending_sync"):
        lines.append(f"not yet in MLflow ({d['sync_error']}); stored locally with pending_sync")
    return "\n".join(lines)


def cmd_decide(args) -> None:
    from .policy import load_policy
    from .review import decide

    settings = settings_for(args)
    policy = load_policy(args.policy)
    signer = _signer(settings)
    with open_store(settings) as store:
        out = decide(settings, store, args.run_id, policy, signer, apply=args.apply)
    emit(args, out, _scorecard_text)


def cmd_keys_init(args) -> None:
    from .signing import init_keys

    info = init_keys(settings_for(args).keys_dir)
    emit(args, info.to_dict(), lambda d: f"key pair created: {d['fingerprint']}\n  private {d['private_key_path']} "
                                        f"(mode 0600)\n  public  {d['public_key_path']}")


def cmd_keys_export(args) -> None:
    from .signing import key_fingerprint, own_public_key, public_pem

    key = own_public_key(settings_for(args).keys_dir)
    if args.json:
        emit(args, {"fingerprint": key_fingerprint(key), "public_key_pem": public_pem(key)})
    else:
        sys.stdout.write(public_pem(key))


def cmd_decision_verify(args) -> None:
    from .canary import load_signed, verify_decision

    settings = settings_for(args)
    with open_store(settings) as store:
        res = verify_decision(store, load_signed(store, args.path_or_id), _trusted(settings))
    emit(args, res.to_dict(), lambda d: f"decision {d['decision_id']} ({d['model']}, {d['verdict']}): signature valid "
                                        f"({d['key_fingerprint']}, {d['signer']}), chain valid; {d['note']}")


def _status_text(d: dict) -> str:
    return (f"{d['model']}: candidate v{d['candidate_version']} at {d['weight']}% against baseline "
            f"v{d['baseline_version']} (decision {d['decision_id']}, "
            + ("verified)" if d["verified"] else f"NOT verified: {d.get('problem')})"))


def cmd_canary_status(args) -> None:
    from .canary import status

    settings = settings_for(args)
    with open_store(settings) as store:
        emit(args, status(store, args.model, _trusted(settings)).to_dict(), _status_text)


def _apply_and_sync(settings: Settings, store, signed) -> dict:
    from .canary import apply_decision

    out = apply_decision(store, signed, _trusted(settings)).to_dict()
    out.update(_sync(settings, store, signed), verdict=signed.record["verdict"], signature=signed.signature)
    return out


def cmd_canary_kill(args) -> None:
    from .canary import build_kill
    from .policy import load_policy

    settings = settings_for(args)
    signer = _signer(settings)
    with open_store(settings) as store:
        out = _apply_and_sync(settings, store, build_kill(store, args.model, args.reason, signer, load_policy()))
    emit(args, out, _status_text)


def cmd_canary_apply(args) -> None:
    from .canary import load_signed

    settings = settings_for(args)
    with open_store(settings) as store:
        out = _apply_and_sync(settings, store, load_signed(store, args.path_or_id))
    emit(args, out, _status_text)


def cmd_serve(args) -> None:
    import uvicorn

    from .service import create_app

    settings = settings_for(args)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


def cmd_webhook_register(args) -> None:
    from .registry import WEBHOOK_EVENTS, Registry

    settings = settings_for(args)
    if not settings.webhook_secret:
        raise WorkbenchError("set WORKBENCH_WEBHOOK_SECRET: MLflow signs deliveries with it, the service checks them")
    webhook_id = Registry(settings.mlflow_tracking_uri).ensure_webhook(args.url, settings.webhook_secret)
    emit(args, {"webhook_id": webhook_id, "url": args.url, "events": list(WEBHOOK_EVENTS)},
         lambda d: f"webhook {d['webhook_id']} -> {d['url']} ({', '.join(d['events'])})")


def add_decision_commands(sub, common) -> None:
    """Parser entries of the decision, key, canary and service commands."""
    s = sub.add_parser("decide", parents=[common], help="judge a replay run under a policy; sign and apply")
    s.add_argument("run_id")
    s.add_argument("--policy", default=None, help="policy file (.toml/.yaml/.json); default: the shipped policy")
    s.add_argument("--apply", action=argparse.BooleanOptionalAction, default=True,
                   help="move the canary weight and publish to MLflow (default); --no-apply only signs and stores")
    s.set_defaults(fn=cmd_decide)

    keys = sub.add_parser("keys", help="the Ed25519 signing key pair").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    s = keys.add_parser("init", parents=[common], help="create the key pair (private key mode 0600)")
    s.set_defaults(fn=cmd_keys_init)
    s = keys.add_parser("export", parents=[common], help="print the PEM public key")
    s.set_defaults(fn=cmd_keys_export)

    dec = sub.add_parser("decision", help="signed decision records").add_subparsers(
        dest="decision_command", required=True, metavar="ACTION")
    s = dec.add_parser("verify", parents=[common], help="check a record's signature and chain")
    s.add_argument("path_or_id", metavar="PATH_OR_ID", help="the JSON `decide --json` printed, or a decision id")
    s.set_defaults(fn=cmd_decision_verify)

    can = sub.add_parser("canary", help="the canary weight of a registered model").add_subparsers(
        dest="canary_command", required=True, metavar="ACTION")
    s = can.add_parser("status", parents=[common], help="weight, versions and whether the chain verifies")
    s.add_argument("model")
    s.set_defaults(fn=cmd_canary_status)
    s = can.add_parser("kill", parents=[common], help="set the weight to 0 at once (a signed record)")
    s.add_argument("model")
    s.add_argument("--reason", required=True)
    s.set_defaults(fn=cmd_canary_kill)
    s = can.add_parser("apply", parents=[common], help="apply a signed decision made with --no-apply")
    s.add_argument("path_or_id", metavar="PATH_OR_ID")
    s.set_defaults(fn=cmd_canary_apply)

    s = sub.add_parser("serve", parents=[common], help="the HTTP service (MLflow webhooks, health)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(fn=cmd_serve)

    hook = sub.add_parser("webhook", help="MLflow webhooks").add_subparsers(
        dest="webhook_command", required=True, metavar="ACTION")
    s = hook.add_parser("register", parents=[common], help="make MLflow send new versions and aliases to URL")
    s.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/webhooks/mlflow")
    s.set_defaults(fn=cmd_webhook_register)
# -- drift (issue 5) -------------------------------------------------------------------------------
def _overrides(items: list[str], cast: Callable[[str], Any], what: str) -> dict:
    """``[COL=]VALUE`` options as {column or "*": value}."""
    out = {}
    for item in items:
        col, sep, value = item.rpartition("=")
        try:
            out[col if sep else "*"] = cast(value)
        except ValueError:
            raise WorkbenchError(f"invalid {what} {item!r}: use [COLUMN=]VALUE") from None
    return out


def cmd_drift(args) -> None:
    from .drift import drift_run

    settings = settings_for(args)
    if args.reference and ".." not in args.reference:
        use_mlflow(settings)  # the reference may need MLflow: its artifact, the models that score it
    with open_store(settings) as store:
        res = drift_run(store, args.run_id, args.reference, current=args.current,
                        tests=_overrides(args.test, str, "--test"),
                        thresholds=_overrides(args.threshold, float, "--threshold"), drift_share=args.drift_share,
                        as_of=args.as_of, html=args.html).to_dict()

    def human(d: dict) -> str:
        rows = [(c, f["kind"], f["test"], f["statistic"], f["threshold"], "DRIFT" if f["drifted"] else "", f["method"])
                for c, f in d["features"].items()]
        cd, cal = d["concept_drift"], d["calibration_drift"]
        lines = [f"run {d['run_id']}: reference {d['reference']['description']} ({d['reference']['rows']} rows), "
                 f"current {d['current']['rows']} rows",
                 _table(rows, ("feature", "kind", "test", "statistic", "threshold", "drift", "method")),
                 f"drifted share {d['share_drifted']:.2f} -> dataset drift: {d['dataset_drift']}",
                 f"concept drift (baseline errors, Page-Hinkley): {cd['detected']}"
                 + (f", change point {cd['change_point']}" if cd["detected"] else ""),
                 f"calibration drift (baseline): {cal['detected']}"]
        if d.get("html"):
            lines.append(f"Evidently report: {d['html']}")
        return "\n".join(lines)

    emit(args, res, human)


# -- the app and its approvers (issue 8) -----------------------------------------------------------
def _read_password(args) -> str | None:
    if args.no_password:
        return None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise WorkbenchError("the passwords differ")
    else:
        raise WorkbenchError("no terminal to ask for the password: pipe it with --password-stdin, or use "
                             "--no-password with --email for an OIDC-only approver")
    if not password:
        raise WorkbenchError("the password must not be empty")
    return password


def cmd_approver_add(args) -> None:
    from .access import add_approver, approvers_path

    settings = settings_for(args)
    approver = add_approver(approvers_path(settings.home), args.name, password=_read_password(args), email=args.email)
    emit(args, approver.to_dict() | {"file": str(approvers_path(settings.home))},
         lambda d: f"approver {d['name']} saved in {d['file']}" + (f" (e-mail {d['email']})" if d["email"] else ""))


def cmd_approver_list(args) -> None:
    from .access import approvers_path, load_approvers

    approvers = load_approvers(approvers_path(settings_for(args).home))
    emit(args, {"approvers": [a.to_dict() for a in approvers.values()]},
         lambda d: _table([(a["name"], a["email"] or "", "yes" if a["password"] else "no") for a in d["approvers"]],
                          ("name", "email", "password")))


def cmd_approver_remove(args) -> None:
    from .access import approvers_path, remove_approver

    remove_approver(approvers_path(settings_for(args).home), args.name)
    emit(args, {"removed": args.name}, lambda d: f"approver {d['removed']} removed")


def cmd_app(args) -> None:
    from pipelines.demo import serve_app

    serve_app(settings_for(args), args.port, lambda m: print(m, file=sys.stderr, flush=True))


def add_app_commands(sub, common) -> None:
    """Parser entries of the app and approver commands."""
    s = sub.add_parser("app", parents=[common], help="serve the Streamlit workbench on 127.0.0.1")
    s.add_argument("--port", type=int, default=8501)
    s.set_defaults(fn=cmd_app)
    appr = sub.add_parser("approver", help="who may sign decisions in the app").add_subparsers(
        dest="approver_command", required=True, metavar="ACTION")
    s = appr.add_parser("add", parents=[common], help="add (or replace) an approver")
    s.add_argument("name")
    s.add_argument("--email", default=None, help="the approver's OIDC e-mail (when the app uses st.login)")
    s.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    s.add_argument("--no-password", action="store_true", help="no local password (OIDC sign-in only)")
    s.set_defaults(fn=cmd_approver_add)
    s = appr.add_parser("list", parents=[common], help="list approvers (never their hashes)")
    s.set_defaults(fn=cmd_approver_list)
    s = appr.add_parser("remove", parents=[common], help="remove an approver")
    s.add_argument("name")
    s.set_defaults(fn=cmd_approver_remove)


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

    # drift (issue 5)
    s = sub.add_parser("drift", parents=[common], help="data, prediction and concept drift of a run")
    s.add_argument("run_id")
    s.add_argument("--reference", default=None, metavar="SPEC",
                   help="a traffic name, a time window START..END of the run, or 'training' (the sample logged "
                        "with the baseline model); default: the earliest 20%% of the run's traffic by event time")
    s.add_argument("--current", default=None, metavar="START..END", help="only this time window of the run")
    s.add_argument("--test", action="append", default=[], metavar="[COL=]NAME",
                   help="drift test for a column, or for all (repeatable; 'score=' for prediction drift)")
    s.add_argument("--threshold", action="append", default=[], metavar="[COL=]X",
                   help="threshold for a column, or for all (repeatable)")
    s.add_argument("--drift-share", type=float, default=0.5, help="dataset drift when this share of features drift")
    s.add_argument("--as-of", default=None, metavar="TIME", help="labels arriving after TIME count as not yet known")
    s.add_argument("--html", default=None, metavar="PATH", help="also write Evidently's HTML report there")
    s.set_defaults(fn=cmd_drift)

    s = sub.add_parser("runs", parents=[common], help="list replay runs")
    s.set_defaults(fn=cmd_runs)

    s = sub.add_parser("demo", parents=[common], help="the full demo on NYC flights 2013")
    s.add_argument("--no-app", action="store_true", help="do not start the Streamlit app at the end")
    s.add_argument("--data-dir", default="data")
    s.add_argument("--limit", type=int, default=None, help="use a sample of this many flights")
    s.add_argument("--port", type=int, default=8501)
    s.set_defaults(fn=cmd_demo)

    add_decision_commands(sub, common)
    add_app_commands(sub, common)
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
