"""Evaluate a regression run: both models' regression metrics with intervals and their paired deltas
(:func:`workbench.evaluate.regression.compare_regression`), overall and per segment value or time window, with
the latency, error rates, coverage and resources a binary evaluation reports.

:func:`evaluate_regression_samples` computes on arrays (pure); :func:`evaluate_regression_run` reads the run's
rows (their numeric labels) from the store and saves the result, as :func:`~workbench.evaluate.evaluation.
evaluate_run` does for binary runs (which hands regression runs to it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.evaluate.latency import error_rates, latency_summary
from workbench.evaluate.regression import RegressionComparison, central_interval, compare_regression, quantile_extras
from workbench.evaluate.results import ErrorRate, LatencyResult, Options, evaluation_tail
from workbench.roles import BASELINE, CANDIDATE, ROLES
from workbench.tasks import REGRESSION


@dataclass(frozen=True)
class RegressionSlice:
    """One segment value or time window of a regression run: its labelled rows, whether they are few, and the
    comparison on them."""

    rows: int
    small: bool
    comparison: RegressionComparison

    def to_dict(self) -> dict:
        d = self.comparison.to_dict()
        return {"rows": self.rows, "small": self.small, **{k: d[k] for k in ROLES}, "delta": d["delta"]}


@dataclass(frozen=True)
class RegressionEvaluation:
    """A regression run's evaluation; ``to_dict`` has the ``evaluate --json`` shape of a binary run where the two
    share fields (``labeled_rows``, ``baseline``/``candidate``/``delta`` per metric, ``latency``, ``errors``)."""

    run_id: str
    labeled_rows: int
    label_coverage: float
    overall: RegressionComparison
    latency: LatencyResult
    errors: dict[str, ErrorRate]
    segments: dict | None = None  # {column: {value: RegressionSlice}}
    windows: dict | None = None  # {"day": {iso start: RegressionSlice}}
    undefined: dict = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)
    resources: dict | None = None
    quantiles: tuple[float, ...] = ()  # the levels both models predicted (pinball@q), ascending

    def to_dict(self) -> dict[str, Any]:
        d = self.overall.to_dict()
        out = {
            "run_id": self.run_id,
            "task": REGRESSION,
            "labeled_rows": self.labeled_rows,
            "label_coverage": self.label_coverage,
            "confidence": self.overall.confidence,
            "rows": d["rows"],
            "baseline": d["baseline"],
            "candidate": d["candidate"],
            "delta": d["delta"],
            "latency": self.latency.to_dict(),
            "errors": {r: e.to_dict() for r, e in self.errors.items()},
        }
        if self.quantiles:
            out["quantiles"] = list(self.quantiles)
            pair = central_interval(self.quantiles)
            if pair is not None:  # coverage and interval_width are this interval's
                lo, hi = (self.quantiles[i] for i in pair)
                out["interval"] = {"lower": lo, "upper": hi, "nominal": round(hi - lo, 12)}
        return out | evaluation_tail(self)


def _undefined(prefix: str, comp: RegressionComparison) -> dict[str, str]:
    """Why each null value of a comparison is null, keyed like a binary evaluation's ``undefined``."""
    out = {}
    for side, metrics in ((BASELINE, comp.baseline), (CANDIDATE, comp.candidate), ("delta", comp.delta)):
        for name, est in metrics.items():
            if est.undefined:
                out[f"{prefix}{side}.{name}"] = est.undefined
    return out


def _compare(
    y: np.ndarray,
    preds: dict[str, np.ndarray],
    levels: tuple[float, ...],
    quantiles: dict[str, np.ndarray] | None,
    opts: Options,
) -> RegressionComparison:
    """:func:`compare_regression` of point predictions, and of quantiles at ``levels`` when given."""
    per_level, intervals = quantile_extras(levels, quantiles) if quantiles else (None, None)
    return compare_regression(y, preds[BASELINE], preds[CANDIDATE], quantiles=per_level, intervals=intervals, opts=opts)


def _slices(
    ids: np.ndarray,
    labels: list[str],
    y: np.ndarray,
    preds: dict[str, np.ndarray],
    levels: tuple[float, ...],
    quantiles: dict[str, np.ndarray] | None,
    opts: Options,
    prefix: str,
) -> tuple[dict[str, RegressionSlice], dict[str, str]]:
    out: dict[str, RegressionSlice] = {}
    undefined: dict[str, str] = {}
    for j, name in enumerate(labels):
        idx = np.flatnonzero(ids == j)
        sliced = {r: m[idx] for r, m in quantiles.items()} if quantiles else None
        comp = _compare(y[idx], {r: p[idx] for r, p in preds.items()}, levels, sliced, opts)
        out[name] = RegressionSlice(len(idx), len(idx) < opts.small_rows, comp)
        undefined |= _undefined(f"{prefix}.{name}.", comp)
    return out, undefined


def evaluate_regression_samples(
    run_id: str,
    y: np.ndarray,
    preds: dict[str, np.ndarray],
    latency: dict[str, np.ndarray],
    error_counts: dict[str, dict],
    rows_done: int,
    opts: Options = Options(),
    segment: tuple[str, pa.Array] | None = None,
    window: tuple[str, pa.Array] | None = None,
    levels: tuple[float, ...] = (),
    quantiles: dict[str, np.ndarray] | None = None,
    quantiles_skipped: str | None = None,
) -> RegressionEvaluation:
    """The whole evaluation of a regression run on arrays: numeric labels ``y``, each model's predictions (NaN
    where it failed), latency samples per model (sorted in place) and error counts ``{role: {"rows", "errors"}}``;
    per segment value (``(column, values)``, the ``opts.top_k`` most frequent and "other") or time window
    (``(unit, starts)``) on request. ``quantiles``: each model's n x ``levels`` matrix of quantiles (NaN rows
    where it failed), for the pinball loss at each level and the coverage and width of the central interval
    they hold (:func:`~workbench.evaluate.regression.central_interval`); ``quantiles_skipped``: why the run has
    none though a model gives some (listed in ``undefined``)."""
    from workbench.evaluate.slices import slice_ids

    y = np.asarray(y, dtype=np.float64)
    quantiles = quantiles if levels else None
    overall = _compare(y, preds, levels, quantiles, opts)
    undefined = _undefined("", overall)
    if quantiles_skipped:
        undefined["pinball"] = quantiles_skipped
    elif quantiles and central_interval(levels) is None:
        undefined["coverage"] = f"no central interval among the quantile levels {list(levels)}"
    segments = windows = None
    if segment is not None:
        col, values = segment
        ids, labels = slice_ids(values, opts.top_k)
        slices, und = _slices(ids, labels, y, preds, levels, quantiles, opts, f"segments.{col}")
        segments, undefined = {col: slices}, undefined | und
    if window is not None:
        unit, starts = window
        iso = pc.strftime(starts.cast(pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%SZ")
        ids, labels = slice_ids(iso, None)
        slices, und = _slices(ids, labels, y, preds, levels, quantiles, opts, f"windows.{unit}")
        windows, undefined = {unit: slices}, undefined | und
    lat, lat_undefined = latency_summary(latency, opts)
    errors = error_rates(error_counts, opts)
    undefined |= lat_undefined | {f"errors.{r}": "no rows replayed" for r, e in errors.items() if e.rate is None}
    n = len(y)
    return RegressionEvaluation(
        run_id,
        n,
        round(n / rows_done, 6) if rows_done else 0.0,
        overall,
        lat,
        errors,
        segments,
        windows,
        undefined,
        quantiles=tuple(levels) if quantiles else (),
    )
