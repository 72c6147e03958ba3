"""Benchmark: the full paired evaluation against ``mlflow.evaluate`` on the same rows, and 10M rows.

    python benchmarks/evaluate.py [--rows 1000000] [--big-rows 10000000] [--workdir DIR]

One run measures, each phase in a fresh process (so peak RSS is that phase's own):

1. ours: :func:`workbench.evaluate.evaluation.evaluate_samples` on the in-memory paired rows: all metrics of both
   models with intervals, paired deltas with p-values and MDE, latency percentiles with intervals and
   Mann-Whitney, error rates (best of 5 runs: the machine's 2 cores are shared);
2. mlflow: ``mlflow.evaluate`` (default classifier evaluator, explainability off) on static predictions
   of each model over the same rows, then ``mlflow.validate_evaluation_results`` of candidate against
   baseline (best of 2); the models are saved beforehand (untimed) as sklearn-flavoured wrappers that
   return the stored scores, so mlflow sees probabilities;
3. ours end to end: ``workbench.evaluate.evaluation.evaluate_run`` reading the same rows from the store
   (written beforehand through the workbench's ingest and store API, untimed), at ``--rows`` (best of 5,
   per segment best of 3) and ``--big-rows`` (once): first the same evaluation as phase 1 (the ratio
   compares the two), then the same with per-segment results (``carrier``) as its own row.

It prints a table (seconds, CPU seconds, peak RSS, rows/s), the ratios of this run (wall and CPU) and how
they stand against the targets (from the store at least 20x faster than MLflow, and at most 1.5x the time
from arrays), the largest absolute difference between the metric values both report, and the load average
at the start and at the end. The data is synthetic and seeded: a binary outcome with 20% prevalence, a
tree-like baseline (scores with 4 decimals, so many ties) and a better neural-like candidate (continuous
scores) sharing part of their signal, log-normal per-request latencies in microsecond resolution, and 0.05%
candidate errors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
THRESHOLDS = {"baseline": 0.35, "candidate": 0.4}
SHARED = {
    "accuracy": "accuracy_score",
    "precision": "precision_score",
    "recall": "recall_score",
    "f1": "f1_score",
    "log_loss": "log_loss",
    "roc_auc": "roc_auc",
    "pr_auc": "precision_recall_auc",
}


def synthetic(n: int, seed: int = 42) -> dict:
    """Paired rows: labels, both models' scores (NaN where the model failed) and latencies (ms)."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal(n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.2 * signal - 1.8)))).astype(np.int8)
    shared = 0.8 * signal + 0.6 * rng.standard_normal(n)
    baseline = np.round(1 / (1 + np.exp(-(0.9 * shared - 1.5))), 4)
    candidate = 1 / (1 + np.exp(-(1.1 * shared + 0.5 * signal - 1.6 + 0.3 * rng.standard_normal(n))))
    candidate[rng.random(n) < 0.0005] = np.nan
    latency = {
        "baseline": np.round(rng.lognormal(np.log(4.0), 0.35, n), 3),
        "candidate": np.round(rng.lognormal(np.log(4.6), 0.45, n), 3),
    }
    return {"y": y, "scores": {"baseline": baseline, "candidate": candidate}, "latency": latency}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_ours(n: int) -> dict:
    from workbench.evaluate.evaluation import evaluate_samples

    d = synthetic(n)
    errors = {r: {"rows": n, "errors": int(np.isnan(s).sum())} for r, s in d["scores"].items()}
    walls, cpus = [], []
    for _ in range(5):  # best of 5
        latency = {r: x.copy() for r, x in d["latency"].items()}  # sorted in place by the evaluation
        t, c = time.perf_counter(), time.process_time()
        res = evaluate_samples("bench", d["y"], d["scores"], THRESHOLDS, latency, errors, n)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    out = res.to_dict()
    return {
        "seconds": min(walls),
        "cpu": min(cpus),
        "rss": peak_rss_mib(),
        "values": {r: {m: out[r][m]["value"] for m in SHARED} for r in THRESHOLDS},
        "method": res.overall.method,
    }


