"""The policy file (strict), the gates (judged on interval bounds), the scorecard and the verdict."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import MetricThreshold
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import validate_evaluation_results

from conftest import REPO, make_evidence
from workbench import WorkbenchError
from workbench.decide.policy import Outcome, Policy, Verdict, load_policy, parse_policy
from workbench.decide.scorecard import score
from workbench.decide.signing import canonical_bytes, clean, content_hash


def policy(**kw) -> Policy:
    base = {"metrics": [], "segments": [], "latency": [], "drift": {"required": False}}
    return parse_policy(base | kw)


def check(card, gate):
    found = [c for c in card.checks if c.gate == gate]
    assert len(found) == 1, [c.gate for c in card.checks]
    return found[0]


# -- the file ---------------------------------------------------------------------------------------
def test_shipped_default_policy():
    p = load_policy()
    assert p.ramp == (1, 5, 25, 50, 100)
    assert {g.metric for g in p.metrics} >= {"roc_auc", "f1"}
    assert p.errors.max_rate == 0.001 and p.errors.critical
    assert any(g.critical for g in p.metrics)
    assert re.fullmatch(r"[0-9a-f]{64}", p.hash)


def test_readme_documents_every_policy_field():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Decision policy") :]
    section = section[: section.index("\n## ", 5)]
    from workbench.decide import policy as pm

    for model in (
        pm.Policy,
        pm.MetricGate,
        pm.SegmentGate,
        pm.LatencyGate,
        pm.ResourceGate,
        pm.Prices,
        pm.ErrorGate,
        pm.WhereMoved,
        pm.RegistryOptions,
        pm.Approvals,
    ):
        for field in model.model_fields:
            assert f"`{field}`" in section, f"{model.__name__}.{field} is not documented in the README"


@pytest.mark.parametrize(
    "data, named",
    [
        ({"min_labelled_rows": 10}, "min_labelled_rows: unknown key"),
        ({"metrics": [{"metric": "f1", "thresold": 0.5}]}, "metrics[0].thresold: unknown key"),
        ({"errors": {"max_rat": 0.01}}, "errors.max_rat: unknown key"),
        ({"registry": {"stage_transition": True}}, "registry.stage_transition: unknown key"),
        ({"latency": [{"percentile": "p99", "max_ratio": 1.2, "critical": True, "crtical": 1}]}, "latency[0].crtical"),
        ({"metrics": [{"metric": "f11", "threshold": 0.5}]}, "metrics[0].metric: unknown metric 'f11'"),
        ({"metrics": [{"metric": "f1"}]}, "set at least one of threshold"),
        ({"ramp": [1, 5, 5, 100]}, "ramp must be strictly increasing"),
        ({"ramp": [1, 50]}, "ramp must be strictly increasing"),
        ({"ramp": [0, 100]}, "ramp must be strictly increasing"),
        ({"latency": [{"percentile": "p42", "max_ms": 3}]}, "latency[0].percentile"),
    ],
    ids=[
        "typo-top",
        "typo-gate",
        "typo-errors",
        "typo-registry",
        "typo-latency",
        "unknown-metric",
        "no-criterion",
        "ramp-dup",
        "ramp-end",
        "ramp-zero",
        "bad-percentile",
    ],
)
def test_policy_errors_name_the_problem(data, named):
    with pytest.raises(WorkbenchError) as e:
        parse_policy(data, "policy p.toml")
    assert named in str(e.value) and str(e.value).startswith("policy p.toml: ")
    assert "\n" not in str(e.value)


def test_toml_yaml_json_give_the_same_policy(tmp_path):
    data = {
        "name": "strict",
        "min_labeled_rows": 200,
        "ramp": [10, 50, 100],
        "metrics": [{"metric": "roc_auc", "min_absolute_change": -0.005, "critical": True}],
        "latency": [{"percentile": "p95", "max_ms": 20.0}],
    }
    (tmp_path / "p.toml").write_text(
        'name = "strict"\nmin_labeled_rows = 200\nramp = [10, 50, 100]\n'
        '[[metrics]]\nmetric = "roc_auc"\nmin_absolute_change = -0.005\ncritical = true\n'
        '[[latency]]\npercentile = "p95"\nmax_ms = 20.0\n'
    )
    import yaml

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "p.json").write_text(json.dumps(data))
    hashes = {load_policy(tmp_path / f"p.{ext}").hash for ext in ("toml", "yaml", "json")}
    assert len(hashes) == 1 and hashes != {load_policy().hash}


def test_unreadable_policy_files(tmp_path):
    (tmp_path / "bad.toml").write_text("ramp = [1, 5\n")
    with pytest.raises(WorkbenchError, match="is not valid TOML"):
        load_policy(tmp_path / "bad.toml")
    (tmp_path / "p.ini").write_text("x=1")
    with pytest.raises(WorkbenchError, match="use a .toml"):
        load_policy(tmp_path / "p.ini")
    with pytest.raises(WorkbenchError, match="cannot read policy"):
        load_policy(tmp_path / "missing.toml")


# -- gates on interval bounds -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "delta_ci, outcome",
    [
        ((0.001, 0.02), Outcome.PASS),
        ((-0.009, 0.02), Outcome.PASS),
        ((-0.03, -0.011), Outcome.FAIL),
        ((-0.02, 0.01), Outcome.INCONCLUSIVE),
    ],
    ids=["above", "above-margin", "below", "straddles"],
)
def test_absolute_change_is_judged_on_the_interval(delta_ci, outcome):
    p = policy(metrics=[{"metric": "roc_auc", "min_absolute_change": -0.01, "critical": True}])
    ev = make_evidence(metrics={"roc_auc": (0.70, 0.70 + sum(delta_ci) / 2, *delta_ci)})
    c = check(score(p, ev), "metric.roc_auc.min_absolute_change")
    assert c.outcome == outcome
    assert (c.metric, c.criterion, c.threshold, c.critical) == ("roc_auc", "min_absolute_change", -0.01, True)
    assert c.baseline == 0.70 and (c.delta.ci_low, c.delta.ci_high) == delta_ci
    assert c.reason and "\n" not in c.reason and "roc_auc" in c.reason


@pytest.mark.parametrize(
    "delta_ci, outcome",
    [
        ((-0.03, -0.01), Outcome.PASS),
        ((0.01, 0.02), Outcome.PASS),
        ((0.03, 0.05), Outcome.FAIL),
        ((0.0, 0.04), Outcome.INCONCLUSIVE),
    ],
    ids=["better", "within-5pct", "worse", "straddles"],
)
def test_lower_is_better_relative_change(delta_ci, outcome):
    # log_loss is lower-is-better: it may rise by at most 5 % of the baseline's 0.5 = 0.025
    p = policy(metrics=[{"metric": "log_loss", "min_relative_change": -0.05}])
    ev = make_evidence(metrics={"log_loss": (0.5, 0.5 + sum(delta_ci) / 2, *delta_ci)})
    assert check(score(p, ev), "metric.log_loss.min_relative_change").outcome == outcome


@pytest.mark.parametrize(
    "cand, outcome",
    [(0.80, Outcome.PASS), (0.70, Outcome.FAIL), (0.755, Outcome.INCONCLUSIVE)],
    ids=["above", "below", "straddles"],
)
def test_threshold_is_judged_on_the_candidate_interval(cand, outcome):
    p = policy(metrics=[{"metric": "accuracy", "threshold": 0.75}])
    ev = make_evidence(metrics={"accuracy": (0.7, cand, 0.0, 0.1)})  # candidate interval +-0.01
    c = check(score(p, ev), "metric.accuracy.threshold")
    assert c.outcome == outcome and c.candidate == cand


def test_higher_is_better_can_be_overridden():
    p = policy(metrics=[{"metric": "roc_auc", "min_absolute_change": 0.0, "higher_is_better": False}])
    ev = make_evidence(metrics={"roc_auc": (0.7, 0.72, 0.01, 0.03)})
    assert check(score(p, ev), "metric.roc_auc.min_absolute_change").outcome == Outcome.FAIL


def test_point_estimates_are_never_enough():
    """The foundation's flat evaluation (values without intervals) cannot promote."""
    flat = {
        "run_id": "r",
        "labeled_rows": 5000,
        "label_coverage": 1.0,
        "baseline": {"roc_auc": 0.6, "f1": 0.3},
        "candidate": {"roc_auc": 0.9, "f1": 0.6},
    }
    card = score(load_policy(), flat)
    c = check(card, "metric.roc_auc.min_absolute_change")
    assert c.outcome == Outcome.INCONCLUSIVE and "no bounds" in c.reason
    assert c.delta.value == pytest.approx(0.3)
    assert card.verdict == Verdict.HOLD


