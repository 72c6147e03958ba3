"""The ``workbench`` command: parses arguments, calls the library, prints.

With ``--json`` every command prints exactly one JSON object on stdout; logs and progress go to stderr.
Errors print one line (``error: ...``) and exit non-zero, without a traceback (``WORKBENCH_DEBUG=1``
shows it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from typing import Any

from workbench import WorkbenchError
from workbench.config import Settings, configure_runtime, load_settings
from workbench.ops.events import FlowEvents

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
    """A tqdm bar on stderr, yielding a ``progress(done, total)`` callback; the bar appears at the first call,
    so a command that fails before any work prints its one-line error alone."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int | None = None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=desc, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def settings_for(args) -> Settings:
    return load_settings(getattr(args, "home", None)).ensure()


def open_store(settings: Settings, read_only: bool = False):
    from workbench.store import Store

    return Store(settings.db_path, read_only=read_only)


def use_mlflow(settings: Settings) -> None:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)


def _table(rows: list[tuple], header: tuple) -> str:
    cells = [
        tuple("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r) for r in [header, *rows]
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
            store, args.path, args.traffic, id_col=args.id_col, label_col=args.label_col, time_col=args.time_col
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
        )
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
    )
    emit(args, summary)


# -- decisions, keys, canary weight, service (policy / signing / canary / registry / service) -------
def _scorecard_text(d: dict) -> str:
    rows = [
        (
            c["gate"],
            c["outcome"].upper() if c["outcome"] == "fail" else c["outcome"],
            "yes" if c["critical"] else "",
            c["reason"],
        )
        for c in d["checks"]
    ]
    lines = [_table(rows, ("gate", "outcome", "critical", "reason"))]
    lines += [f"skipped {s['gate']}: {s['reason']}" for s in d.get("skipped", [])]
    lines.append(
        f"verdict {d['verdict']} ({d['reason']}); weight {d['weight_before']}% -> {d['weight_after']}%"
        + ("" if d.get("applied", True) else " (not applied)")
    )
    lines.append(f"decision {d['decision_id']} signed by {d['record']['signer']}")
    if d.get("pending_sync"):
        lines.append(f"not yet in MLflow ({d['sync_error']}); stored locally with pending_sync")
    return "\n".join(lines)


def cmd_decide(args) -> None:
    from workbench.decide.decisions import decide
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings, sign=True)
    with open_store(settings) as store:
        out = decide(settings, store, keys, args.run_id, args.policy, apply=args.apply)
    emit(args, out, _scorecard_text)


def cmd_keys_init(args) -> None:
    from workbench.decide.signing import init_keys

    info = init_keys(settings_for(args).keys_dir)
    emit(
        args,
        info.to_dict(),
        lambda d: (
            f"key pair created: {d['fingerprint']}\n  private {d['private_key_path']} "
            f"(mode 0600)\n  public  {d['public_key_path']}"
        ),
    )


def cmd_keys_export(args) -> None:
    from workbench.decide.signing import key_fingerprint, own_public_key, public_pem

    key = own_public_key(settings_for(args).keys_dir)
    if args.json:
        emit(args, {"fingerprint": key_fingerprint(key), "public_key_pem": public_pem(key)})
    else:
        sys.stdout.write(public_pem(key))


def cmd_decision_verify(args) -> None:
    from workbench.decide.canary import load_signed, verify_decision
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings)
    with open_store(settings) as store:
        res = verify_decision(store, load_signed(store, args.path_or_id), keys.trusted)
    emit(
        args,
        res.to_dict(),
        lambda d: (
            f"decision {d['decision_id']} ({d['model']}, {d['verdict']}): signature valid "
            f"({d['key_fingerprint']}, {d['signer']}), chain valid; {d['note']}"
        ),
    )


def _status_text(d: dict) -> str:
    return (
        f"{d['model']}: candidate v{d['candidate_version']} at {d['weight']}% against baseline "
        f"v{d['baseline_version']} (decision {d['decision_id']}, "
        + ("verified)" if d["verified"] else f"NOT verified: {d.get('problem')})")
    )


