"""The evidence a decision judges: the growing paired sample of a baseline/candidate pair, and its bounds.

A decision on a run judges every finished run of the same registered pair (the growing sample a scheduled job
builds slice by slice), each request once (the latest run's copy of a request id). On those rows it computes,
for every metric a gate names, both models' values and the delta's *anytime-valid* one-sided bounds at the
policy's level (:mod:`workbench.evaluate.sequential`), overall, per declared segment, on the most recent
window, after the latest change point and on the bins of each drifted feature; the candidate's error rate and
both models' latency percentiles with bounds of the same kind; what each model cost to run, from the runs'
measurements. The result is a dict of the ``evaluate --json``
shape (``baseline``/``candidate``/``delta`` per metric, ``segments``, ``errors``, ``latency``) plus
``recent``, ``after_change``, ``drifted_slices`` and what the record cites (runs, rows, time range, a digest
of the labels), which :func:`workbench.decide.scorecard.score` judges.

Bounds: ``ci_low`` and ``ci_high`` are each one-sided at alpha = 1 - confidence, valid however often the
sample is judged as it grows. A gate passes only when every bound it needs clears its margin (an
intersection-union test: no correction is needed for the false-promote rate across gates). Declaring a
*segment* (or a drifted feature's bin) surely worse uses a Bonferroni-corrected bound (``fail_low``/``fail_high``
at alpha / slices judged), so many slices do not multiply the chance of a false alarm.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.clock import iso, to_utc
from workbench.decide.policy import Policy
from workbench.evaluate.metrics import METRICS, Grouping, grouping
from workbench.evaluate.multiclass import multiclass_sequential_parts
from workbench.evaluate.multiclass_run import probability_matrix
from workbench.evaluate.regression import is_gate_metric, sequential_parts
from workbench.evaluate.resources import combine_runs, compare_resources
from workbench.evaluate.sequential import (
    PairedParts,
    one_sided_bounds,
    paired_parts,
    proportion_bounds,
    quantile_bounds,
)
from workbench.tasks import BINARY, MULTICLASS, REGRESSION

PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


@dataclass(frozen=True)
class Sample:
    """Every replayed request of the pair's runs once, in event-time order (arrays of one length).

    ``label`` is NaN where unlabelled (0/1, or a number for a regression ``task``, whose scores are the models'
    predictions); a score is NaN where its model failed. For a multi-class ``task`` the label is the index of its
    class in ``classes`` and each model's scores are n x 2: (the predicted class's index, the probability the
    model gave the label's class); for a regression ``task`` with ``quantiles`` (levels, ascending) each model's
    scores are n x (1 + levels): the prediction, then its quantiles (NaN where it gave none); ``segments`` maps
    each declared
    column to its values as text; ``features`` maps each drifted feature to its values (float, NaN where
    missing, or text for a categorical one).
    """

    request_id: np.ndarray
    time: np.ndarray  # datetime64[us], UTC
    label: np.ndarray
    baseline: np.ndarray
    candidate: np.ndarray
    baseline_failed: np.ndarray
    candidate_failed: np.ndarray
    latency_baseline: np.ndarray
    latency_candidate: np.ndarray
    segments: dict[str, np.ndarray] = field(default_factory=dict)
    runs: tuple[str, ...] = ()
    online: bool = False
    thresholds: tuple[float, float] = (0.5, 0.5)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    task: str = BINARY
    classes: tuple[str, ...] = ()  # a multi-class run's classes
    quantiles: tuple[float, ...] = ()  # a regression run's quantile levels

    def __len__(self) -> int:
        return len(self.label)

    @classmethod
    def from_tables(
        cls,
        tables: list[tuple[str, pa.Table]],
        *,
        online: bool,
        thresholds: tuple[float, float],
        task: str = BINARY,
        classes: tuple[str, ...] = (),
        quantiles: tuple[float, ...] = (),
    ) -> Sample:
        """The sample of runs' :meth:`~workbench.store.Store.decision_rows` tables (oldest run first): a request
        id seen in several runs counts once, from the latest run."""
        runs = tuple(r for r, _ in tables)
        table = pa.concat_tables([t for _, t in tables], promote_options="default") if tables else None
        if table is None or table.num_rows == 0:
            empty = np.array([], dtype=np.float64)
            return cls(
                np.array([], dtype=object),
                np.array([], dtype="datetime64[us]"),
                *(empty,) * 3,
                *(np.array([], dtype=bool),) * 2,
                empty,
                empty,
                runs=runs,
                online=online,
                thresholds=thresholds,
                task=task,
                classes=classes,
                quantiles=quantiles,
            )
        ids = table.column("request_id").to_numpy(zero_copy_only=False).astype(object)
        times = table.column("event_time").cast(pa.timestamp("us")).to_numpy().astype("datetime64[us]")
        if len(tables) > 1:  # the latest run's copy of each request: unique over the reversed rows
            _, first = np.unique(ids[::-1], return_index=True)
            keep = len(ids) - 1 - first
        else:
            keep = np.arange(len(ids))
        keep = _event_order(table.column("request_id"), times, keep)

        def col(name: str, dtype: Any = np.float64) -> np.ndarray:
            a = table.column(name)
            if dtype is bool:
                return a.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)[keep]
            return a.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)[keep]

        segments = {
            name.removeprefix("segment:"): table.column(name).fill_null("(null)").to_numpy(zero_copy_only=False)[keep]
            for name in table.column_names
            if name.startswith("segment:")
        }
        features = {
            name.removeprefix("feature:"): _feature_values(table.column(name))[keep]
            for name in table.column_names
            if name.startswith("feature:")
        }
        if task == MULTICLASS:
            base, cand = (np.column_stack([col(f"{r}_score"), col(f"{r}_true_p")]) for r in ("baseline", "candidate"))
        elif quantiles:

            def with_quantiles(role: str) -> np.ndarray:
                column = table.column(f"{role}_quantiles")
                if pa.types.is_null(column.type):  # no run of the sample stored them
                    q = np.full((table.num_rows, len(quantiles)), math.nan)
                else:
                    q = probability_matrix(column, len(quantiles))
                return np.column_stack([col(f"{role}_score"), q[keep]])

            base, cand = with_quantiles("baseline"), with_quantiles("candidate")
        else:
            base, cand = col("baseline_score"), col("candidate_score")
        return cls(
            ids[keep],
            times[keep],
            col("label"),
            base,
            cand,
            col("baseline_failed", bool),
            col("candidate_failed", bool),
            col("baseline_latency_ms"),
            col("candidate_latency_ms"),
            segments,
            runs,
            online,
            thresholds,
            features,
            task,
            classes,
            quantiles,
        )

    def labelled(self) -> np.ndarray:
        """Rows with a label that both models scored: the paired quality sample."""
        base, cand = (s if s.ndim == 1 else s[:, 0] for s in (self.baseline, self.candidate))
        return np.isfinite(self.label) & np.isfinite(base) & np.isfinite(cand)

    def cite(self) -> dict[str, Any]:
        """What a signed record cites: the runs, the labelled rows, their time range and a digest of them
        (SHA-256 of ``<request id> 0x1f <label> 0x1e`` per labelled row in order, the label an integer, or the
        hex of a regression's number)."""
        ok = self.labelled()
        t = self.time[ok]
        return {
            "runs": list(self.runs),
            "rows": len(self),
            "labelled_rows": int(ok.sum()),
            "first_event": _iso(t.min()) if len(t) else None,
            "last_event": _iso(t.max()) if len(t) else None,
            "labels_digest": _labels_digest(self.request_id[ok], self.label[ok], self.task == REGRESSION),
        }


def _event_order(ids: pa.ChunkedArray, times: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``keep`` (row indices, one per request id) in event-time order, ties by request id: deterministic. Sorted in
    Arrow (a string sort of object arrays in NumPy took 10 s for 10M rows); rows already in order stay as they are."""
    t = times[keep]
    if len(t) < 2 or bool((t[1:] > t[:-1]).all()):
        return keep
    by = pa.table({"time": pa.array(t), "id": ids.take(pa.array(keep))})
    return keep[pc.sort_indices(by, sort_keys=[("time", "ascending"), ("id", "ascending")]).to_numpy()]


def _labels_digest(ids: np.ndarray, labels: np.ndarray, regression: bool) -> str:
    """SHA-256 of ``<id> 0x1f <label> 0x1e`` over the rows. Text or integer ids with integer labels are joined in
    Arrow and hashed in one call (a call per row took 17 s for 10M rows); others row by row (the same bytes)."""
    h = hashlib.sha256()
    text = None if regression else _ids_text(ids)
    if text is None:
        for rid, lab in zip(ids.tolist(), labels.tolist(), strict=True):
            h.update(f"{rid}\x1f{float(lab).hex() if regression else int(lab)}\x1e".encode())
        return h.hexdigest()
    values, index = np.unique(labels.astype(np.int64), return_inverse=True)
    ends = pa.array([f"{v}\x1e" for v in values.tolist()], type=pa.large_string()).take(pa.array(index))
    joined = pc.binary_join_element_wise(text, ends, pa.scalar("\x1f", pa.large_string()))
    if len(joined):
        offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset : joined.offset + len(joined) + 1]
        h.update(memoryview(joined.buffers()[2])[offsets[0] : offsets[-1]])
    return h.hexdigest()


def _ids_text(ids: np.ndarray) -> pa.Array | None:
    """Request ids as Arrow text spelled as Python prints them: text or integer ids (None for any other kind)."""
    try:
        a = pa.array(ids)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds
        return None
    if pa.types.is_integer(a.type) or pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
        return a.cast(pa.large_string()) if a.null_count == 0 else None
    return None


def _feature_values(column: pa.ChunkedArray) -> np.ndarray:
    """A feature's values: float64 (NaN where missing) for numbers and booleans, else text."""
    t = column.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        return column.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
    return column.cast(pa.string()).fill_null("(null)").to_numpy(zero_copy_only=False).astype(object)


def _iso(t: np.datetime64) -> str:
    return iso(to_utc(t.astype("datetime64[us]").astype(datetime)))


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _metric_block(
    metrics: list[str],
    y: np.ndarray,
    base: np.ndarray,
    cand: np.ndarray,
    thresholds: tuple[float, float],
    alpha: float,
    t_star: float,
    fail_alpha: float | None = None,
    classes: tuple[str, ...] = (),
    levels: tuple[float, ...] = (),
) -> dict[str, Any]:
    """``baseline``/``candidate``/``delta`` per metric on these rows, with anytime-valid one-sided bounds
    (``classes``: a multi-class run's; ``levels``: a regression run's quantile levels). The score metrics share
    each model's sort of these rows."""
    out: dict[str, Any] = {"rows": int(len(y)), "baseline": {}, "candidate": {}, "delta": {}}
    sorted_: list[Grouping] = []

    def groupings() -> tuple[Grouping, Grouping]:
        if not sorted_:
            sorted_.extend((grouping(y, base), grouping(y, cand)))
        return sorted_[0], sorted_[1]

    for m in metrics:
        parts = _parts(m, y, base, cand, thresholds, classes, levels, groupings) if len(y) else None
        if parts is None:
            out["baseline"][m] = out["candidate"][m] = out["delta"][m] = None
            continue
        n = len(parts.psi_delta)
        sd = float(parts.psi_delta.std())
        lo, hi = one_sided_bounds(parts.delta, sd, n, alpha, t_star, parts.span)
        delta = {"value": parts.delta, "ci_low": _num(lo), "ci_high": _num(hi), "sd": sd, "rows": n}
        if fail_alpha is not None:
            flo, fhi = one_sided_bounds(parts.delta, sd, n, fail_alpha, t_star, parts.span)
            delta |= {"fail_low": _num(flo), "fail_high": _num(fhi), "fail_alpha": fail_alpha}
        csd = float(parts.psi_candidate.std())
        clo, chi = one_sided_bounds(parts.candidate, csd, n, alpha, t_star)
        out["baseline"][m] = {"value": parts.baseline}
        out["candidate"][m] = {"value": parts.candidate, "ci_low": _num(clo), "ci_high": _num(chi), "sd": csd}
        out["delta"][m] = delta
    return out


def _parts(
    metric: str,
    y: np.ndarray,
    base: np.ndarray,
    cand: np.ndarray,
    thresholds: tuple[float, float],
    classes: tuple[str, ...] = (),
    levels: tuple[float, ...] = (),
    groupings: Callable[[], tuple[Grouping, Grouping]] | None = None,
) -> PairedParts | None:
    """A gate metric's paired parts: from per-request losses for a regression metric (``y`` numbers, the scores
    predictions), from classes and the true class's probabilities for a multi-class run (``classes`` given; the
    scores n x 2), from the scores and 0/1 labels for a binary one (its score metrics on ``groupings()``)."""
    if classes:
        return multiclass_sequential_parts(metric, y, base, cand, classes)
    if is_gate_metric(metric):
        return sequential_parts(metric, y, base, cand, levels)
    by_score = groupings is not None and metric in METRICS and METRICS[metric].from_scores
    return paired_parts(metric, y, base, cand, thresholds, groupings() if groupings and by_score else None)


def gated_metrics(policy: Policy) -> list[str]:
    """Every metric a metric or segment gate of ``policy`` names, in first-mention order."""
    return list(dict.fromkeys([g.metric for g in policy.metrics] + [g.metric for g in policy.segments]))


def build_evidence(
    sample: Sample,
    policy: Policy,
    *,
    change_point: datetime | None = None,
    drifted: Mapping[str, str] | None = None,
    resources: Sequence[tuple[str, dict | None]] = (),
) -> dict[str, Any]:
    """The dict :func:`~workbench.decide.scorecard.score` judges, from ``sample`` under ``policy``;
    ``drifted``: the features the drift report found drifted, with their kinds (their values in ``sample``);
    ``resources``: each run's measured resources (run id, ``meta.resources`` or None), oldest first, combined
    into one comparison (each measurement's median over the runs that have it) priced at the policy's prices."""
    alpha, t_star = policy.alpha, float(policy.planned_rows)
    ok = sample.labelled()
    y = sample.label[ok] if sample.task == REGRESSION else sample.label[ok].astype(np.int64)
    base, cand, times = sample.baseline[ok], sample.candidate[ok], sample.time[ok]
    overall_metrics = [g.metric for g in policy.metrics]
    thr = sample.thresholds
    ev: dict[str, Any] = {
        "bound": "sequential",
        "confidence": policy.confidence,
        "alpha": alpha,
        "planned_rows": policy.planned_rows,
        "labeled_rows": int(ok.sum()),
        "evidence": sample.cite(),
        "thresholds": {"baseline": thr[0], "candidate": thr[1]},
    }
    if sample.task != BINARY:
        ev["task"] = sample.task
    if sample.task == MULTICLASS:
        ev["classes"] = list(sample.classes)
    ev |= _metric_block(
        overall_metrics, y, base, cand, thr, alpha, t_star, classes=sample.classes, levels=sample.quantiles
    )
    ev["segments"] = _segments(sample, ok, policy, y, base, cand)
    if policy.drift.recent_share is not None and len(times):
        first, last = times.min(), times.max()
        start = last - (last - first) * policy.drift.recent_share
        ev["recent"] = _slice(times >= start, _iso(start), overall_metrics, y, base, cand, thr, policy, sample)
    if policy.drift.after_change_point and change_point is not None:
        cp = np.datetime64(to_utc(change_point).replace(tzinfo=None), "us")
        ev["after_change"] = _slice(
            times >= cp, iso(to_utc(change_point)), overall_metrics, y, base, cand, thr, policy, sample
        )
    if policy.drift.drifted_slices and drifted:
        bins = {
            f: _bins(sample.features[f][ok], kind, policy.drift.slice_bins, policy.min_segment_rows)
            for f, kind in drifted.items()
            if f in sample.features
        }
        ev["drifted_slices"] = _judge_groups(bins, overall_metrics, y, base, cand, thr, policy, sample)
    ev["errors"] = _errors(sample, alpha, t_star)
    ev["latency"] = _latency(sample, alpha, t_star)
    measured = [(run, m) for run, m in resources if m]
    ev["resources"] = compare_resources(
        combine_runs([m for _, m in measured]), policy.price_list, [run for run, _ in measured]
    )
    return ev


def _bins(values: np.ndarray, kind: str, bins: int, min_rows: int) -> dict[str, np.ndarray]:
    """Masks of a feature's slices, by label: ``bins`` quantile bins of a numeric feature (edges from these
    rows, ties merged; ``< a``, ``in [a, b)``, ``>= b``) and its ``(missing)`` values, or each value ``= v``
    of a categorical one with at least ``min_rows`` rows, the rarer values together as one slice."""
    out: dict[str, np.ndarray] = {}
    if kind == "categorical" or values.dtype == object:
        if values.dtype == object:
            names, inverse = np.unique(values.astype(str), return_inverse=True)
        else:  # numbers spelled ``{v:g}``: each distinct bit pattern once (-0 and 0 spell apart), then by text
            bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
            _, first, at = np.unique(bits, return_index=True, return_inverse=True)
            names, inverse = np.unique(np.array([f"{v:g}" for v in values[first].tolist()]), return_inverse=True)
            inverse = inverse[at]
        counts = np.bincount(inverse, minlength=len(names))
        out |= {f"= {name}": inverse == i for i, name in enumerate(names) if counts[i] >= min_rows}
        rare = np.flatnonzero(counts < min_rows)
        if len(rare):
            out[f"(rarer values: {len(rare)})"] = np.isin(inverse, rare)
        return out
    finite = np.isfinite(values)
    if finite.any():
        edges = np.unique(np.quantile(values[finite], np.linspace(0, 1, bins + 1)[1:-1]))
        index = np.searchsorted(edges, values, side="right")
        labels = [f"< {edges[0]:.4g}"] if len(edges) else ["all values"]
        labels += [f"in [{lo:.4g}, {hi:.4g})" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        labels += [f">= {edges[-1]:.4g}"] if len(edges) else []
        for i, label in enumerate(labels):
            out[label] = finite & (index == i)
    if not finite.all():
        out["(missing)"] = ~finite
    return out


def _slice(
    mask: np.ndarray,
    start: str,
    metrics: list[str],
    y: np.ndarray,
    base: np.ndarray,
    cand: np.ndarray,
    thr: tuple[float, float],
    policy: Policy,
    sample: Sample,
) -> dict[str, Any]:
    rows = int(mask.sum())
    out: dict[str, Any] = {"from": start, "rows": rows, "small": rows < policy.min_segment_rows}
    if not out["small"]:
        t_star = float(policy.planned_rows)
        out |= _metric_block(
            metrics,
            y[mask],
            base[mask],
            cand[mask],
            thr,
            policy.alpha,
            t_star,
            classes=sample.classes,
            levels=sample.quantiles,
        )
    return out


def _segments(
    sample: Sample,
    ok: np.ndarray,
    policy: Policy,
    y: np.ndarray,
    base: np.ndarray,
    cand: np.ndarray,
) -> dict[str, Any]:
    metrics = list(dict.fromkeys(g.metric for g in policy.segments))
    if not metrics:
        return {}
    groups = {}
    for col, v in sample.segments.items():
        names, inverse = np.unique(v[ok].astype(str), return_inverse=True)
        groups[col] = {str(name): inverse == i for i, name in enumerate(names)}
    return _judge_groups(groups, metrics, y, base, cand, sample.thresholds, policy, sample)


def _judge_groups(
    groups: dict[str, dict[str, np.ndarray]],
    metrics: list[str],
    y: np.ndarray,
    base: np.ndarray,
    cand: np.ndarray,
    thresholds: tuple[float, float],
    policy: Policy,
    sample: Sample,
) -> dict[str, Any]:
    """Each slice (a mask of the labelled rows) of each column, largest first: too small (fewer than the
    policy's ``min_segment_rows``) or its metric block, whose fail bounds are Bonferroni-corrected across the
    slices judged."""
    judged = sum(int(m.sum()) >= policy.min_segment_rows for g in groups.values() for m in g.values())
    fail_alpha = policy.alpha / max(1, judged)
    out: dict[str, Any] = {}
    for col, g in groups.items():
        out[col] = {}
        for name, mask in sorted(g.items(), key=lambda kv: -int(kv[1].sum())):
            rows = int(mask.sum())
            if rows < policy.min_segment_rows:
                out[col][name] = {"rows": rows, "small": True}
                continue
            block = _metric_block(
                metrics,
                y[mask],
                base[mask],
                cand[mask],
                thresholds,
                policy.alpha,
                float(policy.planned_rows),
                fail_alpha,
                sample.classes,
                sample.quantiles,
            )
            out[col][name] = {"small": False, "share": rows / max(1, len(y))} | block
    return out


def _errors(sample: Sample, alpha: float, t_star: float) -> dict[str, Any]:
    n = len(sample)
    out = {}
    for role, failed in (("baseline", sample.baseline_failed), ("candidate", sample.candidate_failed)):
        k = int(failed.sum())
        lo, hi = proportion_bounds(k, n, alpha, t_star)
        out[role] = {"count": k, "rows": n, "rate": k / n if n else None, "ci_low": lo, "ci_high": hi}
    return out


def _latency(sample: Sample, alpha: float, t_star: float) -> dict[str, Any]:
    out: dict[str, Any] = {"online": sample.online, "baseline": {}, "candidate": {}}
    for role, lat, failed in (
        ("baseline", sample.latency_baseline, sample.baseline_failed),
        ("candidate", sample.latency_candidate, sample.candidate_failed),
    ):
        x = lat[~failed & np.isfinite(lat)]
        out[role]["rows"] = int(len(x))
        for p, q in PERCENTILES.items():
            est, lo, hi = quantile_bounds(x, q, alpha, t_star)
            out[role][p] = {"value": _num(est), "ci_low": _num(lo), "ci_high": _num(hi)}
    return out
