"""Drift stat tests: plain functions over a column pair, each registered once in :data:`STAT_TESTS`.

Each test is a function of a :class:`workbench.drift.sketch.SqlPair` and a threshold that returns the
statistic and whether it drifted, plus a small frozen descriptor (:class:`StatTest`: name, function, default
threshold, column kinds), as Evidently 0.7 registers its legacy stat tests; names, defaults and results
follow those. :func:`default_test` picks a column's test as Evidently's ``DataDriftPreset`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workbench import WorkbenchError
from workbench.drift.sketch import SqlPair

SMALL_REFERENCE = 1000  # Evidently: p-value tests up to this many reference values
KS_EXACT_MAX_N = 10_000  # scipy's ks_2samp 'auto': exact distribution up to this sample size


def sturges_edges(lo: float, hi: float, size: int, integer: bool) -> np.ndarray:
    """``np.histogram_bin_edges(values, bins="sturges")`` from the values' min, max and count."""
    first, last = lo, hi
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = (hi - lo) / (np.log2(size) + 1.0)
    if width:
        if integer and width < 1:
            width = 1
        n = int(np.ceil((last - first) / width))
    else:
        n = 1
    return np.linspace(first, last, n + 1, endpoint=True, dtype=np.float64)


def binned_shares(pair: SqlPair, fill_zeroes: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's share per bin as Evidently's ``get_binned_data``: Sturges bins over both samples for
    numeric columns with more than 20 distinct reference values, else one bin per value; with
    ``fill_zeroes`` an empty bin gets a tiny share instead of 0."""
    if pair.kind == "numerical" and pair.ref_nunique() > 20:
        lo, hi = pair.value_range()
        ref, cur = pair.histogram(sturges_edges(lo, hi, pair.ref_n + pair.cur_n, pair.integer))
    else:
        _, ref, cur = pair.counts()
    rp, cp = ref / pair.ref_n, cur / pair.cur_n
    if fill_zeroes:
        for p in (rp, cp):
            low = p[p != 0].min()
            p[p == 0] = low / 10**6 if low <= 0.0001 else 0.0001
    return rp, cp


def ks(pair: SqlPair, threshold: float) -> tuple[float, bool]:
    """Two-sample Kolmogorov-Smirnov p-value (scipy's ``ks_2samp``, method 'auto'); drift when p <= threshold."""
    from scipy import stats  # at use: scipy takes about a second to import

    n1, n2 = pair.ref_n, pair.cur_n
    if max(n1, n2) <= KS_EXACT_MAX_N:
        p = float(stats.ks_2samp(*pair.samples()).pvalue)
    else:
        d = pair.ecdf()[0]
        m, n = sorted([float(n1), float(n2)], reverse=True)
        p = float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))
    return p, p <= threshold


def chisquare(pair: SqlPair, threshold: float) -> tuple[float, bool]:
    """Chi-squared goodness of fit of current counts to reference shares; drift when p < threshold (a value
    the reference never had gives p = 0, as in Evidently and scipy)."""
    from scipy import stats  # at use: scipy takes about a second to import

    _, ref, cur = pair.counts()
    with np.errstate(divide="ignore", invalid="ignore"):
        p = float(stats.chisquare(cur, ref * (pair.cur_n / pair.ref_n))[1])
    return p, p < threshold


def z_test(pair: SqlPair, threshold: float) -> tuple[float, bool]:
    """Two-proportion z-test on the share of the values other than the first (sorted); drift when p < threshold."""
    from scipy import stats  # at use: scipy takes about a second to import

    keys, ref, cur = pair.counts()
    if len(keys) == 1:
        return 1.0, False
    n1, n2 = pair.ref_n, pair.cur_n
    p1, p2 = float(n1 - ref[0]) / n1, float(n2 - cur[0]) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    p = float(2 * (1 - stats.norm.cdf(np.abs(z))))
    return p, p < threshold


def wasserstein(pair: SqlPair, threshold: float) -> tuple[float, bool]:
    """First Wasserstein distance divided by the reference's standard deviation (at least 0.001)."""
    w = pair.ecdf()[1] / max(pair.ref_std, 0.001)
    return w, w >= threshold


def jensenshannon(pair: SqlPair, threshold: float) -> tuple[float, bool]:
    """Jensen-Shannon distance (natural log) between binned shares."""
    from scipy.spatial import distance  # at use: scipy takes about a second to import

    rp, cp = binned_shares(pair, fill_zeroes=False)
    d = float(distance.jensenshannon(rp, cp))
    return d, d >= threshold


