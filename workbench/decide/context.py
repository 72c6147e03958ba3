"""Drift as context: what the drift report says, shown beside the checks and never a failure by itself.

Data drift moves both models' inputs alike; prediction drift between the baseline and the candidate is
expected when they differ (that is why there is a candidate); a change point in the label relationship
hits both. The scorecard shows each with its size, and the gates judge the candidate where the data moved
(:mod:`workbench.decide.evidence`: the recent window, after the change point, the bins of each drifted
feature, each declared segment).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from workbench.clock import parse_time
from workbench.drift.stattests import STAT_TESTS


def _drifted(features: Any) -> list[str]:
    if not isinstance(features, dict):
        return []
    return sorted(k for k, v in features.items() if isinstance(v, dict) and v.get("drifted"))


def _is_p_value(test: Any) -> bool:
    t = STAT_TESTS.get(str(test))
    return t is not None and t.display.endswith("p_value")


def _measure(test: Any) -> str:
    """How a drift test's statistic reads: its name, and "p-value" for the tests whose statistic is one."""
    return f"{test} p-value" if _is_p_value(test) else str(test)


def _beyond(test: Any) -> str:
    """Which side of its threshold a drifted statistic is on: a p-value below, a distance above."""
    return "below" if _is_p_value(test) else "above"


def drift_context(drift: dict | None) -> list[dict[str, Any]]:
    """Context entries (``name``, ``value``, ``detail`` and the report's numbers) from a drift report."""
    if not isinstance(drift, dict):
        return []
    out: list[dict[str, Any]] = []
    share = drift.get("share_drifted")
    if isinstance(share, (int, float)):
        names = _drifted(drift.get("features"))
        listed = (": " + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")) if names else ""
        out.append(
            {
                "name": "data_drift",
                "value": float(share),
                "drifted": names,
                "detail": f"{share:.0%} of features drifted between the reference and the current traffic, for "
                f"both models alike{listed}",
            }
        )
    pred = drift.get("prediction_drift")
    if isinstance(pred, dict):
        for role, sec in pred.items():
            if not isinstance(sec, dict) or "statistic" not in sec:
                continue
            what = (
                "baseline vs candidate scores on the same requests (they differ by design)"
                if role == "baseline_vs_candidate"
                else f"{role} scores, reference vs current"
            )
            stat = sec.get("statistic")
            out.append(
                {
                    "name": f"prediction_drift.{role}",
                    "value": stat,
                    "test": sec.get("test"),
                    "threshold": sec.get("threshold"),
                    "drifted": sec.get("drifted"),
                    "detail": f"{what}: {_measure(sec.get('test'))} {stat:.3g}"
                    + (f" ({_beyond(sec.get('test'))} its threshold)" if sec.get("drifted") else "")
                    if isinstance(stat, (int, float))
                    else what,
                }
            )
    concept = drift.get("concept_drift")
    if isinstance(concept, dict):
        for role, sec in (("baseline", concept), ("candidate", concept.get("candidate"))):
            if not isinstance(sec, dict) or not isinstance(sec.get("detected"), bool):
                continue
            cp = sec.get("change_point")
            out.append(
                {
                    "name": f"concept_drift.{role}",
                    "value": cp,
                    "detected": sec["detected"],
                    "detail": f"a change in the {role}'s error rate at {cp}: the candidate is judged again after it"
                    if sec["detected"]
                    else f"no change in the {role}'s error rate detected",
                }
            )
    return out


def drifted_features(drift: dict | None) -> dict[str, str]:
    """The features a drift report found drifted, each with its kind (``numerical`` or ``categorical``)."""
    features = drift.get("features") if isinstance(drift, dict) else None
    return {
        name: "categorical" if f.get("kind") == "categorical" else "numerical"
        for name, f in sorted((features or {}).items())
        if isinstance(f, dict) and f.get("drifted")
    }


def latest_change_point(drift: dict | None) -> datetime | None:
    """The latest change point either model's error stream shows in a drift report, if any."""
    if not isinstance(drift, dict) or not isinstance(drift.get("concept_drift"), dict):
        return None
    c = drift["concept_drift"]
    points = [
        sec.get("change_point")
        for sec in (c, c.get("candidate"))
        if isinstance(sec, dict) and sec.get("detected") and sec.get("change_point")
    ]
    return max(parse_time(str(p)) for p in points) if points else None