def test_undefined_metric_is_inconclusive():
    ev = make_evidence()
    ev["candidate"]["roc_auc"] = {"value": None, "ci_low": None, "ci_high": None}
    ev["delta"]["roc_auc"] = {"value": None, "ci_low": None, "ci_high": None, "p_value": None, "mde": None}
    c = check(score(load_policy(), ev), "metric.roc_auc.min_absolute_change")
    assert c.outcome == Outcome.INCONCLUSIVE and "undefined" in c.reason


def _mlflow_passes(thresholds: dict, cand: dict, base: dict) -> bool:
    try:
        validate_evaluation_results(thresholds, EvaluationResult(cand, {}), EvaluationResult(base, {}))
        return True
    except MlflowException:
        return False


def test_zero_width_intervals_agree_with_mlflow_validation():
    """With exact values (ci_low = ci_high) every gate passes exactly when MLflow's validation passes."""
    rng = np.random.default_rng(7)
    agreed = 0
    for _ in range(300):
        up = bool(rng.integers(2))
        metric = "roc_auc" if up else "log_loss"
        b, c = (float(x) for x in rng.uniform(0.2, 0.9, 2))
        kind = ["threshold", "min_absolute_change", "min_relative_change"][rng.integers(3)]
        value = float(rng.uniform(0.2, 0.9) if kind == "threshold" else rng.uniform(0.001, 0.3))
        margin = {
            "threshold": c - value,
            "min_absolute_change": (c - b) - (value if up else -value),
            "min_relative_change": (c - b) - (value if up else -value) * abs(b),
        }[kind]
        if abs(margin) < 1e-9:
            continue
        ev = make_evidence(metrics={metric: (b, c, c - b, c - b)})
        ev["candidate"][metric] = {"value": c, "ci_low": c, "ci_high": c}
        p = policy(metrics=[{"metric": metric, kind: value}])
        ours = check(score(p, ev), f"metric.{metric}.{kind}").outcome
        theirs = _mlflow_passes(
            {metric: MetricThreshold(**{kind: value}, greater_is_better=up)}, {metric: c}, {metric: b}
        )
        assert ours == (Outcome.PASS if theirs else Outcome.FAIL), (metric, kind, value, b, c)
        agreed += 1
    assert agreed > 250


