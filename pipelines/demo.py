"""The full demo: prepare NYC flights traffic, register two models, replay, evaluate, check drift,
decide (signed, applied to the canary weight, recorded in MLflow), open the app.

Idempotent on one home: registered models and ingested traffic are reused, the replay run id is derived
from the two model versions (a second ``workbench demo`` reuses the run), and a run that already has a
decision is not decided again (the ramp advances only on new evidence).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from workbench import WorkbenchError
from workbench.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAFFIC = "flights"


def _registered(settings: Settings) -> dict | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.train_models import MODEL_NAME

    client = mlflow.MlflowClient()
    try:
        return {role: {"version": client.get_model_version_by_alias(MODEL_NAME, alias).version,
                       "uri": f"models:/{MODEL_NAME}@{alias}"}
                for role, alias in (("baseline", "champion"), ("candidate", "challenger"))}
    except MlflowException:
        return None


def run_demo(settings: Settings, data_dir: str | os.PathLike = "data", limit: int | None = None,
             app: bool = True, port: int = 8501, log: Callable[[str], None] = print) -> dict:
    """Run every step of the demo and return its numbers; with ``app`` the Streamlit app serves at the end."""
    import mlflow

    from pipelines.prepare_flights import NULLABLE, write
    from pipelines.train_models import register
    from workbench.decide.decisions import decide
    from workbench.drift.report import drift_run
    from workbench.evaluate.evaluation import evaluate_run
    from workbench.decide.signing import PRIVATE_FILE, KeyRing, init_keys
    from workbench.replay.models import load_predictor
    from workbench.replay.pipeline import replay
    from workbench.store import Store
    from workbench.ingest.traffic import file_sha256, ingest, ingest_labels

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

    summary: dict = {"home": str(settings.home), "data": counts, "models": models}
    with Store(settings.db_path) as store:
        t = time.perf_counter()
        info = store.traffic_info(TRAFFIC)
        traffic_file = data / "traffic.parquet"
        expected = hashlib.sha256(file_sha256([traffic_file]).encode()).hexdigest()
        if info is None:
            res = ingest(store, traffic_file, TRAFFIC, entity_col="tail_number", nullable=NULLABLE)
            summary["ingest"] = res.to_dict()
            summary["labels"] = ingest_labels(store, data / "labels.parquet", TRAFFIC).to_dict()
        elif info["fingerprint"] != expected:
            raise WorkbenchError(f"traffic {TRAFFIC!r} in {settings.home} holds other data; use a fresh "
                                 "WORKBENCH_HOME for a demo of another size")
        else:
            summary["ingest"] = {"traffic": TRAFFIC, "rows": info["rows"], "quarantined": info["quarantined"],
                                 "reasons": store.quarantine_summary(TRAFFIC), "reused": True}
        timings["ingest"] = time.perf_counter() - t
        log(f"[3/7] ingested: {summary['ingest']}")

        t = time.perf_counter()
        baseline = load_predictor(models["baseline"]["uri"])
        candidate = load_predictor(models["candidate"]["uri"])
        run_id = f"demo_v{baseline.ref.version}_v{candidate.ref.version}"
        res = replay(store, TRAFFIC, baseline, candidate, run_id=run_id)
        summary["replay"] = res.to_dict()
        timings["replay"] = time.perf_counter() - t
        log(f"[4/7] replayed: {summary['replay']}")

        t = time.perf_counter()
        summary["evaluation"] = evaluate_run(store, run_id).to_dict()
        timings["evaluate"] = time.perf_counter() - t
        log(f"[5/7] evaluated {summary['evaluation']['labeled_rows']} labelled rows")

        t = time.perf_counter()
        html = settings.reports_dir / f"drift_{run_id}.html"
        drift = drift_run(store, run_id, html=html).to_dict()
        summary["drift"] = {k: drift[k] for k in ("share_drifted", "dataset_drift")} | {
            "concept_drift": drift["concept_drift"]["detected"], "html": str(html)}
        timings["drift"] = time.perf_counter() - t
        log(f"[6/7] drift: {summary['drift']}")

        t = time.perf_counter()
        if not (settings.keys_dir / PRIVATE_FILE).exists():
            init_keys(settings.keys_dir)
        earlier = [d for d in store.list_decisions() if d["run_id"] == run_id]
        if earlier:
            summary["decision"] = {k: earlier[0][k] for k in ("decision_id", "verdict", "weight_before",
                                                                "weight_after")} | {"reused": True}
        else:
            out = decide(settings, store, KeyRing.from_settings(settings, sign=True), run_id)
            summary["decision"] = {k: out[k] for k in ("decision_id", "verdict", "reason", "weight_before",
                                                         "weight_after", "mlflow_run_id", "pending_sync")}
        timings["decide"] = time.perf_counter() - t
        log(f"[7/7] decision: {summary['decision']}")
    summary["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    if app:
        serve_app(settings, port, log)
    return summary


def serve_app(settings: Settings, port: int, log: Callable[[str], None]) -> None:
    """Serve the Streamlit app on 127.0.0.1 until interrupted."""
    env = os.environ | {"WORKBENCH_HOME": str(settings.home), "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app.py"), "--server.address", "127.0.0.1",
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    from workbench.ops.access import approvers_path, load_approvers
    from workbench.decide.signing import PRIVATE_FILE

    log(f"serving the workbench app on http://127.0.0.1:{port} (Ctrl-C stops it)")
    if not (settings.keys_dir / PRIVATE_FILE).exists() or not load_approvers(approvers_path(settings.home)):
        log("to sign decisions in the app: `workbench keys init` (once) and `workbench approver add NAME`; "
            "everyone else reviews read-only")
    try:
        subprocess.run(cmd, env=env, check=False, cwd=REPO_ROOT)   # the repository's .streamlit/config.toml
    except KeyboardInterrupt:
        pass
