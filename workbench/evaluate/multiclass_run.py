"""Evaluate a multi-class run: both models' multi-class metrics with intervals and their paired deltas
(:func:`workbench.evaluate.multiclass.compare_multiclass`: per-class precision, recall, f1 and fpr, their averages,
accuracy with McNemar's test, top-k accuracy, log loss and Brier from the stored class probabilities, the
confusion matrices), overall and per segment value or time window, with the latency, error rates, coverage and
resources a binary evaluation reports.

Labels are class names; a label that is not one of the run's classes (``meta.classes``) is left out and counted
(``excluded_labels``), never judged as a miss. :func:`evaluate_multiclass_samples` computes on arrays (pure);
:func:`~workbench.evaluate.evaluation.evaluate_run` reads a multi-class run's rows and hands them to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.evaluate.latency import error_rates, latency_summary
from workbench.evaluate.multiclass import PER_CLASS, MulticlassComparison, compare_multiclass
from workbench.evaluate.results import ErrorRate, LatencyResult, Options, evaluation_tail
from workbench.roles import BASELINE, CANDIDATE, ROLES
from workbench.tasks import MULTICLASS

UNKNOWN_LABEL = "the label is not one of the run's classes"
TOP_K = (2,)  # top-k accuracies reported (those below the number of classes)


def _by_class(values: list, classes: Sequence[str]) -> dict[str, Any]:
    return {c: v.to_dict() for c, v in zip(classes, values, strict=True)}


def comparison_dict(comp: MulticlassComparison, classes: Sequence[str]) -> dict[str, Any]:
    """A comparison's JSON with per-class values keyed by class name: ``per_class.<role>.<metric>.<class>``,
    ``per_class_delta.<metric>.<class>`` and ``confusion.<role>`` (rows: true class, columns: predicted class,
    both in ``classes`` order)."""
    d = comp.to_dict()
    return {
        "rows": d["rows"],
        "baseline": d["baseline"],
        "candidate": d["candidate"],
        "delta": d["delta"],
        "per_class": {
            r: {m: _by_class(comp.per_class[r][m], classes) for m in PER_CLASS} for r in ROLES if r in comp.per_class
        },
        "per_class_delta": {m: _by_class(v, classes) for m, v in comp.per_class_delta.items()},
        "confusion": d["confusion"],
    }


@dataclass(frozen=True)
class MulticlassSlice:
    """One segment value or time window of a multi-class run: its labelled rows, whether they are few, and the
    comparison on them."""

    rows: int
    small: bool
    comparison: MulticlassComparison
    classes: tuple[str, ...]

    def to_dict(self) -> dict:
        d = comparison_dict(self.comparison, self.classes)
        return {"rows": self.rows, "small": self.small} | {k: v for k, v in d.items() if k != "rows"}


@dataclass(frozen=True)
class MulticlassEvaluation:
    """A multi-class run's evaluation; ``to_dict`` has the ``evaluate --json`` shape of a binary run where the two
    share fields (``labeled_rows``, ``baseline``/``candidate``/``delta`` per metric, ``latency``, ``errors``)
    plus ``classes``, ``per_class``, ``per_class_delta``, ``confusion`` and ``excluded_labels``."""

    run_id: str
    classes: tuple[str, ...]
    labeled_rows: int
    label_coverage: float
    overall: MulticlassComparison
    latency: LatencyResult
    errors: dict[str, ErrorRate]
    excluded_labels: dict[str, int] = field(default_factory=dict)
    segments: dict | None = None  # {column: {value: MulticlassSlice}}
    windows: dict | None = None  # {"day": {iso start: MulticlassSlice}}
    undefined: dict = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)
    resources: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "run_id": self.run_id,
            "task": MULTICLASS,
            "classes": list(self.classes),
            "labeled_rows": self.labeled_rows,
            "label_coverage": self.label_coverage,
            "excluded_labels": dict(self.excluded_labels),
            "confidence": self.overall.confidence,
            **comparison_dict(self.overall, self.classes),
            "latency": self.latency.to_dict(),
            "errors": {r: e.to_dict() for r, e in self.errors.items()},
        }
        return out | evaluation_tail(self)


def _undefined(prefix: str, comp: MulticlassComparison, classes: Sequence[str]) -> dict[str, str]:
    """Why each null value of a comparison is null, keyed like a binary evaluation's ``undefined``."""
    out = {}
    for side, metrics in ((BASELINE, comp.baseline), (CANDIDATE, comp.candidate), ("delta", comp.delta)):
        for name, est in metrics.items():
            if est.undefined:
                out[f"{prefix}{side}.{name}"] = est.undefined
    for r, per in comp.per_class.items():
        for name, values in per.items():
            for c, est in zip(classes, values, strict=True):
                if est.undefined:
                    out[f"{prefix}per_class.{r}.{name}.{c}"] = est.undefined
    return out


