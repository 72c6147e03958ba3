"""Benchmark: the Streamlit workbench's pages over a 10M-row replay run.

Builds (or reuses) a workbench home holding one finished run of ``--rows`` paired predictions: synthetic
flights-like traffic (3 categorical + 8 numeric features, six months of event times, a drifting
temperature) ingested under the traffic contract with its labels, two synthetic models' scores, classes and
latencies committed through ``Store.commit_batch``, the run's evaluation (``evaluate_run``) and drift report
(``drift_run``). Then, for each page, it times

  (a) the page's data functions against DuckDB, uncached (what a first visit or a cache expiry costs);
  (b) a full render with ``streamlit.testing.v1.AppTest``: the first render (cold caches) and the median of
      ``--repeats`` renders after it (warm caches: what a reviewer sees after the first load).

The build needs more than the store's default 512 MB DuckDB buffer for the 10M-label upsert: run it with
``WORKBENCH_DUCKDB_MEMORY_LIMIT=6GB`` (``--build-only``); the timings use the app's read settings.

    python benchmarks/app_pages.py                      # 10M rows under ./.bench/app_pages (built once, ~5 min)
    python benchmarks/app_pages.py --rows 1000000 --home /tmp/wb_app_1m
    python benchmarks/app_pages.py --rows 2000 --home /tmp/wb_app_2k --no-renders   # seconds: data functions only
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TRAFFIC = "bench_traffic"
MODEL = "bench-model"
CARRIERS = np.array(["AA", "B6", "DL", "EV", "MQ", "UA", "US", "WN", "9E", "VX", "FL", "AS"])
ORIGINS = np.array(["EWR", "JFK", "LGA"])
DESTS = np.array([f"D{i:02d}" for i in range(60)])


def run_id_for(rows: int) -> str:
    return f"bench_{rows}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the data ---------------------------------------------------------------------------------------
def chunk(off: int, n: int, rows: int) -> tuple[pa.Table, dict]:
    """Traffic rows ``off .. off+n`` (with their label) and both models' results for them (seeded by ``off``)."""
    rng = np.random.default_rng(off)
    idx = np.arange(off, off + n)
    frac = idx / rows
    start = np.datetime64("2013-07-01T00:00:00")
    times = start + (frac * 183 * 86400).astype("timedelta64[s]")
    hour = rng.integers(5, 23, n)
    carrier = rng.integers(0, len(CARRIERS), n)
    temp = rng.normal(75 - 35 * frac, 12, n)  # summer to winter: drifts
    humid = rng.uniform(20, 100, n)
    wind = rng.gamma(2.0, 5.0, n)
    visib = np.minimum(10, rng.exponential(8, n))
    distance = rng.uniform(80, 2500, n)
    logit = (
        -1.4
        + 0.08 * (hour - 14)
        + 0.02 * (humid - 60)
        + 0.05 * (wind - 10)
        - 0.15 * (visib - 8)
        + 0.3 * (carrier % 3 == 0)
        + 0.9 * (frac > 0.7) * (humid > 80)
    )  # concept change late in the run
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    traffic = pa.table(
        {
            "request_id": pa.array(np.char.add("r", idx.astype(str))),
            "event_time": pa.array(times),
            "carrier": pa.array(CARRIERS[carrier]),
            "origin": pa.array(ORIGINS[rng.integers(0, 3, n)]),
            "dest": pa.array(DESTS[rng.integers(0, len(DESTS), n)]),
            "month": pa.array(7 + (frac * 6).astype(np.int32)),
            "hour": pa.array(hour.astype(np.int32)),
            "distance": pa.array(distance),
            "temp": pa.array(temp),
            "humid": pa.array(humid),
            "wind_speed": pa.array(wind),
            "visib": pa.array(visib),
            "label": pa.array(label),
        }
    )
    preds = {}
    for role, noise, ms in (("baseline", 1.1, 1.2), ("candidate", 0.8, 1.5)):
        z = logit + rng.normal(0, noise, n)
        score = 1 / (1 + np.exp(-z))
        preds[role] = {"score": score, "latency": rng.lognormal(np.log(ms), 0.35, n)}
    return traffic, preds


def paired(off: int, preds: dict) -> pa.Table:
    """The replay's wide result rows for traffic rows ``off ..``, keyed by ``_row`` (the ingest order: the files
    are ingested in name order, so ``_row`` is the row's position in the generated traffic)."""
    from workbench.replay.paired import paired_table
    from workbench.replay.scoring import Scored

    n = len(preds["baseline"]["score"])
    scored = {role: Scored(p["score"], None, p["latency"]) for role, p in preds.items()}
    return paired_table(pa.array(np.arange(off, off + n)), scored, {"baseline": 0.5, "candidate": 0.5})


