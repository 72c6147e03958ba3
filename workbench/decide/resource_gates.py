"""Judging the policy's resource gates (:class:`~workbench.decide.policy.ResourceGate`) on the evidence's
``resources`` (:func:`workbench.evaluate.resources.compare_resources` of the pair's runs, each measurement the
median over the runs that have it).

A resource is measured, not estimated from a sample: a gate passes when the candidate's value is within its limit
and fails when it is not. A gate whose measurement is missing (runs replayed without measurements, or by the Ray
executor, which measures only the load) is inconclusive; a ``gpu_*`` gate is skipped when no model ran on a GPU.
"""

from __future__ import annotations

from typing import Any

from workbench.decide.policy import Outcome, Policy, ResourceGate
from workbench.decide.scorecard_types import Check, Interval, Skipped

UNITS = {
    "load_s": "s",
    "cold_start_s": "s",
    "artifact_mb": "MB",
    "rss_mb": "MB",
    "cpu_s_per_1k": "CPU s per 1,000 requests",
    "gpu_peak_mb": "MB",
    "gpu_busy_share": "of the replay's wall time",
    "cost_per_million": "USD per million requests",
}


def _v(x: float | None) -> str:
    return "unmeasured" if x is None else f"{x:.4g}"


def judge_resources(policy: Policy, evidence: dict) -> tuple[list[Check], list[Skipped]]:
    """The checks of every resource gate of ``policy`` on ``evidence["resources"]``, and the gates skipped."""
    res = evidence.get("resources")
    checks: list[Check] = []
    skipped: list[Skipped] = []
    on_gpu = any(str(d).startswith("cuda") for d in ((res or {}).get("devices") or {}).values())
    for g in policy.resources:
        entry = ((res or {}).get("metrics") or {}).get(g.metric) or {}
        base, cand = entry.get("baseline"), entry.get("candidate")
        if res and g.metric.startswith("gpu_") and not on_gpu:
            skipped.append(Skipped(f"resources.{g.metric}", "not judged: no model ran on a GPU"))
            continue
        if cand is None or (g.max_ratio is not None and base is None):
            why = (
                "the pair's runs have no resource measurements: replay them again (measured by default)"
                if not res
                else f"{g.metric} was not measured for both models"
            )
            checks += _checks(g, base, cand, Outcome.INCONCLUSIVE, why)
            continue
        checks += _judged(g, float(base) if base is not None else None, float(cand), res or {})
    return checks, skipped


def _judged(g: ResourceGate, base: float | None, cand: float, res: dict[str, Any]) -> list[Check]:
    unit = UNITS[g.metric]
    runs = res.get("runs") or []
    where = f" (median of {len(runs)} runs)" if len(runs) > 1 else ""
    out = []
    if g.max_ratio is not None and base is not None:
        limit = max(g.max_ratio * base, base + g.min_change)
        outcome = Outcome.PASS if cand <= limit else Outcome.FAIL
        ratio = f"{cand / base:.3g}x" if base else "undefined ratio"
        out.append(
            _check(
                g,
                "max_ratio",
                g.max_ratio,
                base,
                cand,
                outcome,
                f"candidate {g.metric} {_v(cand)} vs baseline {_v(base)} {unit}{where}: {ratio}, "
                f"{'within' if outcome == Outcome.PASS else 'above'} the limit {_v(limit)} (at most "
                f"{g.max_ratio:g}x the baseline, differences up to {g.min_change:g} allowed)",
            )
        )
    if g.max_value is not None:
        outcome = Outcome.PASS if cand <= g.max_value else Outcome.FAIL
        out.append(
            _check(
                g,
                "max_value",
                g.max_value,
                base,
                cand,
                outcome,
                f"candidate {g.metric} {_v(cand)} {unit}{where} "
                f"{'<=' if outcome == Outcome.PASS else '>'} {g.max_value:g}",
            )
        )
    return out


def _checks(g: ResourceGate, base: Any, cand: Any, outcome: Outcome, reason: str) -> list[Check]:
    criteria = [("max_ratio", g.max_ratio), ("max_value", g.max_value)]
    return [_check(g, c, t, base, cand, outcome, reason) for c, t in criteria if t is not None]


def _check(
    g: ResourceGate,
    criterion: str,
    threshold: float,
    base: float | None,
    cand: float | None,
    outcome: Outcome,
    reason: str,
) -> Check:
    return Check(
        gate=f"resources.{g.metric}.{criterion}",
        kind="resources",
        metric=g.metric,
        criterion=criterion,
        threshold=threshold,
        baseline=base,
        candidate=cand,
        delta=None if base is None or cand is None else Interval(cand - base),
        outcome=outcome,
        critical=g.critical,
        reason=reason,
        bound="measured",
    )
