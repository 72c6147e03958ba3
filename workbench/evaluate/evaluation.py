"""Evaluate a replay run: every metric with its interval, every candidate-minus-baseline delta with a
paired test and its minimum detectable effect, latency, error rates, segments and time windows.

:func:`evaluate_run` reads from the store and persists the result in the ``evaluations`` table;
:func:`evaluate_quality` and :func:`compare` compute on arrays (pure), as do ``latency_summary`` and
``error_rates`` (:mod:`workbench.evaluate.latency`); :func:`evaluate_samples` runs all of them. The
result types live in :mod:`workbench.evaluate.results`. Methods (docs/concepts/evaluation.md):

* each model's metrics use the labelled rows it scored without error; deltas use the rows both scored;
* proportions (accuracy, precision, recall, fpr, fnr, error rates) get Wilson intervals; f1 and the
  score metrics get percentile intervals of a seeded Poisson bootstrap;
* confusion metrics are resampled exactly through their contingency cells (:func:`stats.poisson_cells`);
  score metrics with row-level Poisson weights when the run has at most ``exact_max_rows`` labelled
  rows, and otherwise through the bootstrap of their influence-function linearisation
  (:func:`stats.linear_bootstrap`); one method serves the overall rows and every slice;
* delta p-values: exact McNemar for accuracy, the paired bootstrap for the others; ``mde`` is
  (z(1 - alpha/2) + z(power)) x the bootstrap standard error of the delta, alpha = 1 - confidence;
* latency: P50/P95/P99 of the rows each model scored without error, exact order-statistic bootstrap
  intervals on the differences (the two samples resampled independently, which is conservative for
  positively correlated paired timings), and the Mann-Whitney test on the two samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench import WorkbenchError
from workbench.evaluate import stats
from workbench.evaluate.heap import reusing_freed_memory
from workbench.evaluate.latency import error_rates, latency_summary
from workbench.evaluate.metrics import METRICS, Confusion, Grouping, Metric, ScoreGroups, grouping
from workbench.evaluate.resources import compare_resources
from workbench.evaluate.results import (
    Comparison,
    DeltaEstimate,
    Estimate,
    EvaluationResult,
    LatencyResult,
    Options,
    Slice,
)
from workbench.evaluate.slices import slice_ids
from workbench.roles import ROLES
from workbench.store import Store
from workbench.store.app import run_token
from workbench.tasks import MULTICLASS, REGRESSION, run_classes, run_quantiles, run_task

if TYPE_CHECKING:
    from workbench.evaluate.multiclass_run import MulticlassEvaluation
    from workbench.evaluate.regression_run import RegressionEvaluation

WINDOWS = ("hour", "day", "week")
_Result = TypeVar("_Result", "EvaluationResult", "RegressionEvaluation", "MulticlassEvaluation")
DEFAULT_THRESHOLD = 0.5


# -- one comparison ----------------------------------------------------------------------------------
def _take(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return a if mask.all() else a[mask]


class _Sample:
    """One model's labelled rows (its own, or those both models scored): score groups and confusion."""

    def __init__(self, grouping: Grouping, conf: Confusion):
        self.grouping, self.conf = grouping, conf
        self.groups = grouping.weigh()


def _few_scores(s: _Sample) -> bool:
    """Whether the sample's scores have many ties (at least 4 rows per distinct score on average)."""
    return 4 * len(s.groups.score) <= s.grouping.rows


