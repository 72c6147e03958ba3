"""Resource gates: strict validation, and checks judged on the pair's runs' measured resources."""

from __future__ import annotations

import pytest

from conftest import make_evidence, seed_run
from workbench import WorkbenchError
from workbench.decide.judge import judge_run
from workbench.decide.policy import Outcome, Verdict, load_policy, parse_policy
from workbench.decide.scorecard import score
from workbench.evaluate.resources import compare_resources
from workbench.store import Store

GATES = {
    "resources": [
        {"metric": "rss_mb", "max_ratio": 2.0, "min_change": 64, "critical": True},
        {"metric": "cpu_s_per_1k", "max_value": 0.3},
        {"metric": "cost_per_million", "max_ratio": 1.5},
        {"metric": "gpu_peak_mb", "max_value": 1000},
    ]
}


def measured(cand_rss: float = 2048.0, cand_cpu: float = 0.4, device: str = "cpu") -> dict:
    common = {"rows": 10_000, "calls": 10, "cpu_scope": "thread", "busy_s": 2.0}
    return {
        "mode": "throughput",
        "devices": {"baseline": device, "candidate": device},
        "baseline": common | {"rss_mb": 512.0, "cpu_s_per_1k": 0.1},
        "candidate": common | {"rss_mb": cand_rss, "cpu_s_per_1k": cand_cpu},
    }


def checks(policy, resources) -> dict:
    ev = make_evidence() | {"resources": resources}
    card = score(policy, ev)
    return {c.gate: c for c in card.checks if c.kind == "resources"}, {s.gate: s for s in card.skipped}, card


@pytest.mark.parametrize(
    "gate, message",
    [
        ({"metric": "rss_mb", "max_ratio": 2, "typo": 1}, "resources[0].typo: unknown key"),
        ({"metric": "rss_mb", "max_ratio": -1}, "resources[0].max_ratio: Input should be greater than 0"),
        ({"metric": "rss_mb", "max_value": -5}, "resources[0].max_value: Input should be greater than or equal to 0"),
        ({"metric": "rss_mb", "max_value": float("nan")}, "resources[0].max_value: Input should be a finite number"),
        ({"metric": "rss_mb", "max_ratio": float("inf")}, "resources[0].max_ratio: Input should be a finite number"),
        ({"metric": "rss_mb", "max_ratio": 2, "min_change": -1}, "resources[0].min_change"),
        ({"metric": "vram", "max_ratio": 2}, "resources[0].metric: Input should be 'load_s'"),
        ({"metric": "rss_mb"}, "resources[0]: set max_ratio and/or max_value"),
    ],
    ids=["unknown-key", "negative-ratio", "negative-max", "nan", "inf", "negative-min-change", "metric", "no-limit"],
)
def test_resource_gates_are_validated_strictly(gate, message):
    with pytest.raises(WorkbenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_policy({"resources": [gate]})


@pytest.mark.parametrize(
    "prices, message",
    [
        ({"cpu_hour": -0.1}, "prices.cpu_hour: Input should be greater than or equal to 0"),
        ({"gpu_hour": float("inf")}, "prices.gpu_hour: Input should be a finite number"),
        ({"tpu_hour": 1}, "prices.tpu_hour: unknown key"),
    ],
    ids=["negative", "inf", "unknown"],
)
def test_prices_are_validated_strictly(prices, message):
    with pytest.raises(WorkbenchError, match=message):
        parse_policy({"prices": prices})


def test_the_shipped_policy_has_no_resource_gate():
    shipped = load_policy()
    assert shipped.resources == () and shipped.prices is None
    assert shipped.price_list == {"cpu_hour": 0.04, "gpu_hour": 2.5, "memory_gb_hour": 0.005}


def test_a_heavy_candidate_trips_its_gates_and_gpu_gates_are_skipped_on_cpu():
    policy = parse_policy(GATES)
    got, skipped, card = checks(policy, compare_resources(measured(), policy.price_list, ["r1"]))
    rss = got["resources.rss_mb.max_ratio"]
    assert (rss.outcome, rss.baseline, rss.candidate, rss.threshold) == (Outcome.FAIL, 512.0, 2048.0, 2.0)
    assert rss.critical and "4x" in rss.reason and rss.delta.value == 1536.0
    assert got["resources.cpu_s_per_1k.max_value"].outcome == Outcome.FAIL
    assert got["resources.cost_per_million.max_ratio"].outcome == Outcome.FAIL
    assert "resources.gpu_peak_mb" in skipped and "resources.gpu_peak_mb.max_value" not in got
    assert card.verdict == Verdict.ROLLBACK


def test_a_light_candidate_passes_and_small_differences_never_fail_a_ratio():
    policy = parse_policy(GATES)
    got, _, _ = checks(policy, compare_resources(measured(cand_rss=600.0, cand_cpu=0.12), policy.price_list))
    assert got["resources.rss_mb.max_ratio"].outcome == Outcome.PASS  # 600 <= max(2 x 512, 512 + 64)
    assert got["resources.cpu_s_per_1k.max_value"].outcome == Outcome.PASS
    assert got["resources.cost_per_million.max_ratio"].outcome == Outcome.PASS
    tight = parse_policy({"resources": [{"metric": "rss_mb", "max_ratio": 1.01, "min_change": 100}]})
    got, _, _ = checks(tight, compare_resources(measured(cand_rss=600.0), tight.price_list))
    assert got["resources.rss_mb.max_ratio"].outcome == Outcome.PASS  # +88 MB < min_change


def test_unmeasured_runs_hold_and_gpu_gates_judge_gpu_runs():
    policy = parse_policy(GATES)
    got, _, card = checks(policy, None)
    assert all(c.outcome == Outcome.INCONCLUSIVE for c in got.values()) and len(got) == 4
    assert "no resource measurements" in got["resources.rss_mb.max_ratio"].reason
    gpu = measured(device="cuda")
    gpu["candidate"] |= {"gpu_peak_mb": 4000.0}
    gpu["baseline"] |= {"gpu_peak_mb": 10.0}
    got, skipped, _ = checks(policy, compare_resources(gpu, policy.price_list))
    assert got["resources.gpu_peak_mb.max_value"].outcome == Outcome.FAIL and not skipped


def test_judge_run_combines_the_pairs_runs_measurements(tmp_path):
    policy = parse_policy(GATES | {"prices": {"cpu_hour": 1.0}})
    with Store(tmp_path / "lake") as store:
        seed_run(store, "run_a", rows=2000)
        seed_run(store, "run_b", rows=2000)
        seed_run(store, "run_c", rows=2000)
        store.save_run_resources("run_a", measured(cand_rss=4096.0))
        store.save_run_resources("run_b", measured(cand_rss=900.0))
        store.save_run_resources("run_c", measured(cand_rss=1000.0))
        judged = judge_run(store, store.require_run("run_c"), policy, None)
    res = judged.evidence["resources"]
    assert res["runs"] == ["run_a", "run_b", "run_c"] and res["metrics"]["rss_mb"]["candidate"] == 1000.0  # median
    assert res["cost"]["prices"]["cpu_hour"] == 1.0
    got = {c.gate: c for c in judged.scorecard.checks}
    assert got["resources.rss_mb.max_ratio"].outcome == Outcome.PASS  # 1000 <= 2 x 512
    assert "median of 3 runs" in got["resources.rss_mb.max_ratio"].reason
