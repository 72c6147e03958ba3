"""Concurrency benchmark: reads while a long replay writes, and two replays writing at once.

Prints two tables:
  1. while one replay of ``--rows`` requests writes into the home's storage (a subprocess), the latency of
     repeated reads of each kind, each in a fresh connection as a CLI command, the app or a scrape makes it:
     ``runs`` (list runs), ``evaluate`` (evaluate another, finished run of 100,000 labelled rows; it writes
     its result too),
     ``canary status`` (the verified head of a model's chain), ``/metrics`` (the Prometheus collector);
     P50, P99 and the worst, and how many reads failed;
  2. the same replay alone, then two replays of different runs at the same time (two subprocesses): rows/s
     of each and combined, against the replay alone.

Models: a pair of torch MLPs 25 -> 256 -> 256 -> 1 (``--models mlp``) or zero-cost models (``--models
constant``: the storage path alone, the hardest case for readers).

    python benchmarks/concurrency.py --rows 10000000 --reads 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay import ConstantModel, mlp_pair, write_traffic  # noqa: E402


def replay_once(home: Path, run_id: str, models: str, batch_size: int, traffic: str = "bench") -> dict:
    """One replay of traffic set ``traffic`` into ``home``'s storage (run in its own process)."""
    from workbench.config import load_settings
    from workbench.replay.pipeline import ReplayOptions, replay
    from workbench.store import Store

    pair = mlp_pair("cpu")
    if models == "constant":
        pair = {r: ConstantModel(m.ref) for r, m in pair.items()}
    with Store(load_settings(home).db_path) as store:
        t = time.perf_counter()
        res = replay(
            store,
            traffic,
            pair["baseline"],
            pair["candidate"],
            run_id=run_id,
            options=ReplayOptions(batch_size=batch_size),
        )
        return {"run_id": run_id, "rows": res.rows, "seconds": time.perf_counter() - t}


