"""Replay benchmark: raw inference of both models vs the full replay (read -> score -> store).

Prints one table: for each size, rows/s of reading the traffic alone and of the replay with zero-cost
models (the storage path alone: what bounds the replay when the models are fast), and rows/s and peak RSS of
  (a) raw inference: both models on the same in-memory batches, no I/O (features laid out and, on a GPU,
      copied to the device as the replay does it);
  (b) full replay: traffic streamed from DuckDB, scored by both models, paired results stored in DuckDB;
and the ratio b/a; then what measuring each model's resources costs (raw scoring and the full replay, with
measurements on and off). Each phase runs in its own subprocess so peak RSS is its own. Ingest (Parquet -> DuckDB
under the traffic contract) is timed too, as context.

Models: ``--models demo`` uses the demo's registered models (gradient boosting + torch MLP on NYC flights
features; traffic resampled from the real flights), ``--models mlp`` a pair of torch MLPs 25 -> 256 -> 256 -> 1
on 25 float features (the GPU target), built in-process (no MLflow needed).

    python benchmarks/replay.py --models demo --rows 1000000 10000000
    python benchmarks/replay.py --models mlp --device cuda --rows 1000000 10000000 --batch-size 1048576
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
F = 25


def peak_rss_mb() -> float:
    """This process's resident high-water mark (VmHWM). Not ``ru_maxrss``: Linux carries that over from the
    parent across fork and exec, so every phase would report at least the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples resident memory every few ms while a phase's timed part runs: RSS just before it, its peak
    during it, and the anonymous/file/shared split at that peak (whatever loaded before, such as the CUDA
    context, is in the "before" figure, so the difference is the replay's own)."""

    def __init__(self, every_s: float = 0.005):
        import threading

        self.every_s, self.peak = every_s, 0.0
        self.at_peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.before = sum(rss_parts_mb().values())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(self.every_s):
            parts = rss_parts_mb()
            if sum(parts.values()) > self.peak:
                self.peak, self.at_peak = sum(parts.values()), parts

    def to_dict(self) -> dict:
        return {"before_mb": self.before, "peak_mb": self.peak, "at_peak_mb": self.at_peak}


def rss_parts_mb() -> dict:
    """Resident memory now by kind: anonymous (heaps, buffers), file-backed (mapped libraries such as the
    CUDA ones), shared (pinned memory shows up here on some drivers)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


# -- traffic ----------------------------------------------------------------------------------------
def write_traffic(path: Path, rows: int, models: str, home: Path | None, chunk: int = 1 << 20) -> None:
    """Write ``rows`` requests to Parquet chunk by chunk (constant memory)."""
    rng = np.random.default_rng(0)
    source = None
    if models == "demo":
        if home is None:
            raise ValueError("the demo models' traffic needs a workbench home with the demo data")
        source = pq.read_table(home / "data" / "traffic.parquet")
    writer = None
    start = np.datetime64("2013-07-01T00:00:00")
    for off in range(0, rows, chunk):
        n = min(chunk, rows - off)
        ids = pa.array(np.char.add("r", np.arange(off, off + n).astype(str)))
        times = pa.array(start + np.arange(off, off + n).astype("timedelta64[s]"))
        if source is None:
            cols = {f"f{j}": pa.array(rng.standard_normal(n, dtype=np.float32)) for j in range(F)}
        else:
            take = source.take(pa.array(rng.integers(0, source.num_rows, n)))
            cols = {c: take.column(c) for c in take.column_names if c not in ("request_id", "event_time")}
        table = pa.table({"request_id": ids, "event_time": times, **cols})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=chunk)
    if writer is None:
        raise ValueError(f"write at least one request, not {rows}")
    writer.close()


# -- models -----------------------------------------------------------------------------------------
def mlp_pair(device: str):
    import torch

    from workbench.replay.models import ModelRef, TorchPredictor, choose_device

    dev = choose_device(device)
    out = {}
    for role, seed in (("baseline", 1), ("candidate", 2)):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(F, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 1),
            torch.nn.Sigmoid(),
        )
        ref = ModelRef(
            uri=f"bench:mlp-{role}",
            name="mlp",
            version=str(seed),
            run_id=None,
            flavor="pytorch",
            features=tuple(f"f{j}" for j in range(F)),
            threshold=0.5,
        )
        out[role] = TorchPredictor(ref, torch.jit.script(net.eval()), dev)
    return out


def demo_pair(home: Path, device: str):
    import mlflow

    from workbench.config import load_settings
    from workbench.replay.models import load_predictor

    mlflow.set_tracking_uri(load_settings(home).mlflow_tracking_uri)
    return {
        "baseline": load_predictor("models:/flight-delay@champion", device),
        "candidate": load_predictor("models:/flight-delay@challenger", device),
    }


def load_pair(a) -> dict:
    return mlp_pair(a.device) if a.models == "mlp" else demo_pair(Path(a.home), a.device)


# -- phases (each runs in a subprocess) --------------------------------------------------------------
def phase_ingest(a) -> dict:
    from workbench.ingest.traffic import ingest
    from workbench.store import Store

    t = time.perf_counter()
    demo = a.models == "demo"
    with Store(a.db) as store:
        res = ingest(
            store,
            a.traffic,
            "bench",
            entity_col="tail_number" if demo else None,
            nullable=["wind_dir", "pressure", "temp", "dewp", "humid", "wind_speed", "precip", "visib"] if demo else (),
        )
        assert res.quarantined == 0, res.reasons
    return {"seconds": time.perf_counter() - t, "rows": res.rows}


def phase_raw(a) -> dict:
    """Both models on in-memory batches (the first few row groups, cycled to reach the row count), scored twice
    over, batch by batch alternately with resource measurements on and off (``unmeasured_seconds``): the same
    batches, the same process, so the difference is what measuring costs."""
    from workbench.replay.pipeline import ReplayOptions
    from workbench.replay.scoring import PairScorer

    models = load_pair(a)
    options = ReplayOptions(batch_size=a.batch_size).scoring()
    scorers = {True: PairScorer(models, options, measure=True), False: PairScorer(models, options, measure=False)}
    features = scorers[True].features
    pf = pq.ParquetFile(a.traffic)
    batches = []
    for rb in pf.iter_batches(batch_size=a.batch_size, columns=features):
        batches.append(pa.Table.from_batches([rb]))
        if len(batches) >= 4:
            break
    for scorer in scorers.values():
        scorer.score(scorer.prepare(batches[0].slice(0, min(1024, batches[0].num_rows))))  # warm-up
    seconds = {True: 0.0, False: 0.0}
    done, i = 0, 0
    while done < a.rows:
        b = batches[i % len(batches)]
        b = b.slice(0, min(b.num_rows, a.rows - done))
        for measure in (True, False) if i % 2 else (False, True):  # alternate which goes first
            t = time.perf_counter()
            scorers[measure].score(scorers[measure].prepare(b))
            seconds[measure] += time.perf_counter() - t
        done += b.num_rows
        i += 1
    return {
        "seconds": seconds[True],
        "unmeasured_seconds": seconds[False],
        "rows": done,
        "devices": sorted({m.device for m in models.values()}),
    }


class ConstantModel:
    """A model that costs nothing: replaying with it measures the storage path alone."""

    device = "cpu"

    def __init__(self, ref):
        self.ref = ref

    def predict(self, batch: pa.Table) -> np.ndarray:
        return np.full(batch.num_rows, 0.25)


def phase_read(a) -> dict:
    """Stream the traffic's feature columns from DuckDB, as the replay's reader does, and nothing else."""
    from workbench.replay.pipeline import ROW_GROUP, rebatch
    from workbench.store import Store

    features = sorted({f for m in load_pair(a).values() for f in m.ref.features})
    with Store(a.db) as store:
        t = time.perf_counter()
        reader = store.traffic_batches("bench", features, min(a.batch_size, ROW_GROUP))
        n = sum(b.num_rows for b in rebatch(reader, a.batch_size))
    return {"seconds": time.perf_counter() - t, "rows": n}


def phase_replay(a, constant: bool = False) -> dict:
    from workbench.replay.pipeline import ReplayOptions, replay
    from workbench.store import Store

    models = load_pair(a)
    if constant:
        models = {r: ConstantModel(m.ref) for r, m in models.items()}
    with Store(a.db) as store, RssSampler() as rss:
        t = time.perf_counter()
        res = replay(
            store,
            "bench",
            models["baseline"],
            models["candidate"],
            run_id=f"bench_{'io' if constant else 'replay'}_{time.time_ns()}",  # one per configuration
            options=ReplayOptions(batch_size=a.batch_size, writers=a.writers, measure=not a.no_measure),
        )
        seconds = time.perf_counter() - t
        n = store.con.execute("SELECT count(*) FROM predictions WHERE run_id = ?", [res.run_id]).fetchall()[0][0]
    assert n == res.rows == a.rows, (n, res.rows, a.rows)  # every request scored exactly once
    return {"seconds": seconds, "rows": res.rows, "stages": res.stages, "rss": rss.to_dict(), "res": res.resources}


def phase_io(a) -> dict:
    """The full replay with zero-cost models: reading, result building and storing alone."""
    return phase_replay(a, constant=True)


PHASES = {"ingest": phase_ingest, "read": phase_read, "raw": phase_raw, "io": phase_io, "replay": phase_replay}


def run_phase(name: str, a, memory: str | None = None, threads: int | None = None, **extra) -> dict:
    """Run one phase in a subprocess; ``memory``, ``threads``: DuckDB's memory limit and threads there (None:
    the workbench's own)."""
    args = [
        sys.executable,
        __file__,
        "--phase",
        name,
        "--models",
        a.models,
        "--device",
        a.device,
        "--batch-size",
        str(a.batch_size),
        "--home",
        str(a.home),
    ]
    if name not in ("replay", "io"):
        args += ["--writers", "1"]
    for k, v in extra.items():
        flag = f"--{k.replace('_', '-')}"
        args += [flag] if v is True else [flag, str(v)]  # True: a switch
    env = (
        os.environ
        | {"PYTHONWARNINGS": "ignore"}
        | ({"WORKBENCH_DUCKDB_MEMORY_LIMIT": memory} if memory else {})
        | ({"WORKBENCH_DUCKDB_THREADS": str(threads)} if threads else {})
    )
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_demo_home(home: Path) -> None:
    if (home / "data" / "traffic.parquet").exists():
        return
    from pipelines.prepare_flights import write
    from pipelines.train_models import register
    from workbench.config import load_settings

    settings = load_settings(home).ensure()
    write(home / "data")
    register(settings, home / "data" / "flights_train.parquet", log=lambda m: print(m, file=sys.stderr))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--models", choices=["demo", "mlp"], default="demo")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--home", default=None, help="a workbench home with the demo models (default: a temporary one)")
    p.add_argument(
        "--writers",
        type=int,
        nargs="+",
        default=None,
        help="replay writer threads to compare (default: the replay's own default)",
    )
    p.add_argument(
        "--duckdb-memory",
        nargs="+",
        default=[None],
        help="DuckDB memory limits to compare, e.g. auto 512MB (auto, the default: the replay sizes it)",
    )
    p.add_argument(
        "--duckdb-threads",
        nargs="+",
        default=[None],
        help="DuckDB thread counts to compare, e.g. auto 4 (auto, the default: the replay sizes it)",
    )
    p.add_argument("--json-out", default=None, help="also write the results as JSON here")
    p.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--traffic", help=argparse.SUPPRESS)
    p.add_argument("--no-measure", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    from workbench.config import configure_runtime

    configure_runtime()  # as the workbench command does; subprocesses inherit it
    if a.phase:
        a.rows, a.writers = a.rows[0], a.writers[0]
        res = PHASES[a.phase](a)
        res["peak_rss_mb"] = peak_rss_mb()
        res["rss_end_mb"] = rss_parts_mb()
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp_dir:
        tmp = Path(tmp_dir)
        a.home = Path(a.home) if a.home else tmp / "home"
        if a.models == "demo":
            ensure_demo_home(a.home)
        from workbench.replay.pipeline import ReplayOptions

        writers = a.writers or [ReplayOptions().writers]
        results = []
        for rows in a.rows:
            traffic, db = tmp / f"traffic_{rows}.parquet", tmp / f"bench_{rows}_lake"
            write_traffic(traffic, rows, a.models, a.home)
            ing = run_phase("ingest", a, rows=rows, traffic=traffic, db=db)
            read = run_phase("read", a, rows=rows, traffic=traffic, db=db)
            raw = run_phase("raw", a, rows=rows, traffic=traffic, db=db)
            for w in writers:
                for mem, th in [
                    (None if m in (None, "auto") else m, None if t in (None, "auto") else int(t))
                    for m in a.duckdb_memory
                    for t in a.duckdb_threads
                ]:
                    io = run_phase("io", a, mem, th, rows=rows, traffic=traffic, db=db, writers=w)
                    rep = run_phase("replay", a, mem, th, rows=rows, traffic=traffic, db=db, writers=w)
                    off = run_phase("replay", a, mem, th, rows=rows, traffic=traffic, db=db, writers=w, no_measure=True)
                    duck = rep["stages"].get("duckdb", {})  # what the replay ran under (its own sizing by default)
                    results.append(
                        {
                            "rows": rows,
                            "writers": w,
                            "memory": mem or "auto",
                            "duckdb": f"{duck.get('threads')}t {duck.get('memory_limit')}",
                            "ingest": ing,
                            "read": read,
                            "raw": raw,
                            "io": io,
                            "replay": rep,
                            "unmeasured": off,
                            "ratio": raw["seconds"] / rep["seconds"],
                        }
                    )
            traffic.unlink()
            shutil.rmtree(db)  # the storage is a folder (a DuckLake catalog and its data files)
    import platform

    dev = results[0]["raw"].get("devices")
    print(
        f"\nreplay benchmark: models={a.models}, devices={dev}, batch={a.batch_size}, host={platform.node()}, "
        f"cores={os.cpu_count()}"
    )
    print(
        "read = stream the features from DuckDB only; io = full replay with zero-cost models (the storage path alone)"
    )
    print(
        f"{'rows':>11} | {'writers':>7} | {'duckdb':>14} | {'ingest rows/s':>13} | {'ingest peak MB':>14} | "
        f"{'read rows/s':>12} | "
        f"{'io rows/s':>11} | {'(a) raw rows/s':>14} | {'(a) peak MB':>11} | {'(b) replay rows/s':>17} | "
        f"{'(b) seconds':>11} | {'(b) peak MB':>11} | {'b/a':>5}"
    )
    for r in results:
        n = r["rows"]
        print(
            f"{n:>11,} | {r['writers']:>7} | {r['duckdb']:>14} | {n / r['ingest']['seconds']:>13,.0f} | "
            f"{r['ingest']['peak_rss_mb']:>14,.0f} | "
            f"{n / r['read']['seconds']:>12,.0f} | {n / r['io']['seconds']:>11,.0f} | "
            f"{n / r['raw']['seconds']:>14,.0f} | {r['raw']['peak_rss_mb']:>11,.0f} | "
            f"{n / r['replay']['seconds']:>17,.0f} | {r['replay']['seconds']:>11.2f} | "
            f"{r['replay']['peak_rss_mb']:>11,.0f} | {r['ratio']:>5.2f}"
        )
    print("what bounds each full replay (busy seconds per stage; the write stage's is per writer thread):")
    for r in results:
        st, rss = r["replay"].get("stages") or {}, r["replay"].get("rss", {})
        busy = ", ".join(f"{k} {v:.2f}" for k, v in st.get("busy_s", {}).items())
        print(
            f"  {r['rows']:,} rows, {r['writers']} writers, DuckDB {r['duckdb']}: "
            f"wall {st.get('wall_s', 0):.2f} s, finish {st.get('finish_s', 0):.2f} s, busy {busy}; "
            f"bound: {st.get('bound')}; RSS before the replay {rss.get('before_mb', 0):,.0f} MB (models loaded), "
            f"peak during it {rss.get('peak_mb', 0):,.0f} MB ("
            + ", ".join(f"{k} {v:,.0f}" for k, v in rss.get("at_peak_mb", {}).items())
            + ")"
        )
    print(
        "cost of measuring each model's resources (CPU, calls, GPU counters): (a) raw scoring, batches alternately "
        "measured and not in one process; (b) the full replay with measurements off (a subprocess of its own)"
    )
    print(
        f"{'rows':>11} | {'(a) on rows/s':>13} | {'(a) off rows/s':>14} | {'(a) overhead':>12} | "
        f"{'(b) on rows/s':>13} | {'(b) off rows/s':>14} | {'(b) overhead':>12}"
    )
    for r in results:
        n, raw, on, off = r["rows"], r["raw"], r["replay"]["seconds"], r["unmeasured"]["seconds"]
        print(
            f"{n:>11,} | {n / raw['seconds']:>13,.0f} | {n / raw['unmeasured_seconds']:>14,.0f} | "
            f"{raw['seconds'] / raw['unmeasured_seconds'] - 1:>+12.2%} | {n / on:>13,.0f} | {n / off:>14,.0f} | "
            f"{on / off - 1:>+12.2%}"
        )
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
