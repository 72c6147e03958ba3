"""Replay under faults: timeouts, online latency, SIGKILL mid-run and resume, Ray, GPU parity."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from conftest import RAY_CPUS, REPO, LakeConnection, TinyModel, run_cli
from workbench.ingest.traffic import ingest
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.replay.scoring import MAX_CONSECUTIVE_TIMEOUTS
from workbench.store import Store

FIXTURES = Path(__file__).parent.parent / "fixtures"


def make_traffic(path: Path, n: int) -> Path:
    pd.DataFrame(
        {
            "request_id": [f"q{i:05d}" for i in range(n)],
            "event_time": pd.date_range("2024-03-01", periods=n, freq="s"),
            "x": np.random.default_rng(3).normal(size=n),
        }
    ).to_parquet(path)
    return path


class Sleepy(TinyModel):
    def __init__(self, sleep_on_call: set, seconds: float):
        super().__init__("sleepy")
        self.sleep_on_call, self.seconds, self.n = sleep_on_call, seconds, 0

    def predict(self, batch):
        self.n += 1
        if self.n in self.sleep_on_call:
            time.sleep(self.seconds)
        return super().predict(batch)


@pytest.fixture
def store(tmp_path):
    with Store(":memory:") as s:
        ingest(s, make_traffic(tmp_path / "t.parquet", 200), "t")
        yield s


def errors(store, run_id, role):
    return [
        r[0]
        for r in store.con.execute(
            f"SELECT {role}_error FROM predictions WHERE run_id = ? ORDER BY _row", [run_id]
        ).fetchall()
    ]


def test_timeout_marks_only_that_batch_and_model(store):
    slow = Sleepy({2}, 1.0)  # the second call hangs past the timeout
    r = replay(store, "t", TinyModel("ok"), slow, run_id="to", options=ReplayOptions(batch_size=50, model_timeout=0.2))
    assert (r.rows, r.baseline_errors, r.candidate_errors) == (200, 0, 50)
    errs = errors(store, "to", "candidate")
    assert errs[50:100] == ["timeout: no answer within 0.2 s"] * 50 and set(errs[:50] + errs[100:]) == {None}


def test_model_that_keeps_hanging_is_disabled_not_waited_for(store):
    hang = Sleepy(set(range(1, 100)), 0.5)
    t0 = time.perf_counter()
    r = replay(
        store, "t", TinyModel("ok"), hang, run_id="hang", options=ReplayOptions(batch_size=20, model_timeout=0.1)
    )
    assert r.candidate_errors == 200 and r.baseline_errors == 0
    assert time.perf_counter() - t0 < 0.1 * MAX_CONSECUTIVE_TIMEOUTS + 3
    errs = errors(store, "hang", "candidate")
    assert errs[-1] == f"model disabled after {MAX_CONSECUTIVE_TIMEOUTS} consecutive timeouts"


def test_online_mode_times_each_micro_batch(store):
    slow = Sleepy({1, 5}, 0.05)  # two slow requests stand out in the latency distribution
    replay(store, "t", TinyModel("ok"), slow, run_id="on", options=ReplayOptions(batch_size=64, mode="online"))
    lat = np.array(
        [
            r[0]
            for r in store.con.execute(
                "SELECT candidate_latency_ms FROM predictions WHERE run_id = 'on' ORDER BY _row"
            ).fetchall()
        ]
    )
    assert (lat[[0, 4]] >= 50).all() and np.median(lat) < 5
    assert store.require_run("on")["mode"] == "online"
    replay(
        store,
        "t",
        TinyModel("ok"),
        TinyModel("b"),
        run_id="on8",
        options=ReplayOptions(batch_size=64, mode="online", online_batch=8),
    )
    lat8 = [
        r[0]
        for r in store.con.execute(
            "SELECT candidate_latency_ms FROM predictions WHERE run_id = 'on8' ORDER BY _row LIMIT 8"
        ).fetchall()
    ]
    assert len(set(lat8)) == 1  # one micro-batch, one latency


def test_online_progress_moves_within_a_batch(store):
    """An online replay of one 200-request batch at 15 ms a request (3 s): committed progress arrives in
    slices as it goes, not once at the end of the batch."""
    slow = Sleepy(set(range(1, 1000)), 0.015)
    calls: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    r = replay(
        store,
        "t",
        TinyModel("ok"),
        slow,
        run_id="slowon",
        options=ReplayOptions(batch_size=8192, mode="online"),
        progress=lambda done, total: calls.append((time.perf_counter() - t0, done)),
    )
    assert r.rows == 200 and calls[-1][1] == 200
    done = [d for _, d in calls]
    assert done == sorted(done) and len([d for d in done if 0 < d < 200]) >= 2  # partial progress, in order
    gaps = np.diff([0.0] + [t for t, d in calls if d > 0])
    assert gaps.max() < 2.5, f"progress gaps {gaps.round(2).tolist()} s"


def test_run_records_environment(store):
    replay(store, "t", TinyModel("a"), TinyModel("b"), run_id="env", options=ReplayOptions(batch_size=7))
    run = store.require_run("env")
    env = run["meta"]["environment"]
    assert env["options"]["batch_size"] == 7 and env["host"] and env["duckdb"] == duckdb.__version__
    assert (run["mode"], run["batch_size"], run["device"]) == ("throughput", 7, "cpu")


@pytest.fixture
def slow_model_dir(tmp_path):
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    sys.path.insert(0, str(FIXTURES))
    try:
        from slow_model import SlowModel
    finally:
        sys.path.remove(str(FIXTURES))
    path = tmp_path / "slow_model"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=SlowModel(),
        code_paths=[str(FIXTURES / "slow_model.py")],
        signature=infer_signature(pd.DataFrame({"x": [0.1]}), np.array([0.5])),
        pip_requirements=["mlflow"],
    )
    return path


def test_sigkill_mid_run_then_resume_holds_each_request_once(tmp_path, slow_model_dir):
    home = tmp_path / "home"
    run_cli("ingest", str(make_traffic(tmp_path / "t.parquet", 3000)), "--name", "t", "--json", home=home)
    marker = tmp_path / "calls"
    args = [
        sys.executable,
        "-m",
        "workbench.cli",
        "replay",
        "--baseline",
        str(slow_model_dir),
        "--candidate",
        str(slow_model_dir),
        "--traffic",
        "t",
        "--run-id",
        "killed",
        "--batch-size",
        "100",
        "--json",
    ]
    env = os.environ | {"WORKBENCH_HOME": str(home), "SLOW_MODEL_MARKER": str(marker), "SLOW_MODEL_DELAY": "0.05"}
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (not marker.exists() or int(marker.read_text() or 0) < 40):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    con = LakeConnection(home / "lake", read_only=False)
    done_before = con.execute("SELECT sum(rows) FROM run_batches WHERE run_id = 'killed'").fetchall()[0][0]
    con.close()
    assert 0 < done_before < 3000
    env["SLOW_MODEL_DELAY"] = "0"
    out = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["rows"] == 3000
    con = LakeConnection(home / "lake")
    n, distinct = con.execute(
        "SELECT count(*), count(DISTINCT _row) FROM predictions WHERE run_id = 'killed'"
    ).fetchall()[0]
    assert n == distinct == 3000
    batches = con.execute(
        "SELECT first_row, span FROM run_batches WHERE run_id = 'killed' ORDER BY first_row"
    ).fetchall()
    assert batches[0][0] == 0 and all(a[0] + a[1] == b[0] for a, b in zip(batches, batches[1:], strict=False))
    con.close()
    again = run_cli(*args[3:], home=home)
    assert json.loads(again.stdout)["status"] == "already_complete"


def test_replay_from_source_files_ingests_then_replays(tmp_path, slow_model_dir):
    home = tmp_path / "home"
    src = make_traffic(tmp_path / "t.parquet", 120)
    out = run_cli(
        "replay",
        "--baseline",
        str(slow_model_dir),
        "--candidate",
        str(slow_model_dir),
        "--traffic",
        "fresh",
        "--source",
        str(src),
        "--json",
        home=home,
    )
    assert json.loads(out.stdout)["rows"] == 120


def test_ray_refuses_actors_the_cluster_cannot_place(demo_home, tmp_path, ray_cluster):
    """More CPU actors than the cluster has CPUs to spare for reading: refused at once with what fits, not a
    replay that waits for ever."""
    from workbench import WorkbenchError
    from workbench.replay.ray_executor import _check_placement

    _check_placement(1, False, 2, 0)
    for args, message in (
        (
            (2, False, 2, 0),
            "--ray-actors 2 needs 3 CPUs on the cluster (one per actor, one for reading the traffic); "
            "it has 2: use --ray-actors 1 or fewer",
        ),
        ((1, False, 1, 0), "it has 1: add a CPU to the cluster"),
        ((2, True, 16, 1), "--ray-actors 2 needs 2 GPUs (one per actor); the cluster has 1"),
        ((-1, False, 8, 0), "--ray-actors must be at least 1, not -1"),
    ):
        with pytest.raises(WorkbenchError, match=re.escape(message)):
            _check_placement(*args)
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    t0 = time.monotonic()
    out = run_cli(
        *("replay", "--baseline", "models:/flight-delay/1", "--candidate", "models:/flight-delay/2"),
        *("--traffic", "flights", "--run-id", "ray_big", "--executor", "ray", "--ray-actors", str(RAY_CPUS)),
        *("--ray-address", ray_cluster),
        home=home,
        timeout=300,
        check=False,
    )
    want = f"--ray-actors {RAY_CPUS} needs {RAY_CPUS + 1} CPUs on the cluster (one per actor, one for reading the "
    want += f"traffic); it has {RAY_CPUS}: use --ray-actors {RAY_CPUS - 1} or fewer"
    assert out.returncode == 2 and want in out.stderr, out.stderr[-2000:]
    assert time.monotonic() - t0 < 120  # refused once connected to the cluster, not after a wait


def test_ray_executor_stores_identical_results(demo_home, tmp_path, ray_cluster):
    """A Ray replay (one actor, the driver committing into the home's SQLite-catalog lake) stores the scores,
    classes and errors of the demo's local replay of the same traffic."""
    home = tmp_path / "home"  # a copy: the run it adds must not show up in the app tests' demo home
    shutil.copytree(demo_home, home)
    d = json.loads((home / "demo.json").read_text())
    run_cli(
        "replay",
        "--baseline",
        "models:/flight-delay/1",
        "--candidate",
        "models:/flight-delay/2",
        "--traffic",
        "flights",
        "--run-id",
        "ray_run",
        "--executor",
        "ray",
        "--ray-actors",
        "1",
        "--batch-size",
        "1000",
        "--ray-address",
        ray_cluster,
        "--json",
        home=home,
        timeout=600,
    )
    con = LakeConnection(home / "lake")
    n, b_diff, c_diff, cls_diff, err_diff = con.execute(
        """SELECT count(*), max(abs(a.baseline_score - b.baseline_score)),
                  max(abs(a.candidate_score - b.candidate_score)),
                  sum((a.baseline_class <> b.baseline_class OR a.candidate_class <> b.candidate_class)::INT),
                  sum((coalesce(a.candidate_error, '') <> coalesce(b.candidate_error, ''))::INT)
           FROM predictions a JOIN predictions b USING (_row)
           WHERE a.run_id = 'ray_run' AND b.run_id = ?""",
        [d["replay"]["run_id"]],
    ).fetchall()[0]
    con.close()
    assert n == d["replay"]["rows"] and cls_diff == 0 and err_diff == 0
    assert b_diff == 0 and c_diff < 1e-6


torch = pytest.importorskip("torch")


def scripted_mlp(n_in: int, seed: int):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(n_in, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1), torch.nn.Sigmoid())
    return torch.jit.script(net.eval())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_and_cpu_scores_agree(tmp_path):
    """Both torch models on the GPU share one transfer (the candidate reads a permuted subset of columns)."""
    from workbench.replay.models import ModelRef, TorchPredictor

    n, feats = 50_000, [f"f{j}" for j in range(25)]
    rng = np.random.default_rng(5)
    df = pd.DataFrame(
        {"request_id": [f"g{i}" for i in range(n)], "event_time": pd.date_range("2024-01-01", periods=n, freq="s")}
        | {f: rng.standard_normal(n).astype(np.float32) for f in feats}
    )
    df.to_parquet(tmp_path / "g.parquet")
    cand_feats = tuple(reversed(feats[5:]))
    nets = {"baseline": (scripted_mlp(25, 1), tuple(feats)), "candidate": (scripted_mlp(20, 2), cand_feats)}

    def pair(device):
        return [
            TorchPredictor(ModelRef(f"t:{r}", r, "1", None, "pytorch", f, 0.5), net, device)
            for r, (net, f) in nets.items()
        ]

    with Store(":memory:") as store:
        ingest(store, tmp_path / "g.parquet", "g")
        replay(store, "g", *pair("cpu"), run_id="on_cpu", options=ReplayOptions(batch_size=8192))
        replay(store, "g", *pair("cuda"), run_id="on_gpu", options=ReplayOptions(batch_size=8192))
        assert store.require_run("on_gpu")["device"] == "cuda"
        b, c, errs = store.con.execute("""SELECT max(abs(a.baseline_score - g.baseline_score)),
            max(abs(a.candidate_score - g.candidate_score)), count(g.baseline_error) + count(g.candidate_error)
            FROM predictions a JOIN predictions g USING (_row)
            WHERE a.run_id = 'on_cpu' AND g.run_id = 'on_gpu'""").fetchall()[0]
    assert b < 1e-4 and c < 1e-4 and errs == 0