def cmd_canary_status(args) -> None:
    from workbench.decide.canary import status
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings)
    with open_store(settings) as store:
        emit(args, status(store, args.model, keys.trusted).to_dict(), _status_text)


def cmd_canary_kill(args) -> None:
    from workbench.decide.canary import build_kill
    from workbench.decide.decisions import apply_and_publish
    from workbench.decide.policy import load_policy
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings, sign=True)
    with open_store(settings) as store:
        out = apply_and_publish(
            settings, store, keys, build_kill(store, args.model, args.reason, keys.signer, load_policy())
        )
    emit(args, out, _status_text)


def cmd_canary_apply(args) -> None:
    from workbench.decide.canary import load_signed
    from workbench.decide.decisions import apply_and_publish
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings)
    with open_store(settings) as store:
        out = apply_and_publish(settings, store, keys, load_signed(store, args.path_or_id))
    emit(args, out, _status_text)


def cmd_serve(args) -> None:
    import uvicorn

    from workbench.live.service import create_app

    settings = settings_for(args)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


def cmd_webhook_register(args) -> None:
    from workbench.decide.registry import WEBHOOK_EVENTS, Registry

    settings = settings_for(args)
    if not settings.webhook_secret:
        raise WorkbenchError("set WORKBENCH_WEBHOOK_SECRET: MLflow signs deliveries with it, the service checks them")
    webhook_id = Registry(settings.mlflow_tracking_uri).ensure_webhook(args.url, settings.webhook_secret)
    emit(
        args,
        {"webhook_id": webhook_id, "url": args.url, "events": list(WEBHOOK_EVENTS)},
        lambda d: f"webhook {d['webhook_id']} -> {d['url']} ({', '.join(d['events'])})",
    )


# -- reliability: decisions recorded while MLflow was down ------------------------------------
def cmd_sync(args) -> None:
    from workbench.decide.decisions import sync_pending
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings)
    with open_store(settings) as store:
        res = sync_pending(settings, store, keys)
    for d in res["synced"]:
        log.info("decision %s (%s) is in MLflow: run %s", d["decision_id"], d["model"], d["mlflow_run_id"])
    if res["failed"]:
        first = res["failed"][0]
        raise WorkbenchError(
            f"{len(res['failed'])} decision(s) still pending after syncing {len(res['synced'])}: "
            f"{first['decision_id']} ({first['model']}): {first['error']}"
        )
    emit(args, res, lambda d: f"synced {len(d['synced'])} decision(s) to MLflow; none pending")


