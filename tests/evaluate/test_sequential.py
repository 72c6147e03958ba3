"""Anytime-valid intervals: the boundary against confseq's reference implementation and the mixture it
comes from, time-uniform coverage by simulation (against the fixed-horizon interval judged at every
look), and the influence functions against finite differences, statsmodels and the bootstrap."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from workbench.evaluate import metrics, stats
from workbench.evaluate.sequential import (
    SequentialInterval,
    confusion_influence,
    cs_radius,
    mean_cs,
    optimal_rho,
    paired_delta_cs,
    row_influence,
    running_cs,
)

# -- the boundary ----------------------------------------------------------------------------------
# Reference values from confseq (github gostevehoward/confseq, commit 70b1ef3,
# src/confseq/uniform_boundaries.h), compiled against Boost 1.74 and printed with %.17g:
# normal_mixture_bound(v, alpha, v_opt, alpha_opt=alpha, is_one_sided) is the bound on a sum of v
# unit-variance observations, and confseq's mixture parameter r (TwoSidedNormalMixture::best_rho and
# OneSidedNormalMixture::best_rho) is 1 / rho^2 in the paper's notation.
# (alpha, v_opt, v, one_sided, r, bound)
CONFSEQ = [
    (0.05, 10000, 10, False, 1260.056097925634, 87.289951654107313),
    (0.05, 10000, 1000, False, 1260.056097925634, 121.90753146341501),
    (0.05, 10000, 123456, False, 1260.056097925634, 1149.0376666859202),
    (0.05, 10000, 1000, True, 1580.063490685053, 114.92681796261195),
    (0.05, 10000, 123456, True, 1580.063490685053, 1059.5771969575776),
    (0.05, 50000, 10000, False, 6300.2804896281705, 336.38877257827812),
    (0.05, 50000, 10000, True, 7900.3174534252648, 312.13524976877238),
    (0.01, 50000, 10000, False, 4335.1067552984869, 386.23244669773891),
    (0.01, 50000, 10000, True, 4999.2368629536522, 365.89178715900061),
    (0.1, 10000, 10, False, 1580.063490685053, 85.630278283338527),
    (0.1, 10000, 10, True, 2146.6392796716063, 84.28865867528657),
]


def _ref_id(case):
    alpha, v_opt, v, one_sided, _, _ = case
    return f"alpha{alpha}-opt{v_opt}-v{v}-{'one' if one_sided else 'two'}_sided"


@pytest.mark.parametrize("case", CONFSEQ, ids=_ref_id)
def test_boundary_matches_confseq(case):
    alpha, v_opt, v, one_sided, r, bound = case
    rho = 1 / math.sqrt(r)
    assert float(cs_radius(v, alpha, rho, one_sided=one_sided)) * v == pytest.approx(bound, rel=1e-9)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("one_sided", [False, True], ids=["two_sided", "one_sided"])
def test_confseq_rho_is_the_papers_closed_form_and_optimal_rho_is_narrower(alpha, one_sided):
    t_star = 10000
    a = 2 * alpha if one_sided else alpha
    closed_form = math.sqrt((-2 * math.log(a) + math.log(1 - 2 * math.log(a))) / t_star)
    r = {c[0]: c[4] for c in CONFSEQ if c[1] == t_star and c[3] == one_sided}.get(alpha)
    if r is not None:
        assert closed_form == pytest.approx(1 / math.sqrt(r), rel=1e-12)
    rho = optimal_rho(t_star, alpha, one_sided=one_sided)
    assert rho == pytest.approx(closed_form, rel=0.05)
    width = float(cs_radius(t_star, alpha, rho, one_sided=one_sided))
    assert width <= float(cs_radius(t_star, alpha, closed_form, one_sided=one_sided))
    # a local minimum of the width at t_star (exact for two-sided, the 2 alpha tuning for one-sided)
    for factor in (0.97, 1.03):
        assert width <= float(cs_radius(t_star, alpha, rho * factor, one_sided=one_sided)) * (1 + 1e-6)


@pytest.mark.parametrize("one_sided", [False, True], ids=["two_sided", "one_sided"])
@pytest.mark.parametrize("t", [3, 400, 25000])
def test_boundary_is_where_the_mixture_martingale_reaches_one_over_alpha(one_sided, t):
    """Independently of the closed forms: the normal mixture (one-sided: half-normal) of
    exp(lambda s - lambda^2 t / 2) over lambda ~ N(0, rho^2) equals 1 / alpha at s = t x radius."""
    alpha, rho = 0.05, optimal_rho(5000, 0.05)
    s = t * float(cs_radius(t, alpha, rho, one_sided=one_sided))
    density = (lambda lam: 2 * norm.pdf(lam, scale=rho)) if one_sided else (lambda lam: norm.pdf(lam, scale=rho))
    shift = s * s / (2 * t)  # the exponent's maximum, taken out for accuracy
    mode = s / (t + 1 / rho**2)  # of the integrand
    reach = 30 * (rho + 1 / math.sqrt(t))
    value, _ = integrate.quad(
        lambda lam: math.exp(lam * s - lam * lam * t / 2 - shift) * density(lam),
        0 if one_sided else mode - reach,
        mode + reach,
        points=[mode],
        limit=200,
        epsabs=0,
        epsrel=1e-12,
    )
    assert math.log(value) + shift == pytest.approx(math.log(1 / alpha), abs=1e-8)


def test_running_cs_ends_where_mean_cs_is_and_is_infinite_after_one_row():
    x = np.random.default_rng(0).lognormal(size=500)
    mean, radius = running_cs(x, 0.05, 1000)
    last = mean_cs(x, 0.05, 1000)
    assert (mean[-1], radius[-1]) == pytest.approx((last.estimate, last.radius), rel=1e-12)
    assert mean == pytest.approx(np.cumsum(x) / np.arange(1, 501), rel=1e-12)
    assert radius[0] == np.inf and math.isinf(mean_cs(x[:1], 0.05, 1000).radius)
    assert last.lower == last.estimate - last.radius and last.upper == last.estimate + last.radius
    assert mean_cs(x[:1], 0.05, 1000).to_dict()["lower"] is None


def test_one_sided_bound_is_tighter_than_the_two_sided_one():
    x = np.random.default_rng(1).normal(size=2000)
    one, two = mean_cs(x, 0.05, 2000, one_sided=True), mean_cs(x, 0.05, 2000)
    assert two.lower < one.lower < one.estimate
    # and looser than a two-sided interval at 2 alpha, which would not be a valid one-sided bound
    assert one.radius > float(x.std()) * float(cs_radius(2000, 0.1, optimal_rho(2000, 0.1)))


@pytest.mark.parametrize(
    "bad",
    [
        lambda: optimal_rho(1000, 0.0),
        lambda: optimal_rho(0, 0.05),
        lambda: cs_radius(10, 1.5, 0.1),
        lambda: cs_radius(10, 0.05, 0.0),
        lambda: paired_delta_cs("f2", [0, 1], [0, 1], [0, 1], alpha=0.05, t_star=10),
        lambda: paired_delta_cs("f1", [0, 2], [0, 1], [0, 1], alpha=0.05, t_star=10),
        lambda: paired_delta_cs("f1", [0, 1], [0, np.nan], [0, 1], alpha=0.05, t_star=10),
        lambda: confusion_influence("roc_auc", metrics.Confusion(1, 1, 1, 1)),
    ],
    ids=[
        "alpha_zero",
        "no_planned_rows",
        "alpha_above_one",
        "rho_zero",
        "unknown_metric",
        "label_2",
        "nan_score",
        "not_a_confusion_metric",
    ],
)
def test_bad_input_is_an_error(bad):
    with pytest.raises(ValueError):
        bad()


# -- time-uniform coverage -------------------------------------------------------------------------
ALPHA = 0.05
ROWS = 20_000
LOOKS = np.arange(1000, ROWS + 1, 1000)  # 20 looks


def _ternary(rng, shape):
    """Paired differences of per-row correctness: +1 (only the candidate right), -1, or 0; mean 0.02."""
    better = rng.random(shape, dtype=np.float32) < 0.06
    worse = rng.random(shape, dtype=np.float32) < 0.04
    return better.astype(np.float64) - worse


def _skewed(rng, shape):
    """Right-skewed differences (lognormal, skewness ~6), mean 0."""
    return rng.lognormal(0.0, 1.0, shape) - math.exp(0.5)


def _misses_at_any_look(draw, true_mean, trials, seed, chunk=100):
    """Trials whose CS, and whose fixed-horizon 95 % interval, exclude the true mean at some look."""
    rng = np.random.default_rng(seed)
    unit = cs_radius(LOOKS, ALPHA, optimal_rho(ROWS, ALPHA))
    z = stats.z_value(1 - ALPHA)
    cs = fixed = 0
    for start in range(0, trials, chunk):
        mean, radius = running_cs(draw(rng, (min(chunk, trials - start), ROWS)), ALPHA, ROWS)
        error, radius = np.abs(mean[:, LOOKS - 1] - true_mean), radius[:, LOOKS - 1]
        sd = radius / unit
        cs += int((error > radius).any(axis=1).sum())
        fixed += int((error > z * sd / np.sqrt(LOOKS)).any(axis=1).sum())
    return cs, fixed


@pytest.mark.parametrize(
    "draw,true_mean,trials",
    [(_ternary, 0.02, 2000), (_skewed, 0.0, 1000)],
    ids=["ternary_differences", "lognormal_differences"],
)
def test_cs_misses_at_any_look_at_most_alpha_while_fixed_intervals_miss_often(draw, true_mean, trials):
    cs, fixed = _misses_at_any_look(draw, true_mean, trials, seed=11)
    # at most alpha: the share's 99 % Wilson interval must reach down to alpha
    assert stats.wilson(cs, trials, 0.99)[0] <= ALPHA, f"CS missed at some look in {cs}/{trials} trials"
    # the fixed-horizon 95 % interval judged at each of 20 looks misses far more often (~20-25 %)
    assert stats.wilson(fixed, trials, 0.99)[0] > 3 * ALPHA, f"fixed missed in {fixed}/{trials} trials"
    assert fixed > 5 * max(cs, 1)


# -- influence functions ---------------------------------------------------------------------------
CONFUSION_METRICS = ["accuracy", "precision", "recall", "f1", "fpr", "fnr"]
CELLS = ["tp", "fp", "tn", "fn"]


@pytest.mark.parametrize("name", CONFUSION_METRICS)
def test_confusion_influence_is_the_derivative_times_rows_and_averages_to_zero(name):
    counts = {"tp": 310, "fp": 95, "tn": 1480, "fn": 115}
    c = metrics.Confusion(**counts)
    psi = dict(zip(CELLS, confusion_influence(name, c), strict=True))
    f = metrics.METRICS[name].compute
    for cell in CELLS:
        h = 1e-6
        bumped = metrics.Confusion(**(counts | {cell: counts[cell] + h}))
        assert psi[cell] == pytest.approx((f(bumped) - f(c)) / h * c.n, abs=1e-5), cell
    assert sum(psi[k] * counts[k] for k in CELLS) == pytest.approx(0.0, abs=1e-9)


def _population():
    """Paired cells (label*4 + baseline*2 + candidate) of two correlated classifiers, 30 % positives."""
    p_pos, base_tpr, base_fpr = 0.3, 0.72, 0.12
    cand_one = {(1, 1): 0.93, (1, 0): 0.15, (0, 1): 0.80, (0, 0): 0.04}  # P(candidate = 1 | label, baseline)
    p = np.zeros(8)
    for y in (0, 1):
        py = p_pos if y else 1 - p_pos
        rate = base_tpr if y else base_fpr
        for b in (0, 1):
            pb = py * (rate if b else 1 - rate)
            p[4 * y + 2 * b + 1] = pb * cand_one[y, b]
            p[4 * y + 2 * b] = pb * (1 - cand_one[y, b])
    return p


def _confusions(cells):
    """Baseline and candidate confusion from paired cell counts (last axis, 8 cells)."""
    c = np.moveaxis(np.asarray(cells, dtype=np.float64), -1, 0)
    return (
        metrics.Confusion(tp=c[6] + c[7], fp=c[2] + c[3], tn=c[0] + c[1], fn=c[4] + c[5]),
        metrics.Confusion(tp=c[5] + c[7], fp=c[1] + c[3], tn=c[0] + c[2], fn=c[4] + c[6]),
    )


def _rows(cell):
    return cell >> 2, ((cell >> 1) & 1).astype(np.float64), (cell & 1).astype(np.float64)


@pytest.mark.parametrize("name", ["accuracy", "precision", "recall", "fpr", "fnr"])
def test_proportion_influence_variance_is_the_binomial_variance(name):
    y, base, _ = _rows(np.random.default_rng(2).choice(8, size=5000, p=_population()))
    psi = row_influence(name, y, base)
    k, trials = metrics.METRICS[name].proportion(metrics.confusion(y, base >= 0.5))
    lo, hi = proportion_confint(k, trials, alpha=0.05, method="normal")
    assert psi.mean() == pytest.approx(0.0, abs=1e-12)
    assert stats.z_value(0.95) * psi.std() / math.sqrt(len(y)) == pytest.approx((hi - lo) / 2, rel=1e-9)


@pytest.mark.parametrize("name", ["f1", "precision", "recall"])
def test_delta_method_variance_matches_the_paired_bootstrap(name):
    rng = np.random.default_rng(3)
    cell = rng.choice(8, size=100_000, p=_population())
    y, base, cand = _rows(cell)
    psi_base, psi_cand = row_influence(name, y, base), row_influence(name, y, cand)
    assert abs(psi_base.mean()) < 1e-12 and abs(psi_cand.mean()) < 1e-12
    boot_base, boot_cand = _confusions(stats.poisson_cells(np.bincount(cell, minlength=8), 4000, rng))
    f = metrics.METRICS[name].compute
    checks = [(psi_base, f(boot_base)), (psi_cand, f(boot_cand)), (psi_cand - psi_base, f(boot_cand) - f(boot_base))]
    for psi, reps in checks:
        # 4000 replicates estimate a variance to ~2 %
        assert psi.var() / len(y) == pytest.approx(reps.var(), rel=0.1)


@pytest.mark.parametrize("name", ["roc_auc", "log_loss", "brier"])
def test_score_metric_row_influence_matches_the_row_bootstrap(name):
    rng = np.random.default_rng(4)
    n = 3000
    y = (rng.random(n) < 0.35).astype(np.int64)
    base = 1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(size=n))))
    cand = 1 / (1 + np.exp(-(1.4 * y - 0.7 + rng.normal(size=n))))
    psi = row_influence(name, y, cand) - row_influence(name, y, base)
    assert abs(psi.mean()) < 1e-9
    m = metrics.METRICS[name]
    gb, gc = metrics.grouping(y, base), metrics.grouping(y, cand)
    reps = np.concatenate([m.compute(gc.weigh(w)) - m.compute(gb.weigh(w)) for w in stats.poisson_weights(n, 800, rng)])
    assert psi.var() / n == pytest.approx(reps.var(), rel=0.15)


def test_f1_delta_interval_covers_the_true_delta_at_every_look():
    p = _population()
    base_true, cand_true = (metrics.f1(c) for c in _confusions(p))
    true_delta = cand_true - base_true
    trials, looks = 400, np.arange(2000, ROWS + 1, 2000)  # 10 looks
    rng = np.random.default_rng(5)
    cs = fixed = 0
    for _ in range(trials):
        y, base, cand = _rows(rng.choice(8, size=ROWS, p=p))
        cs_miss = fixed_miss = False
        for n in looks:
            ci = paired_delta_cs("f1", y[:n], base[:n], cand[:n], alpha=ALPHA, t_star=ROWS)
            cs_miss |= not ci.lower <= true_delta <= ci.upper
            se = ci.radius / float(cs_radius(n, ALPHA, ci.rho)) / math.sqrt(n)
            fixed_miss |= abs(ci.estimate - true_delta) > stats.z_value(1 - ALPHA) * se
        cs += cs_miss
        fixed += fixed_miss
    assert stats.wilson(cs, trials, 0.99)[0] <= ALPHA, f"the f1-delta CS missed at some look in {cs}/{trials}"
    assert fixed > 3 * max(cs, 1), f"fixed-horizon intervals missed in {fixed}/{trials}, the CS in {cs}"


def test_paired_delta_cs_centres_on_the_plug_in_delta():
    y, base, cand = _rows(np.random.default_rng(6).choice(8, size=3000, p=_population()))
    ci = paired_delta_cs("f1", y, base, cand, alpha=ALPHA, t_star=ROWS)
    c_base, c_cand = metrics.confusion(y, base >= 0.5), metrics.confusion(y, cand >= 0.5)
    assert isinstance(ci, SequentialInterval)
    assert ci.estimate == pytest.approx(metrics.f1(c_cand) - metrics.f1(c_base), abs=1e-15)
    assert ci.rows == 3000 and ci.lower < ci.estimate < ci.upper
    one = paired_delta_cs("f1", y, base, cand, alpha=ALPHA, t_star=ROWS, one_sided=True)
    assert ci.lower < one.lower and one.upper < ci.upper


def test_paired_delta_cs_is_none_when_the_metric_is_undefined():
    y = np.zeros(50, dtype=np.int64)
    score = np.random.default_rng(7).random(50)
    assert paired_delta_cs("recall", y, score, score, alpha=ALPHA, t_star=100) is None
    assert paired_delta_cs("roc_auc", y, score, score, alpha=ALPHA, t_star=100) is None
    assert paired_delta_cs("fpr", y, score, score, alpha=ALPHA, t_star=100) is not None