def _influence_distribution(
    s: _Sample, influence: tuple[np.ndarray, np.ndarray] | None, sorted_rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows' influences as sorted values and counts: per (score group, label) from ``influence``
    when the scores have many ties, else one per row (``sorted_rows``: the rows' influences, sorted;
    computed from ``influence`` when not given)."""
    if _few_scores(s):
        if influence is None:
            raise ValueError("the per-group influence is needed when the scores have many ties")
        g = s.groups
        values = np.concatenate(influence)
        order = np.argsort(values, kind="stable")
        return values[order], np.concatenate([g.pos, g.neg])[order]
    if sorted_rows is None:
        if influence is None:
            raise ValueError("give the per-group influence or the rows' influences")
        sorted_rows = s.grouping.per_row(influence)
        sorted_rows.sort()
    return sorted_rows, None


def _sorted(a: np.ndarray) -> np.ndarray:
    a.sort()
    return a


def _paired_values(values: dict, paired: dict[str, _Sample], own_is_paired: dict[str, bool]) -> dict:
    """Each model's metric values on the paired rows (its own values where those are the same rows)."""
    return {
        r: values[r]
        if own_is_paired[r]
        else {n: m.compute(paired[r].groups if m.from_scores else paired[r].conf) for n, m in METRICS.items()}
        for r in ROLES
    }


def _paired_keys(paired: dict[str, _Sample]) -> dict[str, np.ndarray | None]:
    """Per model, each paired row's (group, label) key (:attr:`Grouping.key`), rows in the score order of
    the model with more groups (None for that model: its own order): per-row values of both models then
    come from one pass in that order, the other model's (smaller) table looked up at random."""
    lead = max(ROLES, key=lambda r: len(paired[r].grouping.score))
    first = paired[lead].grouping
    keys: dict[str, np.ndarray | None] = {lead: None}
    for r in ROLES:
        if r != lead:
            g = paired[r].grouping
            by_row = np.empty(g.rows, dtype=g.key.dtype)
            by_row[g.order] = g.key
            keys[r] = by_row[first.order]
    return keys


def _model_estimate(m: Metric, value: Any, conf: Confusion, reps: np.ndarray | None, opts: Options) -> Estimate:
    if value is None:
        return Estimate(None, None, None)
    if m.proportion is not None:
        k, n = m.proportion(conf)
        lo, hi = stats.clip_interval(stats.wilson(k, n, opts.confidence), *m.bounds)
    else:
        lo, hi = stats.clip_interval(
            None if reps is None else stats.percentile_interval(reps, opts.confidence), *m.bounds
        )
    return Estimate(value, lo, hi)


def _delta_estimate(
    m: Metric, value: float, reps: np.ndarray, opts: Options, p_value: float | None = None
) -> DeltaEstimate:
    span = m.bounds[1] - m.bounds[0]
    lo, hi = stats.clip_interval(stats.percentile_interval(reps, opts.confidence), -span, span)
    finite = reps[np.isfinite(reps)]
    se = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return DeltaEstimate(
        value,
        lo,
        hi,
        stats.bootstrap_p_value(reps) if p_value is None else p_value,
        stats.mde(se, opts.confidence, opts.power) if se > 0 else None,
    )


def _cell_confusions(cells: np.ndarray) -> tuple[Confusion, Confusion]:
    """Baseline and candidate confusion from paired cells indexed label*4 + baseline*2 + candidate (counts,
    or one row of replicates per bootstrap draw)."""
    c = cells.T.tolist() if cells.ndim == 1 else cells.T
    return (
        Confusion(tp=c[6] + c[7], fp=c[2] + c[3], tn=c[0] + c[1], fn=c[4] + c[5]),
        Confusion(tp=c[5] + c[7], fp=c[1] + c[3], tn=c[0] + c[2], fn=c[4] + c[6]),
    )


def _cells(y: np.ndarray, scores: dict[str, np.ndarray], thresholds: dict[str, float], ok: dict) -> np.ndarray:
    """Rows counted by [candidate scored, baseline scored, label*4 + baseline class*2 + candidate class], in
    one pass: each model's confusion on its own rows, and both on the paired rows, come from these."""
    code = y.astype(np.uint8) * 4
    code += (scores["baseline"] >= thresholds["baseline"]).view(np.uint8) * 2
    code += (scores["candidate"] >= thresholds["candidate"]).view(np.uint8)
    code += ok["baseline"].view(np.uint8) * 8
    code += ok["candidate"].view(np.uint8) * 16
    return np.bincount(code, minlength=32).reshape(2, 2, 8)


def _influence(m: Metric, groups: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    """The per-group influence of a positive and of a negative row, for the linearised bootstrap."""
    if m.influence is None:
        raise WorkbenchError(f"score metric {m.name!r} has no influence function for the linearised bootstrap")
    return m.influence(groups)


def _score_replicates(g: Grouping, weights: np.ndarray) -> dict[str, np.ndarray]:
    groups = g.weigh(weights)
    return {name: m.compute(groups) for name, m in METRICS.items() if m.from_scores}


def compare(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    thresholds: dict[str, float],
    opts: Options,
    key: str = "overall",
    row_weights: bool | None = None,
) -> Comparison:
    """Metrics of both models with intervals and paired deltas on labelled rows ``y`` (0/1); a score is
    NaN where the model failed on that row. ``key`` seeds this comparison's random generator;
    ``row_weights`` picks the bootstrap of the score metrics (default: row weights up to
    ``opts.exact_max_rows`` rows, the linearised bootstrap above)."""
    rng = stats.seeded_rng(opts.seed, key)
    exact = len(y) <= opts.exact_max_rows if row_weights is None else row_weights
    if exact:  # row weights follow row order: put rows in a canonical order for reproducibility
        order = np.lexsort((scores["candidate"], scores["baseline"], y))
        y, scores = y[order], {r: s[order] for r, s in scores.items()}
    ok = {r: np.isfinite(scores[r]) for r in ROLES}
    both = ok["baseline"] & ok["candidate"]
    cells = _cells(y, scores, thresholds, ok)
    counts = cells[1, 1]  # the paired rows' cells
    own_conf = {
        "baseline": _cell_confusions(cells[:, 1].sum(axis=0))[0],
        "candidate": _cell_confusions(cells[1, :].sum(axis=0))[1],
    }
    paired_conf = dict(zip(ROLES, _cell_confusions(counts), strict=True))
    rows = {r: int(own_conf[r].n) for r in ROLES} | {"paired": int(counts.sum())}
    with ThreadPoolExecutor(max_workers=1) as pool:  # both models' rows sorted at once
        sorting = pool.submit(grouping, _take(y, ok["candidate"]), _take(scores["candidate"], ok["candidate"]))
        base = grouping(_take(y, ok["baseline"]), _take(scores["baseline"], ok["baseline"]))
        own = {
            "baseline": _Sample(base, own_conf["baseline"]),
            "candidate": _Sample(sorting.result(), own_conf["candidate"]),
        }
    del base, sorting  # a restricted sample replaces its model's own below
    # a model whose own rows are the paired rows (the other model never failed where it did not) reuses
    # its sample; otherwise its paired sample keeps its score order, restricted to the shared rows
    own_is_paired = {r: rows[r] == rows["paired"] for r in ROLES}
    score_names = [n for n, m in METRICS.items() if m.from_scores]
    values = {
        r: {n: m.compute(own[r].groups if m.from_scores else own_conf[r]) for n, m in METRICS.items()} for r in ROLES
    }
    for r in ROLES:  # the influences below come one metric at a time: so do the arrays they share
        own[r].groups.release()
    reps: dict[str, dict[str, np.ndarray]] = {r: {} for r in (*ROLES, "delta")}

    # confusion metrics: exact Poisson bootstrap of the contingency cells
    for r in ROLES:
        c = own_conf[r]
        cells = stats.poisson_cells(np.array([c.tp, c.fp, c.tn, c.fn]), opts.n_boot, rng)
        reps[r]["f1"] = METRICS["f1"].compute(Confusion(*cells.T))
    cb, cc = _cell_confusions(stats.poisson_cells(counts, opts.n_boot, rng))
    for n, m in METRICS.items():
        if not m.from_scores:
            reps["delta"][n] = np.asarray(m.compute(cc), float) - np.asarray(m.compute(cb), float)
    mcnemar_p = stats.mcnemar_exact(int(counts[1] + counts[6]), int(counts[2] + counts[5]))

    # score metrics: row-level Poisson weights for small samples, the linearised bootstrap above
    if exact:
        paired = {
            r: own[r] if own_is_paired[r] else _Sample(own[r].grouping.restrict(both[ok[r]]), paired_conf[r])
            for r in ROLES
        }
        pvalues = _paired_values(values, paired, own_is_paired)
        chunks: dict[str, dict[str, list]] = {r: {n: [] for n in score_names} for r in (*ROLES, "delta")}
        for w in stats.poisson_weights(len(y), opts.n_boot, rng):
            own_reps = {r: _score_replicates(own[r].grouping, _take_cols(w, ok[r])) for r in ROLES}
            pair_reps = {
                r: own_reps[r] if own_is_paired[r] else _score_replicates(paired[r].grouping, _take_cols(w, both))
                for r in ROLES
            }
            for n in score_names:
                for r in ROLES:
                    chunks[r][n].append(own_reps[r][n])
                chunks["delta"][n].append(pair_reps["candidate"][n] - pair_reps["baseline"][n])
        for who, per in chunks.items():
            for n, parts in per.items():
                reps[who][n] = np.concatenate(parts)
    else:
        # a model with rows of its own: its replicates first, then only its paired rows stay in memory
        for r in ROLES:
            if not own_is_paired[r]:
                for n in score_names:
                    if values[r][n] is not None:
                        m = METRICS[n]
                        sorted_psi, weights = _influence_distribution(own[r], _influence(m, own[r].groups), None)
                        reps[r][n] = values[r][n] + stats.linear_bootstrap(sorted_psi, opts.n_boot, rng, weights)
                own[r] = _Sample(own[r].grouping.restrict(both[ok[r]]), paired_conf[r])
        paired = own
        pvalues = _paired_values(values, paired, own_is_paired)
        paired_defined = [n for n in score_names if all(pvalues[r][n] is not None for r in ROLES)]
        keys = _paired_keys(paired) if paired_defined else {}
        with ThreadPoolExecutor(max_workers=1) as pool:  # sorts a model's influences while the delta's are sorted
            for n in score_names:  # one metric at a time: a few row-length arrays in memory
                m = METRICS[n]
                psi: dict[str, Future] = {}
                infl: dict[str, tuple[np.ndarray, np.ndarray]] = {}
                if n in paired_defined:
                    rows_psi = {}
                    for r in ROLES:
                        influence = _influence(m, paired[r].groups)
                        rows_psi[r] = paired[r].grouping.per_row(influence, keys[r])  # both in one row order
                        if _few_scores(paired[r]):  # the per-group values serve the model's own replicates
                            infl[r] = influence
                        del influence
                        paired[r].groups.release()
                    d = rows_psi["candidate"] - rows_psi["baseline"]
                    psi = {
                        r: pool.submit(_sorted, x) for r, x in rows_psi.items() if own_is_paired[r] and r not in infl
                    }
                    del rows_psi
                    d.sort()
                    reps["delta"][n] = (pvalues["candidate"][n] - pvalues["baseline"][n]) + stats.linear_bootstrap(
                        d, opts.n_boot, rng
                    )
                    del d
                for r in ROLES:
                    if own_is_paired[r] and values[r][n] is not None:
                        known, per_group = psi.pop(r, None), infl.get(r)
                        if per_group is None and known is None:
                            per_group = _influence(m, paired[r].groups)
                        sorted_psi, weights = _influence_distribution(
                            paired[r], per_group, None if known is None else known.result()
                        )
                        reps[r][n] = values[r][n] + stats.linear_bootstrap(sorted_psi, opts.n_boot, rng, weights)
                del psi, infl

    undefined: dict[str, str | None] = {}
    out: dict[str, dict] = {r: {} for r in (*ROLES, "delta")}
    for n, m in METRICS.items():
        for r in ROLES:
            est = _model_estimate(m, values[r][n], own_conf[r], reps[r].get(n), opts)
            out[r][n] = est
            if est.value is None:
                undefined[f"{r}.{n}"] = (
                    "no labelled row scored without error" if rows[r] == 0 and len(y) else m.undefined(own_conf[r])
                )
            elif est.ci_low is None:
                undefined[f"{r}.{n}.ci"] = "fewer than two bootstrap replicates are defined"
        vb, vc = pvalues["baseline"][n], pvalues["candidate"][n]
        if vb is None or vc is None:
            out["delta"][n] = DeltaEstimate(None, None, None, None, None)
            undefined[f"delta.{n}"] = (
                "no labelled row scored by both models"
                if rows["paired"] == 0 and len(y)
                else m.undefined(paired_conf["baseline" if vb is None else "candidate"])
            )
            continue
        delta = _delta_estimate(m, vc - vb, reps["delta"][n], opts, mcnemar_p if n == "accuracy" else None)
        out["delta"][n] = delta
        if delta.mde is None:
            undefined[f"delta.{n}.mde"] = (
                "the delta does not vary across bootstrap replicates, so there is no variance to size an effect with"
            )
        if delta.ci_low is None:
            undefined[f"delta.{n}.ci"] = "fewer than two bootstrap replicates are defined"
    return Comparison(rows, out["baseline"], out["candidate"], out["delta"], undefined, "rows" if exact else "linear")


def _latencies(column: pa.ChunkedArray) -> np.ndarray:
    """The known latencies of a column (null where the model failed), as a new array (sorted in place later)."""
    a = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return a[~np.isnan(a)]


def _labelled(table: pa.Table) -> pa.Table:
    """The rows of ``table`` that have a ``label``."""
    label = table.column("label")
    return table if label.null_count == 0 else table.filter(label.is_valid())


def _take_cols(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return w if mask.all() else w[:, mask]


# -- slices ------------------------------------------------------------------------------------------
def _slices(
    ids: np.ndarray,
    labels: list[str],
    y: np.ndarray,
    scores: dict,
    thresholds: dict,
    opts: Options,
    prefix: str,
    row_weights: bool,
) -> tuple[dict[str, Slice], dict[str, str]]:
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(len(labels) + 1))

    def one(j: int) -> Comparison:
        idx = order[bounds[j] : bounds[j + 1]]
        return compare(
            y[idx], {r: s[idx] for r, s in scores.items()}, thresholds, opts, f"{prefix}.{labels[j]}", row_weights
        )

    out, undefined = {}, {}
    with ThreadPoolExecutor(max_workers=2) as pool:  # each seeds its own generator
        for j, comp in enumerate(pool.map(one, range(len(labels)))):
            name, rows = labels[j], int(bounds[j + 1] - bounds[j])
            out[name] = Slice(rows, rows < opts.small_rows, comp)
            undefined.update({f"{prefix}.{name}.{k}": v for k, v in comp.undefined.items()})
    return out, undefined


# -- entry points ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quality:
    """The model-quality part of an evaluation: overall comparison, slices, reasons for nulls."""

    labeled_rows: int
    overall: Comparison
    segments: dict | None
    windows: dict | None
    undefined: dict


def evaluate_quality(
    run_id: str,
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    thresholds: dict[str, float],
    opts: Options = Options(),
    segment: tuple[str, pa.Array] | None = None,
    window: tuple[str, pa.Array] | None = None,
) -> Quality:
    """Metrics, intervals and paired deltas on labels (0/1) and scores (NaN where a model failed) of the
    labelled rows, overall and per segment value (``(column, values)``) or window (``(unit, starts)``)."""
    y = np.asarray(y)
    if len(y) and (y.min() < 0 or y.max() > 1):
        raise WorkbenchError(
            f"labels of run {run_id} hold classes {np.unique(y).tolist()}: the replay stores "
            "binary scores, so labels must be 0/1"
        )
    y = y.astype(np.int8, copy=False)
    row_weights = len(y) <= opts.exact_max_rows  # one method for the overall rows and every slice
    with reusing_freed_memory():  # the slices below: many small arrays on two threads, each with its own heap
        overall = compare(y, scores, thresholds, opts, row_weights=row_weights)
    undefined = dict(overall.undefined)
    segments = windows = None
    if segment is not None:
        col, values = segment
        ids, labels = slice_ids(values, opts.top_k)
        slices, und = _slices(ids, labels, y, scores, thresholds, opts, f"segments.{col}", row_weights)
        segments = {col: slices}
        undefined.update(und)
    if window is not None:
        unit, starts = window
        iso = pc.strftime(starts.cast(pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%SZ")  # window starts: whole s
        ids, labels = slice_ids(iso, None)
        slices, und = _slices(ids, labels, y, scores, thresholds, opts, f"windows.{unit}", row_weights)
        windows = {unit: slices}
        undefined.update(und)
    return Quality(len(y), overall, segments, windows, undefined)


def _result(
    run_id: str,
    quality: Quality,
    thresholds: dict,
    latency: tuple[LatencyResult, dict],
    error_counts: dict[str, dict],
    rows_done: int,
    opts: Options,
) -> EvaluationResult:
    lat, undefined = latency
    errors = error_rates(error_counts, opts)
    undefined |= {f"errors.{r}": "no rows replayed" for r, e in errors.items() if e.rate is None}
    n = quality.labeled_rows
    return EvaluationResult(
        run_id,
        n,
        round(n / rows_done, 6) if rows_done else 0.0,
        opts.confidence,
        dict(thresholds),
        quality.overall,
        lat,
        errors,
        quality.segments,
        quality.windows,
        quality.undefined | undefined,
    )


def evaluate_samples(
    run_id: str,
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    thresholds: dict[str, float],
    latency: dict[str, np.ndarray],
    error_counts: dict[str, dict],
    rows_done: int,
    opts: Options = Options(),
    segment: tuple[str, pa.Array] | None = None,
    window: tuple[str, pa.Array] | None = None,
) -> EvaluationResult:
    """The whole evaluation on arrays (see :func:`evaluate_quality`), with latency samples per model
    (sorted in place) and error counts ``{role: {"rows", "errors"}}``. The latency (its own random
    generator) is summarised on a second thread while the quality is computed."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        lat = pool.submit(latency_summary, latency, opts)
        return _evaluated(run_id, y, scores, thresholds, lat, error_counts, rows_done, opts, segment, window)


def _evaluated(
    run_id: str,
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    thresholds: dict[str, float],
    latency: Future[tuple[LatencyResult, dict]],
    error_counts: dict[str, dict],
    rows_done: int,
    opts: Options,
    segment: tuple[str, pa.Array] | None,
    window: tuple[str, pa.Array] | None,
) -> EvaluationResult:
    """:func:`evaluate_samples` with the latency summary on its way (``latency``)."""
    quality = evaluate_quality(run_id, y, scores, thresholds, opts, segment, window)
    return _result(run_id, quality, thresholds, latency.result(), error_counts, rows_done, opts)


def _read_labels(store: Store, run: dict, labels: Future[pa.Table]) -> dict[str, Any]:
    """:meth:`Store.read_labels` of ``run``, its labels handed over through ``labels``; returns their state."""
    try:
        return store.read_labels(run, labels.set_result)
    except BaseException as e:
        if not labels.done():
            labels.set_exception(e)
        raise


def evaluate_run(
    store: Store,
    run_id: str,
    *,
    segment: str | None = None,
    window: str | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    n_boot: int = 1000,
    power: float = 0.8,
    top_k: int = 10,
    small_rows: int = 100,
    exact_max_rows: int = 10_000,
    thresholds: dict[str, float] | None = None,
    partial: bool = False,
    prices: Mapping[str, float] | None = None,
) -> EvaluationResult | RegressionEvaluation | MulticlassEvaluation:
    """Evaluate ``run_id`` on its labelled rows; the result is stored in DuckDB and returned.

    Thresholds come from the run's model references (``threshold`` in the model's metadata, else 0.5)
    unless ``thresholds`` (e.g. from a policy) overrides them per role. One scan of the store reads the
    labels, scores and latencies (of every replayed row: latency does not need a label). A run that is not
    finished (interrupted, or still replaying) is refused unless ``partial``; the result's ``coverage`` says
    what it covered (the run's status and rows, the labels' state: see
    :func:`~workbench.evaluate.stored.evaluation_is_current`).
    ``resources`` compares what each model cost to run in the replay, priced at ``prices`` (USD per CPU-hour,
    GPU-hour, memory GB-hour; :data:`~workbench.evaluate.resources.DEFAULT_PRICES` for those not given).
    A regression run (its task in its ``meta``) is compared on its numeric labels
    (:mod:`workbench.evaluate.regression_run`), a multi-class run on its class labels
    (:mod:`workbench.evaluate.multiclass_run`); ``thresholds`` do not apply to either.
    """
    opts = Options(confidence, seed, n_boot, power, exact_max_rows, top_k, small_rows)
    if window is not None and window not in WINDOWS:
        raise WorkbenchError(f"unknown window {window!r}: use one of {', '.join(WINDOWS)}")
    run = store.require_run(run_id)
    rows_done, rows_total = int(run["rows_done"] or 0), int(run["rows_total"] or 0)
    if run["status"] != "finished" and not partial:
        raise WorkbenchError(
            f"run {run_id} is {run['status']} with {rows_done:,} of {rows_total:,} rows "
            f"replayed: resume it (`workbench replay ... --run-id {run_id}`) and evaluate the finished run, or "
            "pass --partial to evaluate the rows so far (the result is marked partial)"
        )
    params = evaluation_params(run, segment, window, opts, thresholds, partial, prices)
    # the state of the run's data came with the run, before the data; the labels are read while the predictions
    # are, then their state (of the same snapshot) while the evaluation runs: an evaluation records the state of
    # the labels it used
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        label_rows: Future[pa.Table] = Future()
        labels_now = pool.submit(_read_labels, store, run, label_rows)
        pool.submit(stats.z_value, confidence)  # imports scipy.stats (a second, once a process) while reading
        table = store.prediction_rows(run, segment=segment, window=window)
        counts = store.counts_of(table)
        latency = {r: _latencies(table.column(f"{r}_latency_ms")) for r in ROLES}
        # a binary run's latency (its own random generator) is summarised while the labels are read
        binary = run_task(run) not in (MULTICLASS, REGRESSION)
        lat = pool.submit(latency_summary, latency, opts) if binary else None
        table = store.with_labels(run, table, label_rows.result())
        table = _labelled(table.drop_columns([f"{r}_{c}" for r in ROLES for c in ("latency_ms", "failed")]))
        seg = (segment, table.column("segment")) if segment is not None else None
        win = (window, table.column("window_start")) if window is not None else None
        if run_task(run) == MULTICLASS:
            from workbench.evaluate.multiclass_run import evaluate_multiclass_samples, probability_matrix

            classes = run_classes(run)
            labels = table.column("label")
            preds = {r: table.column(f"{r}_class").to_numpy(zero_copy_only=False).astype(np.float64) for r in ROLES}
            probs = {r: probability_matrix(table.column(f"{r}_proba"), len(classes)) for r in ROLES}
            del table
            mc = evaluate_multiclass_samples(
                run_id, classes, labels, preds, probs, latency, counts, rows_done, opts, seg, win
            )
            return _saved(store, run, mc, params, labels_now, prices)
        if run_task(run) == REGRESSION:
            from workbench.evaluate.multiclass_run import probability_matrix
            from workbench.evaluate.regression_run import evaluate_regression_samples

            y = table.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
            preds = {r: table.column(f"{r}_score").to_numpy(zero_copy_only=False).astype(np.float64) for r in ROLES}
            levels = tuple(run_quantiles(run))
            quantiles = (
                {r: probability_matrix(table.column(f"{r}_quantiles"), len(levels)) for r in ROLES} if levels else None
            )
            del table
            reg = evaluate_regression_samples(
                run_id,
                y,
                preds,
                latency,
                counts,
                rows_done,
                opts,
                seg,
                win,
                levels,
                quantiles,
                run["meta"].get("quantiles_skipped"),
            )
            return _saved(store, run, reg, params, labels_now, prices)
        thr = params["thresholds"]
        y = table.column("label").to_numpy()
        scores = {
            r: table.column(f"{r}_score").to_numpy(zero_copy_only=False).astype(np.float64, copy=False) for r in ROLES
        }
        del table
        lat = lat or pool.submit(latency_summary, latency, opts)
        result = _evaluated(run_id, y, scores, thr, lat, counts, rows_done, opts, seg, win)
        del y, scores, seg, win
        return _saved(store, run, result, params | {"bootstrap": result.overall.method}, labels_now, prices)
    finally:
        pool.shutdown()


def _saved(
    store: Store, run: dict, result: _Result, params: dict[str, Any], labels: Future[dict], prices: Mapping | None
) -> _Result:
    """``result`` with what it covered (``labels``: their state on its way) and what each model cost, saved."""
    resources = compare_resources(store.recorded_resources(run), prices)
    result = replace(result, coverage=_coverage(run, labels.result()), resources=resources)
    store.save_evaluation(run["run_id"], params, result.to_dict())
    return result


def evaluation_params(
    run: dict,
    segment: str | None,
    window: str | None,
    opts: Options,
    thresholds: dict[str, float] | None,
    partial: bool,
    prices: Mapping[str, float] | None,
) -> dict[str, Any]:
    """What an evaluation of ``run`` is made from: its options, a binary run's thresholds, and the state of the
    run's data (:func:`~workbench.store.app.run_token` of ``run`` as :meth:`~workbench.store.Store.get_run` read
    it); stored with it, and what :func:`~workbench.evaluate.stored.evaluation` matches."""
    params: dict[str, Any] = {
        "segment": segment,
        "window": window,
        "confidence": opts.confidence,
        "seed": opts.seed,
        "n_boot": opts.n_boot,
        "power": opts.power,
        "top_k": opts.top_k,
        "small_rows": opts.small_rows,
        "exact_max_rows": opts.exact_max_rows,
        "partial": partial,
        "prices": dict(prices) if prices else None,
        "task": run_task(run),
        "data_state": run_token(run),
    }
    if params["task"] not in (MULTICLASS, REGRESSION):
        params["thresholds"] = {
            r: float((thresholds or {}).get(r, run[r].get("threshold", DEFAULT_THRESHOLD))) for r in ROLES
        }
    return params


def _coverage(run: dict, labels: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": run["status"],
        "rows_done": int(run["rows_done"] or 0),
        "rows_total": int(run["rows_total"] or 0),
        "complete": run["status"] == "finished",
        "labels": labels,
    }
