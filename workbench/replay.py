"""Shadow replay: every request of a traffic set goes through the baseline and the candidate.

Traffic is streamed from DuckDB in Arrow batches; each batch is scored by both models, and the paired
results (score, class, latency, error per model and request) are committed with the batch's marker in
one transaction, so an interrupted run resumes after its last committed batch and holds each request
exactly once. Errors are isolated per model and per row: an exception, a non-finite score or a wrong
output shape marks only the rows concerned (a failing batch is bisected down to them).
"""
from __future__ import annotations

import logging
import platform
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pyarrow as pa

from . import WorkbenchError
from .models import Predictor
from .store import Store, check_name

log = logging.getLogger(__name__)
ROLES = ("baseline", "candidate")


@dataclass(frozen=True)
class ReplayOptions:
    batch_size: int = 8192
    mode: str = "throughput"

    def __post_init__(self):
        if self.batch_size < 1:
            raise WorkbenchError("--batch-size must be at least 1")


@dataclass(frozen=True)
class ReplayResult:
    run_id: str
    rows: int
    baseline_errors: int
    candidate_errors: int
    seconds: float
    status: str

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "rows": self.rows, "baseline_errors": self.baseline_errors,
                "candidate_errors": self.candidate_errors, "seconds": round(self.seconds, 3), "status": self.status}


@dataclass(frozen=True)
class Scored:
    """One model's output for one batch."""
    scores: np.ndarray      # float64, NaN where error
    errors: list            # None or a reason per row
    latency_ms: np.ndarray  # per row


def new_run_id() -> str:
    return "run_" + datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S") + "_" + uuid.uuid4().hex[:6]


def _error_text(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}"[:500]


def _predict_rows(model: Predictor, batch: pa.Table) -> tuple[np.ndarray, list]:
    """Scores and per-row errors; a failing call is bisected down to the failing rows."""
    n = batch.num_rows
    try:
        out = model.predict(batch)
        if out.shape != (n,):
            raise ValueError(f"model returned {out.shape[0]} scores for {n} rows")
    except Exception as e:  # the model's failure is data: isolate it to the rows that cause it
        if n == 1:
            return np.array([np.nan]), [_error_text(e)]
        half = n // 2
        s1, e1 = _predict_rows(model, batch.slice(0, half))
        s2, e2 = _predict_rows(model, batch.slice(half))
        return np.concatenate([s1, s2]), e1 + e2
    errors: list = [None] * n
    bad = ~np.isfinite(out)
    if bad.any():
        out = out.copy()
        for i in np.flatnonzero(bad):
            errors[i] = f"non-finite score: {out[i]}"
        out[bad] = np.nan
    return out, errors


def score_batch(model: Predictor, batch: pa.Table) -> Scored:
    """Score a batch with error isolation; latency is the batch time amortized per row."""
    t0 = time.perf_counter()
    scores, errors = _predict_rows(model, batch)
    per_row = (time.perf_counter() - t0) * 1000.0 / max(1, batch.num_rows)
    return Scored(scores, errors, np.full(batch.num_rows, per_row))


def _prediction_table(run_id: str, ids: pa.Array, role: str, s: Scored, threshold: float) -> pa.Table:
    ok = np.isfinite(s.scores)
    cls = pa.array(np.where(ok, s.scores >= threshold, 0).astype(np.int32), mask=~ok)
    n = len(ids)
    return pa.table({"run_id": pa.array([run_id] * n, pa.string()), "request_id": ids,
                     "role": pa.array([role] * n, pa.string()), "score": pa.array(s.scores, mask=~ok),
                     "pred_class": cls, "latency_ms": s.latency_ms, "error": pa.array(s.errors, pa.string())})


def _environment(models: dict[str, Predictor]) -> dict:
    import duckdb
    import sklearn

    env = {"host": platform.node(), "python": platform.python_version(), "duckdb": duckdb.__version__,
           "sklearn": sklearn.__version__, "devices": {r: m.device for r, m in models.items()}}
    if any(m.ref.flavor == "pytorch" for m in models.values()):
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    return env


def replay(store: Store, traffic: str, baseline: Predictor, candidate: Predictor, run_id: str | None = None,
           options: ReplayOptions = ReplayOptions(),
           progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Replay traffic through both models; resume an interrupted run; a finished run is left untouched.

    ``progress(done_rows, total_rows)`` is called after each committed batch.
    """
    run_id = check_name(run_id, "run id") if run_id else new_run_id()
    info = store.require_traffic(traffic)
    models = {"baseline": baseline, "candidate": candidate}
    refs = {r: m.ref.to_dict() for r, m in models.items()}
    _check_features(info["columns"], models)
    run = store.get_run(run_id)
    started = time.perf_counter()
    if run is not None:
        _check_same_run(run, traffic, refs)
        if run["status"] == "finished":
            errs = store.run_error_counts(run_id)
            return ReplayResult(run_id, int(run["rows_done"]), errs.get("baseline", 0), errs.get("candidate", 0),
                                0.0, "already_complete")
        log.info("resuming run %s after %s committed rows", run_id, run["rows_done"])
    else:
        store.create_run(run_id=run_id, traffic=traffic, baseline=refs["baseline"], candidate=refs["candidate"],
                         rows_total=store.traffic_count(traffic), batch_size=options.batch_size,
                         device=",".join(sorted({m.device for m in models.values()})), mode=options.mode,
                         meta={"environment": _environment(models)})
    total = store.traffic_count(traffic)
    done = store.require_run(run_id)["rows_done"]
    features = sorted(set(baseline.ref.features) | set(candidate.ref.features))
    reader = store.traffic_batches(traffic, features, options.batch_size, store.last_committed_row(run_id))
    batch_no = store.next_batch_no(run_id)
    if progress:
        progress(done, total)
    for rb in reader:
        batch = pa.Table.from_batches([rb])
        t0 = time.perf_counter()
        ids = batch.column("request_id").combine_chunks()
        parts = [_prediction_table(run_id, ids, role, score_batch(m, batch), m.ref.threshold)
                 for role, m in models.items()]
        rows_col = batch.column("_row")
        store.commit_batch(run_id, batch_no, rows_col[0].as_py(), batch.num_rows, time.perf_counter() - t0,
                           pa.concat_tables(parts), rows_col[-1].as_py())
        batch_no += 1
        done += batch.num_rows
        if progress:
            progress(done, total)
    store.finish_run(run_id, store.require_run(run_id)["meta"] | {"options": options.__dict__})
    errs = store.run_error_counts(run_id)
    return ReplayResult(run_id, done, errs.get("baseline", 0), errs.get("candidate", 0),
                        time.perf_counter() - started, "finished")


def _check_same_run(run: dict, traffic: str, refs: dict) -> None:
    if run["traffic"] != traffic:
        raise WorkbenchError(f"run {run['run_id']} replays traffic {run['traffic']!r}, not {traffic!r}")
    for role in ROLES:
        was, now = run[role], refs[role]
        if (was.get("uri"), was.get("version")) != (now["uri"], now["version"]):
            raise WorkbenchError(f"run {run['run_id']} was started with {role} {was.get('uri')} version "
                                 f"{was.get('version')}; now it resolves to version {now['version']}. "
                                 "Use a new --run-id or pin the version")


def _check_features(columns: list[str], models: dict[str, Predictor]) -> None:
    for role, m in models.items():
        missing = [f for f in m.ref.features if f not in columns]
        if missing:
            raise WorkbenchError(f"the {role} model needs column(s) {', '.join(missing)} that the traffic lacks")
