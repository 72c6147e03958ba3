"""Anytime-valid intervals: bounds for a paired delta that stay valid however often ``decide`` looks.

A fixed-horizon 95 % interval misses the truth with probability 5 % when it is computed once; computed
after every slice of new traffic, the chance that it misses at *some* look grows with the number of
looks. A confidence sequence (CS) is a sequence of intervals C_1, C_2, ... with

    P(there is a t at which the true mean is outside C_t) <= alpha,

so a job may judge it after every row, every batch or every hour, and stop whenever it likes.

This module implements the *asymptotic* confidence sequences of Waudby-Smith, Arbour, Sinha, Kennedy
and Ramdas ("Time-uniform central limit theory and asymptotic confidence sequences", 2021, Annals of
Statistics 2024): the running mean of i.i.d. observations plus or minus the running standard deviation
times Robbins' normal-mixture boundary,

    mean_t +- sd_t * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) ),

where ``sd_t`` is the empirical standard deviation of the first t observations (divisor t). It is the
CLT analogue of the fixed-horizon interval mean_t +- z * sd_t / sqrt(t): valid as t grows (the
probability of a miss at any look after the first m rows tends to at most alpha as m grows), not an
exact finite-sample guarantee, and no more assumption-free than the intervals it replaces. The
normal-mixture boundary is the one in Howard, Ramdas, McAuliffe and Sekhon ("Time-uniform,
nonparametric, nonasymptotic confidence sequences", Annals of Statistics 2021); the numbers here match
their reference implementation (the ``confseq`` package's ``normal_mixture_bound``) to 1e-9.

``rho`` sets where the sequence is tightest: :func:`optimal_rho` minimises the half-width at a planned
number of rows ``t_star`` (the policy's planned labelled rows). Any ``rho`` gives a valid sequence; a
poor one only costs width away from ``t_star``.

For metrics that are not plain means (f1, precision, roc_auc, ...), the delta method linearises the
metric: metric(sample) - metric(population) ~ mean_i psi_i, with psi_i the row's influence (mean zero
over the sample). :func:`paired_delta_cs` centres the interval on the plug-in delta candidate -
baseline and takes its half-width from the CS of the paired influence differences psi_cand_i -
psi_base_i. This adds one more asymptotic step (the linearisation), as the bootstrap intervals of the
fixed-horizon evaluation do.

Functions:

* :func:`optimal_rho` — the mixing parameter that minimises the half-width at ``t_star`` rows.
* :func:`cs_radius` — the unit-variance half-width at t rows (two-sided, or one-sided).
* :func:`running_cs` — running mean and half-width at every prefix of an array (vectorised).
* :func:`mean_cs` — the CS of a mean at the current number of rows, as a :class:`SequentialInterval`.
* :func:`confusion_influence` — each confusion cell's influence on accuracy, precision, recall, f1, fpr, fnr.
* :func:`row_influence` — each row's influence on any registered binary metric.
* :func:`paired_delta_cs` — the CS of a paired metric delta candidate - baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from workbench.evaluate.metrics import METRICS, Confusion, Grouping, grouping


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


# -- the boundary ----------------------------------------------------------------------------------
def optimal_rho(t_star: float, alpha: float, *, one_sided: bool = False) -> float:
    """The mixing parameter rho whose two-sided level-``alpha`` CS is narrowest after ``t_star`` rows.

    With x = t* rho^2 + 1 the squared half-width is proportional to x / (x - 1) * (log x - 2 log alpha);
    it is smallest where x - log x = 1 - 2 log alpha, that is x = -W_{-1}(-alpha^2 / e) (W_{-1}: the
    lower branch of the Lambert W function), so rho^2 = (x - 1) / t*. The closed form of
    Waudby-Smith et al. and of ``confseq``, rho^2 = (-2 log alpha + log(1 - 2 log alpha)) / t*, is the
    first terms of W_{-1}'s asymptotic expansion of the same minimiser.

    ``one_sided`` tunes for the one-sided boundary the way ``confseq`` does: the one-sided bound at
    alpha is close to the two-sided one at 2 alpha, so this returns the two-sided optimum at 2 alpha
    (its one-sided width at ``t_star`` is within 0.001 % of the minimum at alpha = 0.01 and 0.05).
    """
    _check_alpha(alpha)
    if not t_star > 0:
        raise ValueError(f"t_star must be positive, got {t_star}")
    a = min(2 * alpha, 1 - 1e-12) if one_sided else alpha
    from scipy.special import lambertw  # at use: see stats._scipy_stats

    x = -lambertw(-a * a / math.e, k=-1).real
    return math.sqrt((x - 1) / t_star)


def cs_radius(t: Any, alpha: float, rho: float, *, one_sided: bool = False) -> np.ndarray:
    """Half-width of the level-``alpha`` CS for the mean of unit-variance observations after ``t`` rows.

    Two-sided (Robbins' normal mixture, lambda ~ N(0, rho^2)):
    sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha)).

    One-sided (the half-normal mixture, lambda >= 0): s / t, where s solves
    2 / sqrt(1 + rho^2 t) * exp(rho^2 s^2 / (2 (1 + rho^2 t))) * Phi(rho s / sqrt(1 + rho^2 t)) = 1 / alpha.
    In u = rho s / sqrt(1 + rho^2 t) that is u^2 / 2 + log Phi(u) = log(sqrt(1 + rho^2 t) / (2 alpha)),
    whose left side is increasing and convex: Newton's method from the right converges monotonically.

    Multiply by the standard deviation for the half-width of a mean. ``t`` may be an array.
    """
    _check_alpha(alpha)
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    t = np.asarray(t, dtype=np.float64)
    x = t * rho * rho + 1
    if not one_sided:
        with np.errstate(divide="ignore"):
            return np.sqrt(2 * x / (t * t * rho * rho) * (0.5 * np.log(x) - math.log(alpha)))
    from scipy.special import log_ndtr  # at use: see stats._scipy_stats

    c = 0.5 * np.log(x) - math.log(2 * alpha)
    u = np.sqrt(2 * (c + math.log(2)))  # g(u) >= c here, since log Phi(u) >= -log 2 for u >= 0
    for _ in range(100):
        log_phi = log_ndtr(u)
        step = (0.5 * u * u + log_phi - c) / (u + np.exp(-0.5 * u * u - 0.5 * math.log(2 * math.pi) - log_phi))
        u = u - step
        if np.all(np.abs(step) <= 1e-15 * np.maximum(1.0, np.abs(u))):
            break
    with np.errstate(divide="ignore"):
        return u * np.sqrt(x) / (rho * t)


# -- means -----------------------------------------------------------------------------------------
def running_cs(
    x: np.ndarray, alpha: float, t_star: float, *, one_sided: bool = False, rho: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Running mean and CS half-width after each prefix of ``x`` along its last axis (one row per
    column; leading axes are independent sequences, e.g. simulation trials).

    The half-width is sd_t * :func:`cs_radius` (t) with sd_t the standard deviation of the first t
    values (divisor t); it is infinite for t = 1. ``rho`` defaults to :func:`optimal_rho` (t_star).
    """
    x = np.asarray(x, dtype=np.float64)
    rho = optimal_rho(t_star, alpha, one_sided=one_sided) if rho is None else rho
    t = np.arange(1, x.shape[-1] + 1, dtype=np.float64)
    shifted = x - x[..., :1]  # a causal shift keeps sum-of-squares variances accurate
    mean_shift = np.cumsum(shifted, axis=-1) / t
    variance = np.cumsum(shifted * shifted, axis=-1) / t - mean_shift * mean_shift
    radius = np.sqrt(np.maximum(variance, 0.0)) * cs_radius(t, alpha, rho, one_sided=one_sided)
    if x.shape[-1]:
        radius[..., 0] = np.inf
    return mean_shift + x[..., :1], radius


