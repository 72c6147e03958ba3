"""Decisions on multi-class runs: gates on macro_f1, accuracy, log_loss and one class's recall judged on
anytime-valid bounds of per-request influences, under the shipped multi-class policy."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm

from multiclass_helpers import CLASSES, SoftmaxModel, write_traffic
from workbench import WorkbenchError
from workbench.decide.canary import preview_decision
from workbench.decide.policy import Verdict, load_policy, parse_policy, policy_for_run
from workbench.evaluate.multiclass import multiclass_sequential_parts
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store


def _run(tmp_path, rows: int, candidate_noise: float, seed: int) -> tuple[Store, str]:
    traffic, labels = write_traffic(tmp_path, rows, seed=seed)
    store = Store(":memory:")
    ingest(store, traffic, "t")
    store.declare_segments("t", ["region"])
    ingest_labels(store, labels, "t", task="multiclass")
    baseline, candidate = SoftmaxModel("m", "1", 2.0, 0.8, "zb"), SoftmaxModel("m", "2", 2.0, candidate_noise, "zc")
    replay(store, "t", baseline, candidate, run_id="r", options=ReplayOptions(writers=1))
    return store, "r"


def test_a_clearly_better_candidate_on_enough_rows_is_promoted(tmp_path):
    store, run_id = _run(tmp_path, 20_000, 0.1, seed=21)
    with store:
        policy = policy_for_run(None, store.require_run(run_id))
        assert policy.name == "default-multiclass"
        p = preview_decision(store, run_id, policy)
        checks = {c.gate: c for c in p.scorecard.checks}
        assert p.scorecard.verdict == Verdict.PROMOTE, p.scorecard.reason
        f1 = checks["metric.macro_f1.min_absolute_change"]
        assert f1.outcome == "pass" and f1.candidate > f1.baseline and f1.rows == 20_000
        assert p.evidence["task"] == "multiclass" and p.evidence["classes"] == list(CLASSES)
        assert p.evidence["segments"]["region"]


def test_a_worse_candidate_is_rolled_back_and_a_class_recall_gate_is_judged(tmp_path):
    store, run_id = _run(tmp_path, 20_000, 2.0, seed=22)
    with store:
        policy = parse_policy(
            {
                "metrics": [
                    {"metric": "macro_f1", "min_absolute_change": -0.01, "critical": True},
                    {"metric": "recall[low]", "min_absolute_change": -0.02},
                ]
            }
        )
        p = preview_decision(store, run_id, policy)
        checks = {c.gate: c for c in p.scorecard.checks}
        assert p.scorecard.verdict == Verdict.ROLLBACK, p.scorecard.reason
        assert checks["metric.macro_f1.min_absolute_change"].outcome == "fail"
        assert checks["metric.recall[low].min_absolute_change"].outcome == "fail"
        bad = parse_policy({"metrics": [{"metric": "recall[none]", "min_absolute_change": -0.02}]})
        with pytest.raises(WorkbenchError, match="no class 'none' for gate 'recall\\[none\\]'"):
            preview_decision(store, run_id, bad)


def test_a_binary_policy_is_refused_on_a_multiclass_run_and_shared_metrics_are_not(tmp_path):
    store, run_id = _run(tmp_path, 500, 0.8, seed=23)
    with store:
        with pytest.raises(WorkbenchError, match="gates binary metrics .* is a multiclass run"):
            preview_decision(store, run_id, load_policy())
    shared = parse_policy({"metrics": [{"metric": "accuracy", "min_absolute_change": -0.01}]})
    assert shared.tasks == {"binary", "multiclass"}
    with pytest.raises(WorkbenchError, match="a policy judges runs of one task"):
        parse_policy({"metrics": [{"metric": "macro_f1", "threshold": 0.5}, {"metric": "roc_auc", "threshold": 0.5}]})
    with pytest.raises(WorkbenchError, match="unknown metric 'recall\\[\\]'"):
        parse_policy({"metrics": [{"metric": "recall[]", "threshold": 0.5}]})


@pytest.mark.parametrize("name", ["accuracy", "macro_f1", "macro_recall", "recall[mid]", "f1[high]", "log_loss"])
def test_gate_values_match_sklearn_and_influences_average_to_zero(name):
    rng = np.random.default_rng(8)
    n = 4000
    y = rng.integers(0, 3, n)
    pb = rng.dirichlet([1, 1, 1], n)
    pc = rng.dirichlet([1, 1, 1], n)
    pc[np.arange(n), y] += 0.5
    pc /= pc.sum(axis=1, keepdims=True)
    arrays = {r: np.column_stack([p.argmax(axis=1), p[np.arange(n), y]]) for r, p in (("b", pb), ("c", pc))}
    parts = multiclass_sequential_parts(name, y, arrays["b"], arrays["c"], CLASSES)
    want = {}
    for r, p in (("b", pb), ("c", pc)):
        pred = p.argmax(axis=1)
        want[r] = {
            "accuracy": skm.accuracy_score(y, pred),
            "macro_f1": skm.f1_score(y, pred, average="macro"),
            "macro_recall": skm.recall_score(y, pred, average="macro"),
            "recall[mid]": skm.recall_score(y, pred, average=None)[CLASSES.index("mid")],
            "f1[high]": skm.f1_score(y, pred, average=None)[CLASSES.index("high")],
            "log_loss": skm.log_loss(y, p, labels=[0, 1, 2]),
        }[name]
    assert abs(parts.baseline - want["b"]) <= 1e-9 and abs(parts.candidate - want["c"]) <= 1e-9
    assert abs(parts.psi_delta.mean()) <= 1e-9 and parts.psi_delta.std() > 0