def _compare(y, preds, probs, idx, n_classes: int, opts: Options) -> MulticlassComparison:
    take = (lambda a: a) if idx is None else (lambda a: a[idx])
    return compare_multiclass(
        take(y),
        take(preds[BASELINE]),
        take(preds[CANDIDATE]),
        probabilities={r: take(p) for r, p in probs.items()} if probs else None,
        n_classes=n_classes,
        top_k=[k for k in TOP_K if k < n_classes],
        opts=opts,
    )


def class_indices(labels: pa.Array | pa.ChunkedArray, classes: Sequence[str]) -> np.ndarray:
    """Each label's index in ``classes`` as a float (NaN for a label that is not one of them)."""
    idx = pc.index_in(labels, value_set=pa.array(list(classes), pa.string()))
    return idx.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def probability_matrix(column: pa.Array | pa.ChunkedArray, n_classes: int) -> np.ndarray:
    """Rows of a list column as a matrix (class probabilities, a regression run's quantiles), a row of NaN where
    the list is null."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float64()))
    out = np.full((len(column), n_classes), np.nan)
    ok = column.is_valid().to_numpy(zero_copy_only=False)
    if ok.any():
        values = pc.list_flatten(column.filter(pa.array(ok))).to_numpy(zero_copy_only=False)
        out[ok] = values.reshape(-1, n_classes)
    return out


def evaluate_multiclass_samples(
    run_id: str,
    classes: Sequence[str],
    labels: pa.Array | pa.ChunkedArray,
    preds: dict[str, np.ndarray],
    probs: dict[str, np.ndarray] | None,
    latency: dict[str, np.ndarray],
    error_counts: dict[str, dict],
    rows_done: int,
    opts: Options = Options(),
    segment: tuple[str, pa.Array] | None = None,
    window: tuple[str, pa.Array] | None = None,
) -> MulticlassEvaluation:
    """The whole evaluation of a multi-class run on arrays: class-name ``labels``, each model's predicted class
    index (NaN where it failed) and class probabilities (n x C, NaN rows where it failed), latency samples per
    model (sorted in place) and error counts ``{role: {"rows", "errors"}}``; per segment value (``(column,
    values)``, the ``opts.top_k`` most frequent and "other") or time window (``(unit, starts)``) on request."""
    from workbench.evaluate.slices import slice_ids

    classes = tuple(classes)
    n_classes = len(classes)
    y = class_indices(labels, classes)
    known = ~np.isnan(y)
    excluded = {UNKNOWN_LABEL: int((~known).sum())} if not known.all() else {}
    keep = None if known.all() else np.flatnonzero(known)
    if keep is not None:
        y = y[keep]
        preds = {r: p[keep] for r, p in preds.items()}
        probs = {r: p[keep] for r, p in probs.items()} if probs else None
        segment = (segment[0], segment[1].take(pa.array(keep))) if segment is not None else None
        window = (window[0], window[1].take(pa.array(keep))) if window is not None else None
    overall = _compare(y, preds, probs, None, n_classes, opts)
    undefined = _undefined("", overall, classes)
    sliced: dict[str, dict] = {}
    for kind, given in (("segments", segment), ("windows", window)):
        if given is None:
            continue
        name, values = given
        if kind == "windows":
            values = pc.strftime(values.cast(pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%SZ")
        ids, slice_names = slice_ids(values, opts.top_k if kind == "segments" else None)
        slices = {}
        for j, value in enumerate(slice_names):
            idx = np.flatnonzero(ids == j)
            comp = _compare(y, preds, probs, idx, n_classes, opts)
            slices[value] = MulticlassSlice(len(idx), len(idx) < opts.small_rows, comp, classes)
            undefined |= _undefined(f"{kind}.{name}.{value}.", comp, classes)
        sliced[kind] = {name: slices}
    lat, lat_undefined = latency_summary(latency, opts)
    errors = error_rates(error_counts, opts)
    undefined |= lat_undefined | {f"errors.{r}": "no rows replayed" for r, e in errors.items() if e.rate is None}
    n = len(y)
    return MulticlassEvaluation(
        run_id,
        classes,
        n,
        round(n / rows_done, 6) if rows_done else 0.0,
        overall,
        lat,
        errors,
        excluded,
        sliced.get("segments"),
        sliced.get("windows"),
        undefined,
    )
