"""What the app's pages show, computed from the small aggregates the store returns (pure functions).

The store reduces a run to histograms and counts in DuckDB (:meth:`Store.app_score_summary` and friends);
these functions turn them into curves, matrices and tables: ROC and PR points at the histogram's bin
edges, reliability bins, confusion matrices, latency histograms, scorecard rows that accept both the
interval shape of ``workbench evaluate --json`` and bare numbers, breakdown rows, drift rows, the ramp
position, the addresses that link one page's run or model to another page. Charts themselves live in
``pages/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import numpy as np

from workbench.clock import parse_time
from workbench.evaluate.metrics import METRICS
from workbench.roles import ROLES

P_VALUE_TESTS = frozenset({"ks", "chisquare", "z"})  # drift when the p-value falls below the threshold


# -- curves from score histograms --------------------------------------------------------------------------
@dataclass(frozen=True)
class Curves:
    """One model's curves at thresholds ``k / bins`` (k = 0 .. bins): predicted positive when score >= t."""

    thresholds: np.ndarray
    tpr: np.ndarray
    fpr: np.ndarray
    precision: np.ndarray  # NaN where nothing is predicted positive
    positives: int
    negatives: int

    @property
    def roc_auc(self) -> float | None:
        """Trapezoid area under the binned ROC curve (close to the exact AUC for fine bins)."""
        if not self.positives or not self.negatives:
            return None
        x, y = self.fpr[::-1], self.tpr[::-1]
        return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _histograms(scores: list[tuple], role: str, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(negatives per bin, positives per bin, sum of scores per bin) of one role."""
    neg, pos, total = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for r, label, b, n, s in scores:
        if r != role or not 0 <= b < bins:
            continue
        (pos if label == 1 else neg)[b] += n
        total[b] += s
    return neg, pos, total


def curves(scores: list[tuple], role: str, bins: int) -> Curves:
    """ROC and PR points of ``role`` from ``scores`` rows ``(role, label, bin, rows, sum_score)``."""
    neg, pos, _ = _histograms(scores, role, bins)
    # predicted positive at threshold k / bins: every bin >= k
    tp = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])
    fp = np.concatenate([np.cumsum(neg[::-1])[::-1], [0.0]])
    p, n = float(pos.sum()), float(neg.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / p if p else np.zeros_like(tp)
        fpr = fp / n if n else np.zeros_like(fp)
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
    return Curves(np.arange(bins + 1) / bins, tpr, fpr, precision, int(p), int(n))


@dataclass(frozen=True)
class Calibration:
    """Reliability bins: mean score and observed positive rate per bin, with the bin's row count."""

    edges: np.ndarray
    mean_score: np.ndarray
    positive_rate: np.ndarray
    rows: np.ndarray


def calibration(scores: list[tuple], role: str, bins: int, groups: int = 10) -> Calibration:
    """``groups`` equal-width score bins (as sklearn's ``calibration_curve(strategy="uniform")``), from the
    ``bins``-bin histogram; ``bins`` must be a multiple of ``groups``. Empty bins are left out."""
    if bins % groups:
        raise ValueError(f"{bins} histogram bins do not split into {groups} groups")
    neg, pos, total = _histograms(scores, role, bins)
    k = bins // groups
    n = (neg + pos).reshape(groups, k).sum(axis=1)
    p = pos.reshape(groups, k).sum(axis=1)
    s = total.reshape(groups, k).sum(axis=1)
    keep = n > 0
    return Calibration(np.linspace(0, 1, groups + 1), s[keep] / n[keep], p[keep] / n[keep], n[keep].astype(int))


# -- confusion and agreement --------------------------------------------------------------------------------
def confusion(pairs: list[tuple], role: str) -> np.ndarray:
    """2x2 counts ``[[tn, fp], [fn, tp]]`` (rows: label 0/1, columns: predicted 0/1) from ``pairs`` rows
    ``(label, baseline_class, candidate_class, rows)``; unlabelled and errored rows are left out."""
    m = np.zeros((2, 2), dtype=np.int64)
    i = 1 if role == "candidate" else 0
    for label, bc, cc, n in pairs:
        cls = (bc, cc)[i]
        if label in (0, 1) and cls in (0, 1):
            m[label, cls] += n
    return m


def agreement(pairs: list[tuple]) -> dict[str, Any]:
    """How the two models agree: rows both scored, rows whose classes differ, and on labelled rows the
    paired 2x2 table ``[[both wrong, only candidate right], [only baseline right, both right]]``."""
    both = differ = 0
    table = np.zeros((2, 2), dtype=np.int64)
    for label, bc, cc, n in pairs:
        if bc is None or cc is None:
            continue
        both += n
        differ += n if bc != cc else 0
        if label in (0, 1):
            table[int(bc == label), int(cc == label)] += n
    return {"rows": both, "disagree": differ, "disagree_rate": differ / both if both else None, "paired": table}


# -- latency -------------------------------------------------------------------------------------------------
def latency_histogram(latency: list[tuple], role: str, per_decade: int) -> dict[str, np.ndarray]:
    """Log-spaced latency bins of ``role`` from rows ``(role, bin, rows)``: edges (ms), rows, share."""
    got = sorted((b, n) for r, b, n in latency if r == role)
    if not got:
        return {"lo": np.array([]), "hi": np.array([]), "rows": np.array([], dtype=int), "share": np.array([])}
    b = np.array([x for x, _ in got], dtype=np.float64)
    n = np.array([y for _, y in got], dtype=np.int64)
    return {"lo": 10 ** (b / per_decade), "hi": 10 ** ((b + 1) / per_decade), "rows": n, "share": n / n.sum()}


# -- the scorecard ---------------------------------------------------------------------------------------------
def interval(x: Any) -> tuple[float | None, float | None, float | None]:
    """(value, ci_low, ci_high) from ``{"value", "ci_low", "ci_high"}`` or a bare number."""
    if isinstance(x, dict):
        return _f(x.get("value")), _f(x.get("ci_low")), _f(x.get("ci_high"))
    return _f(x), None, None


def _f(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _paired_columns(b: tuple, c: tuple, delta: tuple, d: Any) -> dict[str, Any]:
    """The columns a comparison row shows: each model's value and interval, the delta's, and its p-value."""
    return {
        "baseline": b[0],
        "baseline_ci_low": b[1],
        "baseline_ci_high": b[2],
        "candidate": c[0],
        "candidate_ci_low": c[1],
        "candidate_ci_high": c[2],
        "delta": delta[0],
        "delta_ci_low": delta[1],
        "delta_ci_high": delta[2],
        "p_value": _f(d.get("p_value")) if isinstance(d, dict) else None,
    }


def metric_rows(ev: dict) -> list[dict[str, Any]]:
    """One row per metric of an evaluation: each model's value and interval, the paired delta with its
    interval, p-value and minimum detectable effect (None where the evaluation has none)."""
    base, cand, delta = ev.get("baseline") or {}, ev.get("candidate") or {}, ev.get("delta") or {}
    names = [m for m in METRICS if m in base or m in cand] + [m for m in list(base) + list(cand) if m not in METRICS]
    rows = []
    for m in dict.fromkeys(names):
        b, c = interval(base.get(m)), interval(cand.get(m))
        d = delta.get(m)
        dv, dl, dh = (
            interval(d)
            if d is not None
            else ((c[0] - b[0]) if b[0] is not None and c[0] is not None else None, None, None)
        )
        better = _higher_is_better(m)
        rows.append(
            {
                "metric": m,
                **_paired_columns(b, c, (dv, dl, dh), d),
                "mde": _f(d.get("mde")) if isinstance(d, dict) else None,
                **_emphasis(dv, dl, dh, better),
            }
        )
    return rows


def _emphasis(dv: float | None, dl: float | None, dh: float | None, better: bool | None) -> dict[str, Any]:
    """Whether a delta's interval excludes zero (None without an interval) and, when it does and the metric has a
    direction, whether the candidate improved."""
    significant = None if dl is None or dh is None else not dl <= 0 <= dh
    return {
        "higher_is_better": better,
        "significant": significant,
        "improved": None if not significant or dv is None or better is None else (dv > 0) == better,
    }


def _higher_is_better(metric: str) -> bool | None:
    """A metric's direction (None: none, as a regression's bias or coverage, or an unknown metric)."""
    if metric in METRICS:
        return METRICS[metric].higher_is_better
    from workbench.evaluate.multiclass import higher_is_better  # only for runs that have these metrics
    from workbench.evaluate.regression import REGRESSION_METRICS

    reg = REGRESSION_METRICS.get(metric.split("@")[0])
    return higher_is_better(metric) if reg is None else reg.higher_is_better


def difference_text(row: dict[str, Any]) -> str:
    """What a :func:`metric_rows` row supports saying: which model is better only when the delta's interval
    excludes zero, "no significant difference" when it covers zero, nothing without an interval."""
    if row["improved"] is not None:
        return "candidate better" if row["improved"] else "baseline better"
    if row["significant"] and row["higher_is_better"] is None:
        return "differs (neither direction is better)"
    return "no significant difference" if row["significant"] is not None else ""


RESOURCE_LABELS = {
    "load_s": "load (s)",
    "cold_start_s": "cold start: load + first call (s)",
    "artifact_mb": "artifact (MB)",
    "rss_mb": "resident memory added by loading (MB)",
    "cpu_s_per_1k": "CPU s per 1,000 requests",
    "throughput_rps": "throughput (requests/s of busy time)",
    "gpu_peak_mb": "GPU peak memory (MB)",
    "gpu_busy_share": "GPU busy share",
    "cost_per_million": "cost per million requests (USD)",
}


def resource_rows(resources: dict | None) -> list[dict[str, Any]]:
    """What each model cost to run, side by side with candidate / baseline (an evaluation's ``resources``)."""
    metrics = (resources or {}).get("metrics") or {}
    return [
        {
            "resource": RESOURCE_LABELS.get(m, m),
            "metric": m,
            **{k: v.get(k) for k in ("baseline", "candidate", "ratio")},
        }
        for m, v in metrics.items()
    ]


def cost_rows(resources: dict | None) -> list[dict[str, Any]]:
    """The cost per million requests by part (``cpu``, ``gpu``, ``memory``, ``total``) for each model."""
    cost = (resources or {}).get("cost") or {}
    if not cost:
        return []
    return [
        {"part": part, **{r: (cost.get(r) or {}).get(part) for r in ROLES}}
        for part in ("cpu", "gpu", "memory", "total")
    ]


def latency_rows(
    ev: dict, quantiles: dict[str, list[float | None]] | None = None, probs: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> list[dict[str, Any]]:
    """Latency percentiles side by side: the evaluation's (with the delta's interval) where it has them, else
    the ``quantiles`` computed over the run's rows."""
    lat = ev.get("latency") or {}
    rows = []
    for i, p in enumerate(probs):
        key = f"p{round(p * 100)}"
        b, c = _f((lat.get("baseline") or {}).get(key)), _f((lat.get("candidate") or {}).get(key))
        source = "evaluation"
        if (b is None or c is None) and quantiles:
            b, c, source = quantiles["baseline"][i], quantiles["candidate"][i], "replayed rows"
        dv, dl, dh = interval((lat.get("delta") or {}).get(key)) if source == "evaluation" else (None, None, None)
        if dv is None and b is not None and c is not None:
            dv = c - b
        rows.append(
            {
                "percentile": key,
                "baseline_ms": b,
                "candidate_ms": c,
                "delta_ms": dv,
                "delta_ci_low": dl,
                "delta_ci_high": dh,
                "ratio": c / b if b and c is not None else None,
                "source": source,
            }
        )
    return rows


def error_rows(ev: dict, counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Each model's errors: the evaluation's count, rate and interval, else bare ``counts``."""
    errs = ev.get("errors") or {}
    rows = []
    for role in ROLES:
        e = errs.get(role) or {}
        rows.append(
            {
                "model": role,
                "errors": e.get("count", (counts or {}).get(role)),
                "rows": e.get("rows"),
                "rate": _f(e.get("rate")),
                "ci_low": _f(e.get("ci_low")),
                "ci_high": _f(e.get("ci_high")),
            }
        )
    return rows


def segment_rows(ev: dict) -> list[dict[str, Any]]:
    """The evaluation's per-segment results (``segments`` {column: {value: {...}}}) as flat rows."""
    rows = []
    for col, values in (ev.get("segments") or {}).items():
        for value, seg in (values or {}).items():
            if not isinstance(seg, dict):
                continue
            for r in metric_rows(seg):
                rows.append({"column": col, "value": value, "rows": seg.get("rows"), "small": seg.get("small"), **r})
    return rows


def window_rows(ev: dict) -> list[dict[str, Any]]:
    """The evaluation's per-window results (``windows``: a list of windows or {name: {...}}) as flat rows."""
    windows = ev.get("windows") or {}
    items = (
        windows.items()
        if isinstance(windows, dict)
        else ((w.get("start") or w.get("window") or str(i), w) for i, w in enumerate(windows) if isinstance(w, dict))
    )
    rows = []
    for name, w in items:
        if not isinstance(w, dict):
            continue
        for r in metric_rows(w):
            rows.append({"window": name, "rows": w.get("rows"), **r})
    return rows


# -- regression runs ---------------------------------------------------------------------------------------------
def quantile_rows(ev: dict) -> list[dict[str, Any]]:
    """One row per quantile level of a regression evaluation with quantiles: the level and each model's pinball
    loss with its interval and the paired delta (as :func:`metric_rows`); empty when the run has none."""
    by_name = {r["metric"]: r for r in metric_rows(ev)}
    return [{"level": q} | by_name[f"pinball@{q:g}"] for q in ev.get("quantiles") or [] if f"pinball@{q:g}" in by_name]


def interval_coverage(ev: dict) -> dict[str, Any] | None:
    """The central interval of a regression evaluation with quantiles: its levels and nominal coverage, each
    model's coverage and width (value, ci_low, ci_high) and the paired deltas; None when it has none."""
    spec = ev.get("interval")
    if not spec:
        return None
    out: dict[str, Any] = dict(spec)
    for m in ("coverage", "interval_width"):
        out[m] = {side: interval((ev.get(side) or {}).get(m)) for side in ("baseline", "candidate", "delta")}
    return out


def predicted_vs_actual(summary: dict, role: str, bins: int) -> dict[str, Any] | None:
    """One model's predicted-vs-actual counts from :meth:`Store.app_regression_summary`: ``centers`` of the
    ``bins`` equal bins over the summary's range (both axes), ``counts[i][j]`` the rows predicted in bin i whose
    target fell in bin j, ``log_counts`` their log10 (NaN where empty: sparse tails stay visible) and ``rows``.
    None when the run has no labelled predicted rows."""
    if not summary or summary.get("range") is None:
        return None
    lo, hi = summary["range"]
    width = (hi - lo) / bins if hi > lo else 1.0
    counts = np.zeros((bins, bins), dtype=np.int64)
    for r, actual, predicted, n in summary["cells"]:
        if r == role:
            counts[predicted, actual] += n
    with np.errstate(divide="ignore"):
        log_counts = np.where(counts > 0, np.log10(counts), np.nan)
    return {
        "centers": lo + width * (np.arange(bins) + 0.5),
        "counts": counts,
        "log_counts": log_counts,
        "rows": int(counts.sum()),
    }


def residual_rows(summary: dict, column: str, limit: int = 40) -> list[dict[str, Any]]:
    """Per value of segment ``column`` (the ``limit`` largest): rows, each model's MAE and mean residual
    (prediction - y: the bias) and the MAE delta candidate - baseline, from :meth:`Store.app_regression_summary`."""
    out = []
    for value, n, abs_b, abs_c, sum_b, sum_c in sorted(summary["segments"].get(column) or [], key=lambda g: -g[1]):
        out.append(
            {
                "value": value,
                "rows": n,
                "baseline_mae": abs_b / n,
                "candidate_mae": abs_c / n,
                "delta_mae": (abs_c - abs_b) / n,
                "baseline_bias": sum_b / n,
                "candidate_bias": sum_c / n,
            }
        )
    return out[:limit]


# -- multi-class runs --------------------------------------------------------------------------------------------
def class_confusion(ev: dict, role: str) -> dict[str, Any] | None:
    """One model's confusion matrix from a multi-class evaluation: ``classes``, ``counts[i][j]`` the rows of true
    class i predicted as class j, ``shares`` each row's counts over its total (NaN for a class with no rows) and
    ``rows``. None when the evaluation has no matrix for ``role``."""
    matrix, classes = (ev.get("confusion") or {}).get(role), ev.get("classes")
    if matrix is None or not classes:
        return None
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(classes), len(classes))
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, counts / totals, np.nan)
    return {"classes": list(classes), "counts": counts, "shares": shares, "rows": int(counts.sum())}


def class_rows(ev: dict, metric: str) -> list[dict[str, Any]]:
    """Per class of a multi-class evaluation, per-class ``metric`` (precision, recall, f1 or fpr): each model's
    value and interval and the paired delta with its interval and p-value, emphasised as :func:`metric_rows`."""
    per, delta = ev.get("per_class") or {}, (ev.get("per_class_delta") or {}).get(metric) or {}
    better = _higher_is_better(metric)
    rows = []
    for cls in ev.get("classes") or []:
        b = interval(((per.get("baseline") or {}).get(metric) or {}).get(cls))
        c = interval(((per.get("candidate") or {}).get(metric) or {}).get(cls))
        d = delta.get(cls)
        dv, dl, dh = interval(d)
        rows.append(
            {
                "class": cls,
                "metric": metric,
                **_paired_columns(b, c, (dv, dl, dh), d),
                **_emphasis(dv, dl, dh, better),
            }
        )
    return rows


# -- breakdowns -------------------------------------------------------------------------------------------------
def _period(day: Any, period: str) -> Any:
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r} (day, week, month)")


def rollup(days: list[dict[str, Any]], period: str) -> list[dict[str, Any]]:
    """Per-day sums of :meth:`Store.app_breakdowns` added up per ``period`` (day, week from Monday, month)."""
    out: dict[Any, dict[str, Any]] = {}
    for d in days:
        if d["key"] is None:
            continue
        key = _period(d["key"], period)
        acc = out.setdefault(key, {"key": key})
        for k, v in d.items():
            if k != "key":
                acc[k] = acc.get(k, 0) + v
    return [out[k] for k in sorted(out)]


def class_shares(counts: dict[str, Any], period: str) -> dict[str, dict[str, Any]]:
    """Each model's predicted-class distribution per ``period`` (day, week, month) from
    :meth:`Store.app_class_counts`: ``{role: {"keys", "classes", "rows", "shares"}}``, ``shares[i][j]`` the share of
    period i's predicted rows given class j (each row of shares sums to 1)."""
    classes = list(counts.get("classes") or [])
    out: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        acc: dict[Any, list[int]] = {}
        for r, day, cls, n in counts.get("counts") or []:
            if r == role and 0 <= cls < len(classes):
                acc.setdefault(_period(day, period), [0] * len(classes))[cls] += n
        keys = sorted(acc)
        rows = [sum(acc[k]) for k in keys]
        shares = [[v / total for v in acc[k]] for k, total in zip(keys, rows, strict=True)]
        out[role] = {"keys": keys, "classes": classes, "rows": rows, "shares": shares}
    return out


def breakdown_rows(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group of sums (:meth:`Store.app_breakdowns`): each model's accuracy and error rate on the labelled
    rows, the accuracy difference, label rate, disagreement rate, failures, mean score and mean latency
    (None where a group has no labelled or scored rows)."""

    def ratio(a, b):
        return a / b if b else None

    out = []
    for g in groups:
        lab = g["labelled"]
        ba, ca = ratio(g["baseline_correct"], lab), ratio(g["candidate_correct"], lab)
        out.append(
            {
                "key": g["key"],
                "rows": g["rows"],
                "labelled": lab,
                "label_rate": ratio(g["positives"], lab),
                "baseline_accuracy": ba,
                "candidate_accuracy": ca,
                "accuracy_delta": ca - ba if lab else None,
                "baseline_error_rate": 1 - ba if lab else None,
                "candidate_error_rate": 1 - ca if lab else None,
                "disagree_rate": ratio(g["disagree"], g["rows"]),
                "baseline_failures": g["baseline_errors"],
                "candidate_failures": g["candidate_errors"],
                "baseline_mean_score": ratio(g["baseline_score_sum"], g["baseline_scored"]),
                "candidate_mean_score": ratio(g["candidate_score_sum"], g["candidate_scored"]),
                "baseline_mean_latency_ms": ratio(g["baseline_latency_sum"], g["baseline_latency_n"]),
                "candidate_mean_latency_ms": ratio(g["candidate_latency_sum"], g["candidate_latency_n"]),
            }
        )
    return out


def largest(groups: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` groups with the most rows, largest first."""
    return sorted(groups, key=lambda g: -g["rows"])[:n]


# -- drift -------------------------------------------------------------------------------------------------------
def drift_score(test: str | None, statistic: float | None, threshold: float | None) -> float | None:
    """How far a drift statistic is past its threshold on one scale (> 1: drift): statistic / threshold for
    distances, log(p-value) / log(threshold) for p-value tests (p = threshold gives 1, p = threshold^2 gives 2)."""
    if test is None or statistic is None or not threshold:
        return None
    if test in P_VALUE_TESTS:
        if not 0 < threshold < 1:
            return None
        return math.log(max(statistic, 1e-300)) / math.log(threshold) if statistic < 1 else 0.0
    return statistic / threshold


def feature_drift_rows(report: dict) -> list[dict[str, Any]]:
    """Per feature of a drift report: test, statistic, threshold, drift flag and :func:`drift_score`,
    most drifted first."""
    rows = [
        {
            "feature": c,
            "kind": f.get("kind"),
            "test": f.get("test"),
            "statistic": f.get("statistic"),
            "threshold": f.get("threshold"),
            "drifted": bool(f.get("drifted")),
            "method": f.get("method"),
            "score": drift_score(f.get("test"), f.get("statistic"), f.get("threshold")),
            "note": f.get("note"),
        }
        for c, f in (report.get("features") or {}).items()
    ]
    return sorted(rows, key=lambda r: (-(r["score"] or 0), r["feature"]))


def prediction_drift_rows(report: dict) -> list[dict[str, Any]]:
    """Prediction drift of each model's scores (reference against current) and baseline against candidate."""
    rows = []
    for name, d in (report.get("prediction_drift") or {}).items():
        if not isinstance(d, dict):
            continue
        rows.append(
            {
                "comparison": name.replace("_", " "),
                "available": d.get("available", True),
                "test": d.get("test"),
                "statistic": d.get("statistic"),
                "threshold": d.get("threshold"),
                "drifted": d.get("drifted"),
                "mean_abs_score_diff": d.get("mean_abs_score_diff"),
                "class_disagreement": d.get("class_disagreement"),
                "reason": d.get("reason"),
                "score": drift_score(d.get("test"), d.get("statistic"), d.get("threshold")),
            }
        )
    return rows


def residual_drift_rows(report: dict) -> list[dict[str, Any]]:
    """A regression run's residual drift per model (reference against current residuals): the test, statistic,
    threshold, whether it drifted, and the residuals' mean (bias) and MAE on each side; none for a classifier."""
    rows = []
    for role in ROLES:
        d = (report.get("residual_drift") or {}).get(role)
        if not isinstance(d, dict):
            continue
        keys = ("test", "statistic", "threshold", "drifted", "reference_bias", "current_bias", "reference_mae")
        rows.append({"model": role, **{k: d.get(k) for k in (*keys, "current_mae", "reason")}})
    return rows


def quality_rows(report: dict) -> list[dict[str, Any]]:
    """The drift report's data quality per feature, flattened (lists of examples joined)."""
    rows = []
    for col, q in (report.get("quality") or {}).items():
        row = {"feature": col}
        for k, v in (q or {}).items():
            row[k] = ", ".join(map(str, v[:5])) if isinstance(v, list) else v
        rows.append(row)
    return rows


# -- numbers for people ---------------------------------------------------------------------------------------------
def number(x: Any, signed: bool = False, digits: int = 4) -> str:
    """A number as people read it: empty when missing, whole numbers with thousands separators (165,184),
    others to ``digits`` significant digits (0.8123, 1,235)."""
    v = _f(x)
    if v is None:
        return ""
    sign = "+" if signed else ""
    if v == round(v) and abs(v) < 1e15:
        return f"{int(v):{sign},}"
    if abs(v) >= 10**digits:
        return f"{v:{sign},.0f}"
    return f"{v:{sign},.{digits}g}"


def duration(ms: Any, signed: bool = False) -> str:
    """A latency in milliseconds in the unit that reads best: ns under 1 µs, µs under 1 ms, s from 1,000 ms."""
    v = _f(ms)
    if v is None:
        return ""
    if abs(v) < 0.001 and v != 0:
        return f"{number(v * 1e6, signed, 3)} ns"
    if abs(v) < 1 and v != 0:
        return f"{number(v * 1000, signed, 3)} µs"
    if abs(v) >= 1000:
        return f"{number(v / 1000, signed, 3)} s"
    return f"{number(v, signed, 3)} ms"


def bounds(lo: Any, hi: Any, fmt: Any = number) -> str:
    """An interval ``[lo, hi]`` (an open side as ∞), empty when it has neither bound."""
    lo, hi = _f(lo), _f(hi)
    if lo is None and hi is None:
        return ""
    low = "−∞" if lo is None else fmt(lo, True)
    return f"[{low}, {'+∞' if hi is None else fmt(hi, True)}]"


def label(key: str) -> str:
    """A column header from a field name: ``baseline_ms`` reads "baseline (ms)", ``ci_low`` "interval low"."""
    for suffix, unit in (("_ms", " (ms)"), ("_mb", " (MB)"), ("_s", " (s)")):
        if key.endswith(suffix):
            return key[: -len(suffix)].replace("_", " ") + unit
    return key.replace("ci_low", "interval low").replace("ci_high", "interval high").replace("_", " ")


def labelled(rows: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """``rows`` with :func:`label` headers, without the ``drop`` fields."""
    return [{label(k): v for k, v in r.items() if k not in drop} for r in rows]


# -- a decision's checks ------------------------------------------------------------------------------------------
OUTCOME_LABELS = {"fail": "✗ fail", "inconclusive": "? inconclusive", "pass": "✓ pass"}


def _requirement(c: dict[str, Any]) -> str:
    """The check's criterion and threshold in words ("≥ 1,000 labelled rows", "≤ 1.2 × baseline")."""
    t, crit, metric = _f(c.get("threshold")), c.get("criterion"), c.get("metric") or ""
    up = METRICS[metric].higher_is_better if metric in METRICS else True
    if crit == "min_rows":
        return f"≥ {number(t)} labelled rows"
    if crit == "max_ratio":
        return f"≤ {number(t)} × baseline"
    if crit == "max_ms":
        return f"≤ {duration(t)}"
    if crit == "max_rate":
        return f"≤ {number(t)}"
    if crit == "threshold":
        return f"{'≥' if up else '≤'} {number(t)}"
    if crit == "min_absolute_change" and t is not None:
        return f"change {'≥' if up else '≤'} {number(t if up else -t, True)}"
    if crit == "min_relative_change" and t is not None:
        return f"change {'≥' if up else '≤'} {(t if up else -t) * 100:+.3g}% of baseline"
    return " ".join(x for x in ((crit or "").replace("_", " "), number(t)) if x)


def _plain(x: Any, signed: bool = False) -> str:
    return number(x)


def check_rows(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A scorecard's checks (``Check.to_dict()``) as rows people read: failing first (critical before the
    others), then inconclusive (those needing most rows first), then passing; numbers formatted, latencies in
    µs/ms/s, an error rate with its interval, critical checks marked, empty cells where a check has no number."""

    def order(c: dict[str, Any]) -> tuple:
        rank = {"fail": 0, "inconclusive": 1, "pass": 2}.get(str(c.get("outcome")), 3)
        return rank, rank == 0 and not c.get("critical"), -(c.get("settle_rows") or 0) if rank == 1 else 0

    rows = []
    for c in sorted(checks, key=order):
        fmt = duration if str(c.get("metric") or "").endswith("_ms") else number
        d = c.get("delta") or {}
        candidate, diff = fmt(c.get("candidate")), fmt(d.get("value"), True)
        spread = bounds(d.get("ci_low"), d.get("ci_high"), fmt)
        if c.get("kind") == "errors":  # its interval is the candidate's rate, not a difference
            rate = bounds(d.get("ci_low"), d.get("ci_high"), _plain)
            candidate, diff = " ".join(x for x in (candidate, rate) if x), ""
        elif spread:
            diff = f"{diff} {spread}"
        rows.append(
            {
                "Outcome": OUTCOME_LABELS.get(str(c.get("outcome")), str(c.get("outcome")))
                + (" (critical)" if c.get("critical") else ""),
                "Gate": c.get("gate"),
                "Why": c.get("reason"),
                "Baseline": fmt(c.get("baseline")),
                "Candidate": candidate,
                "Candidate − baseline [interval]": diff,
                "Requirement": _requirement(c),
                "Rows judged": number(c.get("rows")),
                "More rows to settle": number(c.get("settle_rows")),
            }
        )
    return rows


def context_rows(context: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A scorecard's context entries (drift both models see) as rows: what it is and what it says."""
    return [
        {"Context": str(item.get("name", "")).replace(".", ": ").replace("_", " "), "What it says": item.get("detail")}
        for item in context
    ]


# -- the canary ramp -----------------------------------------------------------------------------------------------
def ramp_position(weight: int, ramp: tuple[int, ...] | list[int]) -> dict[str, Any]:
    """Where a weight sits on the ramp: its step (0 before the first), the number of steps, the next weight."""
    ramp = list(ramp)
    step = sum(1 for w in ramp if w <= weight)
    nxt = next((w for w in ramp if w > weight), None)
    return {
        "weight": weight,
        "step": step,
        "steps": len(ramp),
        "next": nxt,
        "ramp": ramp,
        "text": " → ".join(f"[{w}%]" if w == weight else f"{w}%" for w in [0] + ramp),
    }


def weight_history(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The canary weight after each applied record (audit entries, any order) in chain order, for a step chart:
    time, weight, kind (``decision``, ``kill``, ``pause``, ``resume``), verdict, signer, reason, verified."""
    applied = sorted((e for e in entries if e.get("sequence") is not None), key=lambda e: e["sequence"])
    return [
        {
            "time": parse_time(e["created_at"]),
            "weight": int(e["weight_after"]),
            "kind": e["kind"],
            "verdict": e["verdict"],
            "signer": e.get("signer"),
            "reason": (e.get("record") or {}).get("reason"),
            "decision_id": e["decision_id"],
            "sequence": e["sequence"],
            "verified": e.get("verified", False),
        }
        for e in applied
    ]


def live_rows(arms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-arm rows of a live window (:meth:`workbench.live.window.LiveWindow.to_dict`'s ``arms``) for a table."""
    return [
        {
            "arm": a["arm"],
            "requests": a["requests"],
            "req/s": round(a["per_s"], 2),
            "errors": a["errors"],
            "error rate": None if a["error_rate"] is None else f"{a['error_rate']:.2%}",
            "P50": duration(a["p50_ms"]) if a["p50_ms"] is not None else None,
            "P99": duration(a["p99_ms"]) if a["p99_ms"] is not None else None,
        }
        for a in arms
    ]


# -- links between pages ---------------------------------------------------------------------------------------
def page_url(page: str, **params: str) -> str:
    """A page's address relative to the app's, e.g. ``compare?run=r1``: what a reviewer shares."""
    return page + ("?" + urlencode(params) if params else "")


def runs_of_model(runs: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """The runs that replay ``model`` as baseline or candidate, in the order given (the store's: newest first)."""
    return [r for r in runs if model in {(r.get("baseline") or {}).get("name"), (r.get("candidate") or {}).get("name")}]