def build(home: Path, rows: int, step: int = 1 << 20, log=print) -> str:
    """A home with one finished, evaluated, drift-checked run of ``rows`` requests (reused when present)."""
    from workbench.config import load_settings
    from workbench.drift.report import drift_run
    from workbench.evaluate.evaluation import evaluate_run
    from workbench.ingest.traffic import ingest
    from workbench.store import Store

    settings = load_settings(home).ensure()
    run_id = run_id_for(rows)
    with Store(settings.db_path) as store:
        run = store.get_run(run_id)
        if run is not None and run["status"] == "finished" and store.latest_drift(run_id) is not None:
            return run_id
        t0 = time.perf_counter()
        if store.traffic_info(TRAFFIC) is None:
            files = home / "bench_data"
            files.mkdir(parents=True, exist_ok=True)
            for i, off in enumerate(range(0, rows, step)):
                traffic, _ = chunk(off, min(step, rows - off), rows)
                pq.write_table(traffic, files / f"traffic_{i:04d}.parquet")
            log(f"wrote {rows:,} traffic rows in {time.perf_counter() - t0:.1f} s")
            t = time.perf_counter()
            ingest(store, str(files / "traffic_*.parquet"), TRAFFIC, label_col="label")
            log(f"ingested in {time.perf_counter() - t:.1f} s")
            for f in files.glob("*.parquet"):
                f.unlink()
        if run is None:
            refs = {
                role: {
                    "uri": f"models:/{MODEL}/{v}",
                    "name": MODEL,
                    "version": v,
                    "run_id": None,
                    "flavor": "synthetic",
                    "threshold": 0.5,
                    "features": [
                        "carrier",
                        "origin",
                        "dest",
                        "month",
                        "hour",
                        "distance",
                        "temp",
                        "humid",
                        "wind_speed",
                        "visib",
                    ],
                }
                for role, v in (("baseline", "1"), ("candidate", "2"))
            }
            store.create_run(
                run_id=run_id,
                traffic=TRAFFIC,
                baseline=refs["baseline"],
                candidate=refs["candidate"],
                rows_total=rows,
                batch_size=step,
                device="cpu",
                mode="throughput",
                meta={},
            )
            t = time.perf_counter()
            for b, off in enumerate(range(0, rows, step)):
                n = min(step, rows - off)
                _, preds = chunk(off, n, rows)
                store.commit_batch(run_id, b, off, off + n - 1, n, 0.0, paired(off, preds))
            store.finish_run(run_id)
            log(f"stored {rows:,} paired predictions in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        evaluate_run(store, run_id)
        log(f"evaluated in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        drift_run(store, run_id)
        log(f"drift report in {time.perf_counter() - t:.1f} s")
    return run_id


# -- timing -----------------------------------------------------------------------------------------------
PAGES = (
    [("Candidates", "candidates", None), ("Replay", "replay", None), ("Live canary", "live", None)]
    + [
        (f"Compare: {s}", "compare", s)
        for s in ("Scorecard", "Curves", "Latency", "Segments & windows", "Disagreements")
    ]
    + [("Drift", "drift", None), ("Decide", "decide", None), ("Audit", "audit", None)]
)


def read_memory_limit() -> str:
    from pages.data import READ_MEMORY_LIMIT

    return os.environ.get("WORKBENCH_APP_READ_MEMORY_LIMIT", READ_MEMORY_LIMIT)


def time_queries(home: Path, run_id: str) -> list[tuple[str, str, float]]:
    """Each page's data functions straight against DuckDB (no cache): (page, call, seconds)."""
    from pages.data import LATENCY_PER_DECADE, LATENCY_PROBS, SCORE_BINS, canary_states_of
    from workbench.config import load_settings
    from workbench.decide.canary import preview_decision
    from workbench.decide.decisions import audit
    from workbench.decide.policy import load_policy
    from workbench.decide.signing import KeyRing
    from workbench.ops import summaries
    from workbench.store import Store

    settings = load_settings(home)
    out = []
    with Store(settings.db_path, read_only=True) as s:
        s.con.execute("SET memory_limit = ?", [read_memory_limit()])  # as the app's reads do
        run = s.get_run(run_id)
        cols = s.app_segment_columns(run["traffic"])
        calls = [
            ("Candidates", "canary states (verified chains)", lambda: canary_states_of(s, settings)),
            ("Replay", "runs + traffic", lambda: (s.app_runs(), s.list_traffic())),
            ("Compare", "evaluation", lambda: s.latest_evaluation(run_id)),
            (
                "Compare",
                "score/confusion/latency histograms",
                lambda: s.app_score_summary(run_id, SCORE_BINS, LATENCY_PER_DECADE),
            ),
            ("Compare", "latency percentiles (exact)", lambda: s.app_latency_quantiles(run_id, list(LATENCY_PROBS))),
            ("Compare", "segment columns", lambda: s.app_segment_columns(run["traffic"])),
            ("Compare", f"breakdowns (day + {len(cols)} columns, one pass)", lambda: s.app_breakdowns(run_id, cols)),
            ("Compare", "disagreements (LIMIT 100)", lambda: s.app_disagreements(run_id, 100)),
            ("Drift", "drift report", lambda: s.latest_drift(run_id)),
            (
                "Decide",
                "preview, judged now (= `workbench decide`)",
                lambda: preview_decision(s, run_id, load_policy()),
            ),
            (
                "Decide",
                "preview on the stored evidence",
                lambda: preview_decision(
                    s, run_id, load_policy(), lambda r, d: summaries.look_up(s, run_id, "evidence", load_policy()).value
                ),
            ),
            ("Audit", "audit", lambda: audit(s, MODEL, KeyRing.from_settings(settings).trusted)),
        ]
        for page, name, fn in calls:
            t = time.perf_counter()
            fn()
            out.append((page, name, time.perf_counter() - t))
    return out


def precompute(home: Path, run_id: str) -> tuple[float, list[str]]:
    """Seconds to compute and store the run's page summaries, as the flow does after evaluate and drift (a home
    built before they existed gets them here; on a later call they are read back, and nothing is computed)."""
    from workbench.config import load_settings
    from workbench.ops.summaries import precompute
    from workbench.store import Store

    with Store(load_settings(home).db_path) as store:
        t = time.perf_counter()
        done = precompute(store, run_id)
        return time.perf_counter() - t, done


def _render(at, name: str, page: str, section: str | None, first: bool = False) -> tuple[float, float]:
    """Seconds of one render of ``page`` (its ``section`` of the compare page) in the AppTest ``at``: wall and
    CPU (this process's, every thread: the script runs in AppTest's own)."""
    t, cpu = time.perf_counter(), time.process_time()
    if section is not None:
        at.segmented_control(key="wb_compare_section").set_value(section).run()
    elif first and page == "candidates":
        at.run()  # the default page
    else:
        at.switch_page(f"pages/{page}.py").run()
    if at.exception:
        raise SystemExit(f"{name}: {at.exception[0].value}")
    return time.perf_counter() - t, time.process_time() - cpu


def time_renders(home: Path, repeats: int) -> list[tuple[str, float, float, float]]:
    """(page, first render s, its CPU s, median of ``repeats`` later renders s) with AppTest, in one process."""
    from streamlit.testing.v1 import AppTest

    os.environ["WORKBENCH_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    out = []
    for name, page, section in PAGES:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
        if page != "candidates":
            at.run()  # the app's default page first, as a reviewer arrives
        if section is not None:
            at.switch_page(f"pages/{page}.py").run()
        first, first_cpu = _render(at, name, page, section, first=True)
        later = [_render(at, name, page, section)[0] for _ in range(repeats)]
        out.append((name, first, first_cpu, statistics.median(later)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--home", default=str(ROOT / ".bench" / "app_pages"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--build-only", action="store_true")
    p.add_argument(
        "--no-renders",
        action="store_true",
        help="time the data functions only, not the AppTest renders (a quick check of the benchmark)",
    )
    a = p.parse_args()
    from workbench.config import configure_runtime

    configure_runtime()
    home = Path(a.home)
    t = time.perf_counter()
    run_id = build(home, a.rows, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(
        f"home {home}: run {run_id} ({a.rows:,} paired predictions), ready in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )
    if a.build_only:
        return
    pre, stored = precompute(home, run_id)
    queries = time_queries(home, run_id)
    renders = [] if a.no_renders else time_renders(home, a.repeats)
    print(
        f"\n{a.rows:,}-row run, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, app reads with "
        f"DuckDB memory_limit {read_memory_limit()}: data functions, uncached"
    )
    print(f"{'flow':<12} {'page summaries stored (' + ', '.join(stored) + ')':<44} {pre:>8.3f}")
    print(f"{'page':<12} {'call':<44} {'seconds':>8}")
    for page, name, sec in queries:
        print(f"{page:<12} {name:<44} {sec:>8.3f}")
    if renders:
        print(
            f"\nAppTest renders (first: cold caches; later: median of {a.repeats}, what a reviewer sees after the "
            "first load)"
        )
        print(f"{'page':<30} {'first s':>8} {'CPU s':>6} {'later s':>8} {'under 2 s':>10}")
        for name, first, cpu, later in renders:
            print(f"{name:<30} {first:>8.2f} {cpu:>6.2f} {later:>8.2f} {'yes' if max(first, later) < 2 else 'NO':>10}")
    print(f"\npeak RSS {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
