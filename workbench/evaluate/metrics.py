"""Pure metric functions over arrays: classification quality from labels, scores and classes.

One registry, :data:`METRICS`, holds every binary metric with whether higher is better. Two kinds:

* confusion metrics (accuracy, precision, recall, f1, fpr, fnr) are functions of a :class:`Confusion`
  whose counts are numbers or arrays (one entry per bootstrap replicate);
* score metrics (roc_auc, pr_auc, log_loss, brier, ece) are functions of :class:`ScoreGroups`, the
  weight of positive and negative labels per distinct score. With a leading axis of weightings, one
  call evaluates a whole chunk of bootstrap replicates with sorted-score cumulative sums. Each score
  metric also has its influence function (the derivative of the metric with respect to one row's
  weight), which the linearised bootstrap of large samples uses.

An undefined value (fpr without negative labels, ...) is ``None`` (NaN inside replicate arrays) and
:func:`undefined_reason` says why: never a silent 0. Every metric has a parity test against sklearn.metrics;
multi-class metrics (built on these per class, one class against the rest) live in
:mod:`workbench.evaluate.multiclass`, regression metrics in :mod:`workbench.evaluate.regression`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, wraps
from typing import Any

import numpy as np

ECE_BINS = 10
_EPS = np.finfo(np.float64).eps


def _finish(x: Any) -> Any:
    """A 0-d result becomes a float (``None`` when undefined); arrays keep NaN for undefined entries."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        return None if np.isnan(x) else float(x)
    return x


def _div(a: Any, b: Any) -> np.ndarray:
    """``a / b`` with NaN where ``b`` is 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


# -- confusion metrics -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Confusion:
    """Binary confusion counts (positive class 1): numbers, or arrays of one count per replicate."""

    tp: Any
    fp: Any
    tn: Any
    fn: Any

    @property
    def n(self) -> Any:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def positives(self) -> Any:
        return self.tp + self.fn

    @property
    def negatives(self) -> Any:
        return self.fp + self.tn

    @property
    def predicted_positives(self) -> Any:
        return self.tp + self.fp


def confusion(y: np.ndarray, pred: np.ndarray) -> Confusion:
    """Binary confusion counts with one bincount."""
    c = np.bincount(2 * np.asarray(y, dtype=np.int64) + np.asarray(pred, dtype=np.int64), minlength=4)
    return Confusion(tp=int(c[3]), fp=int(c[1]), tn=int(c[0]), fn=int(c[2]))


def accuracy(c: Confusion) -> Any:
    return _finish(_div(c.tp + c.tn, c.n))


def precision(c: Confusion) -> Any:
    return _finish(_div(c.tp, c.tp + c.fp))


def recall(c: Confusion) -> Any:
    return _finish(_div(c.tp, c.tp + c.fn))


def f1(c: Confusion) -> Any:
    return _finish(_div(2 * c.tp, 2 * c.tp + c.fp + c.fn))


def fpr(c: Confusion) -> Any:
    return _finish(_div(c.fp, c.fp + c.tn))


def fnr(c: Confusion) -> Any:
    return _finish(_div(c.fn, c.fn + c.tp))


# -- score metrics ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreGroups:
    """Label weights per distinct score, scores ascending: the sufficient statistic of the score metrics.

    ``pos[..., g]``/``neg[..., g]`` are the weights of positive/negative labels whose score is
    ``score[g]``; leading axes hold several weightings (bootstrap replicates) at once. For one weighting,
    the sums and losses the metrics and their influence functions share are computed once per object (its
    arrays are never changed in place); for a batch of weightings they are computed at each use, so that
    memory stays bounded.
    """

    score: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    _shared: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def release(self) -> None:
        """Drop the shared arrays (the metric values stay): a caller that asks for one metric's influence at a
        time keeps only that metric's arrays in memory."""
        for name in [k for k, v in self._shared.items() if isinstance(v, np.ndarray | tuple)]:
            del self._shared[name]

    def _once(self, name: str, compute: Callable[[], Any]) -> Any:
        if np.ndim(self.pos) > 1:
            return compute()
        if name not in self._shared:
            self._shared[name] = compute()
        return self._shared[name]

    @property
    def total_pos(self) -> np.ndarray:
        return self._once("total_pos", lambda: self.pos.sum(axis=-1))

    @property
    def total_neg(self) -> np.ndarray:
        return self._once("total_neg", lambda: self.neg.sum(axis=-1))

    @property
    def cum_pos(self) -> np.ndarray:
        """Weight of positive labels at or below each group's score."""
        return self._once("cum_pos", lambda: np.cumsum(self.pos, axis=-1))

    @property
    def cum_neg(self) -> np.ndarray:
        """Weight of negative labels at or below each group's score."""
        return self._once("cum_neg", lambda: np.cumsum(self.neg, axis=-1))

    @property
    def tp_above(self) -> np.ndarray:
        """Weight of positive labels at or above each group's score."""
        return self._once("tp_above", lambda: _suffix_sum(self.pos, self.cum_pos if self._counts else None))

    @property
    def seen_above(self) -> np.ndarray:
        """Weight of all labels at or above each group's score."""
        cumulative = self.cum_pos + self.cum_neg if self._counts else None  # integers: the same sums
        return self._once("seen_above", lambda: _suffix_sum(self.pos + self.neg, cumulative))

    @property
    def _counts(self) -> bool:
        """Whether the weights are counts (integers, one weighting): their sums are exact in any order."""
        return np.ndim(self.pos) == 1 and np.issubdtype(np.asarray(self.pos).dtype, np.integer)

    @property
    def losses(self) -> tuple[np.ndarray, np.ndarray]:
        """Cross-entropy of a positive and of a negative label per score (:func:`_losses`)."""
        return self._once("losses", lambda: _losses(self.score))


