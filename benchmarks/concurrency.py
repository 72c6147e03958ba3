"""Concurrency benchmark: reads while a long replay writes, and two replays writing at once.

Prints two tables:
  1. while one replay of ``--rows`` requests writes into the home's storage (a subprocess), ``--reads`` reads
     of each kind, each in a fresh connection as a CLI command, the app or a scrape makes it: ``runs`` (list
     runs), ``evaluate`` (``workbench evaluate`` of another, finished run of 100,000 labelled rows, evaluated
     once before: its data has not changed, so the stored evaluation is the answer), ``canary status`` (the
     verified head of a model's chain), ``/metrics`` (the Prometheus collector); P50, P99 and the worst wall
     time, the P50 of the CPU time each read took, and how many failed. Each kind has its own reader process
     (as the app, a scrape and a CLI user are), starting a read every ``--interval`` seconds, or as soon as the
     previous one ends when it took longer, so one kind never has two reads in flight and a slow kind does not
     hold the others back (each reader's first read, which loads DuckDB's extensions, is made before the
     replay starts and not counted); only reads that ended while the replay was still writing count;
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
import resource
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


def replay_once(
    home: Path, run_id: str, models: str, batch_size: int, traffic: str = "bench", announce: bool = False
) -> dict:
    """One replay of traffic set ``traffic`` into ``home``'s storage (run in its own process); with ``announce``
    it prints ``writing`` once its first rows are committed."""
    from workbench.config import load_settings
    from workbench.replay.pipeline import ReplayOptions, replay
    from workbench.store import Store

    pair = mlp_pair("cpu")
    if models == "constant":
        pair = {r: ConstantModel(m.ref) for r, m in pair.items()}
    first = [True]

    def progress(done: int, total: int) -> None:
        if announce and first[0] and done > 0:
            first[0] = False
            print("writing", flush=True)

    with Store(load_settings(home).db_path) as store:
        t, cpu = time.perf_counter(), _cpu_s()
        res = replay(
            store,
            traffic,
            pair["baseline"],
            pair["candidate"],
            run_id=run_id,
            options=ReplayOptions(batch_size=batch_size),
            progress=progress,
        )
        seconds, cpu = time.perf_counter() - t, _cpu_s() - cpu
        return {"run_id": run_id, "rows": res.rows, "seconds": seconds, "cpu_s": cpu, "ended_at": time.time()}


def _cpu_s() -> float:
    """CPU seconds this process used so far, user and system, every thread."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


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
    from workbench.evaluate.stored import evaluation

    with Store(settings.db_path) as store:  # the evaluation the reads ask for again
        t, cpu = time.perf_counter(), _cpu_s()
        evaluation(store, "finished", prices=settings.prices)
        t, cpu = time.perf_counter() - t, _cpu_s() - cpu
        print(f"evaluate of the finished run: {t:.2f} s, {cpu:.2f} CPU s", file=sys.stderr)


KINDS = ("runs", "evaluate", "canary status", "/metrics")


def read_kinds(home: Path):
    """The reads to time: name -> a function doing one, from opening the storage to the answer."""
    from workbench.config import load_settings
    from workbench.decide.canary import verified_head
    from workbench.evaluate.stored import evaluation
    from workbench.ops.observability import StoreCollector
    from workbench.store import Store

    settings = load_settings(home)
    lake = settings.db_path

    def runs():
        with Store(lake, read_only=True) as s:
            return len(s.list_runs())

    def evaluate():  # as `workbench evaluate finished --json` does
        with Store(lake) as s:
            return evaluation(s, "finished", prices=settings.prices)

    def canary_status():
        with Store(lake, read_only=True) as s:
            return verified_head(s, "mlp", {})

    def metrics():
        return list(StoreCollector(settings, {}).collect())

    return {"runs": runs, "evaluate": evaluate, "canary status": canary_status, "/metrics": metrics}


def read_loop(home: Path, kind: str, reads: int, interval: float, go: Path, stop: Path) -> list[dict]:
    """One reader: prints ``ready`` once its imports and a first read are done; once ``go`` exists, a read of
    ``kind`` every ``interval`` seconds (or right after the previous one when it took longer) until ``reads``
    are done or ``stop`` exists; each read's end (epoch seconds), wall and CPU seconds, and error."""
    fn = read_kinds(home)[kind]
    fn()  # the process's first connection loads DuckDB's extensions: once per reader, before the replay
    print("ready", flush=True)
    while not go.exists() and not stop.exists():
        time.sleep(0.02)
    done: list[dict] = []
    start = time.perf_counter()
    while len(done) < reads and not stop.exists():
        time.sleep(max(0.0, start + len(done) * interval - time.perf_counter()))
        t, cpu, error = time.perf_counter(), time.process_time(), ""
        try:
            fn()
        except Exception as e:  # a failed read is a result here: counted and shown
            error = f"{type(e).__name__}: {e}"
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        done.append({"ended_at": time.time(), "wall": wall, "cpu": cpu, "error": error})
    return done