# -- latency, errors, evidence --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lat, ratio, ms",
    [
        (((10.0, 9.5, 10.5), (11.0, 10.5, 11.5)), Outcome.PASS, Outcome.PASS),
        (((10.0, 9.5, 10.5), (18.0, 17.0, 19.0)), Outcome.FAIL, Outcome.PASS),
        (((10.0, 9.5, 10.5), (14.0, 12.0, 17.0)), Outcome.INCONCLUSIVE, Outcome.PASS),
        (((400.0, 390.0, 410.0), (520.0, 510.0, 530.0)), Outcome.PASS, Outcome.FAIL),
        (((0.002, 0.0019, 0.0021), (0.006, 0.0055, 0.0065)), Outcome.PASS, Outcome.PASS),
    ],
    ids=["fine", "slower", "unsure", "over-500ms", "microseconds"],
)
def test_latency_gates_judge_online_per_request_bounds(lat, ratio, ms):
    p = policy(latency=[{"percentile": "p99", "max_ratio": 1.5, "max_ms": 500.0}])
    card = score(p, make_evidence(latency={"p99": lat}, online=True))
    assert check(card, "latency.p99.max_ratio").outcome == ratio
    assert check(card, "latency.p99.max_ms").outcome == ms
    assert check(card, "latency.p99.max_ratio").baseline == lat[0][0]