def add_decision_commands(sub, common):
    """Parser entries of the decision, key, canary and service commands; returns the ``canary`` actions."""
    s = sub.add_parser("decide", parents=[common], help="judge a replay run under a policy; sign and apply")
    s.add_argument("run_id")
    s.add_argument("--policy", default=None, help="policy file (.toml/.yaml/.json); default: the shipped policy")
    s.add_argument(
        "--apply",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="move the canary weight and publish to MLflow (default); --no-apply only signs and stores",
    )
    s.set_defaults(fn=cmd_decide)

    keys = sub.add_parser("keys", help="the Ed25519 signing key pair").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    s = keys.add_parser("init", parents=[common], help="create the key pair (private key mode 0600)")
    s.set_defaults(fn=cmd_keys_init)
    s = keys.add_parser("export", parents=[common], help="print the PEM public key")
    s.set_defaults(fn=cmd_keys_export)

    dec = sub.add_parser("decision", help="signed decision records").add_subparsers(
        dest="decision_command", required=True, metavar="ACTION"
    )
    s = dec.add_parser("verify", parents=[common], help="check a record's signature and chain")
    s.add_argument("path_or_id", metavar="PATH_OR_ID", help="the JSON `decide --json` printed, or a decision id")
    s.set_defaults(fn=cmd_decision_verify)

    can = sub.add_parser("canary", help="the canary weight of a registered model").add_subparsers(
        dest="canary_command", required=True, metavar="ACTION"
    )
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

    s = sub.add_parser(
        "sync",
        parents=[common],
        help="push decisions recorded while MLflow was unreachable (each exactly once, in chain order)",
    )
    s.set_defaults(fn=cmd_sync)

    s = sub.add_parser(
        "serve", parents=[common], help="the HTTP service (weight API, Flagger webhooks, MLflow webhooks, health)"
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(fn=cmd_serve)

    hook = sub.add_parser("webhook", help="MLflow webhooks").add_subparsers(
        dest="webhook_command", required=True, metavar="ACTION"
    )
    s = hook.add_parser("register", parents=[common], help="make MLflow send new versions and aliases to URL")
    s.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/webhooks/mlflow")
    s.set_defaults(fn=cmd_webhook_register)
    return can


# -- live canary: router, mesh manifests ---------------------------------------------------
def cmd_route(args) -> None:
    import gc
    from importlib.util import find_spec

    import uvicorn

    from workbench.decide.policy import load_policy
    from workbench.decide.signing import KeyRing
    from workbench.live.router import Router, RouterConfig, StoreWeights
    from workbench.live.trafficlog import TrafficLog

    for handler in logging.getLogger().handlers:  # a long-running service: time-stamped log lines
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    settings = settings_for(args)
    if "/" in args.model or args.model.startswith("."):
        raise WorkbenchError(f"invalid model name {args.model!r}")
    policy = load_policy(args.policy)
    config = RouterConfig(
        model=args.model,
        baseline_url=args.baseline,
        candidate_url=args.candidate,
        entity_header=args.entity_header or None,
        entity_field=args.entity_field,
        mirror_percent=args.mirror,
        timeout_s=args.timeout,
        mirror_timeout_s=args.mirror_timeout,
        poll_s=args.poll,
        auto_rollback=args.auto_rollback,
    )
    # the key ring, once; with automated rollback the signing key too (no key: refused now, not at a breach)
    keys = KeyRing.from_settings(settings, sign=args.auto_rollback)
    if args.auto_rollback and args.mlflow:
        importlib.import_module("mlflow")  # now, not in a rollback's worker thread while traffic flows
    weights = StoreWeights(settings, args.model, policy, keys=keys, publish=args.mlflow)
    traffic_log = (
        None
        if args.no_log
        else TrafficLog(
            args.log_dir or settings.home / "live" / args.model, rotate_rows=args.rotate_rows, rotate_s=args.rotate_s
        )
    )
    router = Router(config, policy, weights, traffic_log=traffic_log)
    # uvloop and httptools (the C event loop and parser) when installed; no access log, no proxy-header
    # rewriting (the router never reads the client address)
    loop = "uvloop" if find_spec("uvloop") is not None else "asyncio"
    server = uvicorn.Server(
        uvicorn.Config(
            router,
            host=args.host,
            port=args.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            proxy_headers=False,
            loop=loop,
            http="httptools",
        )
    )
    log.info(
        "routing %s on http://%s:%d: baseline %s, candidate %s, mirror %g%%, traffic log %s",
        args.model,
        args.host,
        args.port,
        args.baseline,
        args.candidate,
        args.mirror,
        traffic_log.dir if traffic_log else "off",
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler it found:
    # a no-op one here, so the summary below is printed and the exit code is 0 after a requested stop
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    # what is loaded by now lives as long as the process: out of the collector's reach, so a full collection
    # (~30 ms over ~100k objects here: pyarrow, DuckDB, uvicorn) never stalls routed requests
    gc.collect()
    gc.freeze()
    # the traffic log's writer thread holds the GIL while it builds a batch's columns: the event loop takes it
    # back within 0.5 ms instead of Python's default 5 ms, which would otherwise land on requests' latency
    sys.setswitchinterval(0.0005)
    server.run()
    st = router.status()
    out = {
        "model": args.model,
        "requests": st["counts"].get("requests", 0),
        "counts": st["counts"],
        "state": st["state"],
        "rollback": st["rollback"],
        "traffic_log": st["traffic_log"],
    }
    emit(
        args,
        out,
        lambda d: (
            f"{d['model']}: {d['requests']} requests routed"
            + (f"; rolled back: {d['rollback']['reason']}" if d["rollback"] else "")
        ),
    )


def cmd_canary_render(args) -> None:
    from workbench.decide.canary import live_view
    from workbench.decide.signing import KeyRing
    from workbench.live.mesh import MeshOptions, render, to_yaml

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings)
    with open_store(settings) as store:
        view = live_view(store, args.model, keys.trusted)
    opts = MeshOptions(
        namespace=args.namespace,
        service=args.service,
        api_url=args.api_url or f"http://canary-workbench.{args.namespace}.svc:8000",
    )
    objects = render(args.target, view, view["ramp"] or [], opts)
    text = to_yaml(objects)
    if args.json:
        emit(
            args,
            {
                "model": args.model,
                "target": args.target,
                "weight": view["weight"],
                "decision_id": view["decision_id"],
                "objects": objects,
                "yaml": text,
            },
        )
    else:
        sys.stdout.write(text)


def add_live_commands(sub, common, canary) -> None:
    """Parser entries of ``route`` and ``canary render``."""
    from workbench.live.mesh import TARGETS

    s = canary.add_parser("render", parents=[common], help="the mesh / delivery-tool manifest of the live weight")
    s.add_argument("model")
    s.add_argument("--target", required=True, choices=TARGETS)
    s.add_argument("--namespace", default="default")
    s.add_argument("--service", default=None, help="Kubernetes service / host of the model (default: its name)")
    s.add_argument(
        "--api-url",
        default=None,
        help="the workbench service as the cluster reaches it (default: http://canary-workbench.NAMESPACE.svc:8000)",
    )
    s.set_defaults(fn=cmd_canary_render)

    s = sub.add_parser(
        "route",
        parents=[common],
        help="the reference router: live traffic to baseline and candidate "
        "by the canary weight, mirroring, SLO rollback",
    )
    s.add_argument("model", help="the registered model whose canary weight routes the traffic")
    s.add_argument("--baseline", required=True, metavar="URL", help="baseline model server, e.g. http://127.0.0.1:5001")
    s.add_argument("--candidate", required=True, metavar="URL", help="candidate model server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument(
        "--entity-header",
        default="X-Entity-Id",
        metavar="H",
        help="header holding the sticky entity key (default X-Entity-Id; '' for none)",
    )
    s.add_argument(
        "--entity-field",
        default=None,
        metavar="F",
        help="else this field of the first input row (else the request id: not sticky)",
    )
    s.add_argument(
        "--mirror",
        type=float,
        default=0.0,
        metavar="PCT",
        help="also send this percent of baseline-routed requests to the candidate in the background",
    )
    s.add_argument("--policy", default=None, help="policy file whose [live] section sets the SLO and segments")
    s.add_argument("--timeout", type=float, default=10.0, metavar="S", help="model server timeout")
    s.add_argument("--mirror-timeout", type=float, default=10.0, metavar="S")
    s.add_argument("--poll", type=float, default=1.0, metavar="S", help="how often to check for a new decision")
    s.add_argument(
        "--auto-rollback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="roll the candidate back on a live SLO breach (needs the signing key; default on)",
    )
    s.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="publish a live rollback to MLflow (tags; default on)",
    )
    s.add_argument("--log-dir", default=None, help="traffic log folder (default $WORKBENCH_HOME/live/MODEL)")
    s.add_argument("--no-log", action="store_true", help="no traffic log")
    s.add_argument("--rotate-rows", type=int, default=200_000)
    s.add_argument("--rotate-s", type=float, default=600.0)
    s.set_defaults(fn=cmd_route)


