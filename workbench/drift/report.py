"""Drift of a replay run against a reference: data drift per feature, prediction drift, concept and
calibration drift, performance estimated while labels are delayed, and data quality. A regression run gets
residual drift (each model's prediction - y, reference against current, with the same stat tests) instead of
calibration drift and CBPE, and its concept detector watches the absolute-error stream.

Stat tests live in :mod:`workbench.drift.stattests`; the default choice follows Evidently 0.7's
``DataDriftPreset``: with at most 1000 reference values, KS for numeric
columns with more than 5 distinct values, chi-squared otherwise, the z-test for two values; with more,
the normed Wasserstein distance for numeric columns (Jensen-Shannon when they have at most 5 values)
and Jensen-Shannon for categorical ones; dataset drift when the drifted share is at least 0.5. Column
kinds follow Evidently's inference: floats are numeric, integers are numeric above 10 distinct current
values, text and booleans are categorical.

The reference is summarized once in DuckDB (:mod:`workbench.drift.sketch`); statistics are computed in DuckDB
over the current rows. Concept drift, calibration drift and label-delay estimates live in
:mod:`workbench.drift.concept`, data quality in :mod:`workbench.drift.quality`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from workbench import WorkbenchError
from workbench.clock import db_time, iso, parse_time, parse_window, utc_now
from workbench.drift.concept import (
    PageHinkley,
    calibration_drift,
    cbpe,
    error_stream_drift,
    fit_calibrator,
    regression_error_drift,
)
from workbench.drift.quality import column_quality
from workbench.drift.sketch import ColumnSketch, ColumnSource, RowSet, SqlPair, domain_of, ensure_sketches, is_integer
from workbench.drift.stattests import default_test, stat_test
from workbench.evaluate.metrics import binary_metrics
from workbench.roles import ROLES
from workbench.store import Store, check_name
from workbench.tasks import BINARY, MULTICLASS, REGRESSION, run_classes, run_task

log = logging.getLogger(__name__)
DEFAULT_REFERENCE_SHARE = 0.2
SCORE = "score"  # the key of prediction-drift overrides in ``tests`` / ``thresholds``
RESIDUAL = "residual"  # the key of residual-drift overrides (regression runs)


# -- data drift over columns -----------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureDrift:
    column: str
    kind: str
    test: str | None
    statistic: float | None
    threshold: float | None
    drifted: bool
    method: str | None  # "sketch": from the stored reference summary; "exact": read the reference rows
    reference_rows: int
    current_rows: int
    note: str | None = None

    def to_dict(self) -> dict:
        d = {
            "test": self.test,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "method": self.method,
            "kind": self.kind,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
        }
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class DataDrift:
    features: dict
    share_drifted: float
    dataset_drift: bool
    drift_share: float

    def to_dict(self) -> dict:
        return {
            "features": {c: f.to_dict() for c, f in self.features.items()},
            "share_drifted": self.share_drifted,
            "dataset_drift": self.dataset_drift,
            "drift_share": self.drift_share,
        }


def infer_kind(store: Store, current: RowSet, column: str, dtype: str, profile: dict) -> str:
    """Evidently's column kind: text and booleans categorical, floats numeric, integers numeric above 10
    distinct current values."""
    if domain_of(dtype) == "str":
        return "categorical"
    if not is_integer(dtype):
        return "numerical"
    if (profile["approx_unique"] or 0) > 100:
        return "numerical"
    n = len(store.drift_counts(ColumnSource(column, "num", rows=current)))
    return "categorical" if n <= 10 else "numerical"


def _check_overrides(overrides: Mapping, columns: list[str], what: str) -> None:
    unknown = sorted(set(overrides) - set(columns) - {"*", SCORE, RESIDUAL})
    if unknown:
        raise WorkbenchError(f"{what} for unknown column(s) {', '.join(unknown)}; columns: {', '.join(columns)}")


def compare_columns(
    store: Store,
    reference: RowSet,
    current: RowSet,
    columns: list[str],
    *,
    reference_key: str,
    tests: Mapping[str, str] | None = None,
    thresholds: Mapping[str, float] | None = None,
    drift_share: float = 0.5,
    sketches: dict[str, ColumnSketch] | None = None,
    current_profile: dict | None = None,
) -> DataDrift:
    """Drift of each column of ``current`` against ``reference`` (summarized under ``reference_key``).

    ``tests`` and ``thresholds`` override the default test and its threshold per column (``"*"``: all).
    """
    tests, thresholds = dict(tests or {}), dict(thresholds or {})
    _check_overrides(tests, columns, "--test")
    _check_overrides(thresholds, columns, "--threshold")
    for name in tests.values():
        stat_test(name)
    sketches = sketches or ensure_sketches(store, reference, columns, reference_key)
    types = store.drift_column_types(current, columns)
    if current_profile is None:
        _, current_profile = store.drift_profile(current, {c: domain_of(types[c]) or "str" for c in columns})
    features = {}
    for c in columns:
        sk, prof = sketches[c], current_profile[c]
        if domain_of(types[c]) != sk.domain:
            raise WorkbenchError(f"column {c!r} is {sk.dtype} in the reference but {types[c]} in the current rows")
        kind = infer_kind(store, current, c, types[c], prof)
        pair = SqlPair(
            store, c, kind, sk, reference_key, reference, current, prof, is_integer(types[c]) and is_integer(sk.dtype)
        )
        if pair.ref_n == 0 or pair.cur_n == 0:
            side = "reference" if pair.ref_n == 0 else "current rows"
            features[c] = FeatureDrift(
                c,
                kind,
                None,
                None,
                None,
                False,
                None,
                pair.ref_n,
                pair.cur_n,
                note=f"no values in the {side}: not compared",
            )
            continue
        chosen = tests.get(c) or tests.get("*")
        name = chosen or default_test(pair)
        test = stat_test(name)
        if chosen and kind not in test.kinds:
            raise WorkbenchError(
                f"drift test {name!r} does not apply to {kind} column {c!r} "
                f"(it takes {', '.join(sorted(test.kinds))} columns)"
            )
        threshold = float(thresholds.get(c, thresholds.get("*", test.default_threshold)))
        statistic, drifted = test.func(pair, threshold)
        features[c] = FeatureDrift(
            c, kind, name, float(statistic), threshold, bool(drifted), pair.method, pair.ref_n, pair.cur_n
        )
    compared = [f for f in features.values() if f.test]
    share = sum(f.drifted for f in compared) / len(compared) if compared else 0.0
    return DataDrift(features, share, bool(compared) and share >= drift_share, drift_share)


def compare_frames(reference, current, columns: list[str] | None = None, **options) -> DataDrift:
    """Drift between two pandas DataFrames or Arrow tables (same columns), through an in-memory store."""
    ref = reference if isinstance(reference, pa.Table) else pa.Table.from_pandas(reference, preserve_index=False)
    cur = current if isinstance(current, pa.Table) else pa.Table.from_pandas(current, preserve_index=False)
    columns = list(columns or ref.column_names)
    with Store(":memory:") as store:
        store.drift_import_table("frame_reference", ref)
        store.drift_import_table("frame_current", cur)
        return compare_columns(
            store,
            RowSet("frame_reference", "table"),
            RowSet("frame_current", "table"),
            columns,
            reference_key="frames",
            **options,
        )


# -- the report of a run ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftReport:
    run_id: str
    created_at: str
    reference: dict
    current: dict
    data: DataDrift
    prediction_drift: dict
    residual_drift: dict
    concept_drift: dict
    calibration_drift: dict
    estimated_performance: dict
    quality: dict
    params: dict
    html: str | None = None
    sources: tuple = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict:
        d = self.data.to_dict()
        return {
            "run_id": self.run_id,
            "created_at": self.created_at,
            "reference": self.reference,
            "current": self.current,
            "features": d["features"],
            "share_drifted": d["share_drifted"],
            "dataset_drift": d["dataset_drift"],
            "drift_share": d["drift_share"],
            "prediction_drift": self.prediction_drift,
            "residual_drift": self.residual_drift,
            "concept_drift": self.concept_drift,
            "calibration_drift": self.calibration_drift,
            "estimated_performance": self.estimated_performance,
            "quality": self.quality,
            "params": self.params,
            "html": self.html,
        }


def _window_range(start, end) -> tuple:
    return ((db_time(start), -1) if start else None, (db_time(end), -1) if end else None)


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def rows_key(rows: RowSet, fingerprint: str) -> str:
    """The sketch key of rows' feature columns: the rows and the data version, not which run or model read them."""
    return replace(rows, run_id=None, score_key=None).key(fingerprint)


