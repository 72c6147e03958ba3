"""Multi-class metrics of two models on the same requests: each model's values with intervals, the paired
deltas candidate - baseline with their tests, and per-class values.

Metrics (:data:`MULTICLASS_METRICS`, each with its direction):

* per class (one-vs-rest, with the binary metric functions of :mod:`workbench.evaluate.metrics`):
  precision, recall, f1 and fpr; undefined with a reason where the one-vs-rest counts leave no
  denominator (a class absent from y has no recall, a class never predicted no precision, ...);
* their macro (mean over the classes in y or the predictions, skipping undefined values, as
  scikit-learn's ``zero_division=np.nan``), weighted (by each class's rows in y) and micro (pooled
  counts) averages; for single-label data micro precision, recall and f1 all equal accuracy;
* accuracy; with class probabilities (an n x C matrix per model): top-k accuracy (ties broken as
  scikit-learn's ``top_k_accuracy_score``), log loss (probabilities clipped to machine epsilon) and the
  multi-class Brier score (the sum over classes, in [0, 2], as ``brier_score_loss(scale_by_half=False)``).

Intervals: Wilson for the proportions (accuracy, top-k accuracy, per-class precision, recall and fpr); a
Student-t interval for the means of per-row losses (log loss, Brier); for f1 and every average, the
percentile interval of a seeded Poisson bootstrap of the confusion cells (a cell's count under row-level
Poisson(1) weights is Poisson(count), so a replicate costs O(cells), not O(rows)). Deltas: the paired
bootstrap of the (y, baseline class, candidate class) cells for accuracy (with the exact McNemar test of
the rows one model alone gets right), every average and each per-class metric; the paired t-test on the
per-row differences of log loss and Brier, and a paired-t interval with the McNemar test for top-k
accuracy.

Each model's metrics use the rows it predicted (and, for the probability metrics, the rows whose
probabilities are a distribution); a delta uses the rows both can. Rows left out are counted by reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench import WorkbenchError
from workbench.evaluate import stats
from workbench.evaluate.metrics import METRICS, Confusion, _div, _finish
from workbench.evaluate.paired import (
    Rule,
    Usable,
    check_rows,
    mean_delta,
    mean_estimate,
    paired_usable,
    proportion_estimate,
    replicate_delta,
    replicate_estimate,
    usable,
)
from workbench.evaluate.results import MetricEstimate, Options, PairedEstimate, TaskMetric
from workbench.evaluate.sequential import PairedParts
from workbench.roles import BASELINE, CANDIDATE, ROLES

PER_CLASS = ("precision", "recall", "f1", "fpr")
AVERAGES = ("macro", "micro", "weighted")
#: how far a row of probabilities may sum from 1 and still count as a distribution
SUM_TOLERANCE = 1e-3
_EPS = np.finfo(np.float64).eps


MULTICLASS_METRICS: dict[str, TaskMetric] = {
    m.name: m
    for m in [
        TaskMetric("accuracy", True),
        TaskMetric("top_k_accuracy", True),  # reported per k as "top_2_accuracy", ...
        TaskMetric("log_loss", False, (0.0, math.inf)),
        TaskMetric("brier", False, (0.0, 2.0)),
        *(TaskMetric(name, name != "fpr") for name in PER_CLASS),  # per class and "macro_f1", ...
    ]
}


def _metric(name: str) -> TaskMetric:
    """The registry entry of a reported name ("macro_f1", "top_3_accuracy", ...)."""
    if name.startswith("top_"):
        return MULTICLASS_METRICS["top_k_accuracy"]
    return MULTICLASS_METRICS[name.split("_", 1)[1] if name.startswith(AVERAGES) else name]


# -- from confusion matrices -----------------------------------------------------------------------
def multiclass_confusion(y: np.ndarray, pred: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Confusion matrix (rows: true class, columns: predicted class) of integer classes 0..C-1."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if n_classes is None:
        n_classes = int(max(y.max(initial=-1), pred.max(initial=-1))) + 1
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def one_vs_rest(cm: np.ndarray) -> Confusion:
    """Each class's binary confusion counts (the class positive, every other class negative) from confusion
    matrices ``(..., C, C)``: arrays ``(..., C)``."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    actual, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    n = actual.sum(axis=-1, keepdims=True)
    return Confusion(tp=tp, fp=predicted - tp, tn=n - actual - predicted + tp, fn=actual - tp)