@dataclass(frozen=True)
class Grouping:
    """How the rows of one sample fall into distinct-score groups; built once, weighed many times."""

    score: np.ndarray  # distinct scores, ascending
    order: np.ndarray  # row indices sorted by score
    starts: np.ndarray  # first sorted position of each group
    y_sorted: np.ndarray  # labels (0/1, int8) in sorted order

    @property
    def rows(self) -> int:
        return len(self.order)

    @cached_property
    def group_of(self) -> np.ndarray:
        """The group of each row, rows in score order."""
        sizes = np.diff(np.append(self.starts, self.rows))
        return np.repeat(np.arange(len(self.score), dtype=self.starts.dtype), sizes)

    @cached_property
    def key(self) -> np.ndarray:
        """Each row's (group, label) as ``group + label x groups``, rows in score order: the index of the
        row's value in a per-group table of negatives then positives (:meth:`per_row`)."""
        groups = len(self.score)
        dtype = np.int64 if 2 * groups >= 2**31 else np.int32
        key = self.group_of.astype(dtype)
        return np.add(key, self.y_sorted * dtype(groups), out=key)

    def per_row(self, per_group: tuple[np.ndarray, np.ndarray], key: np.ndarray | None = None) -> np.ndarray:
        """Each row's value from per-group values for a positive and a negative row: rows in score order, or
        in the order of ``key`` (the rows' :attr:`key` in another order)."""
        if key is None and len(self.score) == self.rows:  # one row per group
            return np.where(self.y_sorted.view(bool), per_group[0], per_group[1])
        return np.concatenate((per_group[1], per_group[0]))[self.key if key is None else key]

    def weigh(self, weights: np.ndarray | None = None) -> ScoreGroups:
        """Group sums of the labels: counts (int32) without ``weights``, else float64 sums under
        ``weights`` of shape ``(rows,)`` or ``(replicates, rows)`` (float32 weights, as the bootstrap
        draws them, must be integers with group sums below 2**24)."""
        if self.rows == 0:
            shape = (0,) if weights is None else (*np.shape(weights)[:-1], 0)
            return ScoreGroups(self.score, np.zeros(shape), np.zeros(shape))
        if weights is None:
            if len(self.score) == self.rows:  # one row per group
                pos = self.y_sorted.astype(np.int32)
                return ScoreGroups(self.score, pos, 1 - pos)
            pos = np.add.reduceat(self.y_sorted, self.starts, dtype=np.int32)
            count = np.diff(np.append(self.starts, self.rows)).astype(np.int32)
            return ScoreGroups(self.score, pos, count - pos)
        w = np.asarray(weights)
        if w.dtype != np.float32:
            w = w.astype(np.float64, copy=False)
        w = w[..., self.order]
        pos = np.add.reduceat(w * self.y_sorted.astype(w.dtype), self.starts, axis=-1).astype(np.float64)
        return ScoreGroups(self.score, pos, np.add.reduceat(w, self.starts, axis=-1).astype(np.float64) - pos)

    def restrict(self, keep: np.ndarray) -> Grouping:
        """The grouping of the rows where ``keep`` (a mask in row order) is true, without sorting again."""
        kept = keep[self.order]
        group = self.group_of[kept]
        starts = np.flatnonzero(np.concatenate(([True], group[1:] != group[:-1]))) if len(group) else group
        order = (np.cumsum(keep) - 1)[self.order[kept]]
        return Grouping(self.score[group[starts]], _index(order), _index(starts), self.y_sorted[kept])


