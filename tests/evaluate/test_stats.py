"""Statistics: parity with statsmodels/scipy/numpy, exactness of the fast bootstraps, and interval coverage."""

import numpy as np
import pytest
from scipy.stats import ks_2samp, mannwhitneyu, ttest_1samp, wilcoxon
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from workbench.evaluate import stats
from workbench.evaluate.evaluation import compare
from workbench.evaluate.metrics import binary_metrics
from workbench.evaluate.results import Options


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 1), (517, 1000), (5, 100000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels(k, n, confidence):
    lo, hi = stats.wilson(k, n, confidence)
    ref = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    assert (lo, hi) == pytest.approx(ref, abs=1e-12)


def test_wilson_without_trials_is_undefined():
    assert stats.wilson(0, 0, 0.95) is None


@pytest.mark.parametrize("b,c", [(0, 0), (0, 5), (3, 1), (10, 10), (25, 40), (1, 200)])
def test_mcnemar_matches_statsmodels_exact(b, c):
    table = [[50, b], [c, 70]]
    assert stats.mcnemar_exact(b, c) == pytest.approx(mcnemar(table, exact=True).pvalue, abs=1e-12)


MW_CASES = {
    "continuous": lambda r: (r.lognormal(1, 0.3, 400), r.lognormal(1.1, 0.3, 300)),
    "heavy_ties": lambda r: (r.integers(0, 5, 500).astype(float), r.integers(1, 6, 450).astype(float)),
    "batch_amortised": lambda r: (np.repeat(r.random(8), 64), np.repeat(r.random(8), 64)),
    "identical_constant": lambda r: (np.full(30, 2.0), np.full(40, 2.0)),
    "tiny": lambda r: (np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0, 5.0])),
    "shared_values_only_in_y": lambda r: (np.array([1.0, 1.0, 4.0]), np.array([2.0, 2.0, 2.0, 4.0, 7.0])),
}


T_CASES = {
    "normal": lambda r: r.normal(0.3, 1.0, 200),
    "skewed": lambda r: r.exponential(1.0, 50) - 0.8,
    "two_rows": lambda r: np.array([0.5, 1.5]),
}


@pytest.mark.parametrize("case", list(T_CASES))
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_t_test_matches_scipy_ttest(case, confidence):
    x = T_CASES[case](np.random.default_rng(3))
    ref = ttest_1samp(x, 0.0)
    (lo, hi), p = stats.t_test(float(x.mean()), float(x.std(ddof=1)) / np.sqrt(len(x)), len(x), confidence)
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval(confidence)), abs=1e-12)
    assert p == pytest.approx(ref.pvalue, abs=1e-12)


def test_t_test_without_variation_has_no_p_value():
    assert stats.t_test(0.2, 0.0, 10, 0.95) == ((0.2, 0.2), None)


@pytest.mark.parametrize("n", [20, 300], ids=["exact", "normal_approximation"])
def test_wilcoxon_p_matches_scipy(n):
    d = np.random.default_rng(4).normal(0.2, 1.0, n)
    assert stats.wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue, abs=1e-12)
    assert stats.wilcoxon_p(np.zeros(5)) is None


@pytest.mark.parametrize("case", list(MW_CASES))
def test_mann_whitney_matches_scipy(case):
    x, y = MW_CASES[case](np.random.default_rng(4))
    u, p = stats.mann_whitney(x, y)
    ref = mannwhitneyu(x, y, method="asymptotic")
    assert u == pytest.approx(ref.statistic, abs=1e-9)
    assert p == pytest.approx(ref.pvalue, abs=1e-12)
    assert stats.mann_whitney(np.sort(x), np.sort(y), presorted=True) == (u, p)


def test_mann_whitney_needs_two_samples():
    assert stats.mann_whitney(np.array([]), np.array([1.0])) is None