def _spawn_replay(a, run_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--phase", "replay", "--home", str(a.home), "--run-id", run_id]
        + ["--models", a.models, "--batch-size", str(a.batch_size)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen) -> dict:
    """The replay's JSON line, or ``{"failed": exit code}`` (an engine that refuses a second writer)."""
    out, _ = proc.communicate()
    if proc.returncode != 0:
        return {"failed": proc.returncode, "rows": 0, "seconds": float("nan")}
    return json.loads(out.strip().splitlines()[-1])


def prepare(a) -> None:
    """Ingest the traffic and replay a small finished run for the ``evaluate`` reads, labels included."""
    import pyarrow as pa

    from workbench.config import load_settings
    from workbench.ingest.traffic import ingest
    from workbench.store import Store

    traffic, small = Path(a.home) / "traffic.parquet", Path(a.home) / "small.parquet"
    write_traffic(traffic, a.rows, "mlp", None)
    n = min(a.rows, 100_000)
    write_traffic(small, n, "mlp", None)
    settings = load_settings(a.home).ensure()
    with Store(settings.db_path) as store:
        t = time.perf_counter()
        ingest(store, traffic, "bench")
        print(f"ingest of {a.rows:,} rows: {time.perf_counter() - t:.1f} s", file=sys.stderr)
        ingest(store, small, "small")
        rng = np.random.default_rng(0)
        with store.transaction() as cur:
            store.upsert_labels(
                cur,
                "small",
                pa.table(
                    {
                        "request_id": pa.array([f"r{i}" for i in range(n)]),
                        "label": pa.array(rng.integers(0, 2, n).astype(np.int32)),
                        "label_time": pa.array([None] * n, pa.timestamp("us")),
                    }
                ),
            )
    print(json.dumps(replay_once(Path(a.home), "finished", "constant", a.batch_size, "small")), file=sys.stderr)


def read_kinds(home: Path):
    """The reads to time: name -> a function doing one, from opening the storage to the answer."""
    from workbench.config import load_settings
    from workbench.decide.canary import verified_head
    from workbench.evaluate.evaluation import evaluate_run
    from workbench.ops.observability import StoreCollector
    from workbench.store import Store

    settings = load_settings(home)
    lake = settings.db_path

    def runs():
        with Store(lake, read_only=True) as s:
            return len(s.list_runs())

    def evaluate():
        with Store(lake) as s:
            return evaluate_run(s, "finished")

    def canary_status():
        with Store(lake, read_only=True) as s:
            return verified_head(s, "mlp", {})

    def metrics():
        return list(StoreCollector(settings, {}).collect())

    return {"runs": runs, "evaluate": evaluate, "canary status": canary_status, "/metrics": metrics}


def reads_during_replay(a) -> list[dict]:
    kinds = read_kinds(Path(a.home))
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    failed: dict[str, list[str]] = {k: [] for k in kinds}
    proc = _spawn_replay(a, "writer")
    time.sleep(2.0)  # past model loading: the replay is writing
    while proc.poll() is None and min(len(v) + len(failed[k]) for k, v in lat.items()) < a.reads:
        for name, fn in kinds.items():
            t = time.perf_counter()
            try:
                fn()
                lat[name].append(time.perf_counter() - t)
            except Exception as e:  # a failed read is a result here: counted and shown
                failed[name].append(f"{type(e).__name__}: {e}")
    still_running = proc.poll() is None
    res = _result(proc)
    rows = []
    for name, v in lat.items():
        x = np.array(v) if v else np.array([np.nan])
        rows.append(
            {
                "read": name,
                "n": len(v),
                "failed": len(failed[name]),
                "p50_ms": float(np.percentile(x, 50) * 1e3),
                "p99_ms": float(np.percentile(x, 99) * 1e3),
                "max_ms": float(x.max() * 1e3),
                "first_error": failed[name][0][:120] if failed[name] else "",
            }
        )
    rows.append({"read": "(replay while read)", "n": res["rows"], "seconds": res["seconds"], "done": not still_running})
    return rows


def concurrent_replays(a) -> dict:
    alone = _result(_spawn_replay(a, "alone"))
    procs = [_spawn_replay(a, f"pair_{i}") for i in (1, 2)]
    pair = [_result(p) for p in procs]
    # each replay times itself from its start to its end (model loading excluded); together they take the
    # longer of the two, so combined throughput is their rows over that
    together = max(p["seconds"] for p in pair if "failed" not in p) if any("failed" not in p for p in pair) else 1.0
    combined = sum(p["rows"] for p in pair) / together
    return {
        "alone_rows_per_s": alone["rows"] / alone["seconds"],
        "pair_rows_per_s": [p["rows"] / p["seconds"] if "failed" not in p else None for p in pair],
        "pair_failed": [p.get("failed") for p in pair],
        "combined_rows_per_s": combined,
        "ratio_combined_to_alone": combined / (alone["rows"] / alone["seconds"]),
        "rows_each": alone["rows"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--reads", type=int, default=200, help="reads of each kind during the replay (at most)")
    p.add_argument("--models", choices=("mlp", "constant"), default="mlp")
    p.add_argument("--batch-size", type=int, default=262_144)
    p.add_argument("--home", default=None, help="a workbench home to use (default: a temporary one)")
    p.add_argument("--phase", choices=("replay",), default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase == "replay":
        print(json.dumps(replay_once(Path(a.home), a.run_id, a.models, a.batch_size)))
        return
    with tempfile.TemporaryDirectory(prefix="wb-concurrency-") as tmp:
        a.home = a.home or tmp
        os.environ["WORKBENCH_HOME"] = str(a.home)
        prepare(a)
        reads = reads_during_replay(a)
        pair = concurrent_replays(a)
    print(f"\nreads during a {a.rows:,}-row replay ({a.models} models), each in a fresh connection")
    print(f"{'read':<22}{'n':>6}{'failed':>8}{'P50 ms':>10}{'P99 ms':>10}{'max ms':>10}")
    for r in reads:
        if "p50_ms" in r:
            print(
                f"{r['read']:<22}{r['n']:>6}{r['failed']:>8}{r['p50_ms']:>10.0f}{r['p99_ms']:>10.0f}{r['max_ms']:>10.0f}"
            )
            if r["first_error"]:
                print(f"    first error: {r['first_error']}")
        else:
            print(f"replay during the reads: {r['n']:,} rows in {r['seconds']:.1f} s")
    print(f"\ntwo replays of {pair['rows_each']:,} rows at the same time")
    print(f"alone: {pair['alone_rows_per_s']:,.0f} rows/s")
    print(
        "each of the pair: "
        + ", ".join(
            f"{x:,.0f} rows/s" if x is not None else f"failed (exit {f})"
            for x, f in zip(pair["pair_rows_per_s"], pair["pair_failed"], strict=True)
        )
    )
    print(
        f"combined: {pair['combined_rows_per_s']:,.0f} rows/s = {pair['ratio_combined_to_alone']:.2f}x the replay alone"
    )


if __name__ == "__main__":
    main()
