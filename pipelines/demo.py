"""The full demo: prepare NYC flights traffic, register two models, then walk the canary ramp month by
month as a scheduled job would: each month's traffic is ingested and replayed (shadow: both models score
every request so far), drift is checked and a signed decision on the pair's growing sample moves the canary
weight; the last month is also evaluated for the app. A regression pair (the arrival delay in minutes) and a
multi-class pair (the arrival delay's band) are then each replayed once over the same traffic, evaluated and
decided on their own ramps. Then the app opens.

Idempotent on one home: registered models are reused, each month's run id is derived from the two model
versions and the month (a second ``workbench demo`` finds every month's run finished and reuses it), and a
run that already has a decision is not decided again (the ramp advances only on new evidence).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from workbench.config import Settings
from workbench.ops.flow import Flow, FlowEvents, FlowResult, TrafficSource, run_flow

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAFFIC = "flights"


def _registered(settings: Settings, name: str | None = None) -> dict | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.train_models import MODEL_NAME

    name = name or MODEL_NAME
    client = mlflow.MlflowClient()
    try:
        return {
            role: {
                "version": client.get_model_version_by_alias(name, alias).version,
                "uri": f"models:/{name}@{alias}",
            }
            for role, alias in (("baseline", "champion"), ("candidate", "challenger"))
        }
    except MlflowException:
        return None


class _DemoEvents(FlowEvents):
    """Number the flow's stages after the demo's own two steps, and say what each produced."""

    STEPS = {"ingest": 3, "replay": 4, "evaluate": 5, "drift": 6, "decide": 7}

    def __init__(self, log: Callable[[str], None], prefix: str = ""):
        self.log, self.prefix = log, prefix

    def end(self, stage: str, summary: dict, seconds: float) -> None:
        shown = {k: v for k, v in summary.items() if k not in ("reasons",)} if stage != "decide" else summary
        self.log(f"[{self.STEPS[stage]}/7] {self.prefix}{stage}: {shown} ({seconds:.1f} s)")

    def skip(self, stage: str, reason: str) -> None:
        self.log(f"[{self.STEPS[stage]}/7] {self.prefix}{stage}: skipped ({reason})")


def run_demo(
    settings: Settings,
    data_dir: str | os.PathLike = "data",
    limit: int | None = None,
    app: bool = True,
    port: int = 8501,
    log: Callable[[str], None] = print,
    with_mlflow_ui: bool = True,
) -> dict:
    """Run every step of the demo and return its numbers; with ``app`` the Streamlit app serves at the end (and
    the MLflow UI beside it with ``with_mlflow_ui``)."""
    import mlflow

    from pipelines.prepare_flights import write
    from pipelines.train_models import register
    from workbench.decide.signing import PRIVATE_FILE, init_keys

    timings: dict[str, float] = {}
    data = Path(data_dir)
    t = time.perf_counter()
    counts = write(data, limit)
    timings["prepare"] = time.perf_counter() - t
    log(f"[1/7] prepared NYC flights 2013 under {data}: {counts}")

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    t = time.perf_counter()
    models = _registered(settings) or register(settings, data / "flights_train.parquet", log=log)
    timings["register"] = time.perf_counter() - t
    log(f"[2/7] models: baseline v{models['baseline']['version']}, candidate v{models['candidate']['version']}")

    if not (settings.keys_dir / PRIVATE_FILE).exists():
        init_keys(settings.keys_dir)
    run_id = f"demo_v{models['baseline']['version']}_v{models['candidate']['version']}"
    res, walk, traffic = _walk(settings, models, data, run_id, log)
    summary = _summary(settings, models, counts, res)
    summary["ingest"], summary["walk"] = traffic, walk
    for task in TASK_PAIRS:
        t = time.perf_counter()
        summary[task] = _task_pair(settings, data, task, log)
        timings[task] = time.perf_counter() - t
    summary["seconds"] = {k: round(v, 2) for k, v in (timings | res.seconds).items()}
    for line in findings(summary, res, port):
        log(line)
    if app:
        serve_app(settings, port, log, with_mlflow_ui)
    return summary


def _walk(
    settings: Settings, models: dict, data: Path, run_id: str, log: Callable[[str], None]
) -> tuple[FlowResult, list[dict], dict]:
    """One flow per month of traffic, each deciding on everything replayed so far; the last month's run is
    ``run_id`` and is also evaluated. Returns the last flow's result, one line of the walk per month and the
    traffic set's counts."""
    from pipelines.prepare_flights import NULLABLE, SEGMENTS, slice_files
    from pipelines.train_models import MODEL_NAME
    from workbench.store import Store

    slices = slice_files(data)
    walk: list[dict] = []
    res: FlowResult | None = None
    with Store(settings.db_path) as store:
        for i, (month, traffic_file, labels_file) in enumerate(slices):
            last = i == len(slices) - 1
            rid = run_id if last else f"{run_id}_m{month}"
            done = store.get_run(rid)
            source = TrafficSource(
                paths=traffic_file,
                entity_col="tail_number",
                nullable=tuple(NULLABLE),
                segments=tuple(SEGMENTS),
                labels=labels_file,
                if_exists="append",
            )
            flow = Flow(
                traffic=TRAFFIC,
                baseline=f"models:/{MODEL_NAME}/{models['baseline']['version']}",
                candidate=f"models:/{MODEL_NAME}/{models['candidate']['version']}",
                run_id=rid,
                source=None if done is not None else source,  # a month already ingested is not appended again
                evaluate=last,
                drift_html=settings.reports_dir / f"drift_{run_id}.html" if last else None,
                decide="apply",
            )
            events = _DemoEvents(log, f"month {month}: ")
            res = run_flow(settings, flow, store=lambda: nullcontext(store), events=events)
            walk.append(_step(month, rid, res))
            log(_walk_line(walk[-1]))
        info = store.require_traffic(TRAFFIC)
        traffic = {
            "traffic": TRAFFIC,
            "rows_read": int(info["rows"]) + int(info["quarantined"]),
            "rows": int(info["rows"]),
            "quarantined": int(info["quarantined"]),
            "reasons": store.quarantine_summary(TRAFFIC),
            "segments": store.declared_segments(TRAFFIC),
        }
    if res is None:
        raise RuntimeError(f"no monthly traffic slices under {data / 'slices'}: run the data preparation first")
    return res, walk, traffic