@pytest.mark.parametrize("q", [0.0, 0.5, 0.95, 0.99, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_sorted_quantile_equals_numpy(q, n):
    x = np.sort(np.random.default_rng(n).lognormal(size=n))
    assert stats.sorted_quantile(x, q) == np.quantile(x, q)


@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_quantile_bootstrap_is_the_resampling_distribution(q):
    """Order-statistic draws have the same distribution as quantiles of actual resamples."""
    rng = np.random.default_rng(9)
    x = np.sort(rng.lognormal(0, 0.5, 60))
    fast = stats.quantile_bootstrap(x, q, 20000, rng)
    slow = np.quantile(rng.choice(x, size=(20000, len(x))), q, axis=1)
    assert ks_2samp(fast, slow).statistic < 0.02
    assert fast.mean() == pytest.approx(slow.mean(), rel=0.01)


def _plain_median_deltas(b, c, replicates, r):
    """The row-level Poisson bootstrap of median(c) - median(b), expanding every resample."""
    weights = r.poisson(1.0, (replicates, len(b)))
    return np.array([np.median(np.repeat(c, w)) - np.median(np.repeat(b, w)) for w in weights])


def test_paired_median_bootstrap_is_the_row_level_bootstrap():
    """Drawn from the rows near each median (2,000 rows: windows of about 720 ranks), the replicates have the
    plain row-level bootstrap's distribution: mean, sd and tails within a few standard errors of 4,000 draws."""
    r = np.random.default_rng(22)
    b = np.abs(r.normal(0, 1, 2000))
    c = np.abs(0.7 * b + r.normal(0, 0.6, 2000))
    ours = stats.paired_median_bootstrap(b, c, 4000, np.random.default_rng(23))
    plain = _plain_median_deltas(b, c, 4000, r)
    sd = plain.std()
    assert not np.isnan(ours).any()
    assert abs(ours.mean() - plain.mean()) < 0.1 * sd
    assert ours.std() == pytest.approx(sd, rel=0.05)
    assert np.quantile(ours, [0.025, 0.975]) == pytest.approx(np.quantile(plain, [0.025, 0.975]), abs=0.15 * sd)


def test_paired_median_bootstrap_with_tied_errors():
    """Integer errors: the delta takes few values, each as often as under the plain bootstrap (within 3.5 standard
    errors of 4,000 draws)."""
    r = np.random.default_rng(24)
    b, c = r.integers(0, 5, 2000).astype(float), r.integers(0, 4, 2000).astype(float)
    ours = stats.paired_median_bootstrap(b, c, 4000, np.random.default_rng(25))
    plain = _plain_median_deltas(b, c, 4000, r)
    for value in np.union1d(ours, plain):
        assert np.mean(ours == value) == pytest.approx(np.mean(plain == value), abs=0.04), value


def test_poisson_cells_match_row_level_poisson_bootstrap():
    """The count of a cell under row-level Poisson(1) weights is Poisson(count): same mean and variance."""
    rng = np.random.default_rng(1)
    counts = np.array([40, 0, 7, 300])
    cells = stats.poisson_cells(counts, 20000, rng)
    assert cells.shape == (20000, 4) and (cells[:, 1] == 0).all()
    np.testing.assert_allclose(cells.mean(0), counts, rtol=0.02)
    np.testing.assert_allclose(cells.var(0), counts, rtol=0.05)


def test_poisson_weights_come_in_bounded_chunks():
    chunks = list(stats.poisson_weights(1000, 250, np.random.default_rng(0), max_cells=64_000))
    assert [c.shape for c in chunks] == [(64, 1000)] * 3 + [(58, 1000)]
    assert np.concatenate(chunks).mean() == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("shape", ["normal", "skewed", "constant", "two_values"])
def test_linear_bootstrap_has_the_row_level_moments(shape):
    """sum_i (w_i - 1) v_i over Poisson(1) weights has mean 0, variance sum v^2, third cumulant sum v^3."""
    rng = np.random.default_rng(6)
    v = {
        "normal": rng.standard_normal(5000),
        "skewed": rng.exponential(size=5000) ** 2,
        "constant": np.full(5000, 0.3),
        "two_values": rng.choice([0.0, 5.0], 5000, p=[0.99, 0.01]),
    }[shape]
    reps = stats.linear_bootstrap(np.sort(v), 40000, rng)
    sd = np.sqrt(np.sum(v**2))
    assert reps.mean() == pytest.approx(0, abs=0.03 * sd)
    assert reps.std() == pytest.approx(sd, rel=0.02)
    skew = np.sum(v**3) / sd**3
    assert np.mean(reps**3) / reps.std() ** 3 == pytest.approx(skew, abs=0.05 + 0.1 * abs(skew))


def test_linear_bootstrap_of_counted_values_equals_the_expanded_rows():
    rng = np.random.default_rng(12)
    values, counts = np.sort(rng.standard_normal(300)), rng.integers(0, 40, 300)
    grouped = stats.linear_bootstrap(values, 2000, np.random.default_rng(5), counts)
    expanded = stats.linear_bootstrap(np.repeat(values, counts), 2000, np.random.default_rng(5))
    np.testing.assert_allclose(grouped, expanded, rtol=1e-9, atol=1e-9)


def test_percentile_interval_and_p_value():
    reps = np.concatenate([np.linspace(-1, 3, 999), [np.nan]])
    assert stats.percentile_interval(reps, 0.9) == pytest.approx((-0.8, 2.8))
    assert stats.percentile_interval(np.array([np.nan, 1.0]), 0.95) is None
    assert stats.bootstrap_p_value(np.zeros(99)) == 1.0
    assert stats.bootstrap_p_value(np.ones(999)) == pytest.approx(2 / 1000)
    assert stats.bootstrap_p_value(np.linspace(-1, 3, 999)) == pytest.approx(2 * 251 / 1000)


def test_mde_is_z_alpha_plus_z_power_standard_errors():
    assert stats.mde(0.01, 0.95, 0.8) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-6)


# -- coverage --------------------------------------------------------------------------------------
def _population(rng, n):
    """Two correlated models of one binary outcome (the candidate separates it a little better)."""
    y = (rng.random(n) < 0.35).astype(np.int8)
    shared = rng.standard_normal(n)
    sb = 1 / (1 + np.exp(-(1.6 * y - 1.0 + 0.8 * shared + 0.6 * rng.standard_normal(n))))
    sc = 1 / (1 + np.exp(-(2.0 * y - 1.2 + 0.8 * shared + 0.5 * rng.standard_normal(n))))
    return y, {"baseline": sb, "candidate": sc}


THRESHOLDS = {"baseline": 0.5, "candidate": 0.45}
# ECE is left out: its plug-in estimate is biased upward at small n, and no interval around it covers
# the population ECE at the nominal rate (the README states the coverage we measured)
COVERED = ["accuracy", "precision", "recall", "f1", "fpr", "roc_auc", "pr_auc", "log_loss", "brier"]


@pytest.fixture(scope="module")
def truth():
    """Population values from one large seeded sample (Monte Carlo error ~1e-3, far below CI widths)."""
    y, s = _population(np.random.default_rng(123), 1_000_000)
    return {r: binary_metrics(y, s[r], THRESHOLDS[r]) for r in s}


@pytest.mark.parametrize("exact_max_rows", [10_000, 0], ids=["row_weights", "linearised"])
def test_intervals_cover_the_true_value_at_the_nominal_rate(truth, exact_max_rows):
    sims, n = 200, 250
    opts = Options(n_boot=300, exact_max_rows=exact_max_rows)
    hits = {f"{who}.{m}": 0 for who in ("baseline", "candidate", "delta") for m in COVERED}
    for i in range(sims):
        y, s = _population(np.random.default_rng(1000 + i), n)
        c = compare(y, s, THRESHOLDS, opts, key=f"sim{i}")
        assert c.method == ("rows" if exact_max_rows else "linear")
        for m in COVERED:
            for role in ("baseline", "candidate"):
                e = getattr(c, role)[m]
                hits[f"{role}.{m}"] += e.ci_low <= truth[role][m] <= e.ci_high
            d, true_delta = c.delta[m], truth["candidate"][m] - truth["baseline"][m]
            hits[f"delta.{m}"] += d.ci_low <= true_delta <= d.ci_high
    coverage = {k: v / sims for k, v in hits.items()}
    # the standard error of one coverage near 0.95 over 200 simulations is 0.015; percentile bootstrap
    # intervals run about 1 point short at this size (800 simulations: mean 0.938, AUC of the
    # candidate 0.915), which the lower bounds allow for
    assert all(0.88 <= c <= 0.99 for c in coverage.values()), coverage
    assert 0.925 <= np.mean(list(coverage.values())) <= 0.965, coverage