@dataclass(frozen=True)
class SequentialInterval:
    """An anytime-valid interval at the current number of rows.

    Two-sided: P(the true value is outside [lower, upper] at any look) <= alpha, asymptotically.
    One-sided (``one_sided``): ``lower`` alone and ``upper`` alone are each anytime-valid at level
    alpha, P(true < lower at any look) <= alpha and P(true > upper at any look) <= alpha; use the one the
    question needs (a non-inferiority gate: the bound on the bad side), not both as an interval.
    """

    estimate: float
    lower: float
    upper: float
    radius: float
    rows: int
    alpha: float
    rho: float
    one_sided: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain values; an infinite bound (too few rows to say anything) is ``None``."""
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


def _interval(
    estimate: float, sd: float, rows: int, alpha: float, t_star: float, one_sided: bool, span: float = math.inf
) -> SequentialInterval:
    rho = optimal_rho(t_star, alpha, one_sided=one_sided)
    radius = float(sd * cs_radius(rows, alpha, rho, one_sided=one_sided)) if rows >= 2 else math.inf
    lower, upper = max(estimate - radius, -span), min(estimate + radius, span)
    return SequentialInterval(estimate, lower, upper, radius, rows, alpha, rho, one_sided)


def mean_cs(x: np.ndarray, alpha: float, t_star: float, *, one_sided: bool = False) -> SequentialInterval:
    """The CS of the mean of ``x`` (1-D, i.i.d. rows) after all of its rows; ``rho`` tuned to ``t_star``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("mean_cs needs a non-empty 1-D array")
    return _interval(float(x.mean()), float(x.std()), len(x), alpha, t_star, one_sided)


