"""What each model costs to run, measured in real replays: a light baseline against a deliberately heavy
candidate (an sklearn model holding a 300 MB buffer and burning CPU, a torch MLP of 8.4M parameters), both real
MLflow model folders loaded through ``load_predictor`` (``tests/fixtures/heavy_model.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.ingest.traffic import ingest
from workbench.replay.models import load_predictor
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.replay.resources import LoadStats, ModelMeter, measure_load, model_resources
from workbench.store import Store

FIXTURES = Path(__file__).parent.parent / "fixtures"
BALLAST_MB = 300


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Light and heavy sklearn and torch models, saved once per module, and a 1,200-request traffic file."""
    sys.path.insert(0, str(FIXTURES))
    try:
        import heavy_model
    finally:
        sys.path.remove(str(FIXTURES))
    root = tmp_path_factory.mktemp("heavy_models")
    paths = {
        "sk_light": heavy_model.save_sklearn(root / "sk_light"),
        "sk_heavy": heavy_model.save_sklearn(root / "sk_heavy", ballast_mb=BALLAST_MB, work=20_000),
        "torch_light": heavy_model.save_torch(root / "torch_light"),
        "torch_heavy": heavy_model.save_torch(root / "torch_heavy", width=2048),
    }
    n = 1200
    pd.DataFrame(
        {
            "request_id": [f"r{i:05d}" for i in range(n)],
            "event_time": pd.date_range("2024-03-01", periods=n, freq="s"),
            "x": np.random.default_rng(0).normal(size=n).astype(np.float32),
        }
    ).to_parquet(root / "t.parquet")
    return paths | {"traffic": str(root / "t.parquet")}


@pytest.fixture
def store(models):
    with Store(":memory:") as s:
        ingest(s, models["traffic"], "t")
        yield s


def _replay(store, models, base: str, cand: str, run_id: str, **options) -> dict:
    baseline, candidate = load_predictor(models[base], "cpu"), load_predictor(models[cand], "cpu")
    res = replay(store, "t", baseline, candidate, run_id=run_id, options=ReplayOptions(**options))
    assert res.status == "finished" and res.baseline_errors == res.candidate_errors == 0
    stored = store.run_resources(run_id)
    assert stored == res.resources
    return stored


def test_heavy_sklearn_candidate_costs_more_memory_cpu_and_cold_start(store, models):
    r = _replay(store, models, "sk_light", "sk_heavy", "sk", batch_size=100)
    b, c = r["baseline"], r["candidate"]
    assert r["mode"] == "throughput" and r["concurrency"] is None
    assert b["rows"] == c["rows"] == 1200 and b["calls"] == c["calls"] == 12
    assert c["rss_mb"] > BALLAST_MB * 0.9 and b["rss_mb"] < 50  # the buffer it allocates at load
    assert c["load_s"] > b["load_s"] and c["cold_start_s"] > b["cold_start_s"]
    assert c["cold_start_s"] == pytest.approx(c["load_s"] + c["first_call_s"], abs=1e-5)
    assert c["cpu_scope"] == b["cpu_scope"] == "thread"
    assert c["cpu_s_per_1k"] > 2 * b["cpu_s_per_1k"] > 0
    assert b["artifact_mb"] > 0 and "gpu_peak_mb" not in c
    # the decision judges the run's measurements: the heavy candidate trips the memory, CPU and cold-start gates
    from workbench.decide.judge import judge_run
    from workbench.decide.policy import Outcome, Verdict, parse_policy

    policy = parse_policy(
        {
            "resources": [
                {"metric": m, "max_ratio": 2.0, "critical": True}
                for m in ("rss_mb", "cpu_s_per_1k", "cold_start_s", "cost_per_million")
            ]
        }
    )
    judged = judge_run(store, store.require_run("sk"), policy, None)
    got = {c.gate: c.outcome for c in judged.scorecard.checks if c.kind == "resources"}
    assert got == {f"resources.{m}.max_ratio": Outcome.FAIL for m in ("rss_mb", "cpu_s_per_1k", "cold_start_s")} | {
        "resources.cost_per_million.max_ratio": Outcome.FAIL
    }
    assert judged.scorecard.verdict == Verdict.ROLLBACK