def test_batch_amortized_latency_is_not_judged_unless_asked():
    lat = {"p99": ((0.0021, 0.002, 0.0022), (0.0055, 0.0054, 0.0056))}  # the weather data set's numbers
    p = policy(latency=[{"percentile": "p99", "max_ratio": 1.5}])
    card = score(p, make_evidence(latency=lat, online=False))
    assert not [c for c in card.checks if c.kind == "latency"]
    (skip,) = [s for s in card.skipped if s.gate == "latency.p99"]
    assert "not judged: batch-amortized latency" in skip.reason and "5.5 µs" in skip.reason
    p = policy(latency=[{"percentile": "p99", "max_ratio": 1.5, "judge_batch": True, "min_ms_change": 0.0}])
    assert check(score(p, make_evidence(latency=lat, online=False)), "latency.p99.max_ratio").outcome == Outcome.FAIL


@pytest.mark.parametrize(
    "errors, outcome, verdict",
    [
        ((0, 50_000), Outcome.PASS, Verdict.PROMOTE),
        ((400, 50_000), Outcome.FAIL, Verdict.ROLLBACK),
        ((2, 1000), Outcome.INCONCLUSIVE, Verdict.HOLD),
    ],
    ids=["none", "0.8pct", "too-few-rows"],
)
def test_error_rate_gate_is_critical(errors, outcome, verdict):
    p = policy(errors={"max_rate": 0.001})
    card = score(p, make_evidence(errors=errors))
    assert check(card, "errors.rate").outcome == outcome and card.verdict == verdict


def test_too_few_rows_holds():
    card = score(load_policy(), make_evidence(labeled_rows=120))
    c = check(card, "evidence.labeled_rows")
    assert c.outcome == Outcome.INCONCLUSIVE and "120 < 1,000" in c.reason and c.settle_rows == 880
    assert card.verdict == Verdict.HOLD and "evidence.labeled_rows" in card.reason


# -- segments ----------------------------------------------------------------------------------------
def test_segment_gate_finds_the_segment_that_drops():
    segs = {
        "origin": {
            "JFK": {"f1": (0.40, 0.41, -0.01, 0.03)},
            "LGA": {"f1": (0.45, 0.40, -0.08, -0.03)},
            "EWR": {"rows": 40, "small": True, "f1": (0.5, 0.2, -0.6, 0.1)},
        }
    }
    card = score(load_policy(), make_evidence(segments=segs))
    assert check(card, "segment.origin=JFK.f1.min_absolute_change").outcome == Outcome.PASS
    lga = check(card, "segment.origin=LGA.f1.min_absolute_change")
    assert lga.outcome == Outcome.FAIL and lga.segment == "origin=LGA" and "in origin=LGA" in lga.reason
    assert any(s.gate == "segment.origin=EWR.f1" and "listed, not judged" in s.reason for s in card.skipped)
    assert card.verdict == Verdict.HOLD and "segment.origin=LGA" in card.reason


def test_named_segment_column_missing_is_inconclusive():
    p = policy(segments=[{"column": "carrier", "metric": "f1", "min_absolute_change": -0.02}])
    c = check(score(p, make_evidence()), "segment.carrier.f1")
    assert c.outcome == Outcome.INCONCLUSIVE and "declare it a segment column" in c.reason


def test_critical_segment_gate_rolls_back():
    p = policy(segments=[{"column": "origin", "metric": "f1", "min_absolute_change": -0.02, "critical": True}])
    segs = {"origin": {"LGA": {"f1": (0.45, 0.40, -0.08, -0.03)}}}
    assert score(p, make_evidence(segments=segs)).verdict == Verdict.ROLLBACK


# -- drift -------------------------------------------------------------------------------------------
DRIFT = {
    "features": {
        "temp": {"test": "wasserstein", "statistic": 0.3, "threshold": 0.1, "drifted": True},
        "dist": {"test": "wasserstein", "statistic": 0.01, "threshold": 0.1, "drifted": False},
    },
    "share_drifted": 0.5,
    "dataset_drift": True,
    "prediction_drift": {"baseline": {"drifted": False}, "candidate": {"drifted": False}},
    "concept_drift": {"detected": False, "change_point": None},
    "quality": {},
}


