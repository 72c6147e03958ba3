"""The live canary commands: ``route`` (the reference router) and ``canary render`` (mesh manifests)."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from workbench import WorkbenchError
from workbench.cli.common import emit, log, open_store, settings_for


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
    from workbench.decide.chain import live_view
    from workbench.decide.decisions import witnesses
    from workbench.decide.signing import KeyRing
    from workbench.live.mesh import MeshOptions, render, to_yaml

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings)
    with open_store(settings) as store:
        view = live_view(store, args.model, keys.trusted, witnesses(settings, mlflow=True))
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