def _pinned_uri(model: dict) -> str:
    if model.get("name") and model.get("version"):
        return f"models:/{model['name']}/{model['version']}"
    return model["uri"]


@dataclass(frozen=True)
class _Resolved:
    reference: RowSet
    current: RowSet
    description: dict
    fingerprint: str
    columns: list


def _resolve(store: Store, run: dict, spec: str | None, current_window: str | None, features: list[str]) -> _Resolved:
    traffic = run["traffic"]
    info = store.require_traffic(traffic)
    committed = store.committed_ranges(run["run_id"])
    max_row = committed[-1][1] if committed else -1
    if max_row < 0:
        raise WorkbenchError(f"run {run['run_id']} has no replayed rows yet")
    classes = tuple(run_classes(run))
    run_rows = RowSet(traffic, max_row=max_row, run_id=run["run_id"], classes=classes)
    cur = run_rows
    if current_window:
        cur = replace(run_rows, ranges=(_window_range(*parse_window(current_window)),))
    models = "|".join(f"{_pinned_uri(run[r])}" for r in ROLES)
    columns = [c for c in info["columns"] if c in features]
    if spec is None:
        n = store.drift_describe(run_rows)["rows"]
        k = int(n * DEFAULT_REFERENCE_SHARE)
        if k < 1 or k >= n:
            raise WorkbenchError(
                f"run {run['run_id']} has {n} rows: too few to split off a reference; pass --reference"
            )
        cut = store.drift_rank_bound(traffic, max_row, k)
        ref = replace(run_rows, ranges=((None, cut),))
        if not current_window:
            cur = replace(run_rows, ranges=((cut, None),))
        desc = {
            "kind": "default",
            "spec": None,
            "traffic": traffic,
            "description": f"the earliest {DEFAULT_REFERENCE_SHARE:.0%} of the run's traffic by event time",
        }
        return _Resolved(ref, cur, desc, info["fingerprint"], columns)
    if spec == "training":
        mlflow_run = run["baseline"].get("run_id")
        if not mlflow_run:
            raise WorkbenchError("the baseline model has no MLflow run, so no training reference is logged with it")
        table = "drift_ref_" + _digest(mlflow_run)
        if store.drift_table_columns(table) is None:
            import pyarrow.parquet as pq

            from workbench.replay.models import download_reference

            store.drift_import_table(table, pq.read_table(download_reference(mlflow_run)))
        table_columns = store.drift_table_columns(table)
        if table_columns is None:
            raise WorkbenchError(f"the training reference of MLflow run {mlflow_run} was not stored (table {table})")
        ref = RowSet(table, "table", score_key=_digest(table, models), classes=classes)
        desc = {
            "kind": "training",
            "spec": spec,
            "mlflow_run_id": mlflow_run,
            "table": table,
            "description": "the training sample logged with the baseline model (reference/reference.parquet)",
        }
        return _Resolved(ref, cur, desc, "mlflow:" + mlflow_run, _common(columns, table_columns, desc))
    if ".." in spec:
        start, end = parse_window(spec)
        lo, hi = _window_range(start, end)
        if lo is None and hi is None:
            raise WorkbenchError("the reference window '..' covers the whole run: give a start or an end")
        ref = replace(run_rows, ranges=((lo, hi),))
        if not current_window:
            rest = ([(None, lo)] if lo is not None else []) + ([(hi, None)] if hi is not None else [])
            cur = replace(run_rows, ranges=tuple(rest))
        desc = {
            "kind": "window",
            "spec": spec,
            "traffic": traffic,
            "start": iso(start),
            "end": iso(end),
            "description": f"the run's traffic from {iso(start) or 'its start'} to {iso(end) or 'its end'}",
        }
        return _Resolved(ref, cur, desc, info["fingerprint"], columns)
    other = store.require_traffic(check_name(spec, "traffic name"))
    if spec == traffic:
        raise WorkbenchError(
            f"traffic {spec!r} is the run's own traffic: compare a time window of it instead "
            "(--reference START..END), or leave --reference out"
        )
    ref = RowSet(spec, score_key=_digest(spec, other["fingerprint"], models), classes=classes)
    desc = {"kind": "traffic", "spec": spec, "traffic": spec, "description": f"all of traffic {spec!r}"}
    return _Resolved(ref, cur, desc, other["fingerprint"], _common(columns, set(other["columns"]), desc))