def phase_mlflow(n: int, workdir: Path) -> dict:
    warnings.filterwarnings("ignore")
    import logging

    import mlflow
    import mlflow.sklearn
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models import MetricThreshold
    from sklearn.base import BaseEstimator, ClassifierMixin

    logging.getLogger("mlflow").setLevel(logging.ERROR)

    class StaticScores(ClassifierMixin, BaseEstimator):
        """Returns the stored score column as the positive-class probability."""

        def __init__(self, threshold: float = 0.5):
            self.threshold = threshold
            self.classes_ = np.array([0, 1])

        def fit(self, X, y=None):
            return self

        def predict_proba(self, X):
            s = np.asarray(X["score"], dtype=np.float64)
            return np.column_stack([1 - s, s])

        def predict(self, X):
            return (np.asarray(X["score"], dtype=np.float64) >= self.threshold).astype(np.int64)

    d = synthetic(n)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("bench")
    frames, models = {}, {}
    for role, t in THRESHOLDS.items():
        ok = np.isfinite(d["scores"][role])
        frames[role] = pd.DataFrame({"score": d["scores"][role][ok], "label": d["y"][ok].astype(np.int64)})
        path = workdir / f"model_{role}"
        mlflow.sklearn.save_model(StaticScores(t), str(path), serialization_format="cloudpickle")
        models[role] = mlflow.pyfunc.load_model(str(path))
    with mlflow.start_run():  # warm the tracking store before the clock starts
        pass
    thresholds = {
        name: MetricThreshold(min_absolute_change=0.001, greater_is_better=name != "log_loss")
        for name in SHARED.values()
    }
    walls, cpus = [], []
    for _ in range(2):  # best of 2
        t, c = time.perf_counter(), time.process_time()
        results = {}
        for role in THRESHOLDS:
            with mlflow.start_run(run_name=role):
                results[role] = mlflow.evaluate(
                    models[role],
                    data=frames[role],
                    targets="label",
                    model_type="classifier",
                    evaluator_config={"log_model_explainability": False},
                )
        try:
            mlflow.validate_evaluation_results(thresholds, results["candidate"], results["baseline"])
            verdict = "passed"
        except MlflowException as e:
            verdict = "failed (" + str(e).splitlines()[0][:60] + "...)"
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return {
        "seconds": min(walls),
        "cpu": min(cpus),
        "rss": peak_rss_mib(),
        "verdict": verdict,
        "values": {r: {m: float(results[r].metrics[k]) for m, k in SHARED.items()} for r in THRESHOLDS},
    }