# -- drift -------------------------------------------------------------------------------
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
    from workbench.drift.report import drift_run

    settings = settings_for(args)
    if args.reference and ".." not in args.reference:
        use_mlflow(settings)  # the reference may need MLflow: its artifact, the models that score it
    with open_store(settings) as store:
        res = drift_run(
            store,
            args.run_id,
            args.reference,
            current=args.current,
            tests=_overrides(args.test, str, "--test"),
            thresholds=_overrides(args.threshold, float, "--threshold"),
            drift_share=args.drift_share,
            as_of=args.as_of,
            html=args.html,
        ).to_dict()

    def human(d: dict) -> str:
        rows = [
            (c, f["kind"], f["test"], f["statistic"], f["threshold"], "DRIFT" if f["drifted"] else "", f["method"])
            for c, f in d["features"].items()
        ]
        cd, cal = d["concept_drift"], d["calibration_drift"]
        lines = [
            f"run {d['run_id']}: reference {d['reference']['description']} ({d['reference']['rows']} rows), "
            f"current {d['current']['rows']} rows",
            _table(rows, ("feature", "kind", "test", "statistic", "threshold", "drift", "method")),
            f"drifted share {d['share_drifted']:.2f} -> dataset drift: {d['dataset_drift']}",
            f"concept drift (baseline errors, Page-Hinkley): {cd['detected']}"
            + (f", change point {cd['change_point']}" if cd["detected"] else ""),
            f"calibration drift (baseline): {cal['detected']}",
        ]
        if d.get("html"):
            lines.append(f"Evidently report: {d['html']}")
        return "\n".join(lines)

    emit(args, res, human)