def _common(columns: list[str], have: Collection[str], desc: dict) -> list[str]:
    missing = [c for c in columns if c not in have]
    if missing:
        desc["missing_columns"] = missing
    common = [c for c in columns if c in have]
    if not common:
        raise WorkbenchError(f"the reference has none of the run's feature columns ({', '.join(columns)})")
    return common


def _ensure_reference_scores(store: Store, ref: RowSet, run: dict, predictors: Mapping | None) -> dict[str, str]:
    """Score a reference that the run did not replay (once; stored). Returns role -> reason for roles that
    cannot be scored (the reference lacks the model's features)."""
    from workbench.replay.scoring import ModelRunner, score_throughput

    score_key = ref.score_key
    if score_key is None:
        raise ValueError(f"reference {ref.source!r} was not replayed by the run, so it needs a score key")
    skipped = {}
    for role in ROLES:
        if store.drift_ref_scores_count(score_key, role):
            continue
        features = list(run[role]["features"])
        have = (
            store.drift_table_columns(ref.source)
            if ref.kind == "table"
            else {c: "" for c in store.require_traffic(ref.source)["columns"]}
        )
        if have is None:
            raise WorkbenchError(f"the reference table {ref.source} does not exist")
        lacking = [f for f in features if f not in have]
        if lacking:
            skipped[role] = f"the reference lacks the {role}'s feature(s) {', '.join(lacking)}"
            continue
        if predictors is None:
            from workbench.replay.models import load_predictor

            predictors = {r: load_predictor(_pinned_uri(run[r]), "cpu") for r in ROLES}
        model = predictors[role]
        parts = []
        for rb in store.drift_batches(ref, features, 8192):
            batch = pa.Table.from_batches([rb])
            s = score_throughput(ModelRunner(model), batch).scores
            if s.ndim == 2:  # a multi-class model: its predicted class's index
                s = np.where(np.isfinite(s).all(axis=1), np.nan_to_num(s).argmax(axis=1), np.nan)
            parts.append(pa.table({"_row": batch.column("_row"), "score": pa.array(s, from_pandas=True)}))
        data = (
            pa.concat_tables(parts)
            if parts
            else pa.table({"_row": pa.array([], pa.int64()), "score": pa.array([], pa.float64())})
        )
        log.info("scored the reference with the %s model (%d rows)", role, data.num_rows)
        store.drift_save_ref_scores(score_key, role, data)
    return skipped