def _index(a: np.ndarray) -> np.ndarray:
    """Row indices in the smallest integer type that holds them (halves the memory of large samples)."""
    return a.astype(np.int32) if len(a) < 2**31 else a


def grouping(y: np.ndarray, score: np.ndarray) -> Grouping:
    """Sort one sample by score and find its distinct scores (ties fall into one group, so the order
    of tied rows never matters). Labels must be 0/1."""
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(s)
    ss = s[order]
    if len(ss):
        starts = np.flatnonzero(np.concatenate(([True], ss[1:] != ss[:-1])))
    else:
        starts = np.zeros(0, dtype=np.int64)
    y_sorted = np.asarray(y).astype(np.int8, copy=False)[order]
    return Grouping(ss[starts], _index(order), _index(starts), y_sorted)


def score_groups(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> ScoreGroups:
    """:class:`ScoreGroups` of labels ``y`` (0/1) and ``score``, optionally under row weights."""
    return grouping(y, score).weigh(weights)


def _suffix_sum(x: np.ndarray, cumulative: np.ndarray | None = None) -> np.ndarray:
    """Sum over groups with a score at least as high (groups are in ascending score order), from the
    cumulative sums of ``x`` when known; exact for the integer-valued weights used here."""
    total = x.sum(axis=-1, keepdims=True)
    if cumulative is None:
        out = np.cumsum(x, axis=-1)
        np.subtract(total, out, out=out)
    else:
        out = np.subtract(total, cumulative)
    out += x
    return out


def _once_per_weighting(metric: Callable[[ScoreGroups], Any]) -> Callable[[ScoreGroups], Any]:
    """``metric`` computed once per :class:`ScoreGroups` of one weighting (its influence function asks again)."""

    @wraps(metric)
    def once(g: ScoreGroups) -> Any:
        return g._once(metric.__name__, lambda: metric(g))

    return once


@_once_per_weighting
def roc_auc(g: ScoreGroups) -> Any:
    """Area under the ROC curve: the weighted Mann-Whitney statistic, ties counting one half."""
    terms = 0.5 * g.neg
    terms += g.cum_neg - g.neg  # the weight below each group, plus half its own ties
    terms *= g.pos
    return _finish(_div(terms.sum(axis=-1), g.total_pos * g.total_neg))


def _precision(g: ScoreGroups) -> np.ndarray:
    """Precision at each group's score as threshold (0 where nothing scores that high)."""
    tp, seen = g.tp_above, g.seen_above
    if seen.shape[-1] == 0 or np.all(seen[..., -1] > 0):  # suffix sums of weights never grow: none is 0
        return tp / seen
    return np.where(seen > 0, tp / np.where(seen > 0, seen, 1.0), 0.0)


@_once_per_weighting
def pr_auc(g: ScoreGroups) -> Any:
    """Average precision, as sklearn's ``average_precision_score``: sum of precision x recall step."""
    terms = _precision(g)
    terms *= g.pos
    return _finish(_div(terms.sum(axis=-1), g.total_pos))


def _losses(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy of a positive and of a negative label per score, clipped as sklearn does."""
    p = np.clip(score, _EPS, 1 - _EPS)
    l1 = np.log(p)
    np.negative(l1, out=l1)
    np.negative(p, out=p)
    np.log1p(p, out=p)
    return l1, np.negative(p, out=p)


@_once_per_weighting
def log_loss(g: ScoreGroups) -> Any:
    """Mean binary cross-entropy, scores clipped to [eps, 1 - eps]."""
    l1, l0 = g.losses
    terms = g.pos * l1
    terms += g.neg * l0
    return _finish(_div(terms.sum(axis=-1), g.total_pos + g.total_neg))


def _squares(g: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    """Squared error of a positive and of a negative label per score."""
    return g._once("squares", lambda: ((1 - g.score) ** 2, g.score**2))


@_once_per_weighting
def brier(g: ScoreGroups) -> Any:
    """Mean squared difference between score and label."""
    e1, e0 = _squares(g)
    terms = g.pos * e1
    terms += g.neg * e0
    return _finish(_div(terms.sum(axis=-1), g.total_pos + g.total_neg))


def _ece_gaps(g: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    """Per non-empty calibration bin, the sum of (label - score); and each group's bin position.

    Bins are 10 equal-width bins closed on the right, as sklearn's ``calibration_curve(strategy="uniform")``;
    groups are sorted by score, so each bin is a contiguous run of groups.
    """
    return g._once("ece_gaps", lambda: _ece_bins(g))


def _ece_bins(g: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    inner = np.linspace(0.0, 1.0, ECE_BINS + 1)[1:-1]
    ends = np.searchsorted(g.score, inner, side="right")
    first = np.unique(np.concatenate(([0], ends)))
    first = first[first < len(g.score)]
    residual = g.pos - (g.pos + g.neg) * g.score
    position = np.repeat(np.arange(len(first)), np.diff(np.append(first, len(g.score))))
    return np.add.reduceat(residual, first, axis=-1), position


@_once_per_weighting
def ece(g: ScoreGroups) -> Any:
    """Expected calibration error: sum over 10 equal-width bins of (bin share) x |mean label - mean score|."""
    n = g.total_pos + g.total_neg
    if len(g.score) == 0:
        return _finish(np.full(np.shape(n), np.nan))
    gaps, _ = _ece_gaps(g)
    return _finish(_div(np.abs(gaps).sum(axis=-1), n))


# -- influence functions (one weighting only) -------------------------------------------------------
# Each returns (for a positive row, for a negative row) per group: d metric / d row weight at weight 1.
def roc_auc_influence(g: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placements: (V10 - auc) / P for positives, (V01 - auc) / N for negatives."""
    p, n = g.total_pos, g.total_neg
    auc = roc_auc(g)
    v10 = 0.5 * g.neg
    np.subtract(g.cum_neg, v10, out=v10)
    v10 /= n
    v10 -= auc
    v10 /= p
    v01 = 0.5 * g.pos
    np.add(p - g.cum_pos, v01, out=v01)
    v01 /= p
    v01 -= auc
    v01 /= n
    return v10, v01


def pr_auc_influence(g: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    """Derivative of average precision: a row moves the precision of every threshold at or below it."""
    p, ap = g.total_pos, pr_auc(g)
    tp, seen = g.tp_above, g.seen_above
    r2 = g.pos * tp / seen
    r2 /= seen
    np.cumsum(r2, out=r2)
    pos = tp / seen
    ratio = g.pos / seen
    pos += np.cumsum(ratio, out=ratio)
    pos -= r2
    pos -= ap
    pos /= p
    r2 /= -p
    return pos, r2


def log_loss_influence(g: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    n, value = g.total_pos + g.total_neg, log_loss(g)
    l1, l0 = g.losses
    return (l1 - value) / n, (l0 - value) / n


def brier_influence(g: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    n, value = g.total_pos + g.total_neg, brier(g)
    e1, e0 = _squares(g)
    return (e1 - value) / n, (e0 - value) / n


def ece_influence(g: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    """Each row moves its bin's gap by (label - score), with the sign of that gap."""
    n, value = g.total_pos + g.total_neg, ece(g)
    gaps, position = _ece_gaps(g)
    sign = np.sign(gaps)[position]
    return (sign * (1 - g.score) - value) / n, (-sign * g.score - value) / n


# -- registry --------------------------------------------------------------------------------------
def _reason(
    need_rows: bool = True, pos: bool = False, neg: bool = False, pred_pos: bool = False, any_pos: bool = False
) -> Callable[[Confusion], str | None]:
    def reason(c: Confusion) -> str | None:
        if need_rows and c.n == 0:
            return "no labelled rows"
        if any_pos and c.tp + c.fp + c.fn == 0:
            return "no positive labels and no positive predictions"
        if pos and c.positives == 0:
            return "no positive labels"
        if neg and c.negatives == 0:
            return "no negative labels"
        if pred_pos and c.predicted_positives == 0:
            return "no positive predictions"
        return None

    return reason


@dataclass(frozen=True)
class Metric:
    """One binary metric: how to compute it, when it is undefined, and how its interval is built.

    ``compute`` takes a :class:`Confusion` (``from_scores`` False) or :class:`ScoreGroups`.
    ``proportion`` gives (successes, trials) for metrics that are a proportion (Wilson interval);
    ``influence`` is the linearisation used by the bootstrap of large samples.
    """

    name: str
    higher_is_better: bool
    compute: Callable[[Any], Any]
    undefined: Callable[[Confusion], str | None]
    from_scores: bool = False
    proportion: Callable[[Confusion], tuple[Any, Any]] | None = None
    influence: Callable[[ScoreGroups], tuple[np.ndarray, np.ndarray]] | None = None
    bounds: tuple[float, float] = (0.0, 1.0)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", True, accuracy, _reason(), proportion=lambda c: (c.tp + c.tn, c.n)),
        Metric("precision", True, precision, _reason(pred_pos=True), proportion=lambda c: (c.tp, c.tp + c.fp)),
        Metric("recall", True, recall, _reason(pos=True), proportion=lambda c: (c.tp, c.tp + c.fn)),
        Metric("f1", True, f1, _reason(any_pos=True)),
        Metric("fpr", False, fpr, _reason(neg=True), proportion=lambda c: (c.fp, c.fp + c.tn)),
        Metric("fnr", False, fnr, _reason(pos=True), proportion=lambda c: (c.fn, c.fn + c.tp)),
        Metric("roc_auc", True, roc_auc, _reason(pos=True, neg=True), from_scores=True, influence=roc_auc_influence),
        Metric("pr_auc", True, pr_auc, _reason(pos=True), from_scores=True, influence=pr_auc_influence),
        Metric(
            "log_loss", False, log_loss, _reason(), from_scores=True, influence=log_loss_influence, bounds=(0.0, np.inf)
        ),
        Metric("brier", False, brier, _reason(), from_scores=True, influence=brier_influence),
        Metric("ece", False, ece, _reason(), from_scores=True, influence=ece_influence),
    ]
}


def undefined_reason(name: str, c: Confusion) -> str | None:
    """Why metric ``name`` has no value on data with these counts (``None`` when it has one)."""
    return METRICS[name].undefined(c)


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Every registered metric for one model on labelled rows; the class is ``score >= threshold``."""
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    c = confusion(y, score >= threshold)
    g = score_groups(y, score)
    return {name: m.compute(g if m.from_scores else c) for name, m in METRICS.items()}