def test_no_drift_report_skips_the_after_change_gates_unless_required():
    card = score(load_policy(), make_evidence(), None)
    assert any(s.gate == "after_change.*" and "no drift report" in s.reason for s in card.skipped)
    assert card.verdict == Verdict.PROMOTE and card.context == ()
    p = policy(drift={"required": True})
    c = check(score(p, make_evidence(), None), "drift.report")
    assert c.outcome == Outcome.INCONCLUSIVE and "workbench drift" in c.reason


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"share_drifted": 0.75},
        {"concept_drift": {"detected": True, "change_point": "2013-09-01T00:00:00Z"}},
        {"prediction_drift": {"baseline_vs_candidate": {"test": "wasserstein", "statistic": 0.4, "drifted": True}}},
    ],
    ids=["some", "most-features", "concept", "baseline-vs-candidate"],
)
def test_drift_is_context_never_a_failure(change):
    card = score(load_policy(), make_evidence(), DRIFT | change)
    assert card.verdict == Verdict.PROMOTE and not [c for c in card.checks if c.kind == "drift"]
    ctx = {c["name"]: c for c in card.context}
    assert "temp" in ctx["data_drift"]["detail"] and ctx["data_drift"]["value"] == (DRIFT | change)["share_drifted"]
    if "concept_drift" in change:
        assert ctx["concept_drift.baseline"]["detected"] and "2013-09-01" in ctx["concept_drift.baseline"]["detail"]
    if "prediction_drift" in change:
        pd = ctx["prediction_drift.baseline_vs_candidate"]
        assert pd["value"] == 0.4 and "differ by design" in pd["detail"]


def test_retired_drift_gate_keys_say_why():
    for key in ("max_share_drifted", "prediction_drift", "concept_drift"):
        with pytest.raises(WorkbenchError, match=f"drift: {key} is no longer a gate"):
            parse_policy({"drift": {key: 0.5}})


@pytest.mark.parametrize(
    "data, named",
    [
        ({"confidence": 1.2}, "confidence: Input should be less than 1"),
        ({"confidence": 0}, "confidence: Input should be greater than 0"),
        ({"planned_rows": 0}, "planned_rows: Input should be greater than or equal to 1"),
        ({"min_segment_rows": -5}, "min_segment_rows"),
        ({"drift": {"recent_share": 1.5}}, "drift.recent_share"),
        ({"latency": [{"max_ms": 5, "min_ms_change": -1}]}, "latency[0].min_ms_change"),
        ({"metrics": [{"metric": "f1", "min_absolute_change": float("nan")}]}, "metrics[0].min_absolute_change"),
        ({"errors": {"max_rate": float("inf")}}, "errors.max_rate"),
        ({"max_age_hours": float("inf")}, "max_age_hours"),
    ],
    ids=["confidence-high", "confidence-zero", "rows", "segment-rows", "recent", "ms-change", "nan", "inf", "age"],
)
def test_new_policy_keys_are_strict(data, named):
    with pytest.raises(WorkbenchError, match=re.escape(named)):
        parse_policy(data, "policy p.toml")