def psi(pair: SqlPair, threshold: float) -> tuple[float, bool]:
    """Population stability index over binned shares."""
    rp, cp = binned_shares(pair, fill_zeroes=True)
    v = float(np.sum((rp - cp) * np.log(rp / cp)))
    return v, v >= threshold


def kl_div(pair: SqlPair, threshold: float) -> tuple[float, bool]:
    """Kullback-Leibler divergence of reference from current binned shares."""
    from scipy import stats  # at use: scipy takes about a second to import

    rp, cp = binned_shares(pair, fill_zeroes=True)
    v = float(stats.entropy(rp, cp))
    return v, v >= threshold


def hellinger(pair: SqlPair, threshold: float) -> tuple[float, bool]:
    """Hellinger distance: over value shares (categorical) or Sturges density histograms (numeric)."""
    if pair.kind == "categorical":
        _, ref, cur = pair.counts()
        bc = float(np.sum(np.sqrt((ref / pair.ref_n) * (cur / pair.cur_n))))
    else:
        lo, hi = pair.value_range()
        edges = sturges_edges(lo, hi, pair.union_nunique_exact(), pair.integer)
        ref, cur = pair.histogram(edges)
        widths = np.diff(edges)
        h1, h2 = ref / widths / ref.sum(), cur / widths / cur.sum()
        bc = float(np.sum(np.sqrt(h1 * h2)) * ((edges.max() - edges.min()) / (len(edges) - 1)))
    h = float(np.sqrt(1 - np.clip(bc, 0, 1)))
    return h, h >= threshold


def energy(pair: SqlPair, threshold: float) -> tuple[float, bool]:
    """Energy distance (scipy's ``energy_distance``); drift when above the threshold."""
    v = float(np.sqrt(2.0) * np.sqrt(pair.ecdf()[2]))
    return v, v > threshold


@dataclass(frozen=True)
class StatTest:
    """A registered drift test: its function, default threshold and the column kinds it applies to."""

    name: str
    func: Callable[[SqlPair, float], tuple[float, bool]]
    default_threshold: float
    kinds: frozenset
    display: str


_BOTH = frozenset({"numerical", "categorical"})
STAT_TESTS: dict[str, StatTest] = {
    t.name: t
    for t in [
        StatTest("ks", ks, 0.05, frozenset({"numerical"}), "K-S p_value"),
        StatTest("chisquare", chisquare, 0.05, frozenset({"categorical"}), "chi-square p_value"),
        StatTest("z", z_test, 0.05, frozenset({"categorical"}), "Z-test p_value"),
        StatTest("wasserstein", wasserstein, 0.1, frozenset({"numerical"}), "Wasserstein distance (normed)"),
        StatTest("jensenshannon", jensenshannon, 0.1, _BOTH, "Jensen-Shannon distance"),
        StatTest("psi", psi, 0.1, _BOTH, "PSI"),
        StatTest("kl_div", kl_div, 0.1, _BOTH, "Kullback-Leibler divergence"),
        StatTest("hellinger", hellinger, 0.1, _BOTH, "Hellinger distance"),
        StatTest("ed", energy, 0.1, frozenset({"numerical"}), "Energy-distance"),
    ]
}


def stat_test(name: str) -> StatTest:
    """The registered test called ``name``; an unknown name is an error listing the valid ones."""
    try:
        return STAT_TESTS[name]
    except KeyError:
        raise WorkbenchError(f"unknown drift test {name!r}; valid tests: {', '.join(sorted(STAT_TESTS))}") from None


def default_test(pair: SqlPair) -> str:
    """The test Evidently's DataDriftPreset picks for this column by default (like Evidently, the default may
    apply chi-squared or the z-test to a numeric column with few values, which an explicit choice may not)."""
    if pair.ref_n <= SMALL_REFERENCE:
        if pair.kind == "numerical":
            n = pair.union_nunique(5)
            if n > 5:
                return "ks"
            return "chisquare" if n > 2 else "z"
        return "chisquare" if pair.union_nunique(2) > 2 else "z"
    if pair.kind == "numerical":
        return "jensenshannon" if pair.union_nunique(5) <= 5 else "wasserstein"
    return "jensenshannon"