def _prediction_drift(store: Store, res: _Resolved, run: dict, skipped: dict, tests: dict, thresholds: dict) -> dict:
    over_t = {SCORE: tests[SCORE]} if SCORE in tests else {}
    over_h = {SCORE: thresholds[SCORE]} if SCORE in thresholds else {}
    out = {}
    for role in ROLES:
        if role in skipped:
            out[role] = {"available": False, "reason": skipped[role]}
            continue
        ref, cur = res.reference.scores(role), res.current.scores(role)
        key = ref.key(res.fingerprint)
        dd = compare_columns(store, ref, cur, [SCORE], reference_key=key, tests=over_t, thresholds=over_h)
        out[role] = dd.features[SCORE].to_dict() | {"available": True}
    ref, cur = res.current.scores("baseline"), res.current.scores("candidate")
    dd = compare_columns(
        store, ref, cur, [SCORE], reference_key=ref.key(res.fingerprint), tests=over_t, thresholds=over_h
    )
    thr = None if run_task(run) != BINARY else {r: float(run[r].get("threshold", 0.5)) for r in ROLES}
    out["baseline_vs_candidate"] = dd.features[SCORE].to_dict() | store.drift_paired(res.current, thr)
    return out


def _scored(store: Store, rows: RowSet, as_of, task: str) -> dict[str, np.ndarray]:
    t = store.drift_scored(rows, as_of, task)
    label = t.column("label").to_numpy(zero_copy_only=False)
    return {
        "time": t.column("event_time").to_numpy(zero_copy_only=False),
        "score": t.column("score").to_numpy(zero_copy_only=False).astype(np.float64),
        "label": np.asarray(label, dtype=np.float64),
        "known": t.column("label_known").to_numpy(zero_copy_only=False).astype(bool),
    }