class RaisesOnMarker(torch.nn.Module):
    """A model that fails a whole call when any row's first feature is above 100 (a poison request)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        if bool((x[:, 0] > 100).any()):
            raise RuntimeError("poison row")
        return self.net(x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_shared_batch_failure_falls_back_model_by_model(tmp_path):
    """A batch the shared GPU path cannot score is rebuilt from its pinned buffer and scored model by
    model: the failing model's poison rows become its errors, the other model scores every row."""
    from workbench.replay.models import ModelRef, TorchPredictor

    n, feats = 20_000, [f"f{j}" for j in range(25)]
    rng = np.random.default_rng(6)
    cols = {f: rng.standard_normal(n).astype(np.float32) for f in feats}
    poison = [123, 17_000]
    cols["f0"][poison] = 500.0
    pd.DataFrame(
        {"request_id": [f"p{i}" for i in range(n)], "event_time": pd.date_range("2024-01-01", periods=n, freq="s")}
        | cols
    ).to_parquet(tmp_path / "p.parquet")
    nets = {"baseline": scripted_mlp(25, 1), "candidate": torch.jit.script(RaisesOnMarker(scripted_mlp(25, 2)))}

    def pair(device):
        return [
            TorchPredictor(ModelRef(f"t:{r}", r, "1", None, "pytorch", tuple(feats), 0.5), net, device)
            for r, net in nets.items()
        ]

    with Store(":memory:") as store:
        ingest(store, tmp_path / "p.parquet", "p")
        replay(store, "p", *pair("cpu"), run_id="on_cpu", options=ReplayOptions(batch_size=4096))
        replay(store, "p", *pair("cuda"), run_id="on_gpu", options=ReplayOptions(batch_size=4096))
        rows = store.con.execute("""SELECT t.request_id, abs(a.baseline_score - g.baseline_score),
            abs(a.candidate_score - g.candidate_score), g.baseline_error, g.candidate_error
            FROM predictions a JOIN predictions g USING (_row) JOIN traffic_p t USING (_row)
            WHERE a.run_id = 'on_cpu' AND g.run_id = 'on_gpu' ORDER BY _row""").fetchall()
    assert len(rows) == n
    assert max(r[1] for r in rows) < 1e-4 and all(r[3] is None for r in rows)
    failed = [r for r in rows if r[4] is not None]
    assert [r[0] for r in failed] == [f"p{i}" for i in poison], failed
    assert all("poison row" in r[4] for r in failed), failed
    assert max(r[2] for r in rows if r[4] is None) < 1e-4