def test_heavy_torch_candidate_online_throughput_and_cpu(store, models):
    r = _replay(store, models, "torch_light", "torch_heavy", "torch", mode="online", batch_size=400)
    b, c = r["baseline"], r["candidate"]
    assert r["mode"] == "online" and r["concurrency"] == 1
    assert c["calls"] == b["calls"] == 1200  # one request at a time
    assert c["artifact_mb"] > 30 > 1 > b["artifact_mb"]  # 8.4M float32 parameters
    assert c["rss_mb"] > 25 + b["rss_mb"]
    assert c["cpu_s_per_1k"] > 3 * b["cpu_s_per_1k"]
    assert b["throughput_rps"] > 3 * c["throughput_rps"] > 0
    assert c["cold_start_s"] > b["cold_start_s"]


def test_isolated_models_report_their_worker_process_cpu(store, models):
    r = _replay(store, models, "sk_light", "sk_heavy", "iso", batch_size=200, isolate=True)
    b, c = r["baseline"], r["candidate"]
    assert c["cpu_scope"] == b["cpu_scope"] == "process"
    assert c["cpu_s_per_1k"] > 2 * b["cpu_s_per_1k"] > 0
    assert c["rss_mb"] > BALLAST_MB * 0.9  # measured where the parent loaded it


def test_measurement_off_keeps_load_costs_only(store, models):
    r = _replay(store, models, "sk_light", "sk_light", "off", measure=False)
    assert r["baseline"]["load_s"] > 0 and r["baseline"]["rows"] == 0 and "cpu_s_per_1k" not in r["baseline"]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_peak_memory_and_busy_share_per_model(store, models):
    baseline, candidate = load_predictor(models["torch_light"], "cuda"), load_predictor(models["torch_heavy"], "cuda")
    res = replay(store, "t", baseline, candidate, run_id="gpu", options=ReplayOptions(batch_size=600))
    b, c = res.resources["baseline"], res.resources["candidate"]
    assert c["gpu_peak_mb"] > b["gpu_peak_mb"] >= 0
    assert 0 < b["gpu_busy_share"] < c["gpu_busy_share"] <= 1


def test_model_resources_arithmetic():
    m = ModelMeter()
    m.add(100, 0.5, 0.2)
    m.add(300, 1.5, 0.6)
    out = model_resources(LoadStats(2.0, 3 * 2**20, 2**30), m, wall_s=4.0)
    assert out["first_call_s"] == 0.5 and out["cold_start_s"] == 2.5
    assert out["cpu_s_per_1k"] == pytest.approx(2.0) and out["throughput_rps"] == pytest.approx(200.0)
    assert out["artifact_mb"] == 3.0 and out["rss_mb"] == 1024.0
    assert model_resources(None, None, 1.0) == {
        "load_s": None,
        "artifact_mb": None,
        "rss_mb": None,
        "first_call_s": None,
        "cold_start_s": None,
        "rows": 0,
    }


def test_load_memory_counts_memory_the_process_freed_earlier():
    """A model loaded where earlier work freed heap memory reuses it: glibc keeps freed pages resident, so
    without handing them back first the load would add nothing to the resident size."""
    mb = 2**20
    grown = [bytearray(20 * mb) for _ in range(3)]  # freeing mmapped chunks raises glibc's mmap threshold,
    del grown
    earlier = bytearray(20 * mb)  # so a 20 MB buffer now comes from the heap, and stays resident once freed
    del earlier
    model, stats = measure_load(lambda: (bytearray(20 * mb), None))
    assert len(model) == 20 * mb and stats.rss_bytes is not None and stats.rss_bytes > 19 * mb