def multiclass_metrics(cm: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class precision, recall, f1 and fpr (arrays ``(..., C)``, NaN where undefined) and their
    macro, micro and weighted averages from confusion matrices ``(..., C, C)`` (``None`` where undefined for
    one matrix, NaN in arrays of several).

    Averages run over the classes present in labels or predictions; macro and weighted skip a class whose
    value is undefined (scikit-learn's ``zero_division=np.nan``); weighted is undefined when the classes
    with a value have no rows in y.
    """
    c = one_vs_rest(cm)
    actual = c.tp + c.fn
    present = (actual + c.fp) > 0
    pooled = Confusion(*(np.where(present, x, 0.0).sum(axis=-1) for x in (c.tp, c.fp, c.tn, c.fn)))
    out: dict[str, Any] = {"accuracy": _finish(_div(c.tp.sum(axis=-1), actual.sum(axis=-1)))}
    for name in PER_CLASS:
        per_class = np.asarray(METRICS[name].compute(c), dtype=np.float64)
        ok = present & ~np.isnan(per_class)
        values = np.where(ok, per_class, 0.0)
        weights = np.where(ok, actual, 0.0)
        out[name] = per_class
        out[f"macro_{name}"] = _finish(_div(values.sum(axis=-1), ok.sum(axis=-1)))
        out[f"micro_{name}"] = METRICS[name].compute(pooled)
        out[f"weighted_{name}"] = _finish(_div((weights * values).sum(axis=-1), weights.sum(axis=-1)))
    return out


#: the binary metrics' reasons for an undefined value, in the words of one class against the rest
_CLASS_REASONS = {
    "no labelled rows": "no usable rows",
    "no positive labels": "the class is absent from y",
    "no positive predictions": "the class is never predicted",
    "no negative labels": "every row is of this class",
    "no positive labels and no positive predictions": "the class is neither in y nor predicted",
}


def class_undefined_reason(name: str, cm: np.ndarray, k: int) -> str | None:
    """Why per-class metric ``name`` of class ``k`` has no value on confusion matrix ``cm`` (``None`` when it
    has one)."""
    c = one_vs_rest(cm)
    reason = METRICS[name].undefined(Confusion(*(int(x[k]) for x in (c.tp, c.fp, c.tn, c.fn))))
    return None if reason is None else _CLASS_REASONS[reason]


def _average_reason(name: str) -> str:
    if name.startswith("weighted_"):
        return "no class with a value has rows in y"
    return "undefined for every class"


# -- per-row values from probabilities ---------------------------------------------------------------
def top_k_hits(y: np.ndarray, probabilities: np.ndarray, k: int) -> np.ndarray:
    """Whether the true class is among the ``k`` most probable, ties going to the higher class index (as
    scikit-learn's ``top_k_accuracy_score``)."""
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    own = p[np.arange(len(t)), t][:, None]
    above = (p > own).sum(axis=1) + ((p == own) & (np.arange(p.shape[1]) > t[:, None])).sum(axis=1)
    return above < k


def log_losses(y: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy -log p(true class), probabilities clipped to [eps, 1 - eps] as scikit-learn."""
    p = np.asarray(probabilities, dtype=np.float64)
    return -np.log(np.clip(p[np.arange(len(y)), np.asarray(y, dtype=np.int64)], _EPS, 1 - _EPS))


def brier_scores(y: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per-row multi-class Brier score: sum over classes of (probability - [class is true])^2."""
    p = np.array(probabilities, dtype=np.float64)
    p[np.arange(len(y)), np.asarray(y, dtype=np.int64)] -= 1
    return (p * p).sum(axis=1)


# -- the comparison ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MulticlassComparison:
    """Both models' multi-class metrics and their paired deltas; per-class values (a list over classes
    0..C-1) for each model and their per-class deltas; each model's confusion matrix on its rows.
    ``rows``: all rows, those each model predicted (a label and a class) and those both did."""

    rows: dict[str, int]
    confidence: float
    classes: int
    baseline: dict[str, MetricEstimate]
    candidate: dict[str, MetricEstimate]
    delta: dict[str, PairedEstimate]
    per_class: dict[str, dict[str, list[MetricEstimate]]]
    per_class_delta: dict[str, list[PairedEstimate]]
    confusion: dict[str, np.ndarray]

    def to_dict(self) -> dict:
        return {
            "rows": dict(self.rows),
            "confidence": self.confidence,
            "classes": self.classes,
            "baseline": {k: v.to_dict() for k, v in self.baseline.items()},
            "candidate": {k: v.to_dict() for k, v in self.candidate.items()},
            "delta": {k: v.to_dict() for k, v in self.delta.items()},
            "per_class": {
                r: {name: [e.to_dict() for e in per] for name, per in metrics.items()}
                for r, metrics in self.per_class.items()
            },
            "per_class_delta": {name: [d.to_dict() for d in per] for name, per in self.per_class_delta.items()},
            "confusion": {r: cm.tolist() for r, cm in self.confusion.items()},
        }


def _classes(name: str, a: np.ndarray) -> np.ndarray:
    """Classes as floats (NaN where missing) after checking the others are non-negative integers."""
    try:
        x = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"{name} must hold integer classes 0..C-1: {e}") from None
    given = x[~np.isnan(x)]
    bad = given[(given < 0) | (given != np.floor(given)) | ~np.isfinite(given)]
    if len(bad):
        raise WorkbenchError(f"{name} must hold integer classes 0..C-1, got {np.unique(bad)[:5].tolist()}")
    return x


def _class_count(y: np.ndarray, preds: dict[str, np.ndarray], probs: dict[str, np.ndarray], given: int | None) -> int:
    """The number of classes: ``given``, the probabilities' columns, or one more than the largest class."""
    largest = int(max(np.nanmax(np.concatenate([y, *preds.values()]), initial=-1), -1)) + 1
    widths = {r: p.shape[1] for r, p in probs.items()}
    if len(set(widths.values())) > 1:
        raise WorkbenchError(f"the models' probabilities have different numbers of columns: {widths}")
    n_classes = given if given is not None else next(iter(widths.values()), largest)
    if largest > n_classes:
        raise WorkbenchError(f"class {largest - 1} appears but there are {n_classes} classes (0..{n_classes - 1})")
    if any(w != n_classes for w in widths.values()):
        raise WorkbenchError(
            f"probabilities have {next(iter(widths.values()))} columns but there are {n_classes} classes"
        )
    return n_classes


def compare_multiclass(
    y: np.ndarray,
    baseline: np.ndarray,
    candidate: np.ndarray,
    *,
    probabilities: Mapping[str, np.ndarray] | None = None,
    n_classes: int | None = None,
    top_k: Sequence[int] = (2,),
    opts: Options = Options(),
) -> MulticlassComparison:
    """Multi-class metrics of both models on labels ``y`` (classes 0..C-1) with intervals, and their paired
    deltas.

    ``baseline``/``candidate``: predicted classes, one per row (NaN where a model failed; a NaN label leaves
    its row out). ``probabilities``: ``{role: n x C matrix}`` for both models, for top-k accuracy (each k in
    ``top_k``), log loss and Brier. ``n_classes`` defaults to the probabilities' width, else one more than
    the largest class seen. ``opts``: confidence, power, bootstrap replicates and seed.
    """
    if probabilities is not None and sorted(probabilities) != sorted(ROLES):
        raise WorkbenchError(f"probabilities must be given for both {' and '.join(ROLES)}, got {sorted(probabilities)}")
    probs = {r: np.asarray(p, dtype=np.float64) for r, p in (probabilities or {}).items()}
    if any(p.ndim != 2 for p in probs.values()):
        raise WorkbenchError("probabilities must be n x C matrices, one row per labelled row")
    arrays = {BASELINE: baseline, CANDIDATE: candidate} | {f"{r} probabilities": p for r, p in probs.items()}
    yf = _classes("y", check_rows(y, arrays))
    preds = {r: _classes(r, p) for r, p in ((BASELINE, baseline), (CANDIDATE, candidate))}
    classes = _class_count(yf, preds, probs, n_classes)
    n = len(yf)
    y_rule = ("y is missing", np.isnan(yf))
    rules = {r: [y_rule, ("prediction is missing", np.isnan(preds[r]))] for r in ROLES}
    own = {r: usable(rules[r], n) for r in ROLES}
    use = paired_usable(rules[BASELINE], rules[CANDIDATE], n)
    yi = np.where(np.isnan(yf), 0, yf).astype(np.int64)
    pi = {r: np.where(np.isnan(p), 0, p).astype(np.int64) for r, p in preds.items()}

    rng = stats.seeded_rng(opts.seed, "multiclass")
    model: dict[str, dict[str, MetricEstimate]] = {r: {} for r in ROLES}
    per_class: dict[str, dict[str, list[MetricEstimate]]] = {}
    confusion: dict[str, np.ndarray] = {}
    for r in ROLES:
        cm = multiclass_confusion(yi[own[r].ok], pi[r][own[r].ok], classes)
        confusion[r] = cm
        reps = _replicates(cm.ravel(), classes, opts.n_boot, rng)
        model[r], per_class[r] = _model_metrics(cm, reps, yi == pi[r], own[r], opts)
    delta, per_class_delta = _paired(yi, pi, use, classes, opts, rng)
    if probs:
        _probability_metrics(model, delta, yi, probs, rules, top_k, opts)
    order = ["accuracy", *(k for k in model[BASELINE] if k.startswith("top_")), "log_loss", "brier"]
    order += [f"{a}_{m}" for a in AVERAGES for m in PER_CLASS]
    keep = [k for k in order if k in model[BASELINE]]
    return MulticlassComparison(
        {"total": n, **{r: own[r].rows for r in ROLES}, "paired": use.rows},
        opts.confidence,
        classes,
        {k: model[BASELINE][k] for k in keep},
        {k: model[CANDIDATE][k] for k in keep},
        {k: delta[k] for k in keep},
        per_class,
        per_class_delta,
        confusion,
    )


def _replicates(counts: np.ndarray, classes: int, n_boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """:func:`multiclass_metrics` of ``n_boot`` Poisson-bootstrap replicates of a flattened confusion matrix,
    in chunks of replicates of bounded memory."""
    idx = np.flatnonzero(counts)
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in _chunks(n_boot, len(counts)):
        cm = np.zeros((chunk, len(counts)))
        cm[:, idx] = stats.poisson_cells(counts[idx], chunk, rng)
        for k, v in multiclass_metrics(cm.reshape(chunk, classes, classes)).items():
            parts.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _chunks(n_boot: int, cells: int, max_cells: int = 1 << 22) -> list[int]:
    """Replicates per chunk so that a chunk holds at most ``max_cells`` cells."""
    per = max(1, max_cells // max(cells, 1))
    return [min(per, n_boot - start) for start in range(0, n_boot, per)]


def _model_metrics(
    cm: np.ndarray, reps: dict[str, np.ndarray], correct: np.ndarray, use: Usable, opts: Options
) -> tuple[dict[str, MetricEstimate], dict[str, list[MetricEstimate]]]:
    """One model's accuracy (Wilson), averages (bootstrap) and per-class values (Wilson; f1 bootstrap)."""
    values = multiclass_metrics(cm)
    out = {"accuracy": proportion_estimate(correct, use, opts)}
    for key in (f"{avg}_{name}" for avg in AVERAGES for name in PER_CLASS):
        reason = _average_reason(key) if use.rows else use.why_none()
        out[key] = replicate_estimate(values[key], reps[key], use, opts, _metric(key).bounds, reason)
    c = one_vs_rest(cm)
    fractions = {"precision": (c.tp, c.tp + c.fp), "recall": (c.tp, c.tp + c.fn), "fpr": (c.fp, c.fp + c.tn)}
    per_class: dict[str, list[MetricEstimate]] = {name: [] for name in PER_CLASS}
    for name in PER_CLASS:
        for k in range(cm.shape[0]):
            why = class_undefined_reason(name, cm, k)
            value = None if why is not None else float(values[name][k])
            if name == "f1" or value is None:
                estimate = replicate_estimate(value, reps[name][:, k], use, opts, _metric(name).bounds, why)
            else:
                hits, trials = (int(x[k]) for x in fractions[name])
                lo, hi = stats.clip_interval(stats.wilson(hits, trials, opts.confidence), *_metric(name).bounds)
                estimate = MetricEstimate(value, lo, hi, use.rows, use.excluded, "wilson")
            per_class[name].append(estimate)
    return out, per_class


class _Grouper:
    """Sums the columns of a matrix into the groups ``target`` gives them (the same sort serves every call)."""

    def __init__(self, target: np.ndarray, size: int):
        self.order = np.argsort(target, kind="stable")
        t = target[self.order]
        self.starts = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
        self.where, self.size = t[self.starts], size

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((x.shape[0], self.size))
        out[:, self.where] = np.add.reduceat(x[:, self.order], self.starts, axis=1)
        return out


def _optional(x: Any) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def _paired(
    y: np.ndarray, pred: dict[str, np.ndarray], use: Usable, classes: int, opts: Options, rng: np.random.Generator
) -> tuple[dict[str, PairedEstimate], dict[str, list[PairedEstimate]]]:
    """Deltas of accuracy, every average and each class's precision, recall, f1 and fpr from the paired
    bootstrap of the cells (y, baseline class, candidate class): a replicate of the cells gives both models'
    confusion matrices."""
    yb, b, c = y[use.ok], pred[BASELINE][use.ok], pred[CANDIDATE][use.ok]
    cm = {BASELINE: multiclass_confusion(yb, b, classes), CANDIDATE: multiclass_confusion(yb, c, classes)}
    values = {r: multiclass_metrics(m) for r, m in cm.items()}
    keys = ["accuracy", *(f"{avg}_{name}" for avg in AVERAGES for name in PER_CLASS)]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in [*keys, *PER_CLASS]}
    if use.rows:
        cells, counts = np.unique((yb * classes + b) * classes + c, return_counts=True)
        size = classes * classes
        to_base = _Grouper(cells // classes, size)
        to_cand = _Grouper((cells // size) * classes + cells % classes, size)
        for chunk in _chunks(opts.n_boot, len(cells) + 2 * size):
            draw = stats.poisson_cells(counts, chunk, rng)
            rb = multiclass_metrics(to_base(draw).reshape(chunk, classes, classes))
            rc = multiclass_metrics(to_cand(draw).reshape(chunk, classes, classes))
            for key, got in parts.items():
                got.append(np.asarray(rc[key], dtype=np.float64) - np.asarray(rb[key], dtype=np.float64))
    reps = {
        key: np.concatenate(v) if v else np.zeros((0, classes) if key in PER_CLASS else 0) for key, v in parts.items()
    }
    wins = {r: (yb == p) for r, p in ((BASELINE, b), (CANDIDATE, c))}
    mcnemar = stats.mcnemar_exact(
        int(np.count_nonzero(wins[BASELINE] & ~wins[CANDIDATE])),
        int(np.count_nonzero(~wins[BASELINE] & wins[CANDIDATE])),
    )
    delta: dict[str, PairedEstimate] = {}
    for key in keys:
        why = _average_reason(key) if use.rows and key != "accuracy" else None
        vb, vc = (_optional(values[r][key]) for r in ROLES)
        test = (mcnemar, "mcnemar exact") if key == "accuracy" else None
        delta[key] = replicate_delta(vb, vc, reps[key], use, opts, _metric(key).span, p_value=test, undefined=why)
    per_class: dict[str, list[PairedEstimate]] = {name: [] for name in PER_CLASS}
    for name in PER_CLASS:
        for k in range(classes):
            vb, vc = (_optional(values[r][name][k]) for r in ROLES)
            why = None
            if use.rows:
                why = class_undefined_reason(name, cm[BASELINE], k) or class_undefined_reason(name, cm[CANDIDATE], k)
            span = _metric(name).span
            per_class[name].append(replicate_delta(vb, vc, reps[name][:, k], use, opts, span, undefined=why))
    return delta, per_class


def _probability_metrics(
    model: dict[str, dict[str, MetricEstimate]],
    delta: dict[str, PairedEstimate],
    y: np.ndarray,
    probs: dict[str, np.ndarray],
    rules: dict[str, list[Rule]],
    top_k: Sequence[int],
    opts: Options,
) -> None:
    """Top-k accuracy, log loss and Brier of both models and their deltas, on the rows whose probabilities
    are a distribution."""
    ks = sorted(set(top_k))
    if any(not isinstance(k, int | np.integer) or k < 1 for k in ks):
        raise WorkbenchError(f"top_k must be positive integers, got {list(top_k)}")
    n = len(y)
    prules: dict[str, list[Rule]] = {}
    for r, p in probs.items():
        with np.errstate(invalid="ignore"):
            prules[r] = [
                rules[r][0],
                ("probabilities are not finite", ~np.isfinite(p).all(axis=1)),
                ("probabilities outside [0, 1]", np.any((p < 0) | (p > 1), axis=1)),
                (
                    f"probabilities do not sum to 1 (within {SUM_TOLERANCE:g})",
                    np.abs(p.sum(axis=1) - 1) > SUM_TOLERANCE,
                ),
            ]
    own = {r: usable(prules[r], n) for r in ROLES}
    use = paired_usable(prules[BASELINE], prules[CANDIDATE], n)
    for k in ks:
        name = f"top_{k}_accuracy"
        with np.errstate(invalid="ignore"):
            hits = {r: top_k_hits(y, p, k) for r, p in probs.items()}
        for r in ROLES:
            model[r][name] = proportion_estimate(hits[r], own[r], opts)
        hb, hc = hits[BASELINE][use.ok], hits[CANDIDATE][use.ok]
        mcnemar = stats.mcnemar_exact(int(np.count_nonzero(hb & ~hc)), int(np.count_nonzero(~hb & hc)))
        as_float = {r: h.astype(np.float64) for r, h in hits.items()}
        test = (mcnemar, "mcnemar exact")
        delta[name] = mean_delta(as_float[BASELINE], as_float[CANDIDATE], use, opts, _metric(name).span, p_value=test)
    with np.errstate(invalid="ignore", divide="ignore"):
        losses = {"log_loss": {r: log_losses(y, p) for r, p in probs.items()}}
        losses["brier"] = {r: brier_scores(y, p) for r, p in probs.items()}
    for name, per_row in losses.items():
        m = _metric(name)
        for r in ROLES:
            model[r][name] = mean_estimate(per_row[r], own[r], opts, m.bounds)
        delta[name] = mean_delta(per_row[BASELINE], per_row[CANDIDATE], use, opts, m.span)


# -- decision bounds ---------------------------------------------------------------------------------
#: the multi-class metrics a decision gate may name besides ``accuracy`` and ``log_loss`` (shared with binary
#: runs): the macro averages and, for one class, ``precision[CLASS]``, ``recall[CLASS]`` or ``f1[CLASS]``
GATE_AVERAGES: tuple[str, ...] = ("macro_precision", "macro_recall", "macro_f1")
GATE_PER_CLASS: tuple[str, ...] = ("precision", "recall", "f1")
_PER_CLASS_GATE = re.compile(r"(?P<metric>precision|recall|f1)\[(?P<cls>[^\[\]]+)\]")


def per_class_gate(name: str) -> tuple[str, str] | None:
    """(metric, class) of a per-class gate name such as ``recall[late]``; None for any other name."""
    m = _PER_CLASS_GATE.fullmatch(name)
    return (m["metric"], m["cls"]) if m else None


def is_gate_metric(name: str) -> bool:
    """Whether ``name`` is a metric a gate may name on multi-class runs."""
    return name in ("accuracy", "log_loss", *GATE_AVERAGES) or per_class_gate(name) is not None


def _class_parts(name: str, y: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, np.ndarray] | None:
    """Value and per-row influence of class ``k``'s precision, recall or f1 (ratios of per-row means)."""
    hit = ((y == k) & (pred == k)).astype(np.float64)
    if name == "f1":
        num, den = 2 * hit, (y == k).astype(np.float64) + (pred == k)
    else:
        num, den = hit, ((pred if name == "precision" else y) == k).astype(np.float64)
    d = den.mean()
    if d == 0:
        return None
    value = num.mean() / d
    return float(value), (num - value * den) / d


def _model_parts(name: str, y: np.ndarray, pred: np.ndarray, true_p: np.ndarray, classes: Sequence[str]):
    """One model's value and per-row influence of gate metric ``name`` (None where it is undefined)."""
    if name == "accuracy":
        hit = (y == pred).astype(np.float64)
        return float(hit.mean()), hit - hit.mean()
    if name == "log_loss":
        loss = -np.log(np.clip(true_p, _EPS, 1 - _EPS))
        return float(loss.mean()), loss - loss.mean()
    one = per_class_gate(name)
    if one is not None:
        metric, cls = one
        if cls not in classes:
            raise WorkbenchError(f"no class {cls!r} for gate {name!r}: the run's classes are {', '.join(classes)}")
        return _class_parts(metric, y, pred, list(classes).index(cls))
    metric = name.removeprefix("macro_")
    parts = [p for k in range(len(classes)) if (p := _class_parts(metric, y, pred, k)) is not None]
    if not parts:
        return None
    return float(np.mean([v for v, _ in parts])), np.mean([psi for _, psi in parts], axis=0)


def multiclass_sequential_parts(
    name: str, y: np.ndarray, baseline: np.ndarray, candidate: np.ndarray, classes: Sequence[str]
) -> PairedParts | None:
    """Both models' values of multi-class gate metric ``name`` on these rows and each row's influence, the input
    of the decision layer's anytime-valid bounds (as :func:`workbench.evaluate.sequential.paired_parts` gives
    them for binary metrics). ``y``: class indices; ``baseline``/``candidate``: n x 2 arrays of (predicted class
    index, the probability the model gave the true class). None when undefined for either model (or no rows);
    log loss needs every row's probability. Macro averages run over the classes with a value (as
    :func:`multiclass_metrics`)."""
    if not is_gate_metric(name):
        raise WorkbenchError(f"no decision bounds for multi-class metric {name!r}")
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return None
    got = {}
    for r, a in ((BASELINE, baseline), (CANDIDATE, candidate)):
        a = np.asarray(a, dtype=np.float64)
        if name == "log_loss" and not np.isfinite(a[:, 1]).all():
            return None
        got[r] = _model_parts(name, y, a[:, 0].astype(np.int64), a[:, 1], classes)
        if got[r] is None:
            return None
    (vb, psi_b), (vc, psi_c) = got[BASELINE], got[CANDIDATE]
    span = math.inf if name == "log_loss" else 1.0
    return PairedParts(vb, vc, psi_c, psi_c - psi_b, span)
