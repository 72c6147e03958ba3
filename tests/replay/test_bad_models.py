"""Bad models: candidates that raise, hang, return NaN or the wrong shape, leak memory or kill their process.

Real MLflow pyfunc models saved to local folders (``tests/fixtures/bad_model.py``, loaded through
``code_paths``). In-process scoring isolates exceptions, NaN and shapes to their rows; isolated scoring
(``ReplayOptions(isolate=True)``, ``--isolate``) also survives ``os.abort``, hangs and leaks. Without
isolation a model that kills the process stops the replay with its committed batches intact, and the
same command with ``--isolate`` resumes it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, LakeConnection, TinyModel
from reliability_log import record
from workbench import WorkbenchError
from workbench.ingest.traffic import ingest
from workbench.replay.isolation import MAX_CONSECUTIVE_CRASHES
from workbench.replay.models import load_predictor
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store

FIXTURES = Path(__file__).parent.parent / "fixtures"
N = 400
XS = (np.arange(N) - 200) / 10.0  # the x of row i; faults are keyed on it
RAISE, NAN, SHAPE, ABORT, HANG = [5], [60, 61], [120], [170, 171], [260]
BALLOON = 333
TEXTS = {
    "raise": "ValueError: cannot score this row",
    "nan": "non-finite score: nan",
    "shape": "ValueError: model output has shape (1, 3); expected one score per row",
    "abort": "model worker died: killed by SIGABRT",
    "hang": "timeout: no answer within 2 s",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Pyfunc models saved once per module: good, faulty (in-process faults), mixed (all faults), memory."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    sys.path.insert(0, str(FIXTURES))
    try:
        from bad_model import BadModel
    finally:
        sys.path.remove(str(FIXTURES))
    root = tmp_path_factory.mktemp("bad_models")
    sig = infer_signature(pd.DataFrame({"x": [0.1]}), np.array([0.5]))
    x = {
        name: [float(XS[i]) for i in rows]
        for name, rows in (
            ("raise", RAISE),
            ("nan", NAN),
            ("shape", SHAPE),
            ("abort", ABORT),
            ("hang", HANG),
            ("balloon", [BALLOON]),
        )
    }
    models = {
        "good": {},
        "faulty": {"faults": {k: x[k] for k in ("raise", "nan", "shape")}},
        "mixed": {"faults": {k: x[k] for k in ("raise", "nan", "shape", "abort", "hang")}},
        "abort": {"faults": {"abort": x["abort"]}},
        "memory": {"faults": {"balloon": x["balloon"]}, "leak_mb": 50, "balloon_mb": 1200},
    }
    for name, kw in models.items():
        mlflow.pyfunc.save_model(
            str(root / name),
            python_model=BadModel(**kw),
            code_paths=[str(FIXTURES / "bad_model.py")],
            signature=sig,
            pip_requirements=["mlflow"],
        )
    pd.DataFrame(
        {
            "request_id": [f"q{i:04d}" for i in range(N)],
            "event_time": pd.date_range("2024-03-01", periods=N, freq="s"),
            "x": XS,
        }
    ).to_parquet(root / "t.parquet")
    return root


@pytest.fixture
def store(model_dir):
    with Store(":memory:") as s:
        ingest(s, model_dir / "t.parquet", "t")
        yield s


def errors_by_row(store: Store, run_id: str, role: str = "candidate") -> dict[int, str]:
    return dict(
        store.cursor()
        .execute(f"SELECT _row, {role}_error FROM predictions WHERE run_id = ? AND {role}_error IS NOT NULL", [run_id])
        .fetchall()
    )


def check_complete(store: Store, run_id: str) -> None:
    n, distinct, lo, hi = (
        store.cursor()
        .execute(
            "SELECT count(*), count(DISTINCT _row), min(_row), max(_row) FROM predictions WHERE run_id = ?", [run_id]
        )
        .fetchall()[0]
    )
    assert (n, distinct, lo, hi) == (N, N, 0, N - 1)


def test_in_process_faults_fail_only_their_rows(store, model_dir):
    good, faulty = load_predictor(str(model_dir / "good")), load_predictor(str(model_dir / "faulty"))
    r = replay(store, "t", good, faulty, run_id="inproc", options=ReplayOptions(batch_size=50))
    check_complete(store, "inproc")
    want = {i: TEXTS[k] for k, rows in (("raise", RAISE), ("nan", NAN), ("shape", SHAPE)) for i in rows}
    assert errors_by_row(store, "inproc") == want and r.baseline_errors == 0
    ok = (
        store.cursor()
        .execute(
            "SELECT count(*) FROM predictions WHERE run_id = 'inproc' AND candidate_score IS NOT "
            "NULL AND abs(candidate_score - baseline_score) < 1e-12"
        )
        .fetchall()[0][0]
    )
    assert ok == N - len(want)
    record(
        "bad models",
        "in-process: raises, returns NaN, returns an (n, 3) output on 4 of 400 rows",
        "run finished; only those rows are errors, with the reason",
        rows=N,
        candidate_errors=len(want),
        baseline_errors=0,
    )


def test_isolated_worker_survives_abort_and_hang(store, model_dir):
    good, mixed = load_predictor(str(model_dir / "good")), load_predictor(str(model_dir / "mixed"))
    r = replay(
        store, "t", good, mixed, run_id="iso", options=ReplayOptions(batch_size=50, isolate=True, model_timeout=2.0)
    )
    check_complete(store, "iso")
    want = {
        i: TEXTS[k] for k, rows in (("raise", RAISE), ("nan", NAN), ("shape", SHAPE), ("abort", ABORT)) for i in rows
    }
    want |= {i: TEXTS["hang"] for i in range(250, 300)}  # a hung call fails its whole batch (never bisected)
    assert errors_by_row(store, "iso") == want
    assert (r.rows, r.baseline_errors, r.candidate_errors) == (N, 0, len(want))
    inproc = replay(store, "t", good, good, run_id="ref", options=ReplayOptions(batch_size=50))
    assert inproc.baseline_errors == 0
    same = (
        store.cursor()
        .execute("""SELECT count(*) FROM predictions a JOIN predictions b USING (_row)
        WHERE a.run_id = 'iso' AND b.run_id = 'ref' AND a.baseline_score = b.baseline_score""")
        .fetchall()[0][0]
    )
    assert same == N  # isolation changes where a model runs, not what it scores
    record(
        "bad models",
        "isolated: os.abort() on 2 rows, a 1-hour hang on 1 row (2 s timeout), raise/NaN/shape on 4 rows",
        "run finished; abort rows 'killed by SIGABRT', the hung call's 50 rows 'timeout', worker replaced each time",
        rows=N,
        candidate_errors=len(want),
        baseline_errors=0,
    )


def test_isolated_worker_is_replaced_when_it_leaks_or_balloons(store, model_dir, caplog):
    good, memory = load_predictor(str(model_dir / "good")), load_predictor(str(model_dir / "memory"))
    with caplog.at_level(logging.INFO, logger="workbench.replay.isolation"):
        r = replay(
            store,
            "t",
            good,
            memory,
            run_id="mem",
            options=ReplayOptions(batch_size=20, isolate=True, worker_memory_mb=800),
        )
    check_complete(store, "mem")
    errs = errors_by_row(store, "mem")
    assert list(errs) == [BALLOON] and errs[BALLOON].startswith("worker exceeded the memory limit (")
    assert r.candidate_errors == 1 and r.baseline_errors == 0
    summary = next(m for m in caplog.messages if m.startswith("isolated candidate model:"))
    recycled = int(summary.split("recycled ")[1])
    assert recycled >= 1 and "memory kills 0" not in summary
    record(
        "bad models",
        "isolated: leaks 50 MB per call, and holds 1.2 GB on one row (limit 800 MB)",
        "leaking worker replaced between calls, no row lost; the ballooning row failed with the reason",
        rows=N,
        candidate_errors=1,
        workers_recycled=recycled,
    )


class AbortEverywhere(TinyModel):
    """Kills its process on every call."""

    def predict(self, batch):
        os.abort()


def test_model_that_always_kills_its_worker_is_disabled(store):
    r = replay(
        store,
        "t",
        TinyModel("ok"),
        AbortEverywhere("boom"),
        run_id="doomed",
        options=ReplayOptions(batch_size=100, isolate=True),
    )
    check_complete(store, "doomed")
    errs = errors_by_row(store, "doomed")
    assert r.candidate_errors == N and r.baseline_errors == 0
    disabled = f"model disabled after {MAX_CONSECUTIVE_CRASHES} consecutive worker crashes"
    assert sum(e == disabled for e in errs.values()) > N - 10 and errs[0] == TEXTS["abort"]
    record(
        "bad models",
        "isolated: a model that calls os.abort() on every call",
        f"disabled after {MAX_CONSECUTIVE_CRASHES} single-row crashes; every row an error with the reason",
        rows=N,
        candidate_errors=N,
        baseline_errors=0,
    )


def test_model_that_cannot_load_in_its_worker_stops_with_a_clear_error(store, model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir / "good", broken)
    model = load_predictor(str(broken))
    (broken / "python_model.pkl").write_bytes(b"not a pickle")  # loads here, fails in the worker
    with pytest.raises(WorkbenchError, match="the isolated model workers cannot load the models: "):
        replay(store, "t", TinyModel("ok"), model, run_id="unloadable", options=ReplayOptions(isolate=True))
    assert store.require_run("unloadable")["rows_done"] == 0
    shutil.copy(model_dir / "good" / "python_model.pkl", broken / "python_model.pkl")
    r = replay(store, "t", TinyModel("ok"), model, run_id="unloadable", options=ReplayOptions(isolate=True))
    assert (r.rows, r.candidate_errors) == (N, 0)  # the same run id resumes once the model loads
    record(
        "bad models",
        "isolated: a model that fails to load in its worker",
        "stopped with a one-line error before scoring; the run resumed later",
        rows=N,
    )


def test_abort_without_isolation_stops_and_resumes_with_isolation(model_dir, tmp_path):
    home = tmp_path / "home"
    env = os.environ | {"WORKBENCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cli = [sys.executable, "-m", "workbench.cli"]
    subprocess.run(
        cli + ["ingest", str(model_dir / "t.parquet"), "--name", "t"],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    args = cli + [
        "replay",
        "--baseline",
        str(model_dir / "good"),
        "--candidate",
        str(model_dir / "abort"),
        "--traffic",
        "t",
        "--run-id",
        "r",
        "--batch-size",
        "50",
        "--writers",
        "1",
        "--json",
    ]
    died = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert died.returncode == -signal.SIGABRT and died.stdout == ""
    con = LakeConnection(home / "lake", read_only=False)  # opens (WAL replayed); the committed batches hold
    done, n, distinct = con.execute("""SELECT (SELECT coalesce(sum(rows), 0) FROM run_batches WHERE run_id = 'r'),
        count(*), count(DISTINCT _row) FROM predictions WHERE run_id = 'r'""").fetchall()[0]
    con.close()
    assert done == n == distinct and done <= 150  # at most the batches before the one with row 170
    resumed = subprocess.run(args + ["--isolate"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    out = json.loads(resumed.stdout)
    assert (out["rows"], out["candidate_errors"], out["baseline_errors"]) == (N, len(ABORT), 0)
    with Store(home / "lake", read_only=True) as store:
        check_complete(store, "r")
        assert errors_by_row(store, "r") == {i: TEXTS["abort"] for i in ABORT}
    record(
        "bad models",
        "os.abort() mid-replay without isolation, then the same command with --isolate",
        f"process died (SIGABRT) with {done} rows committed; rerun resumed and finished",
        rows=N,
        committed_before_crash=done,
        candidate_errors=len(ABORT),
    )
