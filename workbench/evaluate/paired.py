"""What the regression and multi-class comparisons share: input checks, the rows each metric can use (and
why the others are left out), and estimates of means, proportions and bootstrap statistics with their
paired deltas.

* :func:`check_rows` — refuses empty input and arrays whose lengths differ from the labels'.
* :func:`usable` / :func:`paired_usable` — the rows a metric can use for one model or for both, each row
  left out counted under the first rule that excludes it.
* :func:`mean_estimate`, :func:`proportion_estimate`, :func:`replicate_estimate` — one model's value with a
  Student-t, Wilson or bootstrap percentile interval.
* :func:`mean_delta`, :func:`linearised_delta`, :func:`replicate_delta` — candidate - baseline with a
  paired-t (a mean, or the delta method) or bootstrap interval, p-value, relative change and minimum
  detectable effect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from workbench import WorkbenchError
from workbench.evaluate import stats
from workbench.evaluate.results import MetricEstimate, Options, PairedEstimate

#: A rule that leaves rows out: its reason and a mask of the rows it excludes.
Rule = tuple[str, np.ndarray]


def check_rows(y: np.ndarray, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """``y`` as a 1-D array after checking it has rows and that every given array has one row per label."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise WorkbenchError(f"y must be a 1-D array of labels, got shape {y.shape}")
    if len(y) == 0:
        raise WorkbenchError("no rows to evaluate: y is empty")
    for name, a in arrays.items():
        if np.shape(a)[:1] != (len(y),):
            rows = np.shape(a)[0] if np.ndim(a) else 0
            raise WorkbenchError(f"{name} has {rows} rows but y has {len(y)}: pass one prediction per labelled row")
    return y


@dataclass(frozen=True)
class Usable:
    """The rows a metric can use (``ok``) and how many of the others each reason left out."""

    ok: np.ndarray
    excluded: dict[str, int]

    @property
    def rows(self) -> int:
        return int(self.ok.sum())

    def why_none(self) -> str:
        """The reason a metric has no value when no row is usable."""
        left_out = ", ".join(f"{reason}: {count}" for reason, count in self.excluded.items())
        return f"no usable rows ({left_out})" if left_out else "no usable rows"


def _codes(rules: Sequence[Rule], n: int) -> np.ndarray:
    """Per row, 0 when no rule excludes it, else 1 + the index of the first rule that does."""
    code = np.zeros(n, dtype=np.int64)
    for i, (_, mask) in enumerate(rules, start=1):
        code[(code == 0) & mask] = i
    return code


def usable(rules: Sequence[Rule], n: int) -> Usable:
    """The rows of ``n`` no rule excludes; each excluded row is counted under the first rule that applies."""
    code = _codes(rules, n)
    counts = np.bincount(code, minlength=len(rules) + 1)
    return Usable(code == 0, {reason: int(counts[i]) for i, (reason, _) in enumerate(rules, start=1) if counts[i]})


def paired_usable(baseline: Sequence[Rule], candidate: Sequence[Rule], n: int) -> Usable:
    """The rows both models can use. A row left out for the same reason for both models is counted under
    that reason; otherwise under the model (or models) that cannot use it, e.g. "baseline: ..."."""
    cb, cc = _codes(baseline, n), _codes(candidate, n)
    k = len(candidate) + 1
    pairs, counts = np.unique(cb * k + cc, return_counts=True)
    excluded: dict[str, int] = {}
    for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True):
        b, c = divmod(pair, k)
        if b == c == 0:
            continue
        reasons = {"baseline": baseline[b - 1][0] if b else None, "candidate": candidate[c - 1][0] if c else None}
        if reasons["baseline"] == reasons["candidate"]:
            label = str(reasons["baseline"])
        else:
            label = "; ".join(f"{role}: {reason}" for role, reason in reasons.items() if reason is not None)
        excluded[label] = excluded.get(label, 0) + count
    return Usable((cb == 0) & (cc == 0), excluded)


def _clip(ci: tuple[float, float] | None, bounds: tuple[float, float]) -> tuple[float | None, float | None]:
    return stats.clip_interval(ci, *bounds)


