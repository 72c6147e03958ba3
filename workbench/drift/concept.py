"""Concept drift and label delay, as pure functions over arrays.

- :func:`page_hinkley`: the Page-Hinkley test for an increase of a stream's mean (here: a model's
  per-request error, in event-time order), as river's ``PageHinkley`` in "up" mode, restarted after
  each alarm; each alarm's change point is then estimated offline (least-squares split).
  :func:`error_stream_drift` and :func:`regression_error_drift` run it on a model's errors (0/1, or absolute
  errors as reference percentiles) and summarize the alarms.
- :func:`calibration_drift`: is the label rate per score bin the same in the reference and the current
  window? Pearson's chi-squared test of each bin's 2x2 table (window x label), summed over bins.
- :func:`cbpe`: confidence-based performance estimation (NannyML's CBPE): scores calibrated on the
  reference's labelled rows (isotonic regression) give each unlabelled request a probability of being
  positive, hence an expected confusion matrix, hence estimated accuracy, precision, recall, F1 and an
  approximate ROC AUC (each row counts as a positive with weight p and a negative with weight 1 - p).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import signal, stats

from workbench import WorkbenchError
from workbench.clock import iso


# -- Page-Hinkley --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PageHinkley:
    """Parameters: ``delta`` is the tolerated increase (in the stream's units, here error rate), ``threshold``
    the alarm level of the cumulative deviation, ``alpha`` the forgetting factor (1: none), ``min_instances``
    the rows seen (since the start or the last alarm) before an alarm may fire.

    river's defaults (delta 0.005, alpha 0.9999) alarm every few thousand rows on a stationary 0/1 error
    stream: with forgetting, the cumulative sum settles around -delta / (1 - alpha) and its fluctuations
    there cross the threshold. These defaults keep the false-alarm rate low (tests/drift/test_concept.py).
    """

    delta: float = 0.02
    threshold: float = 50.0
    alpha: float = 1.0
    min_instances: int = 30

    def __post_init__(self):
        if not (self.delta >= 0 and self.threshold > 0 and 0 < self.alpha <= 1 and self.min_instances >= 1):
            raise WorkbenchError("Page-Hinkley needs delta >= 0, threshold > 0, 0 < alpha <= 1, min_instances >= 1")


@dataclass(frozen=True)
class Alarm:
    change_index: int  # the estimated first row of the change
    alarm_index: int  # the row at which the alarm fired


def page_hinkley(x: np.ndarray, params: PageHinkley = PageHinkley()) -> list[Alarm]:
    """Alarms of the Page-Hinkley test for an increase of the mean of ``x``, restarting after each alarm.

    The test runs online; the change point of each alarm is then estimated offline (the stream is a log):
    the least-squares split of the rows from the previous alarm to the next one (or the end), i.e. the
    argmin of the cumulative deviation from their mean, taken no later than the alarm.
    """
    x = np.asarray(x, dtype=np.float64)
    fired: list[int] = []
    start = 0
    while start < len(x):
        seg = x[start:]
        n = np.arange(1, len(seg) + 1)
        dev = seg - np.cumsum(seg) / n - params.delta
        s = signal.lfilter([1.0], [1.0, -params.alpha], dev) if params.alpha < 1 else np.cumsum(dev)
        fire = np.flatnonzero((s - np.minimum.accumulate(s) > params.threshold) & (n >= params.min_instances))
        if not len(fire):
            break
        fired.append(start + int(fire[0]))
        start = fired[-1] + 1
    alarms = []
    for i, k in enumerate(fired):
        lo = fired[i - 1] + 1 if i else 0
        seg = x[lo : fired[i + 1] if i + 1 < len(fired) else len(x)]
        cusum = np.cumsum(seg - seg.mean())[: k - lo + 1]
        alarms.append(Alarm(lo + int(np.argmin(cusum)) + 1 if len(cusum) else k, k))
    return alarms


def error_stream_drift(stream: dict, threshold: float | None, detector: PageHinkley) -> dict:
    """Page-Hinkley on the per-request error stream (a multi-class run's, without ``threshold``: its scores are
    the predicted classes)."""
    known = stream["known"]
    y = stream["label"][known].astype(np.int64)
    predicted = stream["score"][known] if threshold is None else stream["score"][known] >= threshold
    err = (predicted.astype(np.int64) != y).astype(np.float64)
    out = alarm_summary(err, stream["time"][known], err, detector, "error_rate")
    return {"stream": "per-request error (1 = misclassified) in event-time order"} | out


def regression_error_drift(stream: dict, reference: np.ndarray, detector: PageHinkley, earliest_share: float) -> dict:
    """Page-Hinkley on a regression model's absolute errors |prediction - y| in event-time order, each mapped to
    its percentile among the ``reference`` absolute errors (mid-rank for ties; the stream's own earliest
    ``earliest_share`` when the reference has no labelled rows). The mapped stream lies in [0, 1] with mean 1/2
    while nothing changes, whatever the errors' scale or tails, so the detector's parameters mean what they mean
    on a 0/1 error stream."""
    known = stream["known"]
    err = np.abs(stream["score"][known] - stream["label"][known])
    ok = np.isfinite(err)
    err, times = err[ok], stream["time"][known][ok]
    scale, source = np.sort(reference[np.isfinite(reference)]), "reference"
    if not len(scale):
        scale = np.sort(err[: max(1, int(len(err) * earliest_share))])
        source = f"stream's earliest {earliest_share:.0%}"
    pit = (np.searchsorted(scale, err, "left") + np.searchsorted(scale, err, "right")) / (2 * max(len(scale), 1))
    out = alarm_summary(pit, times, err, detector, "mae")
    return {
        "stream": "per-request absolute error |prediction - y| in event-time order, as its reference percentile",
        "percentiles_of": {"rows": int(len(scale)), "from": source},
    } | out


def alarm_summary(x: np.ndarray, times: np.ndarray, level: np.ndarray, detector: PageHinkley, name: str) -> dict:
    """Page-Hinkley's alarms on stream ``x`` with their times, and the mean of ``level`` (the stream in its own
    units, as ``name``) overall, before the first change point and from it to its alarm."""
    alarms = page_hinkley(x, detector)
    out: dict[str, Any] = {
        "detected": bool(alarms),
        "change_point": iso(times[alarms[0].change_index]) if alarms else None,
        "detector": "page_hinkley",
        "params": {
            "delta": detector.delta,
            "threshold": detector.threshold,
            "alpha": detector.alpha,
            "min_instances": detector.min_instances,
        },
        "rows": int(len(x)),
        name: float(level.mean()) if len(level) else None,
    }
    if alarms:
        a = alarms[0]
        out |= {
            "detected_at": iso(times[a.alarm_index]),
            "delay_rows": a.alarm_index - a.change_index,
            f"{name}_before": float(level[: a.change_index].mean()) if a.change_index else None,
            f"{name}_after": float(level[a.change_index : a.alarm_index + 1].mean()),
            "alarms": [
                {"change_point": iso(times[x.change_index]), "detected_at": iso(times[x.alarm_index])}
                for x in alarms[:20]
            ],
            "alarm_count": len(alarms),
        }
    return out


# -- calibration drift ---------------------------------------------------------------------------
def calibration_drift(
    ref_score: np.ndarray,
    ref_label: np.ndarray,
    cur_score: np.ndarray,
    cur_label: np.ndarray,
    edges: np.ndarray,
    alpha: float = 0.05,
) -> dict:
    """Test whether the label rate per score bin moved between reference and current.

    Bins are ``[e_i, e_i+1)`` over ``edges`` (the last one closed, scores outside go to the nearest bin).
    Each bin with rows in both windows and both labels present adds Pearson's chi-squared statistic of its
    2x2 table (window x label, no continuity correction) and one degree of freedom; drift when the sum's
    p-value is below ``alpha``.
    """
    edges = np.unique(np.asarray(edges, dtype=np.float64))
    if len(edges) < 2:
        edges = np.array([edges[0] if len(edges) else 0.0, np.inf])
    nb = len(edges) - 1

    def assign(s):
        return np.clip(np.searchsorted(edges, s, side="right") - 1, 0, nb - 1)

    rb, cb = assign(ref_score), assign(cur_score)
    bins, diffs, stat, df = [], [], 0.0, 0
    for b in range(nb):
        r, c = ref_label[rb == b], cur_label[cb == b]
        nr, nc = len(r), len(c)
        pr, pc = (float(r.mean()) if nr else None), (float(c.mean()) if nc else None)
        bins.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "reference_rows": nr,
                "reference_rate": pr,
                "current_rows": nc,
                "current_rate": pc,
            }
        )
        if pr is not None and pc is not None:  # rows in both windows
            diffs.append(abs(pr - pc))
            pooled = (r.sum() + c.sum()) / (nr + nc)
            if 0 < pooled < 1:
                stat += (pr - pc) ** 2 / (pooled * (1 - pooled) * (1 / nr + 1 / nc))
                df += 1
    p = float(stats.chi2.sf(stat, df)) if df else None
    return {
        "detected": bool(p is not None and p < alpha),
        "test": "chi2_label_rate_per_score_bin",
        "statistic": float(stat),
        "df": df,
        "p_value": p,
        "alpha": alpha,
        "max_abs_rate_diff": max(diffs) if diffs else None,
        "bins": bins,
    }


# -- CBPE ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibrator:
    """Maps scores to calibrated probabilities (isotonic regression fitted on reference labels), or the
    identity where the reference has too few labels of both classes."""

    kind: str
    rows: int
    x: np.ndarray | None = None
    y: np.ndarray | None = None

    def __call__(self, score: np.ndarray) -> np.ndarray:
        if self.x is None or self.y is None:
            return np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
        return np.interp(score, self.x, self.y)


MIN_CALIBRATION_ROWS = 50


def fit_calibrator(score: np.ndarray, label: np.ndarray) -> Calibrator:
    """Isotonic regression of label on score (clipped outside the fitted range)."""
    from sklearn.isotonic import IsotonicRegression

    label = np.asarray(label)
    if len(label) < MIN_CALIBRATION_ROWS or label.min(initial=0) == label.max(initial=0):
        return Calibrator(
            "none (too few labelled reference rows of both classes: scores used as probabilities)", int(len(label))
        )
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, label)
    return Calibrator("isotonic", int(len(label)), np.asarray(iso.X_thresholds_), np.asarray(iso.y_thresholds_))


def soft_roc_auc(score: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC when each row is a positive with weight ``p`` and a negative with weight ``1 - p`` (ties 1/2):
    equal to sklearn's ``roc_auc_score`` on the rows duplicated with those sample weights."""
    score, p = np.asarray(score, dtype=np.float64), np.asarray(p, dtype=np.float64)
    pos, neg = p.sum(), (1 - p).sum()
    if len(score) == 0 or pos <= 0 or neg <= 0:
        return None
    order = np.argsort(score, kind="stable")
    s, pp = score[order], p[order]
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    gp = np.add.reduceat(pp, start)
    gn = np.add.reduceat(1 - pp, start)
    below = np.concatenate([[0.0], np.cumsum(gn)[:-1]])
    return float(np.sum(gp * (below + 0.5 * gn)) / (pos * neg))


