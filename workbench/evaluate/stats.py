"""Pure statistics for the evaluation: intervals, paired tests, power and vectorised bootstraps.

* :func:`wilson` — score interval of a proportion (as statsmodels' ``proportion_confint(method="wilson")``).
* :func:`mcnemar_exact` — exact McNemar test on discordant pairs (as statsmodels' ``mcnemar(exact=True)``).
* :func:`t_test` — Student-t interval and p-value of an estimate with a standard error (as scipy's
  ``ttest_1samp``/``ttest_rel`` for a mean); :func:`wilcoxon_p` — the signed-rank test of paired differences.
* :func:`mann_whitney` — two-sided Mann-Whitney U test with tie and continuity correction (as scipy's
  ``mannwhitneyu(method="asymptotic")``), from two sorted samples without ranking their union.
* :func:`poisson_cells` — Poisson bootstrap of a contingency table: the count of a cell under the
  row-level Poisson(1) bootstrap is Poisson(count), so confusion metrics are resampled exactly from
  a handful of cells.
* :func:`poisson_weights` — per-row Poisson(1) weights in chunks of replicates (bounded memory).
* :func:`linear_bootstrap` — the Poisson bootstrap of a statistic's linear (influence-function)
  approximation, sum_i (w_i - 1) psi_i, drawn from binned influence values: O(bins) per replicate
  instead of O(rows), for samples too large for row weights.
* :func:`quantile_bootstrap` — the exact bootstrap distribution of a sample quantile from order
  statistics (the k-th smallest of n resampled rows is x[ceil(n U) - 1] with U ~ Beta(k, n - k + 1)).
* :func:`paired_median_bootstrap` — the paired row-level Poisson bootstrap of a difference of medians,
  drawing weights only for the rows near either median (O(sqrt(rows)) per replicate).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import numpy as np


def _scipy_stats():
    """scipy.stats, imported at first use: the import takes about a second, and short commands (status,
    verify, listing runs) load this module through the policy without computing a statistic."""
    import scipy.stats

    return scipy.stats


def seeded_rng(seed: int, key: str) -> np.random.Generator:
    """A generator per (seed, slice): results do not depend on the order slices are computed in."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def clip_interval(ci: tuple[float, float] | None, lo: float, hi: float) -> tuple[float | None, float | None]:
    """An interval's ends clipped to ``[lo, hi]``; ``(None, None)`` without an interval."""
    if ci is None:
        return None, None
    return float(np.clip(ci[0], lo, hi)), float(np.clip(ci[1], lo, hi))


def z_value(confidence: float) -> float:
    """Two-sided standard normal quantile for a confidence level."""
    return float(_scipy_stats().norm.ppf(0.5 + confidence / 2))


def wilson(successes: int, trials: int, confidence: float) -> tuple[float, float] | None:
    """Wilson score interval of ``successes / trials``; ``None`` without trials."""
    if trials <= 0:
        return None
    z = z_value(confidence)
    p = successes / trials
    denom = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    return float(min(1.0, 2 * _scipy_stats().binom.cdf(min(b, c), b + c, 0.5)))


def t_test(estimate: float, se: float, rows: int, confidence: float) -> tuple[tuple[float, float], float | None]:
    """Student-t interval (``rows - 1`` degrees of freedom) around ``estimate`` with standard error ``se``, and
    the two-sided p-value of "the true value is 0" (``None`` when ``se`` is 0: the rows do not vary)."""
    half = float(_scipy_stats().t.ppf(0.5 + confidence / 2, rows - 1)) * se
    p = float(2 * _scipy_stats().t.sf(abs(estimate) / se, rows - 1)) if se > 0 else None
    return (estimate - half, estimate + half), p


def wilcoxon_p(differences: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy's defaults: zero differences are
    dropped); ``None`` when no difference is non-zero."""
    d = np.asarray(differences, dtype=np.float64)
    if not np.any(d != 0):
        return None
    return float(_scipy_stats().wilcoxon(d).pvalue)


def _runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs."""
    if len(x) == 0:
        return x, np.zeros(0, dtype=np.int64)
    first = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))
    return x[first], np.diff(np.append(first, len(x)))


