"""Regression metrics of two models on the same requests: each model's value with an interval, and the paired
delta candidate - baseline with its test.

Metrics (:data:`REGRESSION_METRICS`, each with its direction) and how their intervals are made:

* mae, mse, mape, smape, bias (mean of prediction - y), pinball@q (one per quantile level), interval_width:
  means of per-request values, so a Student-t interval (the CLT, with the small-sample correction); the
  delta is the mean of the paired differences with the paired t-test (as scipy's ``ttest_rel``), and for
  mae and mse also the Wilcoxon signed-rank test of the absolute- and squared-error differences;
* rmse: the square root of the mse interval; its delta by the delta method (the rows' influences
  (e_i^2 - mse) / (2 rmse), differenced between the models) with a t interval;
* coverage (share of y inside the given [lower, upper]): a Wilson interval; its delta a paired-t interval
  with the exact McNemar test of the rows covered by one model only;
* median_ae: the exact bootstrap of the median from order statistics (:func:`stats.quantile_bootstrap`);
  its delta: the paired row-level Poisson bootstrap (:func:`stats.paired_median_bootstrap`);
* r2 and its delta: the seeded Poisson bootstrap of their linearisation (each row's influence on
  1 - mse / var(y), :func:`stats.linear_bootstrap`), as the binary score metrics of large runs.

Bootstrap intervals are percentile intervals with a generator seeded by ``opts.seed``.

mape is |prediction - y| / |y| (a fraction, as scikit-learn's) and smape 2 |prediction - y| / (|y| +
|prediction|) (in [0, 2]). Rows where a metric is undefined (y not finite, a prediction not finite, y = 0
for mape, y and the prediction both 0 for smape, a quantile or bound not finite, a lower bound above its
upper bound) are left out of that metric and counted by reason in its ``excluded``. Each model's metrics
use the rows it can; a delta uses the rows both can.

For the decision layer's anytime-valid bounds, :func:`paired_losses` gives the per-request differences of
absolute and squared error; the MAE delta's confidence sequence is then
``sequential.mean_cs(paired_losses(y, b, c).absolute, alpha, t_star)`` (and the mse delta's with
``.squared``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from workbench import WorkbenchError
from workbench.evaluate import stats
from workbench.evaluate.paired import (
    Rule,
    Usable,
    check_rows,
    linearised_delta,
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

_INF = math.inf


REGRESSION_METRICS: dict[str, TaskMetric] = {
    m.name: m
    for m in [
        TaskMetric("mae", False, (0.0, _INF)),
        TaskMetric("mse", False, (0.0, _INF)),
        TaskMetric("rmse", False, (0.0, _INF)),
        TaskMetric("median_ae", False, (0.0, _INF)),
        TaskMetric("mape", False, (0.0, _INF)),
        TaskMetric("smape", False, (0.0, 2.0)),
        TaskMetric("r2", True, (-_INF, 1.0)),
        TaskMetric("bias", None, (-_INF, _INF)),
        TaskMetric("pinball", False, (0.0, _INF)),  # reported per quantile level q as "pinball@q"
        TaskMetric("coverage", None, (0.0, 1.0)),
        TaskMetric("interval_width", False, (0.0, _INF)),
    ]
}


def _floats(name: str, a: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"{name} must hold numbers: {e}") from None


# -- per-request losses ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RegressionLosses:
    """Per-request absolute and squared error of one model (NaN where y or the prediction is not finite)."""

    absolute: np.ndarray
    squared: np.ndarray


def regression_losses(y: np.ndarray, pred: np.ndarray) -> RegressionLosses:
    """Each request's absolute and squared error of predictions ``pred`` for targets ``y``."""
    y = _floats("y", check_rows(y, {"pred": pred}))
    err = _errors(y, _floats("pred", pred))
    return RegressionLosses(np.abs(err), err * err)