def estimated_metrics(score: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float | None]:
    """CBPE: expected accuracy, precision, recall, F1 from calibrated probabilities ``p``; ROC AUC approximate."""
    pred = np.asarray(score) >= threshold
    n = len(p)
    tp = float(np.sum(p[pred]))
    fp = float(np.sum(1 - p[pred]))
    fn = float(np.sum(p[~pred]))
    tn = float(np.sum(1 - p[~pred]))

    def ratio(a, b):
        return a / b if b > 0 else None

    return {
        "accuracy": ratio(tp + tn, n),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": soft_roc_auc(score, p),
    }


CBPE_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def cbpe(
    calibrator: Calibrator,
    score: np.ndarray,
    label: np.ndarray,
    known: np.ndarray,
    threshold: float,
    realized,
    times: np.ndarray | None = None,
    chunks: int = 10,
    landed: bool = False,
) -> dict:
    """Estimated performance of one model on the current rows, compared with realized values where labels exist.

    ``label`` holds each row's label now (NaN when none exists); ``known`` says whether it had arrived by the
    as-of time. ``realized(y, score)`` computes the realized metrics. Sections: ``unlabelled`` (no label as
    of the as-of time: the estimate), ``landed`` (with ``landed``: of those, the rows whose label exists
    now, estimate against realized), ``labelled`` (labels known: estimate against realized, a check of the
    calibration), and ``chunks`` (equal-size chunks in event-time order, estimate and realized).
    """
    score = np.asarray(score, dtype=np.float64)
    p = calibrator(score)
    has = ~np.isnan(label)

    def section(mask) -> dict:
        out: dict[str, Any] = {"rows": int(mask.sum()), "estimated": estimated_metrics(score[mask], p[mask], threshold)}
        lab = mask & has
        if lab.sum():
            real = realized(label[lab].astype(np.int64), score[lab])
            out["realized_rows"] = int(lab.sum())
            out["realized"] = {m: real.get(m) for m in CBPE_METRICS}
            est = estimated_metrics(score[lab], p[lab], threshold) if lab.sum() != mask.sum() else out["estimated"]
            out["abs_error"] = {
                m: (abs(est[m] - real[m]) if est[m] is not None and real.get(m) is not None else None)
                for m in CBPE_METRICS
            }
        return out

    out: dict[str, Any] = {
        "calibrator": calibrator.kind,
        "calibration_rows": calibrator.rows,
        "threshold": threshold,
        "unlabelled": section(~known),
        "labelled": section(known),
    }
    if landed:
        out["landed"] = section(~known & has)
    if times is not None and len(score):
        parts = np.array_split(np.arange(len(score)), min(chunks, len(score)))
        out["chunks"] = []
        for idx in parts:
            m = np.zeros(len(score), dtype=bool)
            m[idx] = True
            sec = section(m)
            out["chunks"].append({"start": times[idx[0]], "end": times[idx[-1]]} | sec)
    return out