def mean_estimate(
    values: np.ndarray, use: Usable, opts: Options, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> MetricEstimate:
    """The mean of the usable ``values`` with a Student-t interval (the CLT for per-row losses, with the
    small-sample correction), clipped to ``bounds``."""
    x = values[use.ok]
    n = len(x)
    if n == 0:
        return MetricEstimate(None, None, None, 0, use.excluded, None, use.why_none())
    value = float(x.mean())
    if n < 2:
        return MetricEstimate(value, None, None, n, use.excluded, None, "one row: no interval")
    ci, _ = stats.t_test(value, float(x.std(ddof=1)) / math.sqrt(n), n, opts.confidence)
    return MetricEstimate(value, *_clip(ci, bounds), n, use.excluded, "t")


def proportion_estimate(hits: np.ndarray, use: Usable, opts: Options) -> MetricEstimate:
    """The share of usable rows where ``hits`` is true, with a Wilson interval."""
    n = use.rows
    if n == 0:
        return MetricEstimate(None, None, None, 0, use.excluded, None, use.why_none())
    k = int(np.count_nonzero(hits[use.ok]))
    return MetricEstimate(k / n, *_clip(stats.wilson(k, n, opts.confidence), (0, 1)), n, use.excluded, "wilson")


def replicate_estimate(
    value: float | None,
    replicates: np.ndarray,
    use: Usable,
    opts: Options,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    undefined: str | None = None,
) -> MetricEstimate:
    """A plug-in ``value`` with the percentile interval of its bootstrap ``replicates`` (``undefined``: why
    there is no value)."""
    if value is None:
        return MetricEstimate(None, None, None, use.rows, use.excluded, None, undefined or use.why_none())
    ci = stats.percentile_interval(replicates, opts.confidence)
    if ci is None:
        return MetricEstimate(value, None, None, use.rows, use.excluded, None, "fewer than two replicates are defined")
    return MetricEstimate(value, *_clip(ci, bounds), use.rows, use.excluded, "bootstrap")


def _relative(delta: float, baseline: float) -> float | None:
    return delta / abs(baseline) if baseline != 0 else None


def _mde(se: float, opts: Options) -> float | None:
    return stats.mde(se, opts.confidence, opts.power) if se > 0 else None


def linearised_delta(
    value: float,
    baseline: float,
    psi: np.ndarray,
    opts: Options,
    use: Usable,
    span: float = math.inf,
    method: str = "t",
) -> PairedEstimate:
    """A delta ``value`` with a Student-t interval and p-value whose standard error is sd(psi) / sqrt(rows), psi
    the rows' paired influence differences (the delta method; for a mean, the differences themselves),
    clipped to ``[-span, span]``; ``baseline`` (its value on the paired rows) gives the relative change."""
    n = len(psi)
    relative = _relative(value, baseline)
    if n < 2:
        return PairedEstimate(value, None, None, n, use.excluded, None, relative, undefined="one row: no interval")
    se = float(psi.std(ddof=1)) / math.sqrt(n)
    ci, p = stats.t_test(value, se, n, opts.confidence)
    lo, hi = _clip(ci, (-span, span))
    undefined = None if p is not None else "the paired differences do not vary: no test"
    return PairedEstimate(
        value, lo, hi, n, use.excluded, method, relative, p, "paired t", _mde(se, opts), None, undefined
    )


def mean_delta(
    baseline: np.ndarray,
    candidate: np.ndarray,
    use: Usable,
    opts: Options,
    span: float = math.inf,
    *,
    signed_rank: bool = False,
    p_value: tuple[float | None, str] | None = None,
) -> PairedEstimate:
    """mean(candidate - baseline) over the rows both can use with a paired-t interval and p-value (as scipy's
    ``ttest_rel``), clipped to ``[-span, span]``; ``signed_rank`` adds the Wilcoxon signed-rank p-value of the
    differences, ``p_value`` replaces the t-test's with another test's ``(p, name)``."""
    b, c = baseline[use.ok], candidate[use.ok]
    if len(b) == 0:
        return PairedEstimate(None, None, None, 0, use.excluded, undefined=use.why_none())
    d = c - b
    out = linearised_delta(float(d.mean()), float(b.mean()), d, opts, use, span)
    if signed_rank:
        out = replace(out, wilcoxon_p=stats.wilcoxon_p(d))
    if p_value is not None and out.ci_low is not None:
        out = replace(out, p_value=p_value[0], test=p_value[1], undefined=None)
    return out


def replicate_delta(
    baseline: float | None,
    candidate: float | None,
    replicates: np.ndarray,
    use: Usable,
    opts: Options,
    span: float = math.inf,
    *,
    p_value: tuple[float | None, str] | None = None,
    undefined: str | None = None,
) -> PairedEstimate:
    """candidate - baseline of plug-in values on the paired rows, with the percentile interval of paired
    bootstrap ``replicates`` of the delta and their p-value (``p_value``: another test's ``(p, name)``)."""
    if baseline is None or candidate is None:
        return PairedEstimate(None, None, None, use.rows, use.excluded, undefined=undefined or use.why_none())
    value = candidate - baseline
    r = np.asarray(replicates, dtype=np.float64)
    finite = r[np.isfinite(r)]
    ci = stats.percentile_interval(finite, opts.confidence)
    lo, hi = _clip(ci, (-span, span)) if ci is not None else (None, None)
    p, test = p_value if p_value is not None else (stats.bootstrap_p_value(finite), "bootstrap")
    se = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
    why = None if ci is not None else "fewer than two replicates are defined"
    return PairedEstimate(
        value,
        lo,
        hi,
        use.rows,
        use.excluded,
        "bootstrap",
        _relative(value, baseline),
        p,
        test,
        _mde(se, opts),
        None,
        why,
    )