def mann_whitney(x: np.ndarray, y: np.ndarray, *, presorted: bool = False) -> tuple[float, float] | None:
    """U statistic of ``x`` and the two-sided p-value (normal approximation with tie and continuity
    correction); ``None`` when a sample is empty. ``presorted`` skips sorting sorted samples."""
    xs = np.asarray(x, dtype=np.float64) if presorted else np.sort(np.asarray(x, dtype=np.float64))
    ys = np.asarray(y, dtype=np.float64) if presorted else np.sort(np.asarray(y, dtype=np.float64))
    n1, n2 = len(xs), len(ys)
    if n1 == 0 or n2 == 0:
        return None
    vx, cx = _runs(xs)
    below = np.searchsorted(ys, vx, side="left")
    tied_y = np.searchsorted(ys, vx, side="right") - below
    u1 = float(np.dot(cx, below) + 0.5 * np.dot(cx, tied_y))
    # tie groups of the union: x values (with their copies in y), then y values absent from x
    _, cy = _runs(ys)
    t_x = (cx + tied_y).astype(np.float64)
    t_y, shared = cy.astype(np.float64), tied_y.astype(np.float64)
    ties = float(np.sum(t_x**3 - t_x) + np.sum(t_y**3 - t_y) - np.sum(shared**3 - shared))
    n = n1 + n2
    mu = n1 * n2 / 2
    s = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))) if n > 1 else 0.0
    u = max(u1, n1 * n2 - u1)
    if s == 0:
        return u1, 1.0
    z = (u - mu - 0.5) / s
    return u1, float(np.clip(2 * _scipy_stats().norm.sf(z), 0.0, 1.0))


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """Percentile interval over the defined (finite) replicates; ``None`` with fewer than two."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return None
    alpha = 1 - confidence
    lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_p_value(replicates: np.ndarray) -> float | None:
    """Two-sided p-value of "no difference" from replicates of a delta: twice the smaller share of
    replicates on either side of 0, with the (k + 1) / (B + 1) correction (never exactly 0)."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return None
    tail = min(int(np.count_nonzero(r <= 0)), int(np.count_nonzero(r >= 0)))
    return float(min(1.0, 2 * (tail + 1) / (len(r) + 1)))


def mde(standard_error: float, confidence: float, power: float) -> float:
    """Minimum detectable effect of a two-sided test at level 1 - confidence with the given power."""
    return float((z_value(confidence) + _scipy_stats().norm.ppf(power)) * standard_error)


