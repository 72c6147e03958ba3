"""Router benchmark: requests/s and the latency the router adds over calling the model server directly.

Starts two real ``mlflow models serve`` processes (a tiny pyfunc, so the model costs little and the HTTP
path dominates) and two ``workbench route`` processes in front of them, mirroring off and on (the traffic
log on in both, the default), all on 127.0.0.1. The workbench home has no decision for the model, so the
router sends every request to the baseline server: "direct" and "router" hit the same server and the
difference is what the router adds. With mirroring on, the candidate server also gets every request.

Loads (one input row per request), sent from this process by the router's own lean client
(:class:`workbench.live.upstream.Pool` on uvloop, the same client for every target, so the load generator takes
little of a shared machine's CPU):
  closed-loop with 1 and 4 requests in flight, and open-loop at a fixed rate (default: a third of what the
  baseline server sustains directly with 4 in flight, measured first).
Each load runs its targets in interleaved rounds so slow phases of a shared machine hit them alike.

Two tables: each target's own latency distribution ("added" = router minus direct, two different samples of
requests, so a model-server stall in one of them moves its P99), and, paired per request through the
router's traffic log, the time each routed request spent outside the router's call to the model server.

    python benchmarks/router.py [--requests 3000] [--rounds 3] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT))
from workbench.live.upstream import Pool  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout} s")
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its live descendants have used so far (`mlflow models serve`
    runs the server in a child process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += cpu_seconds(int(child))
    return total


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


BODY = b'{"dataframe_records": [{"x": 0.5}]}'


REQUEST_IDS = itertools.count()


async def post(client: Pool, i: int) -> str:
    """One scoring request; its request id (unique in this run: the routers log it)."""
    rid = f"bench-{next(REQUEST_IDS)}"
    r = await client.post(
        BODY, {"content-type": "application/json", "x-entity-id": f"u{i % 1000}", "x-request-id": rid}, timeout=30
    )
    if r.status != 200:
        raise RuntimeError(f"{client.url}: HTTP {r.status} {r.body[:200]!r}")
    return rid


async def closed_loop(client: Pool, n: int, inflight: int) -> tuple[list[tuple[str, float]], float]:
    """``n`` requests, ``inflight`` at a time: (request id, latency ms) of each, and the wall seconds."""
    lat: list[tuple[str, float]] = []
    counter = iter(range(n))

    async def worker():
        for i in counter:
            t0 = time.perf_counter()
            rid = await post(client, i)
            lat.append((rid, (time.perf_counter() - t0) * 1000))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return lat, time.perf_counter() - t0


async def open_loop(client: Pool, n: int, rate: float) -> tuple[list[tuple[str, float]], float]:
    """``n`` requests at ``rate`` per second whatever the answers do; latency from the scheduled send time."""
    lat: list[tuple[str, float]] = []
    start = time.perf_counter()

    async def one(i: int, due: float):
        rid = await post(client, i)
        lat.append((rid, (time.perf_counter() - due) * 1000))

    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return lat, time.perf_counter() - start


async def measure(
    targets: dict[str, str], pids: dict[str, int], n: int, rounds: int, inflight: int = 1, rate: float | None = None
) -> dict[str, dict]:
    """Latencies (and request ids), wall seconds, the CPU seconds of the process behind each target (``pids``)
    and of this process (the load generator)."""
    out: dict[str, dict[str, Any]] = {
        name: {"lat": [], "ids": [], "seconds": 0.0, "n": 0, "cpu": 0.0, "client_cpu": 0.0} for name in targets
    }
    clients = {name: Pool(url) for name, url in targets.items()}
    for client in clients.values():  # warm the connections and the servers
        await closed_loop(client, 200, inflight)
    for _ in range(rounds):
        for name, client in clients.items():
            per = n // rounds
            cpu0, own0 = cpu_seconds(pids[name]), time.process_time()
            lat, sec = (await open_loop(client, per, rate)) if rate else (await closed_loop(client, per, inflight))
            out[name]["cpu"] += cpu_seconds(pids[name]) - cpu0
            out[name]["client_cpu"] += time.process_time() - own0
            out[name]["ids"] += [rid for rid, _ in lat]
            out[name]["lat"] += [ms for _, ms in lat]
            out[name]["seconds"] += sec
            out[name]["n"] += per
    for client in clients.values():
        await client.aclose()
    return out


def run(coro):
    """Run a load on uvloop, with this process's heap (MLflow, pandas, ...) frozen out of the collector: a full
    collection here (~100 ms) would otherwise land on the latency of whichever target was being measured."""
    gc.collect()
    gc.freeze()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=3000, help="requests per target and load")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open-loop rate (default: a third of the direct capacity, headroom on a shared machine)",
    )
    a = p.parse_args()

    import tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    env = os.environ | {
        "WORKBENCH_HOME": str(tmp / "home"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    ports = {k: free_port() for k in ("baseline", "candidate", "router", "router_mirror")}
    procs: dict[str, subprocess.Popen] = {}
    try:
        for arm, shift in (("baseline", 0.0), ("candidate", 1.0)):
            model = tiny_model.save(tmp / arm, shift=shift)
            procs[arm] = spawn(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "models",
                    "serve",
                    "-m",
                    model,
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(ports[arm]),
                ],
                tmp / f"{arm}.log",
                env,
            )
        for name, mirror in (("router", "0"), ("router_mirror", "100")):
            procs[name] = spawn(
                [
                    sys.executable,
                    "-m",
                    "workbench.cli",
                    "route",
                    "bench",
                    "--port",
                    str(ports[name]),
                    "--baseline",
                    f"http://127.0.0.1:{ports['baseline']}",
                    "--candidate",
                    f"http://127.0.0.1:{ports['candidate']}",
                    "--mirror",
                    mirror,
                    "--no-auto-rollback",
                    "--log-dir",
                    str(tmp / f"log_{name}"),
                ],
                tmp / f"{name}.log",
                env,
            )
        for arm in ("baseline", "candidate"):
            wait_ready(f"http://127.0.0.1:{ports[arm]}/ping", procs[arm], tmp / f"{arm}.log")
        for name in ("router", "router_mirror"):
            wait_ready(f"http://127.0.0.1:{ports[name]}/healthz", procs[name], tmp / f"{name}.log")

        targets = {
            "direct": f"http://127.0.0.1:{ports['baseline']}/invocations",
            "router, mirror off": f"http://127.0.0.1:{ports['router']}/invocations",
            "router, mirror 100%": f"http://127.0.0.1:{ports['router_mirror']}/invocations",
        }
        pids = {
            "direct": procs["baseline"].pid,
            "router, mirror off": procs["router"].pid,
            "router, mirror 100%": procs["router_mirror"].pid,
        }
        n, rounds = a.requests, a.rounds
        load_before = os.getloadavg()[0]
        results = {}
        results["closed, 1 in flight"] = run(measure(targets, pids, n, rounds, inflight=1))
        results["closed, 4 in flight"] = run(measure(targets, pids, n, rounds, inflight=4))
        d4 = results["closed, 4 in flight"]["direct"]
        capacity = d4["n"] / d4["seconds"]
        rate = a.rate or round(capacity / 3)
        results[f"open, {rate:.0f}/s"] = run(measure(targets, pids, n, rounds, rate=rate))
        rss = {name: peak_rss_mb(procs[name].pid) for name in ("router", "router_mirror")}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    print(
        f"\nrouter benchmark: tiny pyfunc behind `mlflow models serve` (1 worker), {n} requests per target and "
        f"load in {rounds} interleaved rounds, host={platform.node()}, cores={os.cpu_count()}, load average "
        f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    client_cpu = sum(r["client_cpu"] for res in results.values() for r in res.values())
    client_n = sum(r["n"] for res in results.values() for r in res.values())
    print(
        f"direct capacity with 4 in flight: {capacity:,.0f} requests/s; router peak RSS: mirror off "
        f"{rss['router']:.0f} MB, mirror on {rss['router_mirror']:.0f} MB; CPU ms/req: of the model server for "
        f"direct, of the router process otherwise (its traffic log writer included); the load generator "
        f"used {1000 * client_cpu / client_n:.3f} ms CPU per request"
    )
    head = (
        f"{'load':<22} | {'target':<20} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} | {'added p50':>9} | "
        f"{'added p99':>9} | {'req/s vs direct':>15} | {'CPU ms/req':>10}"
    )
    print(head)
    print("-" * len(head))
    for load, res in results.items():
        base = res["direct"]
        b50, b99 = np.percentile(base["lat"], [50, 99])
        for name, r in res.items():
            p50, p99 = np.percentile(r["lat"], [50, 99])
            rps = r["n"] / r["seconds"]
            added = ("", "") if name == "direct" else (f"{p50 - b50:+.2f}", f"{p99 - b99:+.2f}")
            print(
                f"{load:<22} | {name:<20} | {rps:>7,.0f} | {p50:>7.2f} | {p99:>7.2f} | {added[0]:>9} | "
                f"{added[1]:>9} | {rps / (base['n'] / base['seconds']):>15.2f} | {1000 * r['cpu'] / r['n']:>10.3f}"
            )

    # The same requests, paired: what each one spent outside the model server's call as the router timed it
    upstream = {
        name: upstream_ms(tmp / f"log_{key}")
        for name, key in (("router, mirror off", "router"), ("router, mirror 100%", "router_mirror"))
    }
    print(
        "\nper request, paired by request id with the router's traffic log: client latency minus the router's "
        "own timing of its baseline call (the two loopback hops, uvicorn and the router's code, and any wait "
        "for a core; model-server stalls cancel out)"
    )
    head = f"{'load':<22} | {'target':<20} | {'p50 ms':>7} | {'p90 ms':>7} | {'p99 ms':>7} | {'p99.9 ms':>8}"
    print(head)
    print("-" * len(head))
    for load, res in results.items():
        for name, ms in upstream.items():
            r = res[name]
            own = np.array([lat - ms[rid] for rid, lat in zip(r["ids"], r["lat"], strict=True)])
            q = np.percentile(own, [50, 90, 99, 99.9])
            print(f"{load:<22} | {name:<20} | {q[0]:>7.2f} | {q[1]:>7.2f} | {q[2]:>7.2f} | {q[3]:>8.2f}")


def upstream_ms(log_dir: Path) -> dict[str, float]:
    """request id -> the router's latency of its baseline call, from its traffic log."""
    import pyarrow.parquet as pq

    ids, ms = [], []
    for f in sorted(log_dir.glob("*.parquet")):
        t = pq.read_table(f, columns=["request_id", "live_baseline_latency_ms"])
        ids += t.column("request_id").to_pylist()
        ms += t.column("live_baseline_latency_ms").to_pylist()
    return dict(zip(ids, ms, strict=True))


if __name__ == "__main__":
    main()