#: the demo's pairs of other tasks than the binary classifier, and the metrics the demo reports for each
TASK_PAIRS = {
    "regression": ("mae", "rmse", "median_ae", "r2"),
    "multiclass": ("accuracy", "macro_f1", "log_loss", "brier"),
}


def _task_pair(settings: Settings, data: Path, task: str, log: Callable[[str], None]) -> dict:
    """Register the pair of ``task`` (once): the arrival delay in minutes (regression) or its band (multiclass);
    replay it over the flights traffic the walk ingested with those labels, evaluate it and decide under the
    shipped policy of its task."""
    from pipelines.train_models import TASK_MODELS, register_task_pair

    name, label_col = TASK_MODELS[task].model_name, TASK_MODELS[task].target
    metrics = TASK_PAIRS[task]
    models = _registered(settings, name) or register_task_pair(settings, data / "flights_train.parquet", task, log=log)
    b, c = models["baseline"]["version"], models["candidate"]["version"]
    flow = Flow(
        traffic=TRAFFIC,
        baseline=f"models:/{name}/{b}",
        candidate=f"models:/{name}/{c}",
        run_id=f"demo_{label_col.split('_')[1]}_v{b}_v{c}",
        source=TrafficSource(labels=data / "labels.parquet", label_col=label_col, label_task=task),
        drift=task == "regression",  # the multi-class pair's drift is left to `workbench drift` (demo time)
        decide="apply",
    )
    res = run_flow(settings, flow, store=lambda: _store(settings), events=_DemoEvents(log, f"{task} pair: "))
    ev, signed = res.outputs["evaluate"], res.outputs["decide"]
    out = {
        "model": name,
        "models": models,
        "run_id": flow.run_id,
        "labeled_rows": ev["labeled_rows"],
        "metrics": {
            m: {
                "baseline": ev["baseline"][m]["value"],
                "candidate": ev["candidate"][m]["value"],
                "delta": ev["delta"][m],
            }
            for m in metrics
        },
        "decision": {k: res.summaries["decide"].get(k) for k in ("decision_id", "verdict", "reason", "weight_after")},
    }
    if task == "regression":
        out["drift"] = _regression_drift(res.outputs["drift"])
    out["decision"]["weight_before"] = signed.record["weight_before"]
    return out


def _regression_drift(d: dict) -> dict:
    """A regression run's drift in brief: dataset drift, and per model residual drift and the concept detector's
    change point on its absolute errors."""
    out: dict = {"dataset_drift": d["dataset_drift"], "share_drifted": d["share_drifted"]}
    concept = {"baseline": d["concept_drift"], "candidate": d["concept_drift"].get("candidate") or {}}
    for role, c in concept.items():
        r = d["residual_drift"].get(role) or {}
        out[role] = {
            "residual_drift": r.get("drifted"),
            "residual_test": r.get("test"),
            "residual_statistic": r.get("statistic"),
            "concept_change_point": c.get("change_point"),
        }
    return out


def _store(settings: Settings):
    from workbench.store import Store

    return Store(settings.db_path)


