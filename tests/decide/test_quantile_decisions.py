"""Decisions on quantile regression runs: pinball-loss and coverage gates judged on anytime-valid bounds of the
per-request differences, from the quantiles the replay stored."""

from __future__ import annotations

import numpy as np
import pytest

from regression_helpers import LinearModel, QuantileModel, write_traffic
from workbench import WorkbenchError
from workbench.decide.canary import preview_decision
from workbench.decide.policy import Verdict, parse_policy
from workbench.evaluate.regression import _pinball, sequential_parts
from workbench.evaluate.sequential import one_sided_bounds
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store

GATES = {
    "metrics": [
        {"metric": "pinball", "min_relative_change": -0.02, "critical": True},
        {"metric": "pinball@0.9", "min_relative_change": -0.05},
        {"metric": "coverage", "min_absolute_change": -0.03},
    ],
    "min_labeled_rows": 500,
}


def _store(tmp_path, rows: int, candidate, seed: int) -> Store:
    traffic, labels = write_traffic(tmp_path, rows, seed=seed)
    store = Store(":memory:")
    ingest(store, traffic, "t")
    ingest_labels(store, labels, "t", label_col="y", task="regression")
    replay(store, "t", QuantileModel("m", "1", 1.0, "zb", spread=1.5), candidate, run_id="r", options=ReplayOptions())
    return store


def test_a_sharper_quantile_candidate_passes_its_pinball_and_coverage_gates(tmp_path):
    store = _store(tmp_path, 20_000, QuantileModel("m", "2", 0.3, "zc", spread=1.3), seed=21)
    with store:
        p = preview_decision(store, "r", parse_policy(GATES))
        checks = {c.gate: c for c in p.scorecard.checks}
        assert p.scorecard.verdict == Verdict.PROMOTE, p.scorecard.reason
        pinball = checks["metric.pinball.min_relative_change"]
        assert pinball.outcome == "pass" and pinball.candidate < pinball.baseline and pinball.rows == 20_000
        assert checks["metric.pinball@0.9.min_relative_change"].outcome == "pass"
        assert checks["metric.coverage.min_absolute_change"].outcome == "pass"


def test_a_candidate_whose_interval_is_too_narrow_is_rolled_back_on_coverage(tmp_path):
    store = _store(tmp_path, 20_000, QuantileModel("m", "2", 1.0, "zb", spread=0.4), seed=22)
    with store:
        p = preview_decision(store, "r", parse_policy(GATES | {"metrics": [GATES["metrics"][2] | {"critical": True}]}))
        coverage = next(c for c in p.scorecard.checks if c.gate == "metric.coverage.min_absolute_change")
        assert coverage.outcome == "fail" and coverage.candidate < coverage.baseline - 0.2
        assert p.scorecard.verdict == Verdict.ROLLBACK


def test_a_pinball_gate_on_a_run_without_quantiles_is_not_passed(tmp_path):
    store = _store(tmp_path, 2_000, LinearModel("m", "2", 0.3, "zc"), seed=23)
    with store:
        p = preview_decision(store, "r", parse_policy(GATES))
        pinball = next(c for c in p.scorecard.checks if c.gate == "metric.pinball.min_relative_change")
        assert pinball.outcome != "pass" and p.scorecard.verdict != Verdict.PROMOTE


def test_the_pinball_bounds_are_the_sequential_bounds_of_the_loss_differences():
    rng = np.random.default_rng(6)
    y = rng.standard_normal(4000)
    levels = (0.1, 0.5, 0.9)
    z = np.array([-1.2816, 0.0, 1.2816])
    base = np.column_stack([y * 0, (y * 0)[:, None] + 1.5 * z])
    pred = 0.8 * y
    cand = np.column_stack([pred, pred[:, None] + 0.6 * z])
    parts = sequential_parts("pinball", y, base, cand, levels)
    diff = np.mean([_pinball(y, cand[:, j + 1], q) - _pinball(y, base[:, j + 1], q) for j, q in enumerate(levels)], 0)
    assert parts.delta == pytest.approx(diff.mean(), rel=1e-12)
    assert parts.psi_delta.std() == pytest.approx(diff.std(), rel=1e-12)
    lo, hi = one_sided_bounds(parts.delta, float(diff.std()), len(diff), 0.01, 1e5)
    assert lo < parts.delta < hi < 0
    assert sequential_parts("pinball@0.7", y, base, cand, levels) is None  # no such level stored


def test_quantile_gate_names_are_checked():
    gate = parse_policy({"metrics": [{"metric": "pinball@0.9", "min_relative_change": -0.05}]}).metrics[0]
    assert gate.better_up is False and gate.tasks == {"regression"}
    cov = parse_policy({"metrics": [{"metric": "coverage", "min_absolute_change": -0.02}]}).metrics[0]
    assert cov.better_up is True
    with pytest.raises(WorkbenchError, match="unknown metric 'pinball@1.5'.*pinball@q"):
        parse_policy({"metrics": [{"metric": "pinball@1.5", "min_relative_change": -0.05}]})
