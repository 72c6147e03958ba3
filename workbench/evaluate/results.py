"""The results of an evaluation: its statistical :class:`Options` and the frozen result types, each with
``to_dict`` giving the JSON stored in the ``evaluations`` table (non-finite numbers become null)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench import WorkbenchError


@dataclass(frozen=True)
class Options:
    """Statistical settings of one evaluation (validated; every one is recorded with the result)."""

    confidence: float = 0.95
    seed: int = 0
    n_boot: int = 1000
    power: float = 0.8
    exact_max_rows: int = 10_000
    top_k: int = 10
    small_rows: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise WorkbenchError(f"--confidence must be between 0 and 1 (exclusive), not {self.confidence}")
        if not 0 < self.power < 1:
            raise WorkbenchError(f"power must be between 0 and 1 (exclusive), not {self.power}")
        if self.n_boot < 100:
            raise WorkbenchError(f"use at least 100 bootstrap replicates, not {self.n_boot}")
        if self.top_k < 1:
            raise WorkbenchError(f"top_k must be at least 1, not {self.top_k}")


def _num(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


@dataclass(frozen=True)
class Estimate:
    value: float | None
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict:
        return {"value": _num(self.value), "ci_low": _num(self.ci_low), "ci_high": _num(self.ci_high)}


@dataclass(frozen=True)
class DeltaEstimate:
    value: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    mde: float | None

    def to_dict(self) -> dict:
        return {
            "value": _num(self.value),
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
            "p_value": _num(self.p_value),
            "mde": _num(self.mde),
        }


@dataclass(frozen=True)
class TaskMetric:
    """A regression or multi-class metric's direction (``None``: nearest a target is best, e.g. 0 for bias)
    and the range its values can take."""

    name: str
    higher_is_better: bool | None
    bounds: tuple[float, float] = (0.0, 1.0)

    @property
    def span(self) -> float:
        """The range a delta of the metric can take."""
        return self.bounds[1] - self.bounds[0]


@dataclass(frozen=True)
class _RowsEstimate:
    """A value with its interval and the interval's method, the rows it used and the rows left out by reason."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    rows: int
    excluded: dict[str, int] = field(default_factory=dict)
    method: str | None = None

    def to_dict(self) -> dict:
        return {
            "value": _num(self.value),
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
            "rows": self.rows,
            "excluded": dict(self.excluded),
            "method": self.method,
        }


@dataclass(frozen=True)
class MetricEstimate(_RowsEstimate):
    """One model's value of a regression or multi-class metric: its interval and the interval's method, the
    rows it used, the rows left out by reason (never dropped silently), and why a value or interval is
    missing (``undefined``)."""

    undefined: str | None = None

    def to_dict(self) -> dict:
        return {**super().to_dict(), "undefined": self.undefined}


@dataclass(frozen=True)
class PairedEstimate(_RowsEstimate):
    """candidate - baseline of one metric on the rows both models have: the delta with its interval, the
    relative change (delta / the baseline's value on those rows), the p-value of "no difference" and its
    ``test``, the minimum detectable effect, the Wilcoxon signed-rank p-value where one applies, and the
    rows used and left out as in :class:`MetricEstimate`."""

    relative: float | None = None
    p_value: float | None = None
    test: str | None = None
    mde: float | None = None
    wilcoxon_p: float | None = None
    undefined: str | None = None

    def to_dict(self) -> dict:
        return {
            **super().to_dict(),
            "relative": _num(self.relative),
            "p_value": _num(self.p_value),
            "test": self.test,
            "mde": _num(self.mde),
            "wilcoxon_p": _num(self.wilcoxon_p),
            "undefined": self.undefined,
        }


@dataclass(frozen=True)
class Comparison:
    """Both models' metrics and their deltas on one set of labelled rows."""

    rows: dict
    baseline: dict
    candidate: dict
    delta: dict
    undefined: dict  # "baseline.fpr" -> reason, for every null value
    method: str  # bootstrap of the score metrics: "rows" (Poisson row weights) or "linear"

    def metrics_dict(self) -> dict:
        return {
            "baseline": {k: v.to_dict() for k, v in self.baseline.items()},
            "candidate": {k: v.to_dict() for k, v in self.candidate.items()},
            "delta": {k: v.to_dict() for k, v in self.delta.items()},
        }


@dataclass(frozen=True)
class Slice:
    """One segment value or time window: its labelled rows, whether they are few, its comparison."""

    rows: int
    small: bool
    comparison: Comparison

    def to_dict(self) -> dict:
        return {"rows": self.rows, "small": self.small, **self.comparison.metrics_dict()}


@dataclass(frozen=True)
class LatencyResult:
    """Milliseconds: percentiles per model, their differences with intervals, Mann-Whitney p-value."""

    baseline: dict
    candidate: dict
    delta: dict
    mann_whitney_p: float | None

    def to_dict(self) -> dict:
        return {
            "baseline": {k: _num(v) for k, v in self.baseline.items()},
            "candidate": {k: _num(v) for k, v in self.candidate.items()},
            "delta": {k: v.to_dict() for k, v in self.delta.items()},
            "mann_whitney_p": _num(self.mann_whitney_p),
        }


@dataclass(frozen=True)
class ErrorRate:
    count: int
    rows: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "rows": self.rows,
            "rate": _num(self.rate),
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
        }


@dataclass(frozen=True)
class EvaluationResult:
    run_id: str
    labeled_rows: int
    label_coverage: float
    confidence: float
    thresholds: dict
    overall: Comparison
    latency: LatencyResult
    errors: dict
    segments: dict | None = None  # {column: {value: Slice}}
    windows: dict | None = None  # {"day": {iso start: Slice}}
    undefined: dict = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)  # the run's status, rows done and the labels' state evaluated
    resources: dict | None = None  # what each model cost to run (workbench.evaluate.resources.compare_resources)

    def to_dict(self) -> dict:
        out = {
            "run_id": self.run_id,
            "labeled_rows": self.labeled_rows,
            "label_coverage": self.label_coverage,
            "confidence": self.confidence,
            "rows": dict(self.overall.rows),
            "thresholds": dict(self.thresholds),
            **self.overall.metrics_dict(),
            "latency": self.latency.to_dict(),
            "errors": {r: e.to_dict() for r, e in self.errors.items()},
        }
        return out | evaluation_tail(self)


def evaluation_tail(result: Any) -> dict:
    """The keys every stored evaluation ends with, whatever its task: ``segments`` and ``windows`` (when
    evaluated), ``undefined``, ``coverage`` and ``resources``."""
    out: dict[str, Any] = {}
    if result.segments is not None:
        out["segments"] = {c: {v: s.to_dict() for v, s in vals.items()} for c, vals in result.segments.items()}
    if result.windows is not None:
        out["windows"] = {w: {k: s.to_dict() for k, s in vals.items()} for w, vals in result.windows.items()}
    return out | {"undefined": dict(result.undefined), "coverage": dict(result.coverage), "resources": result.resources}