def test_torchscript_error_reason_names_the_models_own_error(tmp_path):
    """TorchScript wraps a module's exception in its own traceback; the stored reason is the module's error."""
    from workbench.replay.models import ModelRef, TorchPredictor

    n, feats = 300, [f"f{j}" for j in range(25)]
    cols = {f: np.zeros(n, dtype=np.float32) for f in feats}
    cols["f0"][7] = 500.0
    pd.DataFrame(
        {"request_id": [f"q{i}" for i in range(n)], "event_time": pd.date_range("2024-01-01", periods=n, freq="s")}
        | cols
    ).to_parquet(tmp_path / "q.parquet")
    bad = torch.jit.script(RaisesOnMarker(scripted_mlp(25, 2)))
    pair = [
        TorchPredictor(ModelRef(f"t:{r}", r, "1", None, "pytorch", tuple(feats), 0.5), net, "cpu")
        for r, net in (("baseline", scripted_mlp(25, 1)), ("candidate", bad))
    ]
    with Store(":memory:") as store:
        ingest(store, tmp_path / "q.parquet", "q")
        r = replay(store, "q", *pair, run_id="ts", options=ReplayOptions(batch_size=64))
        assert (r.baseline_errors, r.candidate_errors) == (0, 1)
        assert [e for e in errors(store, "ts", "candidate") if e] == ["TorchScript RuntimeError: poison row"]
