"""Pure metric functions over arrays: binary classification quality from labels, scores and classes.

Every metric is registered once in :data:`METRICS` with whether higher is better; each has a parity
test against ``sklearn.metrics``. A metric that is undefined on the data (e.g. fpr with no negatives)
is ``None``, never a silent 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn


def confusion(y: np.ndarray, pred: np.ndarray) -> Confusion:
    """Binary confusion counts (positive class 1) with one bincount."""
    c = np.bincount(2 * np.asarray(y, dtype=np.int64) + np.asarray(pred, dtype=np.int64), minlength=4)
    return Confusion(tp=int(c[3]), fp=int(c[1]), tn=int(c[0]), fn=int(c[2]))


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def accuracy(c: Confusion) -> float | None:
    return _ratio(c.tp + c.tn, c.n)


def precision(c: Confusion) -> float | None:
    return _ratio(c.tp, c.tp + c.fp)


def recall(c: Confusion) -> float | None:
    return _ratio(c.tp, c.tp + c.fn)


def f1(c: Confusion) -> float | None:
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


def fpr(c: Confusion) -> float | None:
    return _ratio(c.fp, c.fp + c.tn)


def fnr(c: Confusion) -> float | None:
    return _ratio(c.fn, c.fn + c.tp)


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve via the rank-sum statistic (ties count one half)."""
    y = np.asarray(y)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y: np.ndarray, score: np.ndarray) -> float | None:
    """Mean binary cross-entropy, scores clipped to [eps, 1 - eps] as sklearn does."""
    if len(y) == 0:
        return None
    eps = np.finfo(np.float64).eps
    p = np.clip(np.asarray(score, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    from_confusion: Callable[[Confusion], float | None] | None = None
    from_scores: Callable[[np.ndarray, np.ndarray], float | None] | None = None


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("accuracy", True, from_confusion=accuracy),
    Metric("precision", True, from_confusion=precision),
    Metric("recall", True, from_confusion=recall),
    Metric("f1", True, from_confusion=f1),
    Metric("fpr", False, from_confusion=fpr),
    Metric("fnr", False, from_confusion=fnr),
    Metric("roc_auc", True, from_scores=roc_auc),
    Metric("log_loss", False, from_scores=log_loss),
]}


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float | None]:
    """All registered metrics for one model on labelled rows."""
    c = confusion(y, np.asarray(score) >= threshold)
    return {name: (m.from_confusion(c) if m.from_confusion else m.from_scores(y, score))
            for name, m in METRICS.items()}