def _step(month: str, run_id: str, res: FlowResult) -> dict:
    """One month of the walk: the labelled rows judged, the verdict, the weight and what blocked it."""
    signed = res.outputs["decide"]
    record = signed.record
    card = record["scorecard"]
    return {
        "month": month,
        "run_id": run_id,
        "labelled_rows": (record.get("evidence") or {}).get("labelled_rows"),
        "verdict": record["verdict"],
        "weight_before": record["weight_before"],
        "weight_after": record["weight_after"],
        "summary": card.get("summary") or record["reason"],
        "reused": bool(res.summaries["decide"].get("reused")),
    }


def _walk_line(s: dict) -> str:
    rows = f"{s['labelled_rows']:,}" if isinstance(s["labelled_rows"], int) else "?"
    return (
        f"    month {s['month']}: {rows} labelled rows so far -> {s['verdict']}, weight "
        f"{s['weight_before']}% -> {s['weight_after']}%{' (decided earlier)' if s['reused'] else ''}. {s['summary']}"
    )


def _summary(settings: Settings, models: dict, counts: dict, res: FlowResult) -> dict:
    """The demo's JSON: each stage's result as the stage commands print it."""
    out: dict = {"home": str(settings.home), "data": counts, "models": models}
    out["replay"] = res.outputs["replay"].to_dict()
    out["evaluation"] = res.outputs["evaluate"]
    out["drift"] = dict(res.summaries["drift"])
    decision = res.summaries["decide"]
    keep = (
        "decision_id",
        "verdict",
        "reason",
        "weight_before",
        "weight_after",
        "mlflow_run_id",
        "pending_sync",
        "reused",
    )
    out["decision"] = {k: decision[k] for k in keep if k in decision}
    return out


QUALITY = ("accuracy", "f1", "roc_auc", "pr_auc", "log_loss", "brier")


def findings(summary: dict, res: FlowResult, port: int) -> list[str]:
    """What the demo found, in words: the quality table, the verdict with the checks that decided it, and
    where to look in the app."""
    ev, d = summary["evaluation"], summary["decision"]
    lines = [
        "",
        f"What the demo found ({ev['labeled_rows']:,} labelled rows of {summary['replay']['rows']:,} replayed):",
        f"  {'metric':<10} {'baseline':>9} {'candidate':>9} {'delta':>9}  95% interval",
    ]
    for m in QUALITY:
        b, c, dm = ev["baseline"].get(m), ev["candidate"].get(m), ev.get("delta", {}).get(m)
        if not (b and c and dm):
            continue
        lines.append(
            f"  {m:<10} {b['value']:>9.4f} {c['value']:>9.4f} {dm['value']:>+9.4f}  "
            f"[{dm['ci_low']:+.4f}, {dm['ci_high']:+.4f}]"
        )
    record = res.outputs["decide"].record
    lines.append("The ramp, month by month (each decision judges every labelled row replayed so far):")
    lines += [_walk_line(s) for s in summary.get("walk", [])]
    lines.append(
        f"Verdict: {d['verdict']}, weight {d['weight_before']}% -> {d['weight_after']}% ({d['reason']})"
        + (" [decided earlier; reused]" if d.get("reused") else "")
    )
    checks = record["scorecard"]["checks"]
    deciding = [c for c in checks if c["outcome"] != "pass"] or checks
    lines.append("Checks that decided it:" if deciding is not checks else "Checks (all passed):")
    lines += [f"  {c['outcome'].upper():<5} {c['gate']}: {c['reason']}" for c in deciding]
    lines += _pair_lines(summary.get("regression"), "arrival delay in minutes")
    lines += _pair_lines(summary.get("multiclass"), "arrival delay band: on time, 15-60 or over 60 minutes late")
    run = summary["replay"]["run_id"]
    base = f"http://127.0.0.1:{port}"
    lines += [
        "Where to look in the app:",
        f"  Compare (quality, segments, latency): {base}/compare?run={run}",
        f"  Drift (features, predictions, concept): {base}/drift?run={run}",
        f"  Decide (the scorecard, sign as an approver): {base}/decide?run={run}",
        f"  Audit (the signed chain): {base}/audit",
        "",
    ]
    return lines