# -- verdict -----------------------------------------------------------------------------------------
def test_verdicts_and_scorecard_dict():
    good = score(load_policy(), make_evidence())
    assert good.verdict == Verdict.PROMOTE and good.count(Outcome.FAIL) == 0 and good.count(Outcome.INCONCLUSIVE) == 0
    d = json.loads(json.dumps(good.to_dict()))
    assert d["counts"]["pass"] == len(d["checks"]) and d["verdict"] == "PROMOTE"  # the JSON holds the strings
    assert set(d["checks"][0]) == {
        "gate",
        "kind",
        "metric",
        "criterion",
        "threshold",
        "baseline",
        "candidate",
        "delta",
        "outcome",
        "critical",
        "reason",
        "segment",
        "rows",
        "bound",
        "settle_rows",
    }
    bad = score(
        load_policy(),
        make_evidence(
            metrics={
                "roc_auc": (0.7, 0.6, -0.12, -0.08),
                "f1": (0.4, 0.42, 0.0, 0.04),
                "log_loss": (0.5, 0.49, -0.02, 0.0),
            }
        ),
    )
    assert bad.verdict == Verdict.ROLLBACK and "metric.roc_auc.min_absolute_change" in bad.reason
    marginal = score(
        load_policy(),
        make_evidence(
            metrics={
                "roc_auc": (0.7, 0.71, 0.0, 0.02),
                "f1": (0.4, 0.41, 0.0, 0.02),
                "log_loss": (0.5, 0.56, 0.04, 0.08),
            }
        ),
    )
    assert marginal.verdict == Verdict.HOLD and "non-critical" in marginal.reason
    assert marginal.summary.startswith("Held: metric.log_loss.min_relative_change failed")


def test_verdicts_and_outcomes_sign_and_hash_as_their_strings():
    card = score(load_policy(), make_evidence(labeled_rows=10)).to_dict()  # HOLD: passes and an inconclusive
    plain = json.loads(json.dumps(card))
    assert canonical_bytes(card) == canonical_bytes(plain) and content_hash(card) == content_hash(plain)
    assert re.search(rb'"counts":\{"fail":0,"inconclusive":[1-9][0-9]*,"pass":[1-9][0-9]*\}', canonical_bytes(card))
    assert b'"verdict":"HOLD"' in canonical_bytes(card) and b'"outcome":"inconclusive"' in canonical_bytes(card)
    cleaned = clean(card)  # what a record holds: plain JSON values, as it reads back from its stored text
    assert cleaned == plain and type(cleaned["verdict"]) is str and {type(k) for k in cleaned["counts"]} == {str}
    assert {type(c["outcome"]) for c in cleaned["checks"]} == {str}
    assert [str(o) for o in Outcome] == ["pass", "fail", "inconclusive"]
    assert [str(v) for v in Verdict] == ["PROMOTE", "HOLD", "ROLLBACK"]


def test_default_policy_file_is_shipped_in_the_package():
    assert (Path(__import__("workbench.decide").decide.__file__).parent / "default_policy.toml").is_file()


# -- the live section ---------------------------------------------------------------------------
def test_live_section_is_optional_and_keeps_old_hashes():
    from workbench.decide.signing import content_hash

    plain = parse_policy({})
    assert plain.live is None and plain.live_options.window_s == 30 and "live" not in plain.to_dict()
    optional = (
        "live",
        "resources",
        "prices",
        "approvals",
    )  # optional sections: a policy without them keeps its old hash
    assert plain.hash == content_hash({k: v for k, v in plain.model_dump(mode="json").items() if k not in optional})
    with_live = parse_policy({"live": {"window_s": 10}})
    assert with_live.hash != plain.hash and with_live.live_options.window_s == 10
    shipped = load_policy().live
    assert shipped.segments[0].name == "internal" and shipped.segments[0].arm == "candidate"


@pytest.mark.parametrize(
    "live, message",
    [
        ({"window": 3}, "live.window: unknown key"),
        ({"window_s": 0}, "live.window_s: Input should be greater than 0"),
        ({"max_error_rate": 1.5}, "live.max_error_rate"),
        ({"segments": [{"name": "x", "values": ["a"]}]}, "live.segments[0]: set exactly one of header, field"),
        ({"segments": [{"name": "x", "header": "H", "field": "f", "values": ["a"]}]}, "exactly one of header, field"),
        ({"segments": [{"name": "x", "header": "H", "values": []}]}, "live.segments[0].values"),
        ({"segments": [{"name": "x", "header": "H", "values": ["a"], "arm": "both"}]}, "live.segments[0].arm"),
    ],
    ids=["typo", "zero-window", "rate-above-1", "no-source", "two-sources", "no-values", "bad-arm"],
)
def test_live_section_is_strict(live, message):
    with pytest.raises(WorkbenchError, match=re.escape(message)):
        parse_policy({"live": live})