# -- evaluation: metrics with intervals, paired deltas, latency, slices -------------------
def cmd_evaluate(args) -> None:
    from workbench.evaluate.evaluation import evaluate_run

    settings = settings_for(args)
    with open_store(settings) as store:
        res = evaluate_run(
            store,
            args.run_id,
            segment=args.segment,
            window=args.window,
            confidence=args.confidence,
            seed=args.seed,
            top_k=args.top_k,
        ).to_dict()
    emit(args, res, _evaluation_text)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _ci(e: dict) -> str:
    return "-" if e["ci_low"] is None else f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]"


def _evaluation_text(d: dict) -> str:
    lines = [
        f"run {d['run_id']}: {d['labeled_rows']} labelled rows (coverage {d['label_coverage']:.1%}), "
        f"rows scored baseline {d['rows']['baseline']}, candidate {d['rows']['candidate']}, "
        f"both {d['rows']['paired']}; {d['confidence']:.0%} intervals",
        _table(
            [
                (
                    m,
                    _f(d["baseline"][m]["value"]),
                    _ci(d["baseline"][m]),
                    _f(d["candidate"][m]["value"]),
                    _ci(d["candidate"][m]),
                    _f(dl["value"]),
                    _ci(dl),
                    _f(dl["p_value"]),
                    _f(dl["mde"]),
                )
                for m, dl in d["delta"].items()
            ],
            ("metric", "baseline", "ci", "candidate", "ci", "delta", "ci", "p", "mde"),
        ),
        "",
        _table(
            [
                (k, _f(d["latency"]["baseline"][k]), _f(d["latency"]["candidate"][k]), _f(v["value"]), _ci(v))
                for k, v in d["latency"]["delta"].items()
            ],
            ("latency ms", "baseline", "candidate", "delta", "ci"),
        ),
        f"Mann-Whitney p = {_f(d['latency']['mann_whitney_p'])}; errors: "
        + ", ".join(f"{r} {e['count']}/{e['rows']}" for r, e in d["errors"].items()),
    ]
    for kind in ("segments", "windows"):
        for col, slices in d.get(kind, {}).items():
            lines += [
                "",
                _table(
                    [
                        (
                            v,
                            s["rows"],
                            "yes" if s["small"] else "",
                            _f(s["delta"]["accuracy"]["value"]),
                            _f(s["delta"]["accuracy"]["p_value"]),
                            _f(s["delta"]["roc_auc"]["value"]),
                            _f(s["delta"]["roc_auc"]["p_value"]),
                        )
                        for v, s in slices.items()
                    ],
                    (col, "rows", "small", "d accuracy", "p", "d roc_auc", "p"),
                ),
            ]
    if d["undefined"]:
        lines += ["", "undefined: " + "; ".join(f"{k}: {v}" for k, v in d["undefined"].items())]
    return "\n".join(lines)


