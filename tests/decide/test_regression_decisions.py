"""Decisions on regression runs: MAE gates judged on anytime-valid bounds of per-request absolute-error
differences, under the shipped regression policy."""

from __future__ import annotations

import numpy as np
import pytest

from regression_helpers import LinearModel, write_traffic
from workbench import WorkbenchError
from workbench.decide.canary import preview_decision
from workbench.decide.policy import Verdict, load_policy, parse_policy, policy_for_run
from workbench.evaluate.regression import paired_losses, sequential_parts
from workbench.evaluate.sequential import one_sided_bounds
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store


def _run(tmp_path, rows: int, candidate_noise: float, seed: int) -> tuple[Store, str]:
    traffic, labels = write_traffic(tmp_path, rows, seed=seed)
    store = Store(":memory:")
    ingest(store, traffic, "t")
    store.declare_segments("t", ["region"])
    ingest_labels(store, labels, "t", label_col="y", task="regression")
    baseline, candidate = LinearModel("m", "1", 1.0, "zb"), LinearModel("m", "2", candidate_noise, "zc")
    replay(store, "t", baseline, candidate, run_id="r", options=ReplayOptions(writers=1))
    return store, "r"


def test_a_clearly_better_candidate_on_enough_rows_is_promoted(tmp_path):
    store, run_id = _run(tmp_path, 20_000, 0.3, seed=11)
    with store:
        p = preview_decision(store, run_id, policy_for_run(None, store.require_run(run_id)))
        checks = {c.gate: c for c in p.scorecard.checks}
        assert p.scorecard.verdict == Verdict.PROMOTE, p.scorecard.reason
        mae = checks["metric.mae.min_relative_change"]
        assert mae.outcome == "pass" and mae.candidate < mae.baseline and mae.rows == 20_000
        assert p.evidence["task"] == "regression" and p.weight_after > p.weight_before
        assert any(g.startswith("segment.") for g in checks) or p.evidence["segments"]


def test_a_candidate_like_the_baseline_on_few_rows_is_held(tmp_path):
    store, run_id = _run(tmp_path, 2_000, 1.0, seed=12)
    with store:
        p = preview_decision(store, run_id, policy_for_run(None, store.require_run(run_id)))
        mae = next(c for c in p.scorecard.checks if c.gate == "metric.mae.min_relative_change")
        assert p.scorecard.verdict == Verdict.HOLD
        assert mae.outcome == "inconclusive" and "not yet settled" in mae.reason


def test_the_mae_bounds_are_the_sequential_bounds_of_the_absolute_error_differences():
    rng = np.random.default_rng(4)
    y = rng.standard_normal(5000)
    base, cand = y + rng.standard_normal(5000), y + 0.8 * rng.standard_normal(5000)
    parts = sequential_parts("mae", y, base, cand)
    diff = paired_losses(y, base, cand).absolute
    assert parts.delta == pytest.approx(diff.mean(), rel=1e-12)
    assert parts.psi_delta.std() == pytest.approx(diff.std(), rel=1e-12)
    lo, hi = one_sided_bounds(parts.delta, float(diff.std()), len(diff), 0.01, 1e5)
    assert lo < parts.delta < hi < 0


def test_policies_judge_runs_of_their_own_task(tmp_path):
    store, run_id = _run(tmp_path, 300, 0.5, seed=13)
    with store:
        with pytest.raises(WorkbenchError, match="gates binary metrics .* is a regression run"):
            preview_decision(store, run_id, load_policy())
    assert load_policy(task="regression").name == "default-regression"
    with pytest.raises(WorkbenchError, match="a policy judges runs of one task"):
        parse_policy({"metrics": [{"metric": "mae", "min_relative_change": -0.02}, {"metric": "f1", "threshold": 0.5}]})
    gate = parse_policy({"metrics": [{"metric": "rmse", "min_relative_change": -0.05}]}).metrics[0]
    assert gate.better_up is False and gate.tasks == {"regression"}