# -- influence functions ---------------------------------------------------------------------------
#: Each confusion metric as sum_c num_c N_c / sum_c den_c N_c over the cells (tp, fp, tn, fn).
_RATIOS: dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] = {
    "accuracy": ((1, 0, 1, 0), (1, 1, 1, 1)),
    "precision": ((1, 0, 0, 0), (1, 1, 0, 0)),
    "recall": ((1, 0, 0, 0), (1, 0, 0, 1)),
    "f1": ((2, 0, 0, 0), (2, 1, 0, 1)),
    "fpr": ((0, 1, 0, 0), (0, 1, 1, 0)),
    "fnr": ((0, 0, 0, 1), (1, 0, 0, 1)),
}


def confusion_influence(name: str, c: Confusion) -> tuple[Any, Any, Any, Any]:
    """The influence of one row of each cell (tp, fp, tn, fn) on confusion metric ``name``.

    Each metric is a ratio m = sum_i n_i / sum_i d_i of per-row numerator and denominator terms (f1:
    n_i = 2 [TP_i], d_i = 2 [TP_i] + [FP_i] + [FN_i]), so psi_i = (n_i - m d_i) / mean(d): the
    derivative of m with respect to row i's weight, times the number of rows. The influences average
    to 0 over the rows, and var(psi) / rows is the delta-method variance of m (for the proportions
    exactly the binomial p (1 - p) / trials). Counts may be arrays (one entry per replicate); cells of
    an undefined metric (zero denominator) are NaN.
    """
    if name not in _RATIOS:
        raise ValueError(f"{name!r} is not a confusion metric; choose one of {sorted(_RATIOS)}")
    num, den = _RATIOS[name]
    counts = [np.asarray(x, dtype=np.float64) for x in (c.tp, c.fp, c.tn, c.fn)]
    n = sum(counts)
    total_den = sum(d * k for d, k in zip(den, counts, strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = sum(a * k for a, k in zip(num, counts, strict=True)) / total_den
        share = np.where(total_den > 0, total_den / np.where(n > 0, n, 1.0), np.nan)
        tp, fp, tn, fn = ((a - value * d) / share for a, d in zip(num, den, strict=True))
    return _finish(tp), _finish(fp), _finish(tn), _finish(fn)


def _finish(x: np.ndarray) -> Any:
    """A 0-d value becomes a float (NaN when undefined); arrays stay arrays."""
    return float(x) if np.ndim(x) == 0 else x


def _binary(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or y.shape != score.shape:
        raise ValueError(f"labels and scores must be 1-D arrays of one length, got {y.shape} and {score.shape}")
    if not np.isfinite(score).all():
        raise ValueError("scores must be finite: pass only the rows the model scored")
    y = y.astype(np.int64, copy=False)
    if len(y) and (y.min() < 0 or y.max() > 1):
        raise ValueError("labels must be 0 or 1")
    return y, score


def _metric(name: str) -> Any:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {sorted(METRICS)}")
    return METRICS[name]


def row_influence(name: str, y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Each row's influence psi_i on metric ``name`` (any of ``METRICS``) for one model: the derivative
    of the metric with respect to the row's weight, times the number of rows (so mean(psi) = 0 and the
    metric's delta-method variance is var(psi) / rows). Confusion metrics use the class
    ``score >= threshold``; score metrics use the per-group influence functions of
    :mod:`workbench.evaluate.metrics` (DeLong's placements for roc_auc, ...). NaN where the metric is
    undefined on these rows."""
    m = _metric(name)
    y, score = _binary(y, score)
    return _value_and_influence(m, y, score, threshold)[1]


def _value_and_influence(
    m: Any, y: np.ndarray, score: np.ndarray, threshold: float, g: Grouping | None = None
) -> tuple[float | None, np.ndarray]:
    """The metric's plug-in value (``None`` when undefined) and each row's influence (``g``: the rows' score
    grouping when the caller has it)."""
    if not m.from_scores:
        pred = (score >= threshold).astype(np.int64)
        cell = 2 * y + pred  # tn (0), fp (1), fn (2), tp (3)
        counts = np.bincount(cell, minlength=4)
        c = Confusion(tp=int(counts[3]), fp=int(counts[1]), tn=int(counts[0]), fn=int(counts[2]))
        tp, fp, tn, fn = confusion_influence(m.name, c)
        return m.compute(c), np.array([tn, fp, fn, tp])[cell]
    if m.influence is None:
        raise ValueError(f"score metric {m.name!r} has no influence function")
    g = grouping(y, score) if g is None else g
    groups = g.weigh()
    value = m.compute(groups)
    if value is None:
        return None, np.full(len(y), np.nan)
    pos, neg = m.influence(groups)
    sizes = np.diff(np.append(g.starts, g.rows))
    group = np.repeat(np.arange(len(g.score)), sizes)
    sorted_psi = np.where(g.y_sorted.astype(bool), np.asarray(pos)[group], np.asarray(neg)[group]) * len(y)
    out = np.empty(len(y))
    out[g.order] = sorted_psi
    return value, out


def paired_delta_cs(
    name: str,
    y: np.ndarray,
    baseline_score: np.ndarray,
    candidate_score: np.ndarray,
    *,
    alpha: float,
    t_star: float,
    thresholds: tuple[float, float] = (0.5, 0.5),
    one_sided: bool = False,
) -> SequentialInterval | None:
    """Anytime-valid interval for metric(candidate) - metric(baseline) on the same labelled rows.

    Centre: the plug-in delta. Half-width: the CS of the paired influence differences
    psi_cand_i - psi_base_i at the current number of rows (sd of the differences x :func:`cs_radius`),
    with rho tuned to ``t_star`` (the planned labelled rows). Asymptotic twice over (the delta method
    and the CLT behind the CS), like the fixed-horizon intervals it replaces: as the rows grow,
    P(the true delta is outside the interval at any look) <= alpha. Pass only rows both models scored,
    labels 0/1; ``thresholds`` (baseline, candidate) make the classes of the confusion metrics.
    Bounds are clipped to the range a delta of the metric can take. ``None`` when the metric is
    undefined for either model on these rows (see :func:`~workbench.evaluate.metrics.undefined_reason`).
    """
    parts = paired_parts(name, y, baseline_score, candidate_score, thresholds)
    if parts is None:
        return None
    sd = float(parts.psi_delta.std())
    return _interval(parts.delta, sd, len(parts.psi_delta), alpha, t_star, one_sided, parts.span)


# -- what a decision judges ------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedParts:
    """Both models' plug-in values of one metric on the same rows and each row's paired influence
    difference psi_cand_i - psi_base_i (the delta's linearisation); its sd sets the bounds' width."""

    baseline: float
    candidate: float
    psi_candidate: np.ndarray
    psi_delta: np.ndarray
    span: float  # the range a delta of the metric can take (bounds are clipped to it)

    @property
    def delta(self) -> float:
        return self.candidate - self.baseline


def paired_parts(
    name: str,
    y: np.ndarray,
    baseline_score: np.ndarray,
    candidate_score: np.ndarray,
    thresholds: tuple[float, float],
    groupings: tuple[Grouping, Grouping] | None = None,
) -> PairedParts | None:
    """:class:`PairedParts` of metric ``name`` on labelled rows both models scored; ``None`` when the metric
    is undefined for either model on these rows (or there are none). ``groupings``: both models' score
    groupings of these rows (:meth:`~workbench.evaluate.metrics.Grouping.restrict` of a larger sample's
    saves sorting them again), used by the score metrics."""
    m = _metric(name)
    y, base = _binary(y, baseline_score)
    _, cand = _binary(y, candidate_score)
    if len(y) == 0:
        return None
    g_base, g_cand = groupings if groupings is not None else (None, None)
    value_base, psi_base = _value_and_influence(m, y, base, thresholds[0], g_base)
    value_cand, psi_cand = _value_and_influence(m, y, cand, thresholds[1], g_cand)
    if value_base is None or value_cand is None:
        return None
    lo, hi = m.bounds
    return PairedParts(float(value_base), float(value_cand), psi_cand, psi_cand - psi_base, hi - lo)


def one_sided_bounds(
    estimate: float, sd: float, rows: int, alpha: float, t_star: float, span: float = math.inf
) -> tuple[float, float]:
    """(lower, upper): each an anytime-valid one-sided bound at level ``alpha`` for a mean (or a linearised
    metric) with per-row standard deviation ``sd`` after ``rows`` rows; infinite below 2 rows."""
    s = _interval(estimate, sd, rows, alpha, t_star, True, span)
    return s.lower, s.upper


def rows_to_settle(gap: float, sd: float, alpha: float, t_star: float, limit: float = 1e9) -> int | None:
    """The fewest rows at which a one-sided level-``alpha`` bound is narrower than ``gap`` (the distance
    between the estimate and the bound a gate asks for), if the estimate and sd stayed as they are;
    ``None`` when ``gap`` is not positive or more than ``limit`` rows would be needed."""
    if not gap > 0 or not sd > 0 or not math.isfinite(sd):
        return None if not gap > 0 else 2
    rho = optimal_rho(t_star, alpha, one_sided=True)
    return _fewest_rows(lambda t: bool(sd * cs_radius(t, alpha, rho, one_sided=True) < gap), limit)


def _fewest_rows(settled: Callable[[float], bool], limit: float) -> int | None:
    """The fewest rows (to 0.1 %) at which ``settled`` turns true, by doubling then bisection; ``settled`` must
    stay true once it is; ``None`` past ``limit``."""
    hi = 2.0
    while not settled(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi / 2
    while hi - lo > max(1.0, 0.001 * hi):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if settled(mid) else (mid, hi)
    return int(math.ceil(hi))


def proportion_bounds(count: int, rows: int, alpha: float, t_star: float) -> tuple[float, float]:
    """Anytime-valid one-sided bounds (each at level ``alpha``) for a proportion: the Wilson score form with
    z replaced by sqrt(t) x :func:`cs_radius` (t), so no errors in t rows still gives a positive upper bound."""
    if rows <= 0:
        return 0.0, 1.0
    rho = optimal_rho(t_star, alpha, one_sided=True)
    z = math.sqrt(rows) * float(cs_radius(rows, alpha, rho, one_sided=True))
    p, z2 = count / rows, z * z
    centre = (p + z2 / (2 * rows)) / (1 + z2 / rows)
    half = z * math.sqrt(p * (1 - p) / rows + z2 / (4 * rows * rows)) / (1 + z2 / rows)
    return max(0.0, centre - half), min(1.0, centre + half)


def quantile_bounds(x: np.ndarray, q: float, alpha: float, t_star: float) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the ``q`` quantile of ``x``: the order statistics at q -+ eps, eps the
    anytime-valid one-sided bound on the proportion of rows at or below the quantile (sd sqrt(q (1 - q)));
    an end beyond the sample is infinite."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = len(x)
    if n == 0:
        return math.nan, -math.inf, math.inf
    estimate = float(np.quantile(x, q))
    if n < 2:
        return estimate, -math.inf, math.inf
    rho = optimal_rho(t_star, alpha, one_sided=True)
    eps = math.sqrt(q * (1 - q)) * float(cs_radius(n, alpha, rho, one_sided=True))
    lo_i, hi_i = math.floor((q - eps) * n), math.ceil((q + eps) * n) - 1
    lower = float(x[lo_i]) if lo_i >= 0 else -math.inf
    upper = float(x[hi_i]) if hi_i < n else math.inf
    return estimate, lower, upper


def proportion_rows_to_settle(rate: float, bound: float, alpha: float, t_star: float, limit: float = 1e9) -> int | None:
    """The fewest rows at which :func:`proportion_bounds` puts a proportion observed at ``rate`` wholly on one
    side of ``bound`` (below it when ``rate < bound``, above it otherwise); ``None`` past ``limit`` rows or
    when ``rate`` equals ``bound``."""
    if rate == bound:
        return None

    def settled(n: float) -> bool:
        lo, hi = proportion_bounds(int(round(rate * n)), int(n), alpha, t_star)
        return hi <= bound if rate < bound else lo > bound

    return _fewest_rows(settled, limit)