def _residuals(store: Store, res: _Resolved, role: str, as_of) -> dict[str, np.ndarray]:
    """A regression model's finite residuals (prediction - y) on the labelled rows of the reference and the
    current window."""
    out = {}
    for side, rows in (("reference", res.reference), ("current", res.current)):
        s = _scored(store, rows.scores(role), as_of, REGRESSION)
        r = (s["score"] - s["label"])[s["known"]]
        out[side] = r[np.isfinite(r)]
    return out


def _residual_drift(residuals: dict[str, np.ndarray], tests: dict, thresholds: dict) -> dict:
    """A regression model's residuals on the reference's labelled rows against the current window's, with the
    stat test data drift would choose for them (or ``tests["residual"]``), and their mean (the bias) and mean
    absolute value (the MAE) on each side."""
    empty = [side for side, r in residuals.items() if not len(r)]
    if empty:
        return {"available": False, "reason": f"no labelled rows in the {empty[0]}"}
    dd = compare_frames(
        pa.table({RESIDUAL: residuals["reference"]}),
        pa.table({RESIDUAL: residuals["current"]}),
        tests={RESIDUAL: tests[RESIDUAL]} if RESIDUAL in tests else None,
        thresholds={RESIDUAL: thresholds[RESIDUAL]} if RESIDUAL in thresholds else None,
    )
    return (
        dd.features[RESIDUAL].to_dict()
        | {"available": True}
        | {f"{side}_bias": float(r.mean()) for side, r in residuals.items()}
        | {f"{side}_mae": float(np.abs(r).mean()) for side, r in residuals.items()}
    )


def _label_checks(store: Store, res: _Resolved, role: str, threshold: float, as_of, alpha: float) -> tuple[dict, dict]:
    """Calibration drift (label rate per reference score decile) and CBPE estimates for one model."""
    ref_rows = res.reference.scores(role)
    ref, cur = _scored(store, ref_rows, as_of, BINARY), _scored(store, res.current.scores(role), as_of, BINARY)
    sketch = store.drift_sketch_load(ref_rows.key(res.fingerprint)).get(SCORE) or {}
    edges = np.asarray((sketch.get("quantiles") or [0.0, 1.0])[::10], dtype=np.float64)
    rk, ck = ref["known"], cur["known"]
    cal = calibration_drift(ref["score"][rk], ref["label"][rk], cur["score"][ck], cur["label"][ck], edges, alpha)
    cal["bins_from"] = "deciles of the reference's scores (stored sketch)"
    est = cbpe(
        fit_calibrator(ref["score"][rk], ref["label"][rk].astype(np.int64)),
        cur["score"],
        cur["label"],
        cur["known"],
        threshold,
        lambda y, s: binary_metrics(y, s, threshold),
        times=cur["time"],
        landed=as_of is not None,
    )
    for chunk in est.get("chunks", []):
        chunk["start"], chunk["end"] = iso(chunk["start"]), iso(chunk["end"])
    if cal["detected"]:
        est["warning"] = (
            "calibration drift: the label rate per score bin moved since the reference, and CBPE "
            "assumes it did not, so these estimates are biased"
        )
    return cal, est