def phase_build(n: int, db: Path) -> dict:
    """Write the synthetic rows as a replay run through the workbench's own ingest and store API."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from workbench.ingest.traffic import ingest, ingest_labels
    from workbench.store import Store

    d = synthetic(n)
    t = time.perf_counter()
    ids = pc.binary_join_element_wise("r", pc.utf8_lpad(pa.array(np.arange(n)).cast(pa.string()), 9, "0"), "")
    tmp = db.parent
    carriers = np.array(["AA", "UA", "DL", "B6", "EV", "9E", "MQ", "WN", "US", "VX", "FL", "AS", "F9", "HA"])
    traffic = pa.table(
        {
            "request_id": ids,
            "event_time": pa.array(np.datetime64("2024-01-01T00:00:00") + np.arange(n) * 2 // 1, pa.timestamp("s")),
            "carrier": carriers[np.random.default_rng(1).zipf(1.6, n) % len(carriers)],
            "x": np.zeros(n),
        }
    )
    pq.write_table(traffic, tmp / "traffic.parquet")
    pq.write_table(pa.table({"request_id": ids, "label": d["y"].astype(np.int32)}), tmp / "labels.parquet")
    del traffic
    with Store(db) as store:
        ingest(store, tmp / "traffic.parquet", "bench")
        ingest_labels(store, tmp / "labels.parquet", "bench", time_col=None)
        refs = {r: {"uri": f"bench:{r}", "name": r, "version": "1", "threshold": t} for r, t in THRESHOLDS.items()}
        store.create_run(
            run_id="bench",
            traffic="bench",
            baseline=refs["baseline"],
            candidate=refs["candidate"],
            rows_total=n,
            batch_size=1_000_000,
            device="cpu",
            mode="benchmark",
            meta={},
        )
        step = 1_000_000
        from workbench.replay.paired import paired_table
        from workbench.replay.scoring import Scored

        for b, start in enumerate(range(0, n, step)):
            sl = slice(start, min(n, start + step))
            scored = {}
            for role in THRESHOLDS:
                s = d["scores"][role][sl]
                errors = ["ValueError: benchmark" if bad else None for bad in np.isnan(s).tolist()]
                scored[role] = Scored(s, errors, d["latency"][role][sl])
            table = paired_table(pa.array(np.arange(sl.start, sl.stop)), scored, THRESHOLDS)  # ingest order
            store.commit_batch("bench", b, sl.start, sl.stop - 1, sl.stop - sl.start, 0.0, table)
        store.finish_run("bench")
    os.remove(tmp / "traffic.parquet")
    os.remove(tmp / "labels.parquet")
    return {"seconds": time.perf_counter() - t}


def phase_store(db: Path, repeat: int, segment: str | None) -> dict:
    """``evaluate_run`` of the stored run (best of ``repeat``), per ``segment`` value too when one is given."""
    from workbench.evaluate.evaluation import evaluate_run
    from workbench.evaluate.results import Comparison
    from workbench.store import Store

    walls, cpus = [], []
    with Store(db) as store:
        for _ in range(repeat):
            t, c = time.perf_counter(), time.process_time()
            res = evaluate_run(store, "bench", segment=segment)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    if not isinstance(res.overall, Comparison):
        raise SystemExit("the benchmark's run evaluated as a regression run")
    return {
        "seconds": min(walls),
        "cpu": min(cpus),
        "rss": peak_rss_mib(),
        "labeled_rows": res.labeled_rows,
        "method": res.overall.method,
        "values": {r: {m: getattr(res.overall, r)[m].value for m in SHARED} for r in THRESHOLDS},
    }


def run_phase(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "GIT_PYTHON_REFRESH": "quiet"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"phase {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--big-rows", type=int, default=10_000_000, help="rows of the end-to-end run (0 skips it)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        kind, rest = args.phase[0], args.phase[1:]
        phases = {
            "ours": lambda: phase_ours(int(rest[0])),
            "mlflow": lambda: phase_mlflow(int(rest[0]), Path(rest[1])),
            "build": lambda: phase_build(int(rest[0]), Path(rest[1])),
            "store": lambda: phase_store(Path(rest[0]), int(rest[1]), rest[2] if len(rest) > 2 else None),
        }
        out = phases[kind]()
        print(json.dumps(out))
        return

    load = os.getloadavg()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        n = args.rows
        print(f"rows: {n:,} paired (labelled) rows; machine: {os.cpu_count()} cores", file=sys.stderr)
        ours = run_phase("ours", str(n))
        mlf = run_phase("mlflow", str(n), str(work))
        runs = []
        for rows in [n] + ([args.big_rows] if args.big_rows else []):
            db = work / f"store_{rows}" / "lake"
            db.parent.mkdir(exist_ok=True)
            run_phase("build", str(rows), str(db))
            best_of = ("5", "3") if rows == n else ("1", "1")
            runs.append(
                (rows, run_phase("store", str(db), best_of[0]), run_phase("store", str(db), best_of[1], "carrier"))
            )
            shutil.rmtree(db.parent)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    diff = max(abs(ours["values"][r][m] - mlf["values"][r][m]) for r in THRESHOLDS for m in SHARED)
    store = runs[0][1]
    store_diff = max(abs(store["values"][r][m] - mlf["values"][r][m]) for r in THRESHOLDS for m in SHARED)
    table = [
        ("ours: evaluate_samples (arrays, best of 5)", n, ours),
        ("mlflow.evaluate x2 + validate_evaluation_results (best of 2)", n, mlf),
    ]
    for rows, same, segmented in runs:
        best = rows == n
        table += [
            (f"ours: evaluate_run from the store{' (best of 5)' if best else ''}", rows, same),
            (f"ours: evaluate_run from the store, + per carrier{' (best of 3)' if best else ''}", rows, segmented),
        ]
    print(f"{'what':62s} {'rows':>11s} {'seconds':>8s} {'cpu s':>7s} {'peak RSS MiB':>13s} {'rows/s':>12s}")
    for what, rows, r in table:
        print(
            f"{what:62s} {rows:>11,} {r['seconds']:>8.2f} {r['cpu']:>7.2f} {r['rss']:>13.0f} "
            f"{rows / r['seconds']:>12,.0f}"
        )
    print(
        f"ratio mlflow / ours (arrays): {mlf['seconds'] / ours['seconds']:.1f}x wall, "
        f"{mlf['cpu'] / ours['cpu']:.1f}x cpu; mlflow / ours (from the store, {n:,} rows): "
        f"{mlf['seconds'] / store['seconds']:.1f}x wall, {mlf['cpu'] / store['cpu']:.1f}x cpu"
    )
    print(
        f"ratio ours from the store / ours from arrays (the same evaluation, {n:,} rows): "
        f"{store['seconds'] / ours['seconds']:.2f}x wall, {store['cpu'] / ours['cpu']:.2f}x cpu"
    )
    print(
        f"largest |ours - mlflow| over {', '.join(SHARED)} of both models: {diff:.2e} (arrays), "
        f"{store_diff:.2e} (from the store)"
    )
    print(f"bootstrap: {ours['method']} at {n:,} rows; mlflow validation {mlf['verdict']}")
    speedup, slower = mlf["seconds"] / store["seconds"], store["seconds"] / ours["seconds"]
    print(
        f"targets (wall, this run): from the store {speedup:.1f}x faster than mlflow (at least 20x: "
        f"{'met' if speedup >= 20 else 'NOT met'}), {slower:.2f}x the arrays' time (at most 1.5x: "
        f"{'met' if slower <= 1.5 else 'NOT met'})"
    )
    print(f"load average (1 min): {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
