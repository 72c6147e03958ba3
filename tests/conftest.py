"""Shared fixtures: a small real demo (NYC flights sample, real MLflow sqlite store) built once per session."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-collection actor started for each Ray replay
REPO = Path(__file__).resolve().parent.parent
DEMO_LIMIT = 6000

# The longest test files (a minute or more of subprocesses each), collected first: `make test` runs the suite
# on two pytest-xdist workers a file at a time (--dist loadfile), and a long file handed out last would leave
# one worker running it alone. Only the order changes; every test is independent of it.
LONG_FILES = (
    "replay/test_crash_safety.py",
    "replay/test_crash_two_writers.py",
    "replay/test_ray_postgres.py",
    "replay/test_replay_faults.py",
    "ops/test_jobs.py",
    "replay/test_bad_models.py",
    "live/test_router.py",
    "live/test_load.py",
    "app/test_app.py",
    "app/test_app_browser.py",
    "test_integrity.py",
    "test_security.py",
    "ingest/test_bad_traffic.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        path = item.path.as_posix()
        return next((i for i, f in enumerate(LONG_FILES) if path.endswith("/tests/" + f)), len(LONG_FILES))

    items.sort(key=rank)  # stable: the files' own order, and the tests' within each file, are kept


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A workbench home after `workbench demo --no-app` on a 6000-flight sample (runs the real CLI).

    Under pytest-xdist the first worker that needs it builds it once in the session's shared folder and
    every worker gets its own copy (a copied home works from its new place), so the workers do not all
    spend the demo's minutes building the same home."""
    import fcntl
    import shutil

    home = tmp_path_factory.mktemp("demo_home")
    shared = tmp_path_factory.getbasetemp().parent / "shared_demo_home"
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        _build_demo(home)
        return home
    with open(tmp_path_factory.getbasetemp().parent / "shared_demo_home.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes: the others wait for the build
        if not (shared / "demo.json").exists():
            shutil.rmtree(shared, ignore_errors=True)  # a build that failed half-way is redone
            shared.mkdir()
            _build_demo(shared)
    shutil.copytree(shared, home, dirs_exist_ok=True)
    return home


def _build_demo(home: Path) -> None:
    env = os.environ | {"WORKBENCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "demo",
            "--no-app",
            "--json",
            "--limit",
            str(DEMO_LIMIT),
            "--data-dir",
            str(home / "data"),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (home / "demo.json").write_text(proc.stdout)


@pytest.fixture
def workbench_env(demo_home, monkeypatch):
    """Point the library at the demo home (settings and MLflow)."""
    from workbench.config import load_settings

    monkeypatch.setenv("WORKBENCH_HOME", str(demo_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings()
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return settings


def run_cli(
    *args: str, home: Path, check: bool = True, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI on ``home``; ``env`` adds variables (MLFLOW_TRACKING_URI is dropped unless given there)."""
    extra = env or {}
    env = os.environ | {"WORKBENCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env |= extra
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def cli(*args: str, home: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """:func:`run_cli` inside this process: ``workbench.cli.main(args)`` with its stdout and stderr captured,
    for tests of what a command does rather than of the process (exit codes, stderr, signals: keep
    :func:`run_cli` there). Saves the ~3-6 s a new process spends importing pandas, DuckDB and MLflow.
    The environment and MLflow's tracking URI (the command sets both) are restored afterwards."""
    import contextlib
    import io

    from mlflow.tracking._tracking_service import utils as tracking

    from workbench.cli import main

    saved_env, saved_uri = dict(os.environ), tracking._tracking_uri
    os.environ["WORKBENCH_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        tracking.set_tracking_uri(saved_uri)
        os.environ.clear()
        os.environ.update(saved_env)
    proc = subprocess.CompletedProcess(["workbench", *args], code, out.getvalue(), err.getvalue())
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


class TinyModel:
    """A test predictor: score = sigmoid(x), with optional failure modes keyed on the row's x value."""

    def __init__(self, name="tiny", raise_on=None, nan_on=None, threshold=0.5, wrong_shape=False):
        from workbench.replay.models import ModelRef

        self.ref = ModelRef(
            uri=f"test:{name}", name=name, version="1", run_id=None, flavor="test", features=("x",), threshold=threshold
        )
        self.device = "cpu"
        self.raise_on, self.nan_on, self.wrong_shape = raise_on or set(), nan_on or set(), wrong_shape
        self.calls = 0

    def predict(self, batch: pa.Table) -> np.ndarray:
        self.calls += 1
        x = batch.column("x").to_numpy()
        if self.raise_on.intersection(x.tolist()):
            raise ValueError("bad input row")
        out = 1 / (1 + np.exp(-x))
        out[np.isin(x, list(self.nan_on))] = np.nan
        return np.stack([out, out, out], axis=1) if self.wrong_shape else out


# -- decisions: synthetic evaluations of the binding shape, seeded runs, a real MLflow server -------------
def make_evaluation(
    run_id: str = "run_syn",
    *,
    labeled_rows: int = 5000,
    confidence: float | None = 0.95,
    metrics: dict | None = None,
    latency: dict | None = None,
    errors: tuple | None = (0, 5000),
    segments: dict | None = None,
) -> dict:
    """An evaluation dict of the binding shape (``workbench evaluate --json``).

    ``metrics``: {name: (baseline, candidate, delta_ci_low, delta_ci_high)}; intervals of the two values are
    +-0.01 around them. ``latency``: {"p99": (baseline_ms, candidate_ms, delta_ci_low, delta_ci_high)}.
    ``errors``: candidate (count, rows); ``segments``: {col: {value: {"rows", "small", metric: tuple}}}.
    """
    metrics = (
        metrics
        if metrics is not None
        else {
            "roc_auc": (0.70, 0.72, 0.01, 0.03),
            "f1": (0.40, 0.42, 0.005, 0.035),
            "log_loss": (0.50, 0.49, -0.02, 0.0),
        }
    )
    latency = latency if latency is not None else {"p99": (2.0, 2.2, 0.1, 0.3)}

    def side(i: int, ms: dict) -> dict:
        return {m: {"value": v[i], "ci_low": v[i] - 0.01, "ci_high": v[i] + 0.01} for m, v in ms.items()}

    def delta(ms: dict) -> dict:
        return {
            m: {"value": v[1] - v[0], "ci_low": v[2], "ci_high": v[3], "p_value": 0.01, "mde": 0.012}
            for m, v in ms.items()
        }

    ev = {
        "run_id": run_id,
        "labeled_rows": labeled_rows,
        "label_coverage": 0.97,
        "confidence": confidence,
        "rows": {"baseline": labeled_rows, "candidate": labeled_rows, "paired": labeled_rows},
        "thresholds": {"baseline": 0.5, "candidate": 0.5},
        "baseline": side(0, metrics),
        "candidate": side(1, metrics),
        "delta": delta(metrics),
        "latency": {
            "baseline": {p: v[0] for p, v in latency.items()},
            "candidate": {p: v[1] for p, v in latency.items()},
            "delta": {p: {"value": v[1] - v[0], "ci_low": v[2], "ci_high": v[3]} for p, v in latency.items()},
            "mann_whitney_p": 0.2,
        },
        "segments": {},
        "undefined": {},
    }
    if errors is not None:
        n_err, n = errors
        rate = n_err / n
        half = 2 * (rate / n) ** 0.5  # a rough interval: enough for the gate's bound logic
        ev["errors"] = {
            "baseline": {"count": 0, "rows": n, "rate": 0.0, "ci_low": 0.0, "ci_high": 3.84 / (n + 3.84)},
            "candidate": {
                "count": n_err,
                "rows": n,
                "rate": rate,
                "ci_low": max(0.0, rate - half),
                "ci_high": rate + half + 3.84 / (n + 3.84),
            },
        }
    for col, values in (segments or {}).items():
        for value, seg in values.items():
            ms = {m: v for m, v in seg.items() if isinstance(v, tuple)}
            ev["segments"].setdefault(col, {})[value] = {
                "rows": seg.get("rows", 500),
                "small": seg.get("small", False),
                "baseline": side(0, ms),
                "candidate": side(1, ms),
                "delta": delta(ms),
            }
    return ev


def make_evidence(*, latency: dict | None = None, online: bool = False, **kw) -> dict:
    """A decision's evidence dict (:func:`workbench.decide.evidence.build_evidence`'s shape) built on
    :func:`make_evaluation` (its metric, error and segment arguments); ``latency``:
    {"p99": ((baseline, low, high), (candidate, low, high))} in ms, from an ``online`` replay or not."""
    ev = make_evaluation(**kw)
    latency = latency if latency is not None else {"p99": ((2.0, 1.9, 2.1), (2.2, 2.1, 2.3))}
    ev["latency"] = {
        "online": online,
        **{
            role: {p: dict(zip(("value", "ci_low", "ci_high"), v[i], strict=True)) for p, v in latency.items()}
            for i, role in enumerate(("baseline", "candidate"))
        },
    }
    ev["bound"] = "sequential"
    return ev


#: seeded run qualities: the candidate's own score noise (the baseline's is 1.0) and its error share
QUALITIES = {"better": (0.4, 0.0), "bad": (4.0, 0.0), "same": (1.0, 0.0), "failing": (0.4, 0.02)}


def seed_run(
    store,
    run_id: str,
    evaluation: dict | None = None,
    *,
    quality: str = "better",
    rows: int = 20_000,
    labelled: float = 1.0,
    model: str = "fraud",
    baseline_version: str = "1",
    candidate_version: str = "2",
    traffic: str | None = None,
    mode: str = "throughput",
    seed: int | None = None,
) -> None:
    """A finished replay run of a registered baseline/candidate pair over its own synthetic traffic set
    (``syn_<run_id>`` unless ``traffic`` names a new one): ``rows`` requests with a ``region`` column, labels on
    the first ``labelled`` share, and paired scores of ``quality`` (:data:`QUALITIES`: ``better`` passes the
    default policy at 20,000 rows, ``bad`` fails its critical AUC gate, ``same`` stays inconclusive,
    ``failing`` has 2 % candidate errors). ``evaluation``, when given, is stored as the run's evaluation."""
    from workbench.replay.paired import paired_table
    from workbench.replay.scoring import Scored
    from workbench.store import traffic_table

    traffic = traffic or f"syn_{run_id}"
    if store.traffic_info(traffic) is not None:
        raise ValueError(f"seed_run makes its own traffic set; {traffic!r} exists")
    rng = np.random.default_rng(seed if seed is not None else zlib.crc32(run_id.encode()))
    sigma, error_share = QUALITIES[quality]
    ids = [f"{run_id}-{i:06d}" for i in range(rows)]
    times = np.datetime64("2026-11-01T00:00:00", "s") + (np.arange(rows) * 30).astype("timedelta64[s]")
    region = np.array(["north", "south"])[rng.integers(0, 2, rows)]
    x = rng.standard_normal(rows)
    logit = 1.5 * x - 0.5
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    seen = logit + 0.5 * rng.standard_normal(rows)
    base = 1 / (1 + np.exp(-(seen + rng.standard_normal(rows))))
    cand = 1 / (1 + np.exp(-(seen + sigma * rng.standard_normal(rows))))
    failed = rng.random(rows) < error_share
    cand[failed] = np.nan
    cur = store.cursor()
    store.upsert_traffic_set(
        cur,
        traffic,
        id_col="request_id",
        time_col="event_time",
        entity_col=None,
        columns=["x", "region"],
        fingerprint="f" * 64,
        added_rows=rows,
        added_quarantined=0,
    )
    table = pa.table(
        {
            "_row": pa.array(np.arange(rows, dtype=np.int64)),
            "request_id": pa.array(ids),
            "event_time": pa.array(times, pa.timestamp("us")),
            "entity_key": pa.nulls(rows, pa.string()),
            "x": pa.array(x),
            "region": pa.array(region),
        }
    )
    cur.register("_seed_traffic", table)
    cur.execute(f"CREATE TABLE {traffic_table(traffic)} AS SELECT * FROM _seed_traffic")
    cur.unregister("_seed_traffic")
    n_lab = int(rows * labelled)
    labels = pa.table(
        {
            "request_id": pa.array(ids[:n_lab]),
            "label": pa.array(y[:n_lab]),
            "label_time": pa.nulls(n_lab, pa.timestamp("us")),
        }
    )
    store.upsert_labels(cur, traffic, labels)
    store.declare_segments(traffic, ["region"])
    refs = {
        role: {
            "uri": f"models:/{model}/{v}",
            "name": model,
            "version": v,
            "run_id": f"mlrun{v}",
            "flavor": "sklearn",
            "features": ["x"],
            "threshold": 0.5,
        }
        for role, v in (("baseline", baseline_version), ("candidate", candidate_version))
    }
    store.create_run(
        run_id=run_id,
        traffic=traffic,
        baseline=refs["baseline"],
        candidate=refs["candidate"],
        rows_total=rows,
        batch_size=rows,
        device="cpu",
        mode=mode,
        meta={},
    )
    latency = rng.lognormal(np.log(2.0), 0.3, (2, rows))
    errors = [f"RuntimeError: synthetic failure {i}" if f else None for i, f in enumerate(failed.tolist())]
    scored = {
        "baseline": Scored(base, None, latency[0]),
        "candidate": Scored(cand, errors if failed.any() else None, latency[1]),
    }
    store.commit_batch(
        run_id,
        0,
        0,
        rows - 1,
        rows,
        0.0,
        paired_table(pa.array(np.arange(rows)), scored, {"baseline": 0.5, "candidate": 0.5}),
    )
    store.finish_run(run_id)
    if evaluation is not None:
        store.save_evaluation(run_id, {}, evaluation)


def fresh_run(store, i: int, **kw) -> str:
    """Seed ``run_a{i}``: a new finished run of the same pair over new requests (``seed_run``'s defaults unless
    ``kw`` says otherwise); returns its id. Each PROMOTE needs labelled rows no earlier PROMOTE used."""
    run_id = f"run_a{i}"
    seed_run(store, run_id, **kw)
    return run_id


def kills(full: int, quick: int) -> int:
    """How many seeded SIGKILLs a crash test makes: ``full`` for the reliability report (``benchmarks/reliability.py``
    sets ``WORKBENCH_SOAK=1``), else the first ``quick`` of the same seeded sequence, to keep the suite short."""
    return full if os.environ.get("WORKBENCH_SOAK") == "1" else quick


def task_model_ref(name: str, version: str, column: str, task: str, **kw):
    """The reference of an in-process task test model: version ``version`` of ``name`` (``models:/name/version``)
    reading ``x`` and ``column``, threshold 0.5; ``kw``: more of its fields (``classes``)."""
    from workbench.replay.models import ModelRef

    return ModelRef(
        uri=f"models:/{name}/{version}",
        name=name,
        version=version,
        run_id=None,
        flavor="test",
        features=("x", column),
        threshold=0.5,
        task=task,
        **kw,
    )


def task_traffic(prefix: str, x: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """The task tests' traffic: request ids ``{prefix}-000000``, ..., one event a minute, ``x``, two noise columns
    (``zb``, ``zc``) and a ``region`` segment (north or south), drawn from ``rng`` in that order."""
    rows = len(x)
    return pa.table(
        {
            "request_id": [f"{prefix}-{i:06d}" for i in range(rows)],
            "event_time": pa.array(np.arange(rows) * 60, pa.timestamp("s")),
            "x": x,
            "zb": rng.standard_normal(rows),
            "zc": rng.standard_normal(rows),
            "region": np.array(["north", "south"])[rng.integers(0, 2, rows)],
        }
    )


def write_task_data(folder: Path, seed: int, traffic: pa.Table, labels: dict) -> tuple[Path, Path]:
    """Write ``traffic`` and its ``labels`` (columns beside the request id) to ``folder`` as
    ``traffic_{seed}.parquet`` and ``labels_{seed}.parquet``; returns (traffic file, labels file)."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"traffic_{seed}.parquet", folder / f"labels_{seed}.parquet"
    pq.write_table(traffic, paths[0])
    pq.write_table(pa.table({"request_id": traffic.column("request_id"), **labels}), paths[1])
    return paths


def build_task_home(
    home: Path, traffic: Path, labels: Path, name: str, models, run_id: str, task: str, label_col: str = "label", **kw
) -> None:
    """Ingest ``traffic`` as ``name`` (segment column ``region``) with its ``labels`` of ``task``, replay ``models``
    (baseline, candidate) over it as ``run_id`` and evaluate (``kw``: :func:`evaluate_run`'s options) and drift it."""
    from workbench.config import load_settings
    from workbench.drift.report import drift_run
    from workbench.evaluate.evaluation import evaluate_run
    from workbench.ingest.traffic import ingest, ingest_labels
    from workbench.replay.pipeline import ReplayOptions, replay
    from workbench.store import Store

    with Store(load_settings(home).db_path) as store:
        ingest(store, traffic, name)
        store.declare_segments(name, ["region"])
        ingest_labels(store, labels, name, label_col=label_col, task=task)
        replay(store, name, *models, run_id=run_id, options=ReplayOptions(writers=1))
        evaluate_run(store, run_id, segment="region", **kw)
        drift_run(store, run_id)


def open_run_page(home: Path, monkeypatch, run_id: str):
    """``open_page(page, run=run_id)``: the app over ``home`` (no MLflow) on ``pages/{page}.py`` at ``run``,
    checked to raise nothing."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def open_page(page: str, run: str = run_id) -> AppTest:
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
        at.query_params.update({"run": run})
        at.run()
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, one worker, webhooks to loopback allowed).

    Yields its URL; the server (its whole process group) is stopped at the end of the session.
    """
    import httpx
    from cryptography.fernet import Fernet

    from pipelines.demo import UI_ONLY

    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    env = os.environ | {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        "MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        **UI_ONLY,  # no job runner: webhooks are delivered without it
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited: " + (root / "server.log").read_text()[-3000:])
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "mlflow server did not answer /health in 120 s: " + (root / "server.log").read_text()[-3000:]
                )
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)  # a throwaway server: no need to wait for its graceful shutdown
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def register_model(tracking_uri: str, prefix: str, versions: int = 2) -> str:
    """A new registered model named ``prefix`` + a random suffix, with ``versions`` versions (each from its
    own run) on the real MLflow server; returns its name."""
    import uuid

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    name = prefix + uuid.uuid4().hex[:8]
    client.create_registered_model(name)
    exp = client.get_experiment_by_name("models") or client.get_experiment(client.create_experiment("models"))
    for _ in range(versions):
        run = client.create_run(exp.experiment_id)
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return name


def _seed_home(home: Path) -> Path:
    from workbench.decide.signing import init_keys
    from workbench.store import Store

    init_keys(home / "keys")
    with Store(home / "lake") as store:
        seed_run(store, "run_a", make_evaluation("run_a"))
    return home


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory) -> Path:
    """:func:`seeded_home`'s home, built once per session (each test gets a copy)."""
    return _seed_home(tmp_path_factory.mktemp("seeded") / "home")


@pytest.fixture
def seeded_home(request, tmp_path) -> Path:
    """A workbench home with a signing key and one finished synthetic run ``run_a`` (fraud v1 vs v2) whose
    evaluation passes the default policy: a copy of the session's, or built here when the lake is to live
    elsewhere ($WORKBENCH_CATALOG or $WORKBENCH_DATA_PATH set)."""
    import shutil

    home = tmp_path / "home"
    if os.environ.get("WORKBENCH_CATALOG") or os.environ.get("WORKBENCH_DATA_PATH"):
        return _seed_home(home)
    shutil.copytree(request.getfixturevalue("seeded_template"), home)
    return home


# -- scheduled jobs: a private copy of the demo home with a signing key, and job specs ---------
@pytest.fixture
def job_home(demo_home, tmp_path) -> Path:
    """A copy of the demo home (data, DuckDB, MLflow store, and the signing key the demo created), for tests
    that run jobs."""
    import shutil

    home = tmp_path / "job_home"
    shutil.copytree(demo_home, home)
    return home


def write_spec(path: Path, home: Path, **fields) -> Path:
    """A YAML job spec for the demo's model over the demo data in ``home``: the last 60 days of traffic up to
    the newest flight (about 950 requests of the 6000-flight sample); ``fields`` override top-level keys."""
    import yaml

    spec = {
        "name": "fd",
        "model": "flight-delay",
        "verdict": "record",
        "traffic": {
            "path": str(home / "data" / "traffic.parquet"),
            "window": "60d",
            "anchor": "latest",
            "entity_col": "tail_number",
            "nullable": ["wind_dir", "pressure"],
        },
        "labels": {"path": str(home / "data" / "labels.parquet")},
    } | fields
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_live_log(home: Path, model: str = "flight-delay", n: int = 200) -> None:
    """A traffic log as the router writes it: the last n seconds, a request a second, every tenth on the
    candidate (one of those a 500)."""
    from datetime import UTC, datetime, timedelta

    from workbench.live.trafficlog import LiveRecord, Outcome, TrafficLog

    now = datetime.now(UTC)
    log = TrafficLog(home / "live" / model, flush_s=0.02)
    for i in range(n):
        arm = "candidate" if i % 10 == 0 else "baseline"
        body = json.dumps({"dataframe_records": [{"distance": i}]}).encode()
        rec = LiveRecord(f"r{i}", now - timedelta(seconds=n - i), f"u{i}", arm, "bucket", 1, None, body, "x/json")
        failed = i == 100
        rec.outcomes[arm] = Outcome(500 if failed else 200, b"boom" if failed else b"[0.5]", 20.0 + i % 7)
        log.append(rec)
    log.close()


class LakeConnection:
    """A connection to a home's storage for tests that query its tables directly (a store's cursor)."""

    def __init__(self, path: Path, read_only: bool = True):
        from workbench.store import Store

        self.store = Store(path, read_only=read_only)
        self.cur = self.store.cursor()

    def execute(self, sql: str, params: list | tuple = ()):
        return self.cur.execute(sql, params)

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- a throwaway PostgreSQL server (the lake's catalog with $WORKBENCH_CATALOG) ----------------------------
PG_INSTALL = "apt-get install -y postgresql (or `make system-deps`)"


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl, createdb); fails naming the install command."""
    import glob
    import shutil

    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for d in candidates:
        if all((d / tool).exists() for tool in ("initdb", "pg_ctl", "createdb")):
            return d
    pytest.fail(f"PostgreSQL's initdb/pg_ctl are missing: {PG_INSTALL}")


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port, run by an unprivileged user
    (initdb and pg_ctl refuse root); each test takes its own database with :meth:`catalog`."""

    def __init__(self, root: Path):
        import shutil

        self.bin, self.root, self.port = postgres_bin(), root, free_port()
        self.data, self.log = root / "data", root / "server.log"
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(root, "nobody")
        root.chmod(0o700)
        self._pg(self.bin / "initdb", "-D", str(self.data), "-U", "wb", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    def _pg(self, *cmd, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {proc.stderr[-2000:]} {self._log_tail()}")
        return proc

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=200"
        self._pg(self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server (fast: open sessions are ended)."""
        self._pg(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def catalog(self, name: str) -> str:
        """A new, empty database ``name``, as a ``$WORKBENCH_CATALOG`` value."""
        self._pg(self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "wb", name)
        return f"postgres:dbname={name} host=127.0.0.1 port={self.port} user=wb"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session, stopped (and its folder removed) at the end."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="workbench-pg-"))  # under /tmp: the server's user must reach it
    server = PostgresServer(root)
    try:
        yield server
    finally:
        server._pg(server.bin / "pg_ctl", "-D", server.data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_catalog(postgres_server, request, monkeypatch) -> str:
    """A fresh PostgreSQL catalog for this test, set as ``$WORKBENCH_CATALOG`` (for this process and the CLI
    processes it starts)."""
    name = "t_" + format(zlib.crc32(request.node.nodeid.encode()), "08x")
    catalog = postgres_server.catalog(name)
    monkeypatch.setenv("WORKBENCH_CATALOG", catalog)
    return catalog


# -- a throwaway S3-compatible server (the lake's data path with $WORKBENCH_DATA_PATH=s3://...) ----------------
# moto's S3 in a child process on 127.0.0.1: it prints its port, then serves until its stdin closes (the test
# session ended or died) or an hour has passed. The first three requests go unchecked (they make the user whose
# keys the tests use); every later one must be signed with a known key, so wrong credentials are refused.
MOTO_SERVER = """
import os, select, sys
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
select.select([sys.stdin], [], [], 3600)
server.stop()
"""


class S3Server:
    """moto's S3 on 127.0.0.1, with an access key that may do anything in S3 (:meth:`bucket` makes buckets)."""

    def __init__(self, root: Path):
        import boto3

        self.log = open(root / "moto.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MOTO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        port = self.proc.stdout.readline().strip() if ready else b""
        if not port:
            self.stop()
            raise RuntimeError("moto's S3 server did not start: " + (root / "moto.log").read_text()[-3000:])
        self.endpoint, self.region = f"http://127.0.0.1:{int(port)}", "us-east-1"
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=self.region,
                           aws_access_key_id="setup", aws_secret_access_key="setup")  # fmt: skip
        iam.create_user(UserName="workbench")
        key = iam.create_access_key(UserName="workbench")["AccessKey"]
        allow_s3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="workbench", PolicyName="s3", PolicyDocument=json.dumps(allow_s3))
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                               aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)  # fmt: skip

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server with the valid key."""
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint}  # fmt: skip

    def bucket(self, name: str) -> str:
        """A new, empty bucket ``name``."""
        self.s3.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The object keys under ``prefix`` in ``bucket``, listed with boto3."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def stop(self) -> None:
        """Close the server's stdin (it stops itself), then make sure it is gone."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A throwaway S3-compatible server for the session (moto, 127.0.0.1), stopped at the end."""
    server = S3Server(tmp_path_factory.mktemp("s3_server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_data_path(s3_server, request, monkeypatch) -> str:
    """A fresh bucket for this test, set as ``$WORKBENCH_DATA_PATH`` (``s3://<bucket>/lake``) with the AWS
    variables that reach it (for this process and the CLI processes it starts)."""
    bucket = s3_server.bucket("t-" + format(zlib.crc32(request.node.nodeid.encode()), "08x"))
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WORKBENCH_DATA_PATH", f"s3://{bucket}/lake")
    return f"s3://{bucket}/lake/"


# -- a throwaway Ray cluster (the replay's --executor ray --ray-address) ----------------------------------------
RAY_CPUS = 3  # two actors and one CPU for reading the traffic


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with :data:`RAY_CPUS` logical CPUs and no GPU, in its own temp folder, shared by
    the session's Ray tests (their replays connect with ``--ray-address``, each a job of its own); its address.
    Started from this process's environment, before a test sets its own variables; stopped (its process group)
    when the session ends."""
    import shutil
    import tempfile

    pytest.importorskip("ray", reason="Ray is an optional extra")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="wbray")  # short: Ray's socket paths must fit 107 characters
    log_path = Path(temp) / "ray-start.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
             "--node-ip-address", "127.0.0.1", "--num-cpus", str(RAY_CPUS), "--num-gpus", "0", "--temp-dir", temp,
             "--include-dashboard", "false", "--disable-usage-stats"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=os.environ | {"RAY_AUTH_MODE": "disabled"},  # Ray 2.60's `ray start` turns token auth on by default
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while b"Ray runtime started." not in log_path.read_bytes():  # printed once the raylet has registered
            assert proc.poll() is None, "ray start exited: " + log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)  # a throwaway cluster: `ray start --block` takes over 20 s to stop on SIGTERM
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)