def _errors(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """prediction - y, NaN where either is not finite."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = pred - y
    err[~(np.isfinite(y) & np.isfinite(pred))] = np.nan
    return err


@dataclass(frozen=True)
class PairedLosses:
    """Per-request candidate - baseline differences of absolute and squared error on the rows both models
    predicted (``index``: their positions in the input), and the rows left out by reason."""

    absolute: np.ndarray
    squared: np.ndarray
    index: np.ndarray
    excluded: dict[str, int]


def paired_losses(y: np.ndarray, baseline: np.ndarray, candidate: np.ndarray) -> PairedLosses:
    """The paired loss differences whose means are the MAE and MSE deltas: the input to the anytime-valid
    bounds of :mod:`workbench.evaluate.sequential` (``mean_cs``, ``one_sided_bounds``)."""
    y = _floats("y", check_rows(y, {BASELINE: baseline, CANDIDATE: candidate}))
    preds = {BASELINE: _floats(BASELINE, baseline), CANDIDATE: _floats(CANDIDATE, candidate)}
    use = paired_usable(_point_rules(y, preds[BASELINE]), _point_rules(y, preds[CANDIDATE]), len(y))
    err = {r: _errors(y[use.ok], p[use.ok]) for r, p in preds.items()}
    return PairedLosses(
        np.abs(err[CANDIDATE]) - np.abs(err[BASELINE]),
        err[CANDIDATE] ** 2 - err[BASELINE] ** 2,
        np.flatnonzero(use.ok),
        use.excluded,
    )


#: the regression metrics a decision gate may name: means of per-request losses (and the root of one), whose
#: deltas have anytime-valid bounds from the per-request loss differences; with quantiles also ``pinball`` (each
#: request's pinball loss averaged over the run's levels), ``pinball@q`` (one level's) and ``coverage`` (the share of
#: targets inside the central interval, :func:`central_interval`)
GATE_METRICS: tuple[str, ...] = ("mae", "mse", "rmse", "pinball", "coverage")


def is_gate_metric(name: str) -> bool:
    """``name`` is a regression gate metric: one of :data:`GATE_METRICS` or ``pinball@q`` for a level q in (0, 1)."""
    if name in GATE_METRICS:
        return True
    prefix, _, level = name.partition("@")
    try:
        return prefix == "pinball" and 0 < float(level) < 1
    except ValueError:
        return False


def sequential_parts(
    name: str, y: np.ndarray, baseline: np.ndarray, candidate: np.ndarray, levels: Sequence[float] = ()
) -> PairedParts | None:
    """Both models' values of gate metric ``name`` (:func:`is_gate_metric`) on the rows both predicted and each
    row's influence, as :func:`workbench.evaluate.sequential.paired_parts` gives them for the binary metrics: the
    input of the decision layer's one-sided bounds. ``baseline``/``candidate``: predictions, or n x (1 + levels)
    matrices of the prediction and the quantiles at ``levels`` for the quantile metrics. None when no row is
    usable (or the rmse is 0, or the run has no quantiles at the level asked for)."""
    if not is_gate_metric(name):
        known = ", ".join([*GATE_METRICS, "pinball@q"])
        raise WorkbenchError(f"no decision bounds for regression metric {name!r} (use one of {known})")
    y = _floats("y", check_rows(y, {BASELINE: baseline, CANDIDATE: candidate}))
    outputs = {BASELINE: _floats(BASELINE, baseline), CANDIDATE: _floats(CANDIDATE, candidate)}
    preds = {r: o[:, 0] if o.ndim == 2 else o for r, o in outputs.items()}
    rules = {r: _point_rules(y, p) for r, p in preds.items()}
    loss = _quantile_losses(name, y, outputs, list(levels), rules)
    if name not in ("mae", "mse", "rmse") and loss is None:
        return None
    use = paired_usable(rules[BASELINE], rules[CANDIDATE], len(y))
    if use.rows == 0:
        return None
    if loss is None:
        err = {r: _errors(y[use.ok], p[use.ok]) for r, p in preds.items()}
        loss = {r: np.abs(e) if name == "mae" else e * e for r, e in err.items()}
    else:
        loss = {r: v[use.ok] for r, v in loss.items()}
    mean = {r: float(v.mean()) for r, v in loss.items()}
    psi = {r: loss[r] - mean[r] for r in ROLES}
    value = dict(mean)
    if name == "rmse":
        if min(mean.values()) <= 0:
            return None
        value = {r: math.sqrt(mean[r]) for r in ROLES}
        psi = {r: psi[r] / (2 * value[r]) for r in ROLES}
    span = REGRESSION_METRICS[name.split("@")[0]].span
    return PairedParts(value[BASELINE], value[CANDIDATE], psi[CANDIDATE], psi[CANDIDATE] - psi[BASELINE], span)


def _quantile_losses(
    name: str, y: np.ndarray, outputs: dict[str, np.ndarray], levels: list[float], rules: dict[str, list[Rule]]
) -> dict[str, np.ndarray] | None:
    """Per-request losses of a quantile gate metric (``rules`` gain the rows they cannot use), or None: a point
    metric (mae, mse, rmse), or quantiles the outputs do not hold."""
    if name in ("mae", "mse", "rmse"):
        return None
    if not levels or any(o.ndim != 2 or o.shape[1] != 1 + len(levels) for o in outputs.values()):
        return None
    q = {r: o[:, 1:] for r, o in outputs.items()}
    for r in ROLES:
        rules[r].append(("quantiles are not finite", ~np.isfinite(q[r]).all(axis=1)))
    if name == "coverage":
        pair = central_interval(levels)
        if pair is None:
            return None
        return {r: ((m[:, pair[0]] <= y) & (y <= m[:, pair[1]])).astype(np.float64) for r, m in q.items()}
    if name == "pinball":
        return {r: np.mean([_pinball(y, m[:, j], lv) for j, lv in enumerate(levels)], axis=0) for r, m in q.items()}
    level = float(name.partition("@")[2])
    at = [j for j, lv in enumerate(levels) if math.isclose(lv, level, abs_tol=1e-9)]
    return {r: _pinball(y, m[:, at[0]], level) for r, m in q.items()} if at else None


def _point_rules(y: np.ndarray, pred: np.ndarray) -> list[Rule]:
    return [("y is not finite", ~np.isfinite(y)), ("prediction is not finite", ~np.isfinite(pred))]


# -- the comparison --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegressionComparison:
    """Both models' regression metrics and their paired deltas. ``rows``: all rows, those each model
    predicted (finite y and prediction) and those both did."""

    rows: dict[str, int]
    confidence: float
    baseline: dict[str, MetricEstimate]
    candidate: dict[str, MetricEstimate]
    delta: dict[str, PairedEstimate]

    def to_dict(self) -> dict:
        return {
            "rows": dict(self.rows),
            "confidence": self.confidence,
            "baseline": {k: v.to_dict() for k, v in self.baseline.items()},
            "candidate": {k: v.to_dict() for k, v in self.candidate.items()},
            "delta": {k: v.to_dict() for k, v in self.delta.items()},
        }


class _Metrics:
    """The comparison under construction: each metric's estimates for both models and their delta."""

    def __init__(self, n: int, opts: Options):
        self.n, self.opts = n, opts
        self.model: dict[str, dict[str, MetricEstimate]] = {r: {} for r in ROLES}
        self.delta: dict[str, PairedEstimate] = {}

    def means(
        self, name: str, values: dict[str, np.ndarray], rules: dict[str, list[Rule]], *, signed_rank: bool = False
    ) -> dict[str, Usable]:
        """A mean-of-rows metric: t intervals per model, the paired-t delta; returns the rows each model used
        and those both did (``"paired"``)."""
        m = REGRESSION_METRICS[name.split("@")[0]]
        own = {r: usable(rules[r], self.n) for r in ROLES}
        for r in ROLES:
            self.model[r][name] = mean_estimate(values[r], own[r], self.opts, m.bounds)
        use = paired_usable(rules[BASELINE], rules[CANDIDATE], self.n)
        self.delta[name] = mean_delta(
            values[BASELINE], values[CANDIDATE], use, self.opts, m.span, signed_rank=signed_rank
        )
        return own | {"paired": use}

    def ordered(self, d: dict) -> dict:
        """``d`` in registry order, quantile levels ascending."""
        return {k: d[k] for k in sorted(d, key=lambda k: list(REGRESSION_METRICS).index(k.split("@")[0]))}


def compare_regression(
    y: np.ndarray,
    baseline: np.ndarray,
    candidate: np.ndarray,
    *,
    quantiles: Mapping[str, Mapping[float, np.ndarray]] | None = None,
    intervals: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    opts: Options = Options(),
) -> RegressionComparison:
    """Regression metrics of both models on targets ``y`` with intervals, and their paired deltas.

    ``baseline``/``candidate``: point predictions, one per row of ``y`` (NaN where a model failed).
    ``quantiles``: ``{role: {level: predictions}}``, the same levels (in (0, 1)) for both models, for the
    pinball losses; ``intervals``: ``{role: (lower, upper)}`` for coverage and interval width. ``opts`` gives
    the confidence level, power (for the minimum detectable effect), bootstrap replicates and seed.
    """
    levels = _check_extras(quantiles, intervals)
    arrays: dict[str, np.ndarray] = {BASELINE: baseline, CANDIDATE: candidate}
    for r in ROLES:
        arrays |= {f"{r} quantile {q:g}": quantiles[r][q] for q in levels} if quantiles else {}
        arrays |= {f"{r} lower": intervals[r][0], f"{r} upper": intervals[r][1]} if intervals else {}
    y = _floats("y", check_rows(y, arrays))
    a = {k: _floats(k, v) for k, v in arrays.items()}
    out = _Metrics(len(y), opts)

    err = {r: _errors(y, a[r]) for r in ROLES}
    absolute = {r: np.abs(e) for r, e in err.items()}
    squared = {r: e * e for r, e in err.items()}
    point = {r: _point_rules(y, a[r]) for r in ROLES}
    with np.errstate(divide="ignore", invalid="ignore"):
        ape = {r: absolute[r] / np.abs(y) for r in ROLES}
        sape = {r: 2 * absolute[r] / (np.abs(y) + np.abs(a[r])) for r in ROLES}
    out.means("mae", absolute, point, signed_rank=True)
    rows = out.means("mse", squared, point, signed_rank=True)
    _rmse(out, squared, rows["paired"])
    _bootstrapped(out, y, absolute, squared, rows)
    out.means("mape", ape, {r: [*point[r], ("y is 0", y == 0)] for r in ROLES})
    both_zero = {r: (y == 0) & (a[r] == 0) for r in ROLES}
    out.means("smape", sape, {r: [*point[r], ("y and the prediction are both 0", both_zero[r])] for r in ROLES})
    out.means("bias", err, point)
    for q in levels:
        qp = {r: a[f"{r} quantile {q:g}"] for r in ROLES}
        rules = {r: [point[r][0], (f"quantile {q:g} is not finite", ~np.isfinite(qp[r]))] for r in ROLES}
        out.means(f"pinball@{q:g}", {r: _pinball(y, qp[r], q) for r in ROLES}, rules)
    if intervals:
        _intervals(out, y, {r: (a[f"{r} lower"], a[f"{r} upper"]) for r in ROLES}, point)
    counts = {"total": len(y), **{r: rows[r].rows for r in ROLES}, "paired": rows["paired"].rows}
    model = {r: out.ordered(out.model[r]) for r in ROLES}
    return RegressionComparison(counts, opts.confidence, model[BASELINE], model[CANDIDATE], out.ordered(out.delta))


def _check_extras(
    quantiles: Mapping[str, Mapping[float, np.ndarray]] | None,
    intervals: Mapping[str, tuple[np.ndarray, np.ndarray]] | None,
) -> list[float]:
    """The quantile levels, after checking both models give the same levels in (0, 1) and both give bounds."""
    for what, given in (("quantiles", quantiles), ("intervals", intervals)):
        if given is not None and sorted(given) != sorted(ROLES):
            raise WorkbenchError(f"{what} must be given for both {' and '.join(ROLES)}, got {sorted(given)}")
    if not quantiles:
        return []
    levels = {r: sorted(float(q) for q in quantiles[r]) for r in ROLES}
    if levels[BASELINE] != levels[CANDIDATE]:
        raise WorkbenchError(
            f"the models give different quantile levels: {BASELINE} {levels[BASELINE]}, {CANDIDATE} {levels[CANDIDATE]}"
        )
    bad = [q for q in levels[BASELINE] if not 0 < q < 1]
    if bad:
        raise WorkbenchError(f"quantile levels must lie strictly between 0 and 1, got {bad}")
    return levels[BASELINE]


def central_interval(levels: Sequence[float]) -> tuple[int, int] | None:
    """The positions in ``levels`` (ascending) of the widest central interval they hold: the lowest level q whose
    mirror 1 - q is also a level (an 80 % interval from 0.1 and 0.9), or None when no pair is symmetric."""
    for i, q in enumerate(levels):
        for j in range(len(levels) - 1, i, -1):
            if math.isclose(q + levels[j], 1.0, abs_tol=1e-9):
                return i, j
    return None


def quantile_extras(
    levels: Sequence[float], quantiles: Mapping[str, np.ndarray]
) -> tuple[dict[str, dict[float, np.ndarray]], dict[str, tuple[np.ndarray, np.ndarray]] | None]:
    """:func:`compare_regression`'s ``quantiles`` and ``intervals`` from each model's n x levels matrix of
    quantiles (NaN rows where it failed): every level, and the :func:`central_interval` as the bounds."""
    per_level = {r: {float(q): m[:, j] for j, q in enumerate(levels)} for r, m in quantiles.items()}
    pair = central_interval(levels)
    if pair is None:
        return per_level, None
    return per_level, {r: (m[:, pair[0]], m[:, pair[1]]) for r, m in quantiles.items()}


def _pinball(y: np.ndarray, pred: np.ndarray, q: float) -> np.ndarray:
    """Per-request pinball loss of the level-``q`` quantile prediction ``pred`` (as scikit-learn's
    ``mean_pinball_loss``): q (y - pred) above the prediction, (1 - q) (pred - y) below."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = y - pred
        return np.where(diff >= 0, q * diff, (q - 1) * diff)


def _rmse(out: _Metrics, squared: dict[str, np.ndarray], use: Usable) -> None:
    """rmse: each model's is the square root of its mse and interval; the delta by the delta method."""
    for r in ROLES:
        mse = out.model[r]["mse"]
        value, lo, hi = (None if v is None else math.sqrt(v) for v in (mse.value, mse.ci_low, mse.ci_high))
        method = "t (square root of the mse interval)" if mse.method else None
        out.model[r]["rmse"] = MetricEstimate(value, lo, hi, mse.rows, mse.excluded, method, mse.undefined)
    if use.rows == 0:
        out.delta["rmse"] = PairedEstimate(None, None, None, 0, use.excluded, undefined=use.why_none())
        return
    parts = {}
    for r in ROLES:
        sq = squared[r][use.ok]
        mean = float(sq.mean())
        root = math.sqrt(mean)
        parts[r] = (root, (sq - mean) / (2 * root) if root > 0 else np.zeros(len(sq)))
    (rb, psi_b), (rc, psi_c) = parts[BASELINE], parts[CANDIDATE]
    span = REGRESSION_METRICS["rmse"].span
    out.delta["rmse"] = linearised_delta(rc - rb, rb, psi_c - psi_b, out.opts, use, span, method="delta method (t)")


def _r2(y: np.ndarray, squared: np.ndarray) -> tuple[float | None, np.ndarray, str | None]:
    """R² of rows with targets ``y`` and squared errors ``squared`` (as scikit-learn's ``r2_score``), each row's
    influence on it (the derivative with respect to the row's weight), or why it is undefined (no reason
    without rows: the rows' own reasons say why).

    With R² = 1 - mse / v, v the variance of y: influence_i = -((e_i^2 - mse) - (1 - R²) ((y_i - mean)^2 - v))
    / (n v)."""
    if len(y) == 0:
        return None, np.zeros(0), None
    centred = (y - y.mean()) ** 2
    total = float(centred.sum())
    if total == 0:
        return None, np.zeros(0), "y does not vary on these rows: r2 is undefined"
    n = len(y)
    mse, variance = float(squared.mean()), total / n
    value = 1 - mse / variance
    return value, -((squared - mse) - (1 - value) * (centred - variance)) / (n * variance), None


def _linear_replicates(value: float | None, influence: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates of a statistic from the Poisson bootstrap of its linearisation (:func:`stats.linear_bootstrap`)
    given each row's influence; none when the statistic is undefined."""
    if value is None:
        return np.zeros(0)
    return value + stats.linear_bootstrap(np.sort(influence), n_boot, rng)


def _bootstrapped(
    out: _Metrics,
    y: np.ndarray,
    absolute: dict[str, np.ndarray],
    squared: dict[str, np.ndarray],
    rows: dict[str, Usable],
) -> None:
    """median_ae (the exact bootstrap of each model's median; the paired row-level bootstrap of the delta) and
    r2 (the bootstrap of its linearisation, each model's and the delta's)."""
    opts = out.opts
    rng = stats.seeded_rng(opts.seed, "regression")
    use = rows["paired"]
    metric = {n: REGRESSION_METRICS[n] for n in ("median_ae", "r2")}
    for r in ROLES:
        ok = rows[r].ok
        x = np.sort(absolute[r][ok])
        median = float(np.median(x)) if len(x) else None
        exact = stats.quantile_bootstrap(x, 0.5, opts.n_boot, rng) if len(x) else np.zeros(0)
        out.model[r]["median_ae"] = replicate_estimate(median, exact, rows[r], opts, metric["median_ae"].bounds)
        value, influence, why = _r2(y[ok], squared[r][ok])
        reps = _linear_replicates(value, influence, opts.n_boot, rng)
        out.model[r]["r2"] = replicate_estimate(value, reps, rows[r], opts, metric["r2"].bounds, why)
    pair = {r: (absolute[r][use.ok], squared[r][use.ok]) for r in ROLES}
    medians = {r: float(np.median(pair[r][0])) if use.rows else None for r in ROLES}
    reps = (
        stats.paired_median_bootstrap(pair[BASELINE][0], pair[CANDIDATE][0], opts.n_boot, rng)
        if use.rows
        else np.zeros(0)
    )
    out.delta["median_ae"] = replicate_delta(
        medians[BASELINE], medians[CANDIDATE], reps, use, opts, metric["median_ae"].span
    )
    (vb, ib, why), (vc, ic, _) = (_r2(y[use.ok], pair[r][1]) for r in ROLES)
    delta = None if vb is None or vc is None else vc - vb
    reps = _linear_replicates(delta, ic - ib, opts.n_boot, rng)
    out.delta["r2"] = replicate_delta(vb, vc, reps, use, opts, metric["r2"].span, undefined=why)


def _intervals(
    out: _Metrics, y: np.ndarray, bounds: dict[str, tuple[np.ndarray, np.ndarray]], point: dict[str, list[Rule]]
) -> None:
    """coverage (Wilson per model; paired-t delta with the exact McNemar test) and interval_width."""
    rules: dict[str, list[Rule]] = {}
    hits: dict[str, np.ndarray] = {}
    width: dict[str, np.ndarray] = {}
    for r in ROLES:
        lo, hi = bounds[r]
        rules[r] = [
            point[r][0],
            ("interval bound is not finite", ~(np.isfinite(lo) & np.isfinite(hi))),
            ("lower bound above upper bound", lo > hi),
        ]
        hits[r] = (lo <= y) & (y <= hi)
        with np.errstate(invalid="ignore", over="ignore"):
            width[r] = hi - lo
        out.model[r]["coverage"] = proportion_estimate(hits[r], usable(rules[r], out.n), out.opts)
    use = paired_usable(rules[BASELINE], rules[CANDIDATE], out.n)
    hb, hc = hits[BASELINE][use.ok], hits[CANDIDATE][use.ok]
    p = stats.mcnemar_exact(int(np.count_nonzero(hb & ~hc)), int(np.count_nonzero(~hb & hc)))
    indicator = {r: h.astype(np.float64) for r, h in hits.items()}
    out.delta["coverage"] = mean_delta(
        indicator[BASELINE], indicator[CANDIDATE], use, out.opts, 1.0, p_value=(p, "mcnemar exact")
    )
    out.means("interval_width", width, rules)
