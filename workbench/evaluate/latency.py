"""Latency and error-rate summaries of a replay run (pure, on arrays; methods in docs/concepts/evaluation.md).

* latency: P50/P95/P99 of the rows each model scored without error, exact order-statistic bootstrap
  intervals on the differences (the two samples resampled independently, which is conservative for
  positively correlated paired timings), and the Mann-Whitney test on the two samples;
* error rates: the share of rows each model failed on, with its Wilson interval.
"""

from __future__ import annotations

import numpy as np

from workbench.evaluate import stats
from workbench.evaluate.results import ErrorRate, Estimate, LatencyResult, Options
from workbench.roles import ROLES

PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def latency_summary(samples: dict[str, np.ndarray], opts: Options) -> tuple[LatencyResult, dict]:
    """Percentiles (ms) per model, bootstrap intervals on their differences, Mann-Whitney p-value.
    Sorts the samples in place."""
    rng = stats.seeded_rng(opts.seed, "latency")
    for x in samples.values():
        x.sort()
    pct = {
        r: {k: stats.sorted_quantile(x, q) if len(x) else None for k, q in PERCENTILES.items()}
        for r, x in samples.items()
    }
    undefined: dict[str, str] = {}
    delta = {}
    for k, q in PERCENTILES.items():
        p_base, p_cand = pct["baseline"][k], pct["candidate"][k]  # None exactly when that sample is empty
        if p_base is None or p_cand is None:
            delta[k] = Estimate(None, None, None)
            continue
        reps = stats.quantile_bootstrap(samples["candidate"], q, opts.n_boot, rng) - stats.quantile_bootstrap(
            samples["baseline"], q, opts.n_boot, rng
        )
        lo, hi = stats.clip_interval(stats.percentile_interval(reps, opts.confidence), -np.inf, np.inf)
        delta[k] = Estimate(p_cand - p_base, lo, hi)
    for r in ROLES:
        if len(samples[r]) == 0:
            undefined[f"latency.{r}"] = "no row scored without error"
    mw = stats.mann_whitney(samples["baseline"], samples["candidate"], presorted=True)
    return LatencyResult(pct["baseline"], pct["candidate"], delta, None if mw is None else mw[1]), undefined


def error_rates(counts: dict[str, dict], opts: Options) -> dict[str, ErrorRate]:
    """Error rate per model with its Wilson interval, from ``{role: {"rows", "errors"}}``."""
    out = {}
    for r in ROLES:
        n, k = int(counts.get(r, {}).get("rows", 0)), int(counts.get(r, {}).get("errors", 0))
        ci = stats.wilson(k, n, opts.confidence)
        out[r] = ErrorRate(k, n, k / n if n else None, *(ci if ci else (None, None)))
    return out