def add_evaluate_parser(sub, common) -> None:
    s = sub.add_parser(
        "evaluate",
        parents=[common],
        help="metrics with intervals, paired deltas, latency and slices of a run's labelled rows",
    )
    s.add_argument("run_id")
    s.add_argument(
        "--segment",
        default=None,
        metavar="COL",
        help="also evaluate per value of this traffic column (top --top-k by volume plus 'other')",
    )
    s.add_argument(
        "--window",
        default=None,
        choices=["hour", "day", "week"],
        help="also evaluate per time window of the event time",
    )
    s.add_argument("--confidence", type=float, default=0.95, help="confidence level of every interval")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    s.add_argument("--top-k", type=int, default=10, help="segment values to keep before 'other'")
    s.set_defaults(fn=cmd_evaluate)


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
    from workbench.ops.jobs import run_job
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


# -- the app and its approvers -----------------------------------------------------------
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
        raise WorkbenchError(
            "no terminal to ask for the password: pipe it with --password-stdin, or use "
            "--no-password with --email for an OIDC-only approver"
        )
    if not password:
        raise WorkbenchError("the password must not be empty")
    return password


def cmd_approver_add(args) -> None:
    from workbench.ops.access import add_approver, approvers_path

    settings = settings_for(args)
    approver = add_approver(approvers_path(settings.home), args.name, password=_read_password(args), email=args.email)
    emit(
        args,
        approver.to_dict() | {"file": str(approvers_path(settings.home))},
        lambda d: f"approver {d['name']} saved in {d['file']}" + (f" (e-mail {d['email']})" if d["email"] else ""),
    )


def cmd_approver_list(args) -> None:
    from workbench.ops.access import approvers_path, load_approvers

    approvers = load_approvers(approvers_path(settings_for(args).home))
    emit(
        args,
        {"approvers": [a.to_dict() for a in approvers.values()]},
        lambda d: _table(
            [(a["name"], a["email"] or "", "yes" if a["password"] else "no") for a in d["approvers"]],
            ("name", "email", "password"),
        ),
    )


def cmd_approver_remove(args) -> None:
    from workbench.ops.access import approvers_path, remove_approver

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
        dest="approver_command", required=True, metavar="ACTION"
    )
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
    s.add_argument(
        "--online",
        action="store_true",
        help="time requests one at a time (or in --online-batch micro-batches), as a server would",
    )
    s.add_argument("--online-batch", type=int, default=1, metavar="N")
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
    s.set_defaults(fn=cmd_replay)

    add_evaluate_parser(sub, common)

    # drift
    s = sub.add_parser("drift", parents=[common], help="data, prediction and concept drift of a run")
    s.add_argument("run_id")
    s.add_argument(
        "--reference",
        default=None,
        metavar="SPEC",
        help="a traffic name, a time window START..END of the run, or 'training' (the sample logged "
        "with the baseline model); default: the earliest 20%% of the run's traffic by event time",
    )
    s.add_argument("--current", default=None, metavar="START..END", help="only this time window of the run")
    s.add_argument(
        "--test",
        action="append",
        default=[],
        metavar="[COL=]NAME",
        help="drift test for a column, or for all (repeatable; 'score=' for prediction drift)",
    )
    s.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="[COL=]X",
        help="threshold for a column, or for all (repeatable)",
    )
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

    canary = add_decision_commands(sub, common)
    add_live_commands(sub, common, canary)
    add_job_commands(sub, common)
    add_app_commands(sub, common)
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
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # last line of defence: one line for the user, the traceback on request
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(
            f"error: internal error {type(e).__name__}: {first} (set WORKBENCH_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
