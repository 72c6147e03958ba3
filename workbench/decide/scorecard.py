"""The scorecard: judging a :class:`~workbench.decide.policy.Policy`'s gates on an evaluation, and the verdict.

Gates use MLflow's ``MetricThreshold`` vocabulary (``threshold``, ``min_absolute_change``,
``min_relative_change``, ``higher_is_better``) and are judged on interval bounds, not point estimates:
a gate passes when the whole confidence interval meets it, fails when the whole interval misses it,
and is inconclusive when the interval straddles the bound. As in Kayenta, a failing ``critical`` gate
forces ROLLBACK; any other failure or an inconclusive check holds the ramp; all passing promotes.

The judge reads these fields of the evaluation dict (``workbench evaluate --json``): ``labeled_rows``,
``confidence``, ``baseline``/``candidate``/``delta`` per metric, ``latency``, ``errors``, ``segments``;
and of the drift dict (``workbench drift --json``): ``share_drifted``, ``features.*.drifted``,
``prediction_drift`` (``drifted`` flags), ``concept_drift.detected``/``change_point``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from workbench.decide.policy import MetricGate, Outcome, Policy, Verdict


@dataclass(frozen=True)
class Interval:
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def bounded(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    def text(self, signed: bool = False) -> str:
        f = _sfmt if signed else _fmt
        bounds = f" [{f(self.ci_low)}, {f(self.ci_high)}]" if self.bounded else ""
        return f"{f(self.value)}{bounds}"


@dataclass(frozen=True)
class Check:
    """One judged criterion: the numbers behind it, its outcome and a one-line reason."""

    gate: str
    kind: str
    metric: str
    criterion: str
    threshold: float | None
    baseline: float | None
    candidate: float | None
    delta: Interval | None
    outcome: Outcome
    critical: bool
    reason: str
    segment: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["delta"] = asdict(self.delta) if self.delta else None
        return d


@dataclass(frozen=True)
class Skipped:
    """A gate that was not judged, and why (no drift report, a segment too small)."""

    gate: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scorecard:
    checks: tuple[Check, ...]
    skipped: tuple[Skipped, ...]
    verdict: Verdict
    reason: str

    def count(self, outcome: Outcome) -> int:
        return sum(c.outcome == outcome for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "counts": {o: self.count(o) for o in Outcome},
            "checks": [c.to_dict() for c in self.checks],
            "skipped": [s.to_dict() for s in self.skipped],
        }


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, dict):
        return _num(x.get("value"))
    return None


def _interval(x: Any) -> Interval | None:
    """An interval from ``{"value", "ci_low", "ci_high"}`` or a bare number (then unbounded)."""
    if isinstance(x, dict):
        v = _num(x.get("value"))
        return None if v is None else Interval(v, _num(x.get("ci_low")), _num(x.get("ci_high")))
    v = _num(x)
    return None if v is None else Interval(v)


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.4g}"


def _sfmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:+.4g}"


def _at_least(low: float, high: float, bound: float) -> Outcome:
    return Outcome.PASS if low >= bound else Outcome.FAIL if high < bound else Outcome.INCONCLUSIVE


def _at_most(low: float, high: float, bound: float) -> Outcome:
    return Outcome.PASS if high <= bound else Outcome.FAIL if low > bound else Outcome.INCONCLUSIVE


class _Judge:
    """Builds the checks of one scorecard from an evaluation and an optional drift report."""

    def __init__(self, policy: Policy, evaluation: dict, drift: dict | None):
        self.policy, self.ev, self.drift = policy, evaluation or {}, drift
        conf = _num(self.ev.get("confidence"))
        self.conf_text = f"{conf:.0%}" if conf is not None else "the evaluation's"
        self.checks: list[Check] = []
        self.skipped: list[Skipped] = []

    def add(self, **kw) -> None:
        kw.setdefault("baseline", None)
        kw.setdefault("candidate", None)
        kw.setdefault("delta", None)
        self.checks.append(Check(**kw))

    # evidence ----------------------------------------------------------------------------------
    def evidence(self) -> None:
        p = self.policy
        n = _num(self.ev.get("labeled_rows"))
        if n is None:
            outcome, reason = Outcome.INCONCLUSIVE, "the evaluation reports no labelled row count"
        elif n >= p.min_labeled_rows:
            outcome, reason = Outcome.PASS, f"{int(n)} labelled rows >= {p.min_labeled_rows} required"
        else:
            outcome, reason = Outcome.INCONCLUSIVE, f"too few labelled rows: {int(n)} < {p.min_labeled_rows} required"
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
        )
        c = _num(self.ev.get("confidence"))
        if c is None:
            outcome, reason = (
                Outcome.INCONCLUSIVE,
                ("the evaluation reports no confidence level (no intervals to judge on)"),
            )
        elif c + 1e-12 >= p.confidence:
            outcome, reason = Outcome.PASS, f"intervals at {c:.0%} confidence >= {p.confidence:.0%} required"
        else:
            outcome, reason = (
                Outcome.INCONCLUSIVE,
                (
                    f"intervals at {c:.0%} confidence < {p.confidence:.0%} required: "
                    "re-evaluate at the policy's confidence"
                ),
            )
        self.add(
            gate="evidence.confidence",
            kind="evidence",
            metric="confidence",
            criterion="min_confidence",
            threshold=p.confidence,
            candidate=c,
            outcome=outcome,
            critical=False,
            reason=reason,
        )

    # metric and segment gates ------------------------------------------------------------------
    def metric_gate(self, g: MetricGate, source: dict, kind: str, prefix: str, segment: str | None) -> None:
        m = g.metric
        base = _interval((source.get("baseline") or {}).get(m))
        cand = _interval((source.get("candidate") or {}).get(m))
        delta = _interval((source.get("delta") or {}).get(m))
        if (
            delta is None
            and base is not None
            and cand is not None
            and base.value is not None
            and cand.value is not None
        ):
            delta = Interval(cand.value - base.value)
        raw_delta = (source.get("delta") or {}).get(m)
        mde = _num(raw_delta.get("mde")) if isinstance(raw_delta, dict) else None
        where = f"{m}" + (f" in segment {segment}" if segment else "")
        up = g.better_up
        common = dict(
            kind=kind,
            metric=m,
            baseline=base.value if base else None,
            candidate=cand.value if cand else None,
            delta=delta,
            critical=g.critical,
            segment=segment,
        )
        for criterion, value in (
            ("threshold", g.threshold),
            ("min_absolute_change", g.min_absolute_change),
            ("min_relative_change", g.min_relative_change),
        ):
            if value is None:
                continue
            gate = f"{prefix}.{m}.{criterion}"
            if criterion == "threshold":
                iv, bound, what = cand, value, f"candidate {where}"
            elif criterion == "min_absolute_change":
                iv, bound, what = delta, (value if up else -value), f"change in {where}"
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
                iv, bound, what = delta, (scale if up else -scale), f"change in {where}"
            self.add(
                gate=gate,
                criterion=criterion,
                threshold=value,
                **self._judge(iv, bound, up, what, criterion == "threshold", mde),
                **common,
            )

    def _judge(self, iv: Interval | None, bound: float, up: bool, what: str, absolute: bool, mde: float | None) -> dict:
        rel = ">=" if up else "<="
        if iv is None or iv.value is None:
            return {"outcome": Outcome.INCONCLUSIVE, "reason": f"{what} is undefined in the evaluation"}
        text = iv.text(signed=not absolute)
        if iv.ci_low is None or iv.ci_high is None:
            return {
                "outcome": Outcome.INCONCLUSIVE,
                "reason": f"{what} {text} has no confidence interval: cannot judge on bounds",
            }
        outcome = (_at_least if up else _at_most)(iv.ci_low, iv.ci_high, bound)
        shown = _fmt(bound) if absolute else _sfmt(bound)
        if outcome == Outcome.PASS:
            reason = f"{what} {text}: whole interval {rel} {shown}"
        elif outcome == Outcome.FAIL:
            reason = f"{what} {text}: whole interval misses {rel} {shown} at {self.conf_text} confidence"
        else:
            power = f"; detectable effect at these rows {mde:.3g}" if mde is not None else ""
            reason = f"{what} {text}: interval straddles {shown}, more labelled rows needed{power}"
        return {"outcome": outcome, "reason": reason}

    def metrics(self) -> None:
        for g in self.policy.metrics:
            self.metric_gate(g, self.ev, "metric", "metric", None)

    def segments(self) -> None:
        segs = self.ev.get("segments") or {}
        for g in self.policy.segments:
            cols = list(segs) if g.column == "*" else [g.column]
            if not cols:
                self.skipped.append(Skipped(f"segment.*.{g.metric}", "the evaluation has no segments"))
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
                        reason=f"the evaluation has no segments for column {col!r}: evaluate with --segment {col}",
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
                                f"segment {name} is small ({rows} rows): flagged, not judged",
                            )
                        )
                        continue
                    self.metric_gate(g, seg, "segment", f"segment.{name}", name)

    # latency and errors ------------------------------------------------------------------------
    def latency(self) -> None:
        lat = self.ev.get("latency") or {}
        for g in self.policy.latency:
            p = g.percentile
            base = _num((lat.get("baseline") or {}).get(p))
            cand_iv = _interval((lat.get("candidate") or {}).get(p))
            delta = _interval((lat.get("delta") or {}).get(p))
            common = dict(
                kind="latency",
                metric=f"latency_{p}_ms",
                baseline=base,
                candidate=cand_iv.value if cand_iv else None,
                delta=delta,
                critical=g.critical,
            )
            if g.max_ratio is not None:
                gate = f"latency.{p}.max_ratio"
                if base is None:
                    self.add(
                        gate=gate,
                        criterion="max_ratio",
                        threshold=g.max_ratio,
                        outcome=Outcome.INCONCLUSIVE,
                        reason=f"the evaluation reports no baseline {p} latency",
                        **common,
                    )
                else:
                    bound = (g.max_ratio - 1.0) * base
                    judged = self._judge(delta, bound, False, f"{p} latency change (ms)", False, None)
                    judged["reason"] += f" (= {g.max_ratio:g}x baseline {base:.4g} ms)"
                    self.add(gate=gate, criterion="max_ratio", threshold=g.max_ratio, **judged, **common)
            if g.max_ms is not None:
                gate = f"latency.{p}.max_ms"
                if cand_iv is None or cand_iv.value is None:
                    self.add(
                        gate=gate,
                        criterion="max_ms",
                        threshold=g.max_ms,
                        outcome=Outcome.INCONCLUSIVE,
                        reason=f"the evaluation reports no candidate {p} latency",
                        **common,
                    )
                elif cand_iv.bounded:
                    self.add(
                        gate=gate,
                        criterion="max_ms",
                        threshold=g.max_ms,
                        **self._judge(cand_iv, g.max_ms, False, f"candidate {p} latency (ms)", True, None),
                        **common,
                    )
                else:  # a percentile of the whole sample: the evaluation gives it without an interval
                    ok = cand_iv.value <= g.max_ms
                    self.add(
                        gate=gate,
                        criterion="max_ms",
                        threshold=g.max_ms,
                        outcome=Outcome.PASS if ok else Outcome.FAIL,
                        reason=f"candidate {p} latency {cand_iv.value:.4g} ms {'<=' if ok else '>'} "
                        f"{g.max_ms:g} ms (sample percentile, no interval reported)",
                        **common,
                    )

    def errors(self) -> None:
        g = self.policy.errors
        errs = self.ev.get("errors") or {}
        cand, base = errs.get("candidate") or {}, errs.get("baseline") or {}
        iv = (
            Interval(_num(cand.get("rate")), _num(cand.get("ci_low")), _num(cand.get("ci_high")))
            if _num(cand.get("rate")) is not None
            else None
        )
        if iv is None:
            judged = {"outcome": Outcome.INCONCLUSIVE, "reason": "the evaluation reports no candidate error rate"}
        else:
            judged = self._judge(iv, g.max_rate, False, "candidate error rate", True, None)
        if iv is not None and cand.get("count") is not None:
            judged["reason"] += f" ({cand.get('count')} errors in {cand.get('rows')} rows)"
        self.add(
            gate="errors.rate",
            kind="errors",
            metric="error_rate",
            criterion="max_rate",
            threshold=g.max_rate,
            baseline=_num(base.get("rate")),
            candidate=iv.value if iv else None,
            delta=iv,
            critical=g.critical,
            **judged,
        )

    # drift -------------------------------------------------------------------------------------
    def drift_gates(self) -> None:
        g = self.policy.drift
        wanted = [
            name
            for name, on in (
                ("share_drifted", g.max_share_drifted is not None),
                ("prediction", g.prediction_drift),
                ("concept", g.concept_drift),
            )
            if on
        ]
        if not wanted:
            return
        if self.drift is None:
            if g.required:
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
            else:
                self.skipped.extend(Skipped(f"drift.{w}", "no drift report for this run") for w in wanted)
            return
        d = self.drift
        common = dict(kind="drift", critical=g.critical)
        if g.max_share_drifted is not None:
            share = _num(d.get("share_drifted"))
            features = d.get("features") or {}
            drifted = sorted(k for k, v in features.items() if isinstance(v, dict) and v.get("drifted"))
            names = (": " + ", ".join(drifted[:5]) + (", ..." if len(drifted) > 5 else "")) if drifted else ""
            if share is None:
                outcome, reason = Outcome.INCONCLUSIVE, "the drift report has no share_drifted"
            else:
                outcome = Outcome.PASS if share <= g.max_share_drifted else Outcome.FAIL
                reason = (
                    f"{share:.0%} of features drifted {'<=' if outcome == Outcome.PASS else '>'} "
                    f"{g.max_share_drifted:.0%} allowed{names}"
                )
            self.add(
                gate="drift.share_drifted",
                metric="share_drifted",
                criterion="max_share",
                threshold=g.max_share_drifted,
                candidate=share,
                outcome=outcome,
                reason=reason,
                **common,
            )
        if g.prediction_drift:
            flags = _drift_flags(d.get("prediction_drift"))
            if not flags:
                outcome, reason = Outcome.INCONCLUSIVE, "the drift report has no prediction drift flags"
            elif any(flags.values()):
                outcome, reason = Outcome.FAIL, "prediction drift: " + ", ".join(k for k, v in flags.items() if v)
            else:
                outcome, reason = Outcome.PASS, "no prediction drift (" + ", ".join(flags) + ")"
            self.add(
                gate="drift.prediction",
                metric="prediction_drift",
                criterion="flag",
                threshold=None,
                outcome=outcome,
                reason=reason,
                **common,
            )
        if g.concept_drift:
            cd = d.get("concept_drift") or {}
            detected = cd.get("detected")
            if not isinstance(detected, bool):
                outcome, reason = Outcome.INCONCLUSIVE, "the drift report has no concept_drift.detected"
            elif detected:
                outcome, reason = Outcome.FAIL, f"concept drift detected (change point {cd.get('change_point')})"
            else:
                outcome, reason = Outcome.PASS, "no concept drift detected"
            self.add(
                gate="drift.concept",
                metric="concept_drift",
                criterion="flag",
                threshold=None,
                outcome=outcome,
                reason=reason,
                **common,
            )


def _drift_flags(pd: Any) -> dict[str, bool]:
    """``drifted`` flags of a prediction drift section: its own, else one per sub-section that has one."""
    if not isinstance(pd, dict):
        return {}
    if isinstance(pd.get("drifted"), bool):
        return {"prediction_drift": pd["drifted"]}
    return {k: v["drifted"] for k, v in pd.items() if isinstance(v, dict) and isinstance(v.get("drifted"), bool)}


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


def score(policy: Policy, evaluation: dict, drift: dict | None = None) -> Scorecard:
    """Judge every gate of ``policy`` on an evaluation dict and an optional drift dict."""
    j = _Judge(policy, evaluation, drift)
    j.evidence()
    j.metrics()
    j.segments()
    j.latency()
    j.errors()
    j.drift_gates()
    verdict, reason = verdict_of(j.checks)
    return Scorecard(tuple(j.checks), tuple(j.skipped), verdict, reason)