def test_readme_documents_every_live_field():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Live canary") :]
    section = section[: section.index("\n## ", 5)]
    from workbench.decide import policy as pm

    for model in (pm.LiveOptions, pm.LiveSegment):
        for field in model.model_fields:
            assert f"`{field}`" in section, f"{model.__name__}.{field} is not documented in the README"


@pytest.mark.parametrize(
    "name, text, named",
    [
        ("dup.json", '{"confidence": 0.9, "confidence": 0.5}', "the key 'confidence' is given twice"),
        ("dup.yaml", "confidence: 0.9\nconfidence: 0.5\n", "the key 'confidence' is given twice"),
        ("dup.toml", "confidence = 0.9\nconfidence = 0.5\n", "is not valid TOML"),
        ("nan.toml", "confidence = nan\n", "confidence: Input should be a finite number"),
        ("inf.json", '{"max_age_hours": Infinity}', "max_age_hours"),
        ("huge.toml", "min_labeled_rows = " + "9" * 40 + "\n", "min_labeled_rows: 9999999999999999999"),
        ("deep.json", '{"live": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ("deep2.yaml", "live: " + "[" * 20 + "]" * 20 + "\n", "nested more than 8 levels deep"),
        ("exp.toml", '[registry]\nexperiment = ""\n', "registry.experiment"),
        ("exp2.json", '{"registry": {"experiment": "a\\nb"}}', "registry.experiment"),
    ],
    ids=["json-dup", "yaml-dup", "toml-dup", "nan", "inf", "huge", "deep", "deep-yaml", "empty-exp", "newline-exp"],
)
def test_hostile_policy_files_are_refused_with_the_key_named(tmp_path, name, text, named):
    (tmp_path / name).write_text(text)
    with pytest.raises(WorkbenchError) as e:
        load_policy(tmp_path / name)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_non_finite_values_never_share_a_hash():
    with pytest.raises(WorkbenchError):
        parse_policy({"metrics": [{"metric": "f1", "min_absolute_change": float("-inf")}]})
    a = parse_policy({"metrics": [{"metric": "f1", "min_absolute_change": -0.02}]})
    b = parse_policy({"metrics": [{"metric": "f1", "min_absolute_change": -0.03}]})
    assert a.hash != b.hash


def test_segment_gates_are_harm_tests_unless_non_inferiority_is_required():
    segs = {"origin": {"EWR": {"rows": 2000, "f1": (0.45, 0.44, -0.05, 0.03)}}}  # straddles the -0.02 margin
    gate = {"column": "origin", "metric": "f1", "min_absolute_change": -0.02}
    harm = check(
        score(policy(segments=[gate]), make_evidence(segments=segs)), "segment.origin=EWR.f1.min_absolute_change"
    )
    assert harm.outcome == Outcome.PASS and "not surely worse (a harm test)" in harm.reason
    strict = policy(segments=[gate | {"require": "non_inferiority"}])
    c = check(score(strict, make_evidence(segments=segs)), "segment.origin=EWR.f1.min_absolute_change")
    assert c.outcome == Outcome.INCONCLUSIVE and score(strict, make_evidence(segments=segs)).verdict == Verdict.HOLD


def test_the_recent_window_must_be_shown_non_inferior_by_default():
    ev = make_evidence()
    ev["recent"] = {
        "from": "2026-11-20T00:00:00Z",
        "rows": 4000,
        "small": False,
        **make_evidence(metrics={"f1": (0.4, 0.39, -0.04, 0.02)}),
    }
    p = policy(metrics=[{"metric": "f1", "min_absolute_change": -0.02}])
    c = check(score(p, ev), "recent.f1.min_absolute_change")
    assert c.outcome == Outcome.INCONCLUSIVE and "the recent window (from 2026-11-20T00:00:00Z)" in c.reason
    assert load_policy().drift.require == "non_inferiority"
    relaxed = policy(metrics=[{"metric": "f1", "min_absolute_change": -0.02}], drift={"require": "no_harm"})
    assert check(score(relaxed, ev), "recent.f1.min_absolute_change").outcome == Outcome.PASS
