"""What the app's pages show of regression, quantile and multi-class runs, from their evaluations and the small
aggregates the store returns (pure functions, as :mod:`workbench.views` for every run): pinball loss per quantile
level, the central interval's coverage, predicted-vs-actual counts, residuals per segment, class confusion matrices
and per-class deltas.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.views import _emphasis, _higher_is_better, _paired_columns, interval, metric_rows


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
