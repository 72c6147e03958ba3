"""Comparing the two models' measured resources, their cost per million requests, and the ``resources`` key of
an evaluation."""

from __future__ import annotations

import pytest

from conftest import seed_run
from workbench.evaluate.evaluation import evaluate_run
from workbench.evaluate.resources import DEFAULT_PRICES, combine_runs, compare_resources, cost_per_million
from workbench.store import Store

PRICES = {"cpu_hour": 0.05, "gpu_hour": 3.0, "memory_gb_hour": 0.01}


def measured(cand_cpu: float = 0.4, cand_rss: float = 2048.0, mode: str = "throughput") -> dict:
    """A replay's ``meta.resources``: 10,000 rows per model; the candidate heavier in CPU and memory."""
    common = {"rows": 10_000, "calls": 10, "cpu_scope": "thread", "artifact_mb": 1.0, "first_call_s": 0.1}
    return {
        "mode": mode,
        "concurrency": 1 if mode == "online" else None,
        "wall_s": 10.0,
        "devices": {"baseline": "cpu", "candidate": "cpu"},
        "baseline": common
        | {"load_s": 1.0, "cold_start_s": 1.1, "rss_mb": 512.0, "cpu_s_per_1k": 0.1, "busy_s": 2.0}
        | {"throughput_rps": 5000.0},
        "candidate": common
        | {"load_s": 3.0, "cold_start_s": 3.1, "rss_mb": cand_rss, "cpu_s_per_1k": cand_cpu, "busy_s": 8.0}
        | {"throughput_rps": 1250.0},
    }


def test_cost_per_million_follows_the_formula():
    m = measured()["candidate"]
    cost = cost_per_million(m, PRICES)
    # CPU: 0.4 s per 1k requests = 400 s per million = 1/9 h at $0.05; memory: 2 GB for 800 s per million
    assert cost["cpu"] == pytest.approx(400 / 3600 * 0.05)
    assert cost["memory"] == pytest.approx(2.0 * 800 / 3600 * 0.01)
    assert cost["gpu"] is None
    assert cost["total"] == pytest.approx(cost["cpu"] + cost["memory"])


def test_gpu_time_is_priced_when_a_gpu_was_used():
    m = measured()["candidate"] | {"gpu_busy_s": 3.6}
    assert cost_per_million(m, PRICES)["gpu"] == pytest.approx(3.6 / 10_000 * 1e6 / 3600 * 3.0)


def test_compare_gives_baseline_candidate_and_ratio_per_metric():
    res = compare_resources(measured(), PRICES, runs=["r1"])
    assert res["metrics"]["cpu_s_per_1k"] == {"baseline": 0.1, "candidate": 0.4, "ratio": pytest.approx(4.0)}
    assert res["metrics"]["rss_mb"]["ratio"] == pytest.approx(4.0)
    assert res["metrics"]["throughput_rps"]["ratio"] == pytest.approx(0.25)
    assert "gpu_peak_mb" not in res["metrics"]  # not measured on the CPU
    cost = res["cost"]
    assert cost["prices"] == PRICES and cost["assumptions"] and res["runs"] == ["r1"]
    assert cost["difference"] == pytest.approx(cost["candidate"]["total"] - cost["baseline"]["total"])
    assert res["metrics"]["cost_per_million"]["candidate"] == pytest.approx(cost["candidate"]["total"])
    assert compare_resources(None) is None and compare_resources({}) is None
    assert compare_resources(measured())["cost"]["prices"] == DEFAULT_PRICES


def test_combining_runs_takes_each_measurement_median():
    runs = [measured(cand_cpu=0.2), measured(cand_cpu=0.9, mode="online"), measured(cand_cpu=0.4)]
    combined = combine_runs([*runs, None])
    assert combined["candidate"]["cpu_s_per_1k"] == pytest.approx(0.4)
    assert combined["mode"] == "throughput" and combined["candidate"]["cpu_scope"] == "thread"
    assert combine_runs([None, {}]) is None


def test_evaluation_carries_the_runs_resources(tmp_path):
    with Store(tmp_path / "lake") as store:
        seed_run(store, "run_r", rows=3000)
        assert evaluate_run(store, "run_r", n_boot=100).to_dict()["resources"] is None
        store.save_run_resources("run_r", measured())
        d = evaluate_run(store, "run_r", n_boot=100, prices={"cpu_hour": 1.0}).to_dict()
    res = d["resources"]
    assert res["metrics"]["cold_start_s"]["ratio"] == pytest.approx(3.1 / 1.1)
    assert res["cost"]["prices"]["cpu_hour"] == 1.0
    assert res["cost"]["prices"]["gpu_hour"] == DEFAULT_PRICES["gpu_hour"]


@pytest.mark.parametrize("raw", ["-1", "nan", "inf", "cheap"], ids=["negative", "nan", "inf", "text"])
def test_prices_from_the_environment_are_checked(monkeypatch, raw):
    from workbench import WorkbenchError
    from workbench.config import load_settings

    monkeypatch.setenv("WORKBENCH_PRICE_GPU_HOUR", raw)
    with pytest.raises(WorkbenchError, match="WORKBENCH_PRICE_GPU_HOUR"):
        load_settings()
    monkeypatch.setenv("WORKBENCH_PRICE_GPU_HOUR", "1.5")
    assert load_settings().prices == {"gpu_hour": 1.5}
