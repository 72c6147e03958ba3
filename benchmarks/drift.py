"""Benchmark: workbench drift against Evidently's DataDriftPreset Report on the same frames.

One reference and one current frame of ``--rows`` rows each, 25 columns (20 numeric: continuous,
heavy-tailed, rounded and integer; 5 categorical), some of them shifted in the current frame. Each side
runs in its own process (so peak memory is its own), builds the same frames from the same seed, and is
timed from the pandas frames to the per-column verdicts: ours imports them into an in-memory DuckDB,
summarizes the reference (sketches) and tests every column there; Evidently runs ``Report([DataDriftPreset()])``.

    python benchmarks/drift.py                 # 1M + 1M rows (Evidently takes minutes there)
    python benchmarks/drift.py --rows 100000   # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def frames(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference and current frames: 20 numeric and 5 categorical columns; 8 of them drift."""
    rng = np.random.default_rng(seed)

    def make(shift: float) -> pd.DataFrame:
        cols: dict[str, np.ndarray] = {}
        for i in range(20):
            s = shift if i % 3 == 0 else 0.0
            kind = i % 5
            if kind == 0:
                cols[f"num_{i:02d}"] = rng.normal(s, 1, rows)
            elif kind == 1:
                cols[f"num_{i:02d}"] = rng.lognormal(s, 1, rows)
            elif kind == 2:
                cols[f"num_{i:02d}"] = np.round(rng.normal(20 + 10 * s, 8, rows), 1)
            elif kind == 3:
                cols[f"num_{i:02d}"] = rng.integers(0, 1000 + int(200 * s), rows)
            else:
                cols[f"num_{i:02d}"] = rng.uniform(0, 1 + s, rows)
        for j in range(5):
            levels = [f"c{k}" for k in range(5 + 10 * j)]
            p = np.ones(len(levels))
            if j < 2:
                p[0] += shift * 3
            cols[f"cat_{j}"] = rng.choice(levels, rows, p=p / p.sum())
        return pd.DataFrame(cols)

    return make(0.0), make(0.1)


def run_side(side: str, rows: int, seed: int) -> dict:
    ref, cur = frames(rows, seed)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out: dict = {}
    if side == "ours":
        import pyarrow as pa

        from workbench.drift.report import compare_columns
        from workbench.drift.sketch import RowSet
        from workbench.store import Store

        with Store(":memory:") as store:
            store.drift_import_table("ref", pa.Table.from_pandas(ref, preserve_index=False))
            store.drift_import_table("cur", pa.Table.from_pandas(cur, preserve_index=False))
            out["load_s"] = time.perf_counter() - t0
            res = compare_columns(
                store, RowSet("ref", "table"), RowSet("cur", "table"), list(ref.columns), reference_key="bench"
            )
        out["columns"] = {
            c: {"drifted": f.drifted, "statistic": f.statistic, "test": f.test, "method": f.method}
            for c, f in res.features.items()
        }
    else:
        from evidently import Dataset, Report
        from evidently.presets import DataDriftPreset

        snap = (
            Report([DataDriftPreset()], include_tests=True)
            .run(Dataset.from_pandas(cur), Dataset.from_pandas(ref))
            .dict()
        )
        values = {
            m["config"]["column"]: float(m["value"])
            for m in snap["metrics"]
            if m["config"]["type"].endswith("ValueDrift")
        }
        out["columns"] = {
            t["name"].removeprefix("Value Drift for column "): {
                "drifted": t["status"] == "FAIL",
                "statistic": values[t["name"].removeprefix("Value Drift for column ")],
            }
            for t in snap["tests"]
            if t["name"].startswith("Value Drift for column ")
        }
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["data_rss_mb"] = rss_data / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the reference and of the current frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--side", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.side:
        print(json.dumps(run_side(a.side, a.rows, a.seed)))
        return 0
    res = {}
    for side in ("ours", "evidently"):
        print(f"running {side} on {a.rows:,} + {a.rows:,} rows x 25 columns ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--side", side, "--rows", str(a.rows), "--seed", str(a.seed)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(REPO)} | dict(__import__("os").environ),
        )
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        res[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    ours, ev = res["ours"], res["evidently"]
    print(f"\n{'side':<10} {'seconds':>9} {'rows/s':>12} {'peak RSS MB':>12} {'RSS of frames MB':>17}")
    for side in ("ours", "evidently"):
        r = res[side]
        print(
            f"{side:<10} {r['seconds']:>9.2f} {2 * a.rows / r['seconds']:>12,.0f} {r['peak_rss_mb']:>12,.0f} "
            f"{r['data_rss_mb']:>17,.0f}"
        )
    print(
        f"\nours: {ours['load_s']:.2f} s loading the frames into DuckDB, "
        f"{ours['seconds'] - ours['load_s']:.2f} s sketching the reference and testing"
    )
    print(f"speed-up (Evidently seconds / ours): {ev['seconds'] / ours['seconds']:.1f}x")
    diff = [c for c in ours["columns"] if ours["columns"][c]["drifted"] != ev["columns"][c]["drifted"]]
    worst = max(abs(ours["columns"][c]["statistic"] - ev["columns"][c]["statistic"]) for c in ours["columns"])
    methods: dict[str, int] = {}
    for c in ours["columns"].values():
        methods[c["method"]] = methods.get(c["method"], 0) + 1
    print(
        f"columns whose drift flag differs: {', '.join(diff) or 'none'} "
        f"(drifted: ours {sum(c['drifted'] for c in ours['columns'].values())}, "
        f"Evidently {sum(c['drifted'] for c in ev['columns'].values())} of {len(ours['columns'])})"
    )
    print(f"largest statistic difference: {worst:.2e}; methods: {methods}")
    return 1 if diff else 0


if __name__ == "__main__":
    raise SystemExit(main())
