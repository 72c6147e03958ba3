"""Load: 50 concurrent clients against `workbench serve` on 127.0.0.1 for a bounded time, zero failures.

The mix is every GET endpoint of the service's OpenAPI spec whose path parameters the test can fill (the
model and decision of a seeded canary: the weight API's reads) plus signed MLflow webhook deliveries (each
new, so each queues a job: a write per request). ``WORKBENCH_LOAD_SECONDS`` sets the duration (10 s by
default; ``benchmarks/reliability.py --load-seconds 30`` for the benchmark). Every delivery must end up as
exactly one job.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from mlflow.webhooks.delivery import _generate_hmac_signature

from conftest import REPO, free_port, make_evaluation, seed_run
from reliability_log import record
from workbench.canary import Signer, apply_decision, build_decision
from workbench.policy import load_policy
from workbench.signing import init_keys, trusted_keys
from workbench.store import Store

CLIENTS = 50
SECRET = "whsec-load"


def seeded_home(home: Path) -> dict:
    """A home with a key and an applied decision, so the weight API has a canary to serve."""
    init_keys(home / "keys")
    with Store(home / "workbench.duckdb") as store:
        seed_run(store, "run_a", make_evaluation("run_a"))
        signed, _ = build_decision(store, "run_a", load_policy(), Signer.from_keys_dir(home / "keys", "load"))
        apply_decision(store, signed, trusted_keys(home / "keys", home / "keys" / "trusted"))
    return {"model": "fraud", "decision_id": signed.decision_id, "id": signed.decision_id}


def read_targets(base: str, values: dict) -> list[str]:
    """GET paths of the OpenAPI spec with every path parameter filled from ``values``."""
    spec = httpx.get(base + "/openapi.json", timeout=10).json()
    out = []
    for path, ops in spec["paths"].items():
        if "get" not in ops:
            continue
        params = [p["name"] for p in ops["get"].get("parameters", []) if p["in"] == "path"]
        if all(p in values for p in params):
            out.append(path.format(**{p: values[p] for p in params}))
    return sorted(out)


def webhook() -> tuple[str, dict]:
    body = json.dumps({"entity": "model_version", "action": "created", "timestamp": "2027-01-15T08:00:00Z",
                       "data": {"name": "fraud", "version": "9", "source": "models:/x", "run_id": "r"}})
    did, ts = str(uuid.uuid4()), str(int(time.time()))
    return body, {"Content-Type": "application/json", "X-MLflow-Delivery-Id": did, "X-MLflow-Timestamp": ts,
                  "X-MLflow-Signature": _generate_hmac_signature(SECRET, did, ts, body)}


async def hammer(base: str, targets: list[str], seconds: float) -> dict:
    """``CLIENTS`` concurrent clients, each sending its next request as soon as the last one is answered."""
    results: dict[str, list] = {t: [] for t in [*targets, "POST /webhooks/mlflow"]}
    failures: list[str] = []
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        async def one(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                kind = list(results)[i % len(results)]
                i += 1
                t0 = time.perf_counter()
                try:
                    if kind.startswith("POST "):
                        body, headers = webhook()
                        r = await client.post("/webhooks/mlflow", content=body, headers=headers)
                        ok = r.status_code == 202 and r.json()["status"] == "queued"
                    else:
                        r = await client.get(kind)
                        ok = r.status_code == 200
                    if not ok:
                        failures.append(f"{kind}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    failures.append(f"{kind}: {type(e).__name__}")
                results[kind].append(time.perf_counter() - t0)

        await asyncio.gather(*(one(k) for k in range(CLIENTS)))
    return {"latencies": results, "failures": failures}


def test_fifty_concurrent_clients_get_every_answer(tmp_path):
    seconds = float(os.environ.get("WORKBENCH_LOAD_SECONDS", "10"))
    home = tmp_path / "home"
    values = seeded_home(home)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {"WORKBENCH_HOME": str(home), "WORKBENCH_WEBHOOK_SECRET": SECRET}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "serve", "--port", str(port)], env=env, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
        targets = read_targets(base, values)
        assert "/healthz" in targets
        t0 = time.monotonic()
        out = asyncio.run(hammer(base, targets, seconds))
        wall = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert out["failures"] == [], out["failures"][:5]
    lat = out["latencies"]
    total = sum(len(v) for v in lat.values())
    with Store(home / "workbench.duckdb", read_only=True) as store:
        jobs = len(store.list_jobs())
    assert jobs == len(lat["POST /webhooks/mlflow"])   # every accepted delivery is one job: nothing lost
    rows = {k: (len(v), *np.percentile(np.array(v) * 1000, [50, 99])) for k, v in lat.items()}
    everything = np.concatenate([np.array(v) for v in lat.values()]) * 1000
    p50, p99 = np.percentile(everything, [50, 99])
    print(f"\n{CLIENTS} clients, {wall:.1f} s: {total} requests, {total / wall:.0f} req/s, 0 failed, "
          f"P50 {p50:.1f} ms, P99 {p99:.1f} ms")
    for k, (n, a, b) in rows.items():
        print(f"  {k}: {n} requests, P50 {a:.1f} ms, P99 {b:.1f} ms")
    for k, (n, a, b) in rows.items():
        record("load", f"{CLIENTS} clients for {seconds:g} s: {k}", "0 failed", requests=n,
               p50_ms=round(a, 1), p99_ms=round(b, 1))
    record("load", f"{CLIENTS} clients for {seconds:g} s: all endpoints", f"0 failed of {total}; every webhook "
           "delivery queued exactly one job", requests=total, req_per_s=round(total / wall), p50_ms=round(p50, 1),
           p99_ms=round(p99, 1), jobs=jobs)