def drift_run(
    store: Store,
    run_id: str,
    reference: str | None = None,
    *,
    current: str | None = None,
    tests: Mapping[str, str] | None = None,
    thresholds: Mapping[str, float] | None = None,
    drift_share: float = 0.5,
    as_of: datetime | str | None = None,
    detector: PageHinkley = PageHinkley(),
    calibration_alpha: float = 0.05,
    predictors: Mapping | None = None,
    html: str | Path | None = None,
) -> DriftReport:
    """The drift report of replay run ``run_id``, stored in DuckDB and returned.

    ``reference``: None (the earliest 20% of the run's traffic by event time; the rest is current), a
    traffic name, a time window ``START..END`` of the run's traffic (the rest is current) or ``"training"``
    (the sample logged with the baseline model in MLflow). ``current``: a time window of the run (default:
    the run's rows outside the reference). ``as_of``: labels that arrived later count as not yet known.
    ``predictors`` score a reference the run did not replay (loaded from MLflow when needed and not given).
    ``html``: also write Evidently's HTML report of the same data there.
    A regression run also gets residual drift (each model's residuals, reference against current), its concept
    detector watches the absolute errors (as reference percentiles), and calibration drift and CBPE are marked
    unavailable.
    """
    run = store.require_run(run_id)
    as_of = None if as_of is None else db_time(parse_time(as_of) if isinstance(as_of, str) else as_of)
    tests, thresholds = dict(tests or {}), dict(thresholds or {})
    features = sorted(set(run["baseline"].get("features", [])) | set(run["candidate"].get("features", [])))
    res = _resolve(store, run, reference, current, features)
    ref_key = rows_key(res.reference, res.fingerprint)
    sketches = ensure_sketches(store, res.reference, res.columns, ref_key)
    types = store.drift_column_types(res.current, res.columns)
    domains = {c: domain_of(types[c]) or "str" for c in res.columns}
    bounds = {
        c: (s.min, s.max)
        for c, s in sketches.items()
        if s.domain == "num" and s.rows and s.min is not None and s.max is not None
    }
    cur_rows, profile = store.drift_profile(res.current, domains, bounds)
    data = compare_columns(
        store,
        res.reference,
        res.current,
        res.columns,
        reference_key=ref_key,
        tests=tests,
        thresholds=thresholds,
        drift_share=drift_share,
        sketches=sketches,
        current_profile=profile,
    )

    quarantined = store.drift_quarantine_counts(run["traffic"])
    quality = {}
    for c in res.columns:
        f, sk = data.features[c], sketches[c]
        unseen = (
            store.drift_unseen(ColumnSource(c, sk.domain, rows=res.current), ref_key)
            if f.kind == "categorical" and sk.lossless
            else None
        )
        quality[c] = column_quality(sk, f.kind, profile[c], cur_rows, quarantined.get(c, 0), unseen)

    skipped = {} if res.reference.run_id else _ensure_reference_scores(store, res.reference, run, predictors)
    prediction = _prediction_drift(store, res, run, skipped, tests, thresholds)

    stream = (
        res.current
        if current
        else RowSet(run["traffic"], max_row=res.current.max_row, run_id=run_id, classes=res.current.classes)
    )
    task = run_task(run)
    concept: dict = {}
    calibration: dict = {}
    residual: dict = {}
    estimated: dict = {
        "estimated": True,
        "method": "CBPE (confidence-based performance estimation)",
        "as_of": iso(as_of),
    }
    for role in ROLES:
        scored = _scored(store, stream.scores(role), as_of, task)
        if task == REGRESSION:
            resid = {"reference": np.zeros(0), "current": np.zeros(0)}
            if role in skipped:
                residual[role] = {"available": False, "reason": skipped[role]}
            else:
                resid = _residuals(store, res, role, as_of)
                residual[role] = _residual_drift(resid, tests, thresholds)
            c = regression_error_drift(scored, np.abs(resid["reference"]), detector, DEFAULT_REFERENCE_SHARE)
            why = "calibration drift and CBPE apply to classifiers' scores: a regression run has residual drift"
            cal, est = {"detected": False, "available": False, "reason": why}, {"available": False, "reason": why}
        elif task == MULTICLASS:
            c = error_stream_drift(scored, None, detector)
            why = "calibration drift and CBPE estimates are computed for binary classifiers only"
            cal, est = {"detected": False, "available": False, "reason": why}, {"available": False, "reason": why}
        else:
            c = error_stream_drift(scored, float(run[role].get("threshold", 0.5)), detector)
            if role in skipped:
                cal = {"detected": False, "available": False, "reason": skipped[role]}
                est = {"available": False, "reason": skipped[role]}
            else:
                cal, est = _label_checks(
                    store, res, role, float(run[role].get("threshold", 0.5)), as_of, calibration_alpha
                )
        if role == "baseline":
            concept, calibration, estimated["baseline"] = c, cal, est
        else:
            concept["candidate"], calibration["candidate"], estimated["candidate"] = c, cal, est
    if task != REGRESSION:
        residual = {"available": False, "reason": "residual drift applies to regression runs"}

    ref_desc = res.description | {
        k: (iso(v) if isinstance(v, datetime) else v) for k, v in store.drift_describe(res.reference).items()
    }
    cur_desc = {k: (iso(v) if isinstance(v, datetime) else v) for k, v in store.drift_describe(res.current).items()}
    cur_desc["window"] = current
    params = {
        "reference": reference,
        "current": current,
        "tests": tests,
        "thresholds": thresholds,
        "drift_share": drift_share,
        "as_of": iso(as_of),
        "calibration_alpha": calibration_alpha,
        "detector": concept["params"],
    }
    created_at = iso(utc_now())
    report = DriftReport(
        run_id,
        created_at,
        ref_desc,
        cur_desc,
        data,
        prediction,
        residual,
        concept,
        calibration,
        estimated,
        quality,
        params,
        sources=(res.reference, res.current),
    )
    if html is not None:
        report = replace(report, html=str(write_html(store, report, html)))
    store.save_drift(run_id, params, report.to_dict())
    return report


def write_html(store: Store, report: DriftReport, path: str | Path) -> Path:
    """Evidently's DataDriftPreset HTML report on the same reference and current rows and overrides."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref_rows, cur_rows = report.sources
    feats = {c: f for c, f in report.data.features.items() if f.test}
    cols = list(feats)
    ref = store.drift_frame(ref_rows, cols).to_pandas()
    cur = store.drift_frame(cur_rows, cols).to_pandas()
    definition = DataDefinition(
        numerical_columns=[c for c in cols if feats[c].kind == "numerical"],
        categorical_columns=[c for c in cols if feats[c].kind == "categorical"],
    )
    tests, thresholds = report.params.get("tests") or {}, report.params.get("thresholds") or {}
    preset = DataDriftPreset(
        columns=cols,
        drift_share=report.data.drift_share,
        method=tests.get("*"),
        threshold=thresholds.get("*"),
        per_column_method={c: t for c, t in tests.items() if c in feats} or None,
        per_column_threshold={c: float(t) for c, t in thresholds.items() if c in feats} or None,
    )
    snapshot = Report([preset]).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path