def _pair_lines(reg: dict | None, what: str) -> list[str]:
    """A pair's metrics (``what`` it predicts) and its verdict, in words."""
    if not reg:
        return []
    lines = [
        f"The pair {reg['model']} ({what}, {reg['labeled_rows']:,} labelled rows):",
        f"  {'metric':<10} {'baseline':>9} {'candidate':>9} {'delta':>9}  95% interval",
    ]
    for m, v in reg["metrics"].items():
        d = v["delta"]
        if v["baseline"] is None or v["candidate"] is None or d["value"] is None or d["ci_low"] is None:
            continue
        lines.append(
            f"  {m:<10} {v['baseline']:>9.3f} {v['candidate']:>9.3f} {d['value']:>+9.3f}  "
            f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        )
    drift = reg.get("drift") or {}
    for role in ("baseline", "candidate"):
        r = drift.get(role) or {}
        if r.get("residual_test"):
            cp = r.get("concept_change_point")
            lines.append(
                f"  {role} residuals: {'drifted' if r['residual_drift'] else 'no drift'} "
                f"({r['residual_test']} {r['residual_statistic']:.3g}); absolute errors: "
                + (f"a rise from {cp}" if cp else "no rise detected")
            )
    dec = reg["decision"]
    lines.append(
        f"  Verdict: {dec['verdict']}, weight {dec['weight_before']}% -> {dec['weight_after']}% ({dec['reason']})"
    )
    return lines


MLFLOW_UI_WAIT_S = 90  # `mlflow server` took 12-31 s to answer /health on a loaded 2-core machine


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: an MLflow server that only shows the UI: without its job runner (eight more Python processes of about
#: 240 MB each, for GenAI jobs the workbench never submits); webhooks are delivered without it
UI_ONLY = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false"}


@contextmanager
def mlflow_ui(settings: Settings, log: Callable[[str], None]) -> Iterator[str | None]:
    """Serve the MLflow UI over the home's local tracking store on a free 127.0.0.1 port while the block runs,
    and yield its address; yield the known address instead when there is one (:func:`mlflow_ui_base`), and None
    when the UI does not answer in time (the app then shows run ids without links)."""
    from workbench.decide.registry import mlflow_ui_base

    known = mlflow_ui_base(settings.mlflow_tracking_uri)
    if known:
        yield known
        return
    import httpx

    port = _free_port()
    url: str | None = f"http://127.0.0.1:{port}"
    settings.home.mkdir(parents=True, exist_ok=True)
    out = open(settings.home / "mlflow-ui.log", "ab")  # noqa: SIM115 (closed with the server)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", settings.mlflow_tracking_uri]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers stop with it
        env=os.environ | UI_ONLY,
    )
    try:
        deadline = time.monotonic() + MLFLOW_UI_WAIT_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            log(f"the MLflow UI did not start (see {settings.home / 'mlflow-ui.log'}): the app shows no MLflow links")
            url = None
        if url:
            log(f"serving the MLflow UI on {url} (model versions and runs; it stops with the app)")
        yield url
    finally:
        stop_server(proc)
        out.close()


def stop_server(proc: subprocess.Popen) -> None:
    """End a server started in its own session, and its workers (SIGTERM, then SIGKILL after 10 s)."""
    import signal

    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def serve_app(settings: Settings, port: int, log: Callable[[str], None], with_mlflow_ui: bool = True) -> None:
    """Serve the Streamlit app on 127.0.0.1 until interrupted; with ``with_mlflow_ui`` the MLflow UI too, over a
    local tracking store, so the app's model-version and run links resolve."""
    import signal

    from workbench.decide.registry import mlflow_ui_base

    def interrupt(*_) -> None:
        raise KeyboardInterrupt  # `kill` stops the app and the MLflow UI as Ctrl-C does

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        known = mlflow_ui_base(settings.mlflow_tracking_uri)
        with mlflow_ui(settings, log) if with_mlflow_ui else nullcontext(known) as ui_url:
            _serve_streamlit(settings, port, log, ui_url)
    finally:
        signal.signal(signal.SIGTERM, previous)


def streamlit_command(port: int) -> list[str]:
    """``streamlit run app.py`` on 127.0.0.1:``port``, headless, without usage statistics or source watching (a
    served app: no inotify flood); run it in the repository root, whose ``.streamlit/config.toml`` it reads."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO_ROOT / "app.py"),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]


def _serve_streamlit(settings: Settings, port: int, log: Callable[[str], None], mlflow_ui_url: str | None) -> None:
    env = os.environ | {"WORKBENCH_HOME": str(settings.home), "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    if mlflow_ui_url:
        env["WORKBENCH_MLFLOW_UI"] = mlflow_ui_url
    cmd = streamlit_command(port)
    from workbench.decide.signing import PRIVATE_FILE
    from workbench.ops.access import approvers_path, load_approvers

    log(f"serving the workbench app on http://127.0.0.1:{port} (Ctrl-C stops it)")
    if not (settings.keys_dir / PRIVATE_FILE).exists() or not load_approvers(approvers_path(settings.home)):
        log(
            "to sign decisions in the app: `workbench keys init` (once) and `workbench approver add NAME`; "
            "everyone else reviews read-only"
        )
    try:
        subprocess.run(cmd, env=env, check=False, cwd=REPO_ROOT)  # the repository's .streamlit/config.toml
    except KeyboardInterrupt:
        pass
