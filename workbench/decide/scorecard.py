"""The scorecard: judging a :class:`~workbench.decide.policy.Policy`'s gates on a decision's evidence, and the verdict.

Gates use MLflow's ``MetricThreshold`` vocabulary (``threshold``, ``min_absolute_change``,
``min_relative_change``, ``higher_is_better``) and are judged on bounds, not point estimates. The evidence
(:func:`workbench.decide.evidence.build_evidence`) gives each delta anytime-valid one-sided bounds at the
policy's level: a gate passes when the bound on its bad side clears the margin (``ci_low`` for a metric where
higher is better), fails when the bound on its good side misses it (a *deterioration*: the candidate is surely
worse than tolerated; segments and drifted bins use the Bonferroni-corrected ``fail_*`` bounds) and is
inconclusive otherwise. As in Kayenta, a failing ``critical`` gate forces ROLLBACK; any other failure or an
inconclusive check holds the ramp; all passing promotes.

The judge reads these fields of the evidence dict: ``labeled_rows``, ``alpha``, ``baseline``/``candidate``/
``delta`` per metric (``value``, ``ci_low``, ``ci_high``, ``sd``, ``rows``), ``segments``, ``recent``,
``after_change``, ``drifted_slices``, ``errors``, ``latency`` (``online``, per model
``p50``/``p95``/``p99`` with bounds) and ``resources`` (:mod:`workbench.decide.resource_gates`).
The drift report (``workbench drift --json``) is context
(:mod:`workbench.decide.context`), never a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from workbench.decide.context import drift_context
from workbench.decide.policy import LatencyGate, MetricGate, Outcome, Policy, Verdict
from workbench.decide.resource_gates import judge_resources
from workbench.decide.scorecard_types import Check, Interval, Skipped, _fmt, _sfmt
from workbench.evaluate.sequential import proportion_rows_to_settle, rows_to_settle


@dataclass(frozen=True)
class Scorecard:
    """The checks, the gates skipped, the context (drift both models see), the verdict, its reason and one
    sentence on what would change it."""

    checks: tuple[Check, ...]
    skipped: tuple[Skipped, ...]
    verdict: Verdict
    reason: str
    context: tuple[dict, ...] = ()
    summary: str = ""

    def count(self, outcome: Outcome) -> int:
        return sum(c.outcome == outcome for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "summary": self.summary,
            "counts": {o: self.count(o) for o in Outcome},
            "checks": [c.to_dict() for c in self.checks],
            "skipped": [s.to_dict() for s in self.skipped],
            "context": list(self.context),
        }


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, dict):
        return _num(x.get("value"))
    return None


def _interval(x: Any) -> Interval | None:
    """An interval from ``{"value", "ci_low", "ci_high", "fail_low", "fail_high"}`` or a bare number."""
    if isinstance(x, dict):
        v = _num(x.get("value"))
        if v is None:
            return None
        return Interval(
            v, _num(x.get("ci_low")), _num(x.get("ci_high")), _num(x.get("fail_low")), _num(x.get("fail_high"))
        )
    v = _num(x)
    return None if v is None else Interval(v)


def _rows_text(n: int) -> str:
    return f"{n:,}"


def _at_least(iv: Interval, bound: float) -> Outcome:
    low = -math.inf if iv.ci_low is None else iv.ci_low
    high = iv.fail_high if iv.fail_high is not None else (math.inf if iv.ci_high is None else iv.ci_high)
    return Outcome.PASS if low >= bound else Outcome.FAIL if high < bound else Outcome.INCONCLUSIVE


def _at_most(iv: Interval, bound: float) -> Outcome:
    high = math.inf if iv.ci_high is None else iv.ci_high
    low = iv.fail_low if iv.fail_low is not None else (-math.inf if iv.ci_low is None else iv.ci_low)
    return Outcome.PASS if high <= bound else Outcome.FAIL if low > bound else Outcome.INCONCLUSIVE


class _Judge:
    """Builds the checks of one scorecard from the evidence dict and an optional drift report."""

    def __init__(self, policy: Policy, evidence: dict, drift: dict | None):
        self.policy, self.ev, self.drift = policy, evidence or {}, drift
        self.level = f"{policy.confidence:.0%}"
        self.bound = str(self.ev.get("bound") or "fixed")
        self.labeled = _num(self.ev.get("labeled_rows"))
        self.checks: list[Check] = []
        self.skipped: list[Skipped] = []

    def add(self, **kw) -> None:
        kw.setdefault("baseline", None)
        kw.setdefault("candidate", None)
        kw.setdefault("delta", None)
        self.checks.append(Check(**kw))

    # evidence ----------------------------------------------------------------------------------
    def evidence(self) -> None:
        p, n = self.policy, self.labeled
        if n is None:
            outcome, reason = Outcome.INCONCLUSIVE, "the evidence reports no labelled row count"
        elif n >= p.min_labeled_rows:
            outcome, reason = Outcome.PASS, f"{_rows_text(int(n))} labelled rows >= {p.min_labeled_rows:,} required"
        else:
            outcome = Outcome.INCONCLUSIVE
            reason = f"too few labelled rows: {_rows_text(int(n))} < {p.min_labeled_rows:,} required"
        self.add(
            gate="evidence.labeled_rows",
            kind="evidence",
            metric="labeled_rows",
            criterion="min_rows",
            threshold=float(p.min_labeled_rows),
            candidate=n,
            outcome=outcome,
            critical=False,
            reason=reason,
            rows=None if n is None else int(n),
            settle_rows=None if n is None or n >= p.min_labeled_rows else int(p.min_labeled_rows - n),
        )

    # metric gates on the whole sample and on slices ----------------------------------------------
    def metric_gate(
        self, g: MetricGate, source: dict, kind: str, prefix: str, segment: str | None, harm_only: bool = False
    ) -> None:
        """Judge ``g`` on ``source``; ``harm_only``: a slice's harm test, which blocks only when the slice is
        surely worse than the margin (an open bound passes, saying so)."""
        m = g.metric
        base = _interval((source.get("baseline") or {}).get(m))
        cand = _interval((source.get("candidate") or {}).get(m))
        raw = (source.get("delta") or {}).get(m)
        delta = _interval(raw)
        if delta is None and base is not None and cand is not None and base.value is not None:
            delta = Interval(None if cand.value is None else cand.value - base.value)
        where = f"{m}" + (f" in {segment}" if segment else "")
        common = dict(
            kind=kind,
            metric=m,
            baseline=base.value if base else None,
            candidate=cand.value if cand else None,
            delta=delta,
            critical=g.critical,
            segment=segment,
            rows=int(raw["rows"]) if isinstance(raw, dict) and raw.get("rows") is not None else None,
            bound=self.bound,
        )
        up = g.better_up
        for criterion, value in (
            ("threshold", g.threshold),
            ("min_absolute_change", g.min_absolute_change),
            ("min_relative_change", g.min_relative_change),
        ):
            if value is None:
                continue
            gate = f"{prefix}.{m}.{criterion}"
            if criterion == "threshold":
                iv, bound, what, sd = cand, value, f"candidate {where}", (source.get("candidate") or {}).get(m)
            elif criterion == "min_absolute_change":
                iv, bound, what, sd = delta, (value if up else -value), f"change in {where}", raw
            else:
                if base is None or base.value is None:
                    self.add(
                        gate=gate,
                        criterion=criterion,
                        threshold=value,
                        outcome=Outcome.INCONCLUSIVE,
                        reason=f"baseline {where} is undefined: no relative change",
                        **common,
                    )
                    continue
                scale = abs(base.value) * value
                iv, bound, what, sd = delta, (scale if up else -scale), f"change in {where}", raw
            judged = self._judge(iv, bound, up, what, criterion == "threshold")
            if harm_only and judged["outcome"] == Outcome.INCONCLUSIVE:
                judged["outcome"] = Outcome.PASS
                open_bounds = judged["reason"].replace(", not yet settled", "")
                judged["reason"] = open_bounds + ": not surely worse (a harm test)"
            judged["settle_rows"] = self._settle(judged["outcome"], iv, bound, up, sd, source)
            if judged["settle_rows"] is not None:
                judged["reason"] += f"; about {_rows_text(judged['settle_rows'])} more labelled rows would settle it"
            self.add(gate=gate, criterion=criterion, threshold=value, **judged, **common)

    def _judge(self, iv: Interval | None, bound: float, up: bool, what: str, absolute: bool) -> dict:
        rel = ">=" if up else "<="
        if iv is None or iv.value is None:
            return {"outcome": Outcome.INCONCLUSIVE, "reason": f"{what} is undefined on these rows"}
        text = iv.text(signed=not absolute)
        if not iv.bounded:
            return {
                "outcome": Outcome.INCONCLUSIVE,
                "reason": f"{what} {text} has no bounds: cannot judge on a point estimate",
            }
        outcome = (_at_least if up else _at_most)(iv, bound)
        shown = _fmt(bound) if absolute else _sfmt(bound)
        side = "lower" if up else "upper"
        if outcome == Outcome.PASS:
            reason = f"{what} {text}: its {side} bound {rel} {shown} ({self.bound} bounds at {self.level})"
        elif outcome == Outcome.FAIL:
            reason = f"{what} {text}: surely misses {rel} {shown} ({self.bound} bounds at {self.level})"
        else:
            reason = f"{what} {text}: the bounds straddle {shown}, not yet settled"
        return {"outcome": outcome, "reason": reason}

    def _settle(
        self, outcome: Outcome, iv: Interval | None, bound: float, up: bool, raw: Any, source: dict
    ) -> int | None:
        """More labelled rows (of the whole sample) that would settle an inconclusive gate at the observed
        effect: None when the estimate sits on the bound or the evidence gives no per-row sd."""
        if outcome != Outcome.INCONCLUSIVE or iv is None or iv.value is None or not isinstance(raw, dict):
            return None
        sd, rows = _num(raw.get("sd")), _num(raw.get("rows")) or _num(source.get("rows"))
        if sd is None or rows is None or rows <= 0:
            return None
        passing_side = iv.value > bound if up else iv.value < bound
        fail_alpha = _num(raw.get("fail_alpha"))
        alpha = self.policy.alpha if passing_side or fail_alpha is None else fail_alpha
        need = rows_to_settle(abs(iv.value - bound), sd, alpha, float(self.policy.planned_rows))
        if need is None:
            return None
        share = rows / self.labeled if self.labeled else 1.0
        return max(1, int(math.ceil((need - rows) / max(share, 1e-9))))

    def metrics(self) -> None:
        for g in self.policy.metrics:
            self.metric_gate(g, self.ev, "metric", "metric", None)

    def slices(self) -> None:
        """The metric gates again where the data moved: the recent window and after the change point."""
        d = self.policy.drift
        wanted = [("recent", "the recent window", d.recent_share is not None)]
        wanted.append(("after_change", "the rows after the change point", d.after_change_point))
        for key, label, on in wanted:
            if not on or not self.policy.metrics:
                continue
            sl = self.ev.get(key)
            if not isinstance(sl, dict):
                why = (
                    "no drift report for this run"
                    if key == "after_change" and self.drift is None
                    else "the drift report found no change point"
                    if key == "after_change"
                    else "the evidence has no labelled time span"
                )
                self.skipped.append(Skipped(f"{key}.*", f"{label}: {why}"))
                continue
            if sl.get("small"):
                self.skipped.append(
                    Skipped(
                        f"{key}.*",
                        f"{label} (from {sl.get('from')}) has {_rows_text(int(sl.get('rows') or 0))} labelled rows "
                        f"< {self.policy.min_segment_rows:,}: not judged",
                    )
                )
                continue
            rule = d.require if key == "recent" else d.slices_require
            for g in self.policy.metrics:
                self.metric_gate(g, sl, key, key, f"{label} (from {sl.get('from')})", rule == "no_harm")

    def drifted_slices(self) -> None:
        """The metric gates on each bin of every feature the drift report found drifted."""
        d = self.policy.drift
        if not d.drifted_slices or not self.policy.metrics:
            return
        features = self.ev.get("drifted_slices")
        if not isinstance(features, dict):
            if self.drift is not None and any(
                isinstance(f, dict) and f.get("drifted") for f in (self.drift.get("features") or {}).values()
            ):
                self.skipped.append(Skipped("drifted.*", "the evidence has no values of the drifted features"))
            return
        for feature, bins in features.items():
            for label, sl in bins.items():
                name = f"{feature} {label}"
                if not isinstance(sl, dict) or sl.get("small"):
                    rows = sl.get("rows") if isinstance(sl, dict) else None
                    self.skipped.append(
                        Skipped(
                            f"drifted.{name}",
                            f"drifted feature {name} has {_rows_text(int(rows or 0))} labelled rows < "
                            f"{self.policy.min_segment_rows:,}: listed, not judged",
                        )
                    )
                    continue
                for g in self.policy.metrics:  # a bin surely worse holds for review, as a segment does
                    self.metric_gate(
                        g.model_copy(update={"critical": False}),
                        sl,
                        "drifted_slice",
                        f"drifted.{name}",
                        f"drifted feature {name}",
                        d.slices_require == "no_harm",
                    )

    def segments(self) -> None:
        segs = self.ev.get("segments") or {}
        for g in self.policy.segments:
            cols = list(segs) if g.column == "*" else [g.column]
            if not cols:
                self.skipped.append(
                    Skipped(
                        f"segment.*.{g.metric}",
                        "no segment columns declared (the traffic set's or the policy's segment_columns)",
                    )
                )
            for col in cols:
                values = segs.get(col)
                if not values:
                    self.add(
                        gate=f"segment.{col}.{g.metric}",
                        kind="segment",
                        metric=g.metric,
                        criterion="segments",
                        threshold=None,
                        outcome=Outcome.INCONCLUSIVE,
                        critical=g.critical,
                        reason=f"the evidence has no segments for column {col!r}: declare it a segment column",
                        segment=col,
                    )
                    continue
                for value, seg in values.items():
                    name = f"{col}={value}"
                    if not isinstance(seg, dict) or seg.get("small"):
                        rows = seg.get("rows") if isinstance(seg, dict) else None
                        self.skipped.append(
                            Skipped(
                                f"segment.{name}.{g.metric}",
                                f"segment {name} has {rows:,} labelled rows < {self.policy.min_segment_rows:,}: "
                                "listed, not judged"
                                if isinstance(rows, int)
                                else f"segment {name} is small: listed, not judged",
                            )
                        )
                        continue
                    self.metric_gate(g, seg, "segment", f"segment.{name}", name, g.require == "no_harm")

    # latency and errors ------------------------------------------------------------------------
    def latency(self) -> None:
        lat = self.ev.get("latency") or {}
        online = lat.get("online")
        for g in self.policy.latency:
            p = g.percentile
            base, cand = _interval((lat.get("baseline") or {}).get(p)), _interval((lat.get("candidate") or {}).get(p))
            gate = f"latency.{p}"
            if base is None or cand is None:
                self.add(
                    gate=gate,
                    kind="latency",
                    metric=f"latency_{p}_ms",
                    criterion="latency",
                    threshold=g.max_ratio or g.max_ms,
                    outcome=Outcome.INCONCLUSIVE,
                    critical=g.critical,
                    reason=f"the evidence has no {p} latency for both models",
                )
                continue
            if online is False and not g.judge_batch:
                self.skipped.append(
                    Skipped(
                        gate,
                        f"not judged: batch-amortized latency (a throughput replay; {p} baseline "
                        f"{_ms(base.value)}, candidate {_ms(cand.value)}): replay with --online, or set "
                        "judge_batch = true",
                    )
                )
                continue
            self._latency_gate(g, base, cand)

    def _latency_gate(self, g: LatencyGate, base: Interval, cand: Interval) -> None:
        p = g.percentile
        b_lo = base.ci_low if base.ci_low is not None else 0.0
        b_hi = base.ci_high if base.ci_high is not None else math.inf
        c_lo = cand.ci_low if cand.ci_low is not None else 0.0
        c_hi = cand.ci_high if cand.ci_high is not None else math.inf
        common = dict(
            kind="latency",
            metric=f"latency_{p}_ms",
            baseline=base.value,
            candidate=cand.value,
            delta=Interval(
                None if cand.value is None or base.value is None else cand.value - base.value, c_lo - b_hi, c_hi - b_lo
            ),
            critical=g.critical,
            bound=self.bound,
        )
        if g.max_ratio is not None:
            # allowed: max_ratio x the baseline, and never less than the baseline + min_ms_change
            pass_limit = max(g.max_ratio * b_lo, b_lo + g.min_ms_change)
            fail_limit = max(g.max_ratio * b_hi, b_hi + g.min_ms_change)
            if c_hi <= pass_limit:
                outcome, how = Outcome.PASS, f"upper bound {_ms(c_hi)} <= {_ms(pass_limit)}"
            elif c_lo > fail_limit:
                outcome, how = Outcome.FAIL, f"lower bound {_ms(c_lo)} > {_ms(fail_limit)}"
            else:
                outcome, how = Outcome.INCONCLUSIVE, "the bounds straddle the limit"
            self.add(
                gate=f"latency.{p}.max_ratio",
                criterion="max_ratio",
                threshold=g.max_ratio,
                outcome=outcome,
                reason=f"candidate {p} {cand.text()} ms vs baseline {base.text()} ms: {how} (at most "
                f"{g.max_ratio:g}x the baseline, differences under {g.min_ms_change:g} ms allowed)",
                **common,
            )
        if g.max_ms is not None:
            outcome = _at_most(Interval(cand.value, c_lo, c_hi), g.max_ms)
            self.add(
                gate=f"latency.{p}.max_ms",
                criterion="max_ms",
                threshold=g.max_ms,
                outcome=outcome,
                reason=f"candidate {p} {cand.text()} ms: "
                + {"pass": "upper bound <=", "fail": "lower bound >", "inconclusive": "bounds straddle"}[outcome]
                + f" {g.max_ms:g} ms",
                **common,
            )

    def errors(self) -> None:
        g = self.policy.errors
        errs = self.ev.get("errors") or {}
        cand, base = errs.get("candidate") or {}, errs.get("baseline") or {}
        rate = _num(cand.get("rate"))
        iv = None if rate is None else Interval(rate, _num(cand.get("ci_low")), _num(cand.get("ci_high")))
        judged: dict[str, Any]
        if rate is None or iv is None:
            judged = {"outcome": Outcome.INCONCLUSIVE, "reason": "the evidence reports no candidate error rate"}
        else:
            judged = self._judge(iv, g.max_rate, False, "candidate error rate", True)
            if cand.get("count") is not None:
                judged["reason"] += f" ({cand['count']:,} errors in {cand.get('rows'):,} requests)"
            rows = _num(cand.get("rows"))
            if judged["outcome"] == Outcome.INCONCLUSIVE and rows:
                need = proportion_rows_to_settle(rate, g.max_rate, self.policy.alpha, float(self.policy.planned_rows))
                if need is not None and need > rows:
                    judged["settle_rows"] = int(need - rows)
                    judged["reason"] += f"; about {need - rows:,.0f} more requests would settle it"
        self.add(
            gate="errors.rate",
            kind="errors",
            metric="error_rate",
            criterion="max_rate",
            threshold=g.max_rate,
            baseline=_num(base.get("rate")),
            candidate=rate,
            delta=iv,
            critical=g.critical,
            rows=cand.get("rows"),
            bound=self.bound,
            **judged,
        )

    def drift_report(self) -> None:
        if self.drift is None and self.policy.drift.required:
            self.add(
                gate="drift.report",
                kind="drift",
                metric="drift",
                criterion="required",
                threshold=None,
                outcome=Outcome.INCONCLUSIVE,
                critical=False,
                reason="the policy requires a drift report and this run has none: run `workbench drift`",
            )


def _ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "unbounded"
    return f"{x * 1000:.3g} µs" if abs(x) < 1 else f"{x:.4g} ms"


def verdict_of(checks: tuple[Check, ...] | list[Check]) -> tuple[Verdict, str]:
    """ROLLBACK on a failing critical check, HOLD on any other failure or inconclusive check, else PROMOTE."""

    def names(cs):
        return ", ".join(c.gate for c in cs)

    critical = [c for c in checks if c.outcome == Outcome.FAIL and c.critical]
    if critical:
        return Verdict.ROLLBACK, f"critical gate failed: {names(critical)}"
    failed = [c for c in checks if c.outcome == Outcome.FAIL]
    if failed:
        return Verdict.HOLD, f"non-critical gate failed: {names(failed)}"
    unsure = [c for c in checks if c.outcome == Outcome.INCONCLUSIVE]
    if unsure:
        return Verdict.HOLD, f"inconclusive: {names(unsure)}"
    return Verdict.PROMOTE, f"all {len(checks)} checks passed"


def summary_of(checks: tuple[Check, ...] | list[Check], verdict: Verdict) -> str:
    """One sentence: the gate that decides the verdict and, for a HOLD, what would change it."""
    if verdict == Verdict.PROMOTE:
        return f"Every one of the {len(checks)} checks passed."
    order = [c for c in checks if c.outcome == Outcome.FAIL and c.critical]
    order += [c for c in checks if c.outcome == Outcome.FAIL and not c.critical]
    # the open check that needs the most rows blocks longest (one that no row count settles, first)
    order += sorted(
        (c for c in checks if c.outcome == Outcome.INCONCLUSIVE),
        key=lambda c: -math.inf if c.settle_rows is None else -c.settle_rows,
    )
    first = order[0]
    others = len(order) - 1
    more = f" (and {others} more)" if others else ""
    if verdict == Verdict.ROLLBACK:
        return f"Rolled back: {first.gate}{more} failed and is critical: {first.reason}."
    if first.outcome == Outcome.FAIL:
        return f"Held: {first.gate}{more} failed: {first.reason}. Fix the candidate; more rows will not change this."
    settle = (
        " No other open check needs more rows."
        if first.settle_rows is not None
        else " Its estimate sits on the margin: more rows alone may not settle it."
    )
    return f"Held: {first.gate}{more} is not settled yet: {first.reason}.{settle}"


def with_check(card: Scorecard, check: Check) -> Scorecard:
    """The scorecard with one more check, its verdict, reason and summary recomputed."""
    checks = (*card.checks, check)
    verdict, reason = verdict_of(checks)
    return replace(card, checks=checks, verdict=verdict, reason=reason, summary=summary_of(checks, verdict))


def score(policy: Policy, evidence: dict, drift: dict | None = None) -> Scorecard:
    """Judge every gate of ``policy`` on an evidence dict (:func:`workbench.decide.evidence.build_evidence`)
    and an optional drift report (context, and the change point the evidence sliced at)."""
    j = _Judge(policy, evidence, drift)
    j.evidence()
    j.metrics()
    j.slices()
    j.drifted_slices()
    j.segments()
    j.latency()
    j.errors()
    j.drift_report()
    checks, skipped = judge_resources(policy, evidence or {})
    j.checks += checks
    j.skipped += skipped
    verdict, reason = verdict_of(j.checks)
    return Scorecard(
        tuple(j.checks),
        tuple(j.skipped),
        verdict,
        reason,
        tuple(drift_context(drift)),
        summary_of(j.checks, verdict),
    )