def reads_during_replay(a) -> list[dict]:
    go, stop = Path(a.home) / "go", Path(a.home) / "stop"
    readers = {
        kind: subprocess.Popen(
            [sys.executable, __file__, "--phase", "read", "--kind", kind, "--home", str(a.home)]
            + ["--reads", str(a.reads), "--interval", str(a.interval)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for kind in KINDS
    }
    for kind, reader in readers.items():  # every reader has imported what it reads with before the replay starts
        assert reader.stdout is not None
        if reader.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {kind} reader did not start (exit {reader.wait()})")
    proc = _spawn_replay(a, "writer")
    assert proc.stdout is not None
    if proc.stdout.readline().strip() == "writing":  # past model loading: the replay is committing
        go.touch()
    res = _result(proc)
    stop.touch()
    rows = []
    for kind, reader in readers.items():
        out, _ = reader.communicate()
        if reader.returncode != 0:
            raise SystemExit(f"the {kind} reader failed (exit {reader.returncode})")
        done = json.loads(out.strip().splitlines()[-1])
        during = [r for r in done if r["ended_at"] <= res.get("ended_at", 0.0)]
        ok = [r for r in during if not r["error"]]
        x = np.array([r["wall"] for r in ok]) if ok else np.array([np.nan])
        failed = [r["error"] for r in during if r["error"]]
        rows.append(
            {
                "read": kind,
                "n": len(ok),
                "failed": len(failed),
                "after_replay": len(done) - len(during),
                "p50_ms": float(np.percentile(x, 50) * 1e3),
                "p99_ms": float(np.percentile(x, 99) * 1e3),
                "max_ms": float(x.max() * 1e3),
                "cpu_p50_ms": float(np.percentile([r["cpu"] for r in ok], 50) * 1e3) if ok else float("nan"),
                "first_error": failed[0][:120] if failed else "",
            }
        )
    rows.append({"read": "(replay while read)", "n": res["rows"], "seconds": res["seconds"], "cpu_s": res.get("cpu_s")})
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
    p.add_argument("--interval", type=float, default=0.3, help="seconds from one read's start to the next's")
    p.add_argument("--models", choices=("mlp", "constant"), default="mlp")
    p.add_argument("--batch-size", type=int, default=262_144)
    p.add_argument("--home", default=None, help="a workbench home to use (default: a temporary one)")
    p.add_argument("--phase", choices=("replay", "read"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=KINDS, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase == "replay":
        print(json.dumps(replay_once(Path(a.home), a.run_id, a.models, a.batch_size, announce=True)))
        return
    if a.phase == "read":
        home = Path(a.home)
        print(json.dumps(read_loop(home, a.kind, a.reads, a.interval, home / "go", home / "stop")))
        return
    with tempfile.TemporaryDirectory(prefix="wb-concurrency-") as tmp:
        a.home = a.home or tmp
        os.environ["WORKBENCH_HOME"] = str(a.home)
        prepare(a)
        reads = reads_during_replay(a)
        pair = concurrent_replays(a)
    print(
        f"\nreads during a {a.rows:,}-row replay ({a.models} models), each in a fresh connection, one reader "
        f"process per kind, a read every {a.interval} s"
    )
    print(f"{'read':<16}{'n':>6}{'failed':>8}{'P50 ms':>9}{'P99 ms':>9}{'max ms':>9}{'CPU P50 ms':>12}{'late':>6}")
    for r in reads:
        if "p50_ms" in r:
            print(
                f"{r['read']:<16}{r['n']:>6}{r['failed']:>8}{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['max_ms']:>9.0f}"
                f"{r['cpu_p50_ms']:>12.0f}{r['after_replay']:>6}"
            )
            if r["first_error"]:
                print(f"    first error: {r['first_error']}")
        else:
            print(f"replay during the reads: {r['n']:,} rows in {r['seconds']:.1f} s ({r['cpu_s']:.0f} CPU s)")
    print("(late: reads that ended after the replay did, not counted)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
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
