"""The multi-class decision-quality benchmark: its known truth is what each scenario was built for, and the
shipped multi-class policy goes the right way on each scenario (quick mode, in-process)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as skm

ROOT = Path(__file__).resolve().parents[2]


def _load():
    if "decision_quality_multiclass" in sys.modules:
        return sys.modules["decision_quality_multiclass"]
    path = ROOT / "benchmarks" / "decision_quality_multiclass.py"
    spec = importlib.util.spec_from_file_location("decision_quality_multiclass", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["decision_quality_multiclass"] = module
    spec.loader.exec_module(module)
    return module


dqm = _load()


@pytest.fixture(scope="module")
def quick():
    with contextlib.redirect_stdout(io.StringIO()):
        return dqm.main(["--quick", "--trials", "3"])


def test_the_truth_is_what_each_scenario_was_built_for(quick):
    s = quick["scenarios"]
    assert abs(s["identical"]["truth"]["delta"]["macro_f1"]) < 0.005 and not s["identical"]["violations"]
    assert s["worse_macro_f1"]["truth"]["delta"]["macro_f1"] < -0.02
    assert any(v.startswith("macro_f1") for v in s["worse_macro_f1"]["violations"])
    assert s["better"]["truth"]["delta"]["macro_f1"] > 0.01 and not s["better"]["violations"]


def test_the_shipped_policy_goes_the_right_way(quick):
    s = quick["scenarios"]
    assert s["worse_macro_f1"]["false_promote"]["k"] == 0 and s["worse_macro_f1"]["rolled_back"]["k"] == 3
    assert s["better"]["reached_100"]["k"] == 3
    assert s["identical"]["reached_100"]["k"] == 0 or s["identical"]["truth"]["delta"]["macro_f1"] > -0.02


def test_the_generator_values_match_sklearn():
    rng = np.random.default_rng(3)
    y, b, _ = dqm.generate(dqm.BY_NAME["better"], 5000, rng)
    v = dqm.values(y, b)
    pred = b.argmax(axis=1)
    assert abs(v["macro_f1"] - skm.f1_score(y, pred, average="macro")) <= 1e-9
    assert abs(v["log_loss"] - skm.log_loss(y, b, labels=[0, 1, 2])) <= 1e-9