def poisson_cells(counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates ``(n_boot, cells)`` of a contingency table under the Poisson bootstrap."""
    return rng.poisson(np.asarray(counts, dtype=np.float64), size=(n_boot, len(counts))).astype(np.float64)


_POISSON_MAX = 12
#: P(Poisson(1) <= k) * 2**32 for k = 0..11: inverse-CDF thresholds on 32-bit uniforms
_POISSON_CDF = (
    np.floor(np.cumsum([math.exp(-1) / math.factorial(k) for k in range(_POISSON_MAX)]) * 2.0**32)
    .astype(np.uint64)
    .astype(np.uint32)
)


def poisson_weights(rows: int, n_boot: int, rng: np.random.Generator, max_cells: int = 1 << 22) -> Iterator[np.ndarray]:
    """Row-level Poisson(1) weights (float32) for ``n_boot`` replicates, in chunks of at most ``max_cells``.

    Drawn by inverse CDF from 32-bit uniforms, capped at 12 (P(Poisson(1) > 12) < 1e-10): the
    probabilities are Poisson's to within 2**-32, about six times faster than ``rng.poisson``.
    """
    per_chunk = max(1, max_cells // max(rows, 1))
    for start in range(0, n_boot, per_chunk):
        u = rng.integers(0, 2**32, size=(min(per_chunk, n_boot - start), rows), dtype=np.uint32)
        w = np.zeros(u.shape, dtype=np.uint8)
        for threshold in _POISSON_CDF:
            w += u >= threshold
        yield w.astype(np.float32)


def linear_bootstrap(
    sorted_values: np.ndarray, n_boot: int, rng: np.random.Generator, counts: np.ndarray | None = None, bins: int = 128
) -> np.ndarray:
    """Replicates of sum_i (w_i - 1) v_i for Poisson(1) row weights w_i, from the rows' sorted values
    (value ``sorted_values[j]`` held by ``counts[j]`` rows; one row each without ``counts``).

    The values are cut into ``bins`` equal-width bins: each bin contributes its mean x (Poisson(rows)
    - rows), which keeps the skew of the tails, and a normal term carries the within-bin variance, so
    the replicates' variance matches the row-level bootstrap's. Poisson counts of fewer than 10 rows
    are drawn exactly; larger ones from their Cornish-Fisher expansion sqrt(r) z + (z^2 - 1) / 6, which
    has the Poisson's mean, skew and (within 1/18) variance at a fraction of the cost. Sorted input
    makes each bin a run (two passes over the values) and the sums reproducible bit for bit.
    """
    v = np.asarray(sorted_values, dtype=np.float64)
    c = None if counts is None else np.asarray(counts, dtype=np.float64)
    if len(v) == 0 or (c is not None and c.sum() == 0):
        return np.zeros(n_boot)
    lo, hi = float(v[0]), float(v[-1])
    edges = np.searchsorted(v, lo + (hi - lo) * np.arange(1, bins) / bins) if hi > lo else np.zeros(0, np.int64)
    bounds = np.unique(np.concatenate(([0], edges, [len(v)])))
    if c is None:
        weighted, rows = v, np.diff(bounds).astype(np.float64)
    else:
        weighted, rows = c * v, np.diff(_cumsum0(c)[bounds])
    sums = np.diff(_cumsum0(weighted)[bounds])
    used = rows > 0
    rows, sums = rows[used], sums[used]
    means = sums / rows
    within = max(0.0, float(np.einsum("i,i->", weighted, v)) - float(np.einsum("i,i->", sums, means)))
    small = rows < 10
    poisson = rng.poisson(rows[small], size=(n_boot, int(small.sum()))) - rows[small]
    z = rng.standard_normal((n_boot, int((~small).sum())))
    skew = z * z  # the Cornish-Fisher terms sqrt(r) z + (z^2 - 1) / 6, in place
    skew -= 1
    skew /= 6
    z *= np.sqrt(rows[~small])
    z += skew
    out = np.einsum("ij,j->i", poisson, means[small]) + np.einsum("ij,j->i", z, means[~small])
    return out + math.sqrt(within) * rng.standard_normal(n_boot)


def _cumsum0(x: np.ndarray) -> np.ndarray:
    """Cumulative sums with a leading 0, in one array."""
    out = np.empty(len(x) + 1)
    out[0] = 0.0
    np.cumsum(x, out=out[1:])
    return out


def sorted_quantile(sorted_x: np.ndarray, q: float) -> float:
    """``np.quantile(x, q)`` (linear interpolation, same rounding) of an already sorted sample."""
    n = len(sorted_x)
    h = (n - 1) * q
    k = min(int(math.floor(h)), n - 1)
    return float(_lerp(sorted_x[k], sorted_x[min(k + 1, n - 1)], h - k))


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """numpy's interpolation between neighbouring order statistics (exact at both ends)."""
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


def quantile_bootstrap(sorted_x: np.ndarray, q: float, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates of ``np.quantile(resample, q)`` for resamples of a sorted sample, drawn exactly from
    the distribution of the resample's order statistics."""
    x = np.asarray(sorted_x, dtype=np.float64)
    n = len(x)
    h = (n - 1) * q
    k = int(math.floor(h))
    frac = h - k

    def at(u: np.ndarray) -> np.ndarray:
        return x[np.clip(np.ceil(n * u).astype(np.int64) - 1, 0, n - 1)]

    u1 = rng.beta(k + 1, n - k, size=n_boot)
    low = at(u1)
    if frac == 0 or k + 1 >= n:
        return low
    u2 = u1 + (1 - u1) * rng.beta(1, n - k - 1, size=n_boot)
    return _lerp(low, at(u2), frac)


def _resampled_medians(sorted_x: np.ndarray, w: np.ndarray, below: np.ndarray, total: np.ndarray) -> np.ndarray:
    """``np.median`` of each resample (a row of ``w``) that holds ``below`` rows under the sorted window
    ``sorted_x``, ``w[i, j]`` copies of ``sorted_x[j]`` and ``total`` rows in all; NaN when the resample is
    empty or its median falls outside the window."""
    cum = below[:, None] + np.cumsum(w, axis=1, dtype=np.float64)
    half = (total - 1) / 2
    low = np.floor(half)
    last = len(sorted_x) - 1
    i = (cum <= low[:, None]).sum(axis=1)  # window positions of the order statistics low and low + 1
    j = (cum <= low[:, None] + 1).sum(axis=1)
    odd = half == low
    out = np.where(
        odd, sorted_x[np.minimum(i, last)], (sorted_x[np.minimum(i, last)] + sorted_x[np.minimum(j, last)]) / 2
    )
    out[(total == 0) | (low < below) | (i > last) | (~odd & (j > last))] = np.nan
    return out


def paired_median_bootstrap(base: np.ndarray, cand: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates of median(cand) - median(base) under the row-level Poisson(1) bootstrap of paired rows (one
    weight for a row's two values).

    A resample's median lies within 8 sqrt(n) ranks of the sample's (its rank varies by about sqrt(n) / 2), so
    only rows within that window of either median get a weight of their own; the others enter through four
    Poisson counts (below or above each window). The replicates are the row-level bootstrap's, at
    O(sqrt(n)) per replicate; one whose median leaves a window (probability far below 1e-12) is NaN."""
    n = len(base)
    width = math.ceil(8 * math.sqrt(n))
    zone = {}
    for name, x in (("base", base), ("cand", cand)):
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(x, kind="stable")] = np.arange(n)
        zone[name] = np.where(rank < n // 2 - width, -1, np.where(rank > n // 2 + width, 1, 0))
    own = (zone["base"] == 0) | (zone["cand"] == 0)
    # rows outside both windows, by side: (below, below), (below, above), (above, below), (above, above)
    corners = [
        int(np.count_nonzero(~own & (zone["base"] == zb) & (zone["cand"] == zc))) for zb in (-1, 1) for zc in (-1, 1)
    ]
    # per sample: its window rows in value order, the own-weight rows below its window, the corners below it
    parts = {}
    for name, x, corners_below in (("base", base, [0, 1]), ("cand", cand, [0, 2])):
        inside = np.flatnonzero(zone[name][own] == 0)
        inside = inside[np.argsort(x[own][inside], kind="stable")]
        parts[name] = (x[own][inside], inside, zone[name][own] == -1, corners_below)
    out = []
    for w in poisson_weights(int(own.sum()), n_boot, rng):
        counts = rng.poisson(np.asarray(corners, dtype=np.float64), size=(len(w), 4))
        total = w.sum(axis=1, dtype=np.float64) + counts.sum(axis=1)
        medians = {}
        for name, (sorted_x, inside, lower, below_corners) in parts.items():
            below = w[:, lower].sum(axis=1, dtype=np.float64) + counts[:, below_corners].sum(axis=1)
            medians[name] = _resampled_medians(sorted_x, w[:, inside], below, total)
        out.append(medians["cand"] - medians["base"])
    return np.concatenate(out) if out else np.zeros(0)
