"""The reference router: routing and overrides, retries, shadow mirroring, the SLO rollback, and the whole
loop on loopback with two real `mlflow models serve` processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, free_port, fresh_run, register_model, run_cli, seed_run
from loopback_http import LoopbackServer, json_reply
from workbench.config import Settings
from workbench.decide.canary import Signer, apply_decision, bucket_of, build_decision, in_canary
from workbench.decide.chain import status
from workbench.decide.policy import load_policy, parse_policy
from workbench.decide.signing import KeyRing, init_keys, trusted_keys
from workbench.live.router import LiveState, Router, RouterConfig, StoreWeights, choose_arm
from workbench.live.slo import ArmStats, judge
from workbench.live.trafficlog import TrafficLog
from workbench.store import Store

BASE, CAND = "http://baseline.test", "http://candidate.test"  # configuration only: nothing is called
LIVE = {
    "window_s": 30,
    "min_requests": 10,
    "max_error_rate": 0.05,
    "check_interval_s": 0.1,
    "segments": [
        {"name": "internal", "header": "X-User-Segment", "values": ["internal"]},
        {"name": "vip", "field": "tier", "values": ["vip"], "arm": "baseline"},
    ],
}
POLICY = parse_policy({"live": LIVE})


def state(weight=25, verified=True, killed=False, candidate="2", decision="dec_1") -> LiveState:
    return LiveState("fraud", weight, "1", candidate, decision, verified, killed, None if verified else "tampered")


class FakeWeights:
    """A canary state the test sets; ``rollback`` records what the router asked for (optionally blocking)."""

    def __init__(self, st: LiveState):
        self.st, self.version, self.seen = st, 0, -1
        self.rollbacks: list[tuple] = []
        self.release: threading.Event | None = None

    def set(self, st: LiveState) -> None:
        self.st, self.version = st, self.version + 1

    def changed(self) -> bool:
        return self.version != self.seen

    def read(self) -> LiveState:
        self.seen = self.version
        return self.st

    def rollback(self, pair, report):
        if self.release is not None:
            self.release.wait(10)
        self.rollbacks.append((pair, report))
        self.set(replace(self.st, weight=0, killed=True, decision_id="dec_rollback"))
        return "dec_rollback"


class Upstreams:
    """Two model servers on loopback sockets, scoring 0.25 (baseline) and 0.75 (candidate); ``mode`` sets how
    the candidate behaves: ok, hang (5 s), 500, 400 (what `mlflow models serve` answers when predict raises);
    :meth:`refuse` stops it listening."""

    def __init__(self):
        self.mode = "ok"
        self.calls = {"baseline": 0, "candidate": 0}
        self.servers = {arm: LoopbackServer(lambda req, arm=arm: self.answer(arm, req)) for arm in self.calls}

    async def start(self) -> Upstreams:
        for server in self.servers.values():
            await server.start()
        return self

    def url(self, arm: str) -> str:
        return self.servers[arm].url + "/invocations"

    async def answer(self, arm: str, req) -> bytes:
        assert (req.method, req.path) == ("POST", "/invocations") and req.headers["x-request-id"]
        self.calls[arm] += 1
        n = len(json.loads(req.body).get("dataframe_records", [{}]))
        if arm == "candidate":
            if self.mode == "hang":
                await asyncio.sleep(5)
            elif self.mode == "500":
                return json_reply(500, {"error_code": "INTERNAL_ERROR"})
            elif self.mode == "400":
                return json_reply(400, {"error_code": "BAD_REQUEST", "message": "model failed"})
        return json_reply(200, {"predictions": [0.25 if arm == "baseline" else 0.75] * n})

    async def set_mode(self, mode: str) -> None:
        """``refuse``: the candidate stops listening and drops its connections; any other: how it answers."""
        if mode == "refuse":
            await self.servers["candidate"].close()
        else:
            self.mode = mode

    async def close(self) -> None:
        for server in self.servers.values():
            await server.close()


@asynccontextmanager
async def running(weights, *, policy=POLICY, log_dir=None, clock=time.monotonic, **cfg):
    """A started router on two loopback model servers and an ASGI client to it; stopped (log closed) at the
    end."""
    ups = await Upstreams().start()
    config = RouterConfig(
        model="fraud", baseline_url=ups.url("baseline"), candidate_url=ups.url("candidate"), **({"poll_s": 0.05} | cfg)
    )
    log = TrafficLog(log_dir, flush_s=0.05) if log_dir else None
    router = Router(config, policy, weights, traffic_log=log, clock=clock)
    await router.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=router), base_url="http://router")
    try:
        yield router, client, ups
    finally:
        await client.aclose()
        await router.stop()
        await ups.close()


async def invoke(client, entity=None, headers=None, records=None, rid=None):
    h = dict(headers or {})
    if entity is not None:
        h["X-Entity-Id"] = entity
    if rid is not None:
        h["X-Request-Id"] = rid
    return await client.post("/invocations", json={"dataframe_records": records or [{"x": 0.5}]}, headers=h)


def read_log(log_dir) -> pa.Table:
    files = sorted(Path(log_dir).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


# -- routing decisions -----------------------------------------------------------------------------------
INTERNAL = POLICY.live.segments[0]


@pytest.mark.parametrize(
    "weight, bucket, header, segment, expected",
    [
        (0, 0, "always", INTERNAL, ("baseline", "weight 0")),
        (25, 100, None, None, ("candidate", "bucket")),
        (25, 2500, None, None, ("baseline", "bucket")),
        (25, 9999, "always", None, ("candidate", "header")),
        (25, 0, "never", INTERNAL, ("baseline", "header")),
        (1, 9999, None, INTERNAL, ("candidate", "segment:internal")),
        (100, 9999, None, None, ("candidate", "bucket")),
        (100, 0, " Never ", None, ("baseline", "header")),
    ],
    ids=[
        "weight-0-wins",
        "in-cohort",
        "just-outside",
        "header-always",
        "header-beats-segment",
        "segment",
        "full-weight",
        "header-case",
    ],
)
def test_choose_arm(weight, bucket, header, segment, expected):
    assert choose_arm(weight, bucket, header, segment) == expected


def test_bad_x_canary_value_is_refused():
    with pytest.raises(ValueError, match="always' or 'never"):
        choose_arm(5, 0, "sometimes")


def test_routing_is_sticky_and_follows_the_weight():
    async def main():
        weights = FakeWeights(state(weight=25))
        async with running(weights) as (router, client, ups):
            users = [f"user-{i}" for i in range(400)]
            arms = {}
            for u in users:
                r = await invoke(client, u)
                assert r.status_code == 200
                arms[u] = r.headers["x-canary-arm"]
            again = {u: (await invoke(client, u)).headers["x-canary-arm"] for u in users[:50]}
            assert again == {u: arms[u] for u in users[:50]}  # sticky
            expected = {u: "candidate" if in_canary(bucket_of(u, "fraud"), 25) else "baseline" for u in users}
            assert arms == expected
            assert 0.18 < sum(a == "candidate" for a in arms.values()) / len(users) < 0.32
            assert r.json() == {"predictions": [0.25 if arms[users[-1]] == "baseline" else 0.75]}

    asyncio.run(main())


def test_overrides_headers_segments_and_body_fields():
    async def main():
        weights = FakeWeights(state(weight=1))
        async with running(weights, entity_field="user") as (router, client, ups):
            outsider = next(f"u{i}" for i in range(1000) if not in_canary(bucket_of(f"u{i}", "fraud"), 1))
            insider = next(f"u{i}" for i in range(1000) if in_canary(bucket_of(f"u{i}", "fraud"), 1))
            arm = lambda r: r.headers["x-canary-arm"]  # noqa: E731
            assert arm(await invoke(client, outsider)) == "baseline"
            assert arm(await invoke(client, outsider, {"X-Canary": "always"})) == "candidate"
            assert arm(await invoke(client, insider, {"X-Canary": "never"})) == "baseline"
            assert arm(await invoke(client, outsider, {"X-User-Segment": "internal"})) == "candidate"
            assert arm(await invoke(client, insider, records=[{"x": 1.0, "tier": "vip"}])) == "baseline"
            # the entity from a body field when the header is absent
            r = await client.post("/invocations", json={"dataframe_records": [{"x": 1.0, "user": insider}]})
            assert arm(r) == "candidate"
            bad = await invoke(client, insider, {"X-Canary": "maybe"})
            assert bad.status_code == 400 and "always" in bad.json()["error"]

    asyncio.run(main())


def test_kill_switch_and_unverified_state_send_everyone_to_the_baseline():
    async def main():
        weights = FakeWeights(state(weight=50))
        async with running(weights) as (router, client, ups):
            canaries = [u for u in (f"u{i}" for i in range(200)) if in_canary(bucket_of(u, "fraud"), 50)][:20]
            assert {(await invoke(client, u)).headers["x-canary-arm"] for u in canaries} == {"candidate"}
            weights.set(state(weight=0, killed=True, decision="dec_kill"))
            await router.refresh()
            for hdr in ({}, {"X-Canary": "always"}, {"X-User-Segment": "internal"}):
                assert {(await invoke(client, u, hdr)).headers["x-canary-arm"] for u in canaries} == {"baseline"}
            assert router.off_reason() == "killed"
            weights.set(state(weight=50, verified=False))
            await router.refresh()
            assert router.effective_weight() == 0 and router.off_reason() == "unverified"
            assert {(await invoke(client, u)).headers["x-canary-arm"] for u in canaries} == {"baseline"}

    asyncio.run(main())


def test_a_new_decision_is_picked_up_by_the_poller():
    async def main():
        weights = FakeWeights(state(weight=1))
        async with running(weights, poll_s=0.02) as (router, client, ups):
            weights.set(state(weight=50, decision="dec_2"))
            for _ in range(100):
                if router.state.weight == 50:
                    break
                await asyncio.sleep(0.02)
            assert router.effective_weight() == 50 and router.state.decision_id == "dec_2"

    asyncio.run(main())


# -- retries and mirroring -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["500", "400", "refuse"], ids=["http-500", "mlflow-400", "connection-refused"])
def test_a_failed_candidate_request_is_retried_on_the_baseline(mode, tmp_path):
    async def main():
        weights = FakeWeights(state(weight=100))
        async with running(weights, log_dir=tmp_path, auto_rollback=False) as (router, client, ups):
            await ups.set_mode(mode)
            r = await invoke(client, "u1", rid="req-1")
            assert r.status_code == 200 and r.headers["x-canary-arm"] == "baseline"
            assert r.json() == {"predictions": [0.25]} and router.counts["retried"] == 1
            assert router.windows["candidate"].stats(time.monotonic(), 0.95).errors == 1

    asyncio.run(main())
    row = read_log(tmp_path).to_pylist()[0]
    assert (row["live_routed_arm"], row["live_served_arm"]) == ("candidate", "baseline")
    expected = {"500": "HTTP 500: ", "400": "HTTP 400: ", "refuse": "ConnectError: 127.0.0.1:"}[mode]
    assert row["live_candidate_error"].startswith(expected) and row["live_candidate_score"] is None
    assert row["live_baseline_score"] == 0.25 and row["live_baseline_error"] is None


def test_a_client_error_both_arms_give_is_not_the_candidates():
    async def refuse(request):
        return json_reply(400, {"error_code": "BAD_REQUEST", "message": "no column x"})

    async def main():
        server = await LoopbackServer(refuse).start()
        router = Router(RouterConfig("fraud", server.url, server.url), POLICY, FakeWeights(state(weight=100)))
        await router.start()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=router), base_url="http://r") as c:
            r = await invoke(c, "u1")
        await router.stop()
        await server.close()
        return r, router

    r, router = asyncio.run(main())
    assert r.status_code == 400 and r.headers["x-canary-arm"] == "baseline" and router.counts["retried"] == 1
    stats = router.windows["candidate"].stats(time.monotonic(), 0.95)
    assert (stats.requests, stats.errors) == (1, 0)


def test_mirroring_a_hanging_candidate_does_not_delay_the_answer(tmp_path):
    """The stated bound: the mirror adds no wait to the routed answer (here: answers within 1 s while the
    mirror hangs 5 s, timing out at 0.5 s); the log still gets each request once, with the mirror's error."""

    async def main():
        weights = FakeWeights(state(weight=0, decision="dec_0"))
        async with running(weights, log_dir=tmp_path, mirror_percent=100, mirror_timeout_s=0.5) as (
            router,
            client,
            ups,
        ):
            ups.mode = "hang"
            t0 = time.perf_counter()
            answers = await asyncio.gather(*(invoke(client, f"u{i}", rid=f"r{i}") for i in range(20)))
            elapsed = time.perf_counter() - t0
            assert elapsed < 1.0, elapsed
            assert all(a.status_code == 200 and a.headers["x-canary-arm"] == "baseline" for a in answers)
            assert ups.calls["candidate"] == 20

    asyncio.run(main())
    rows = read_log(tmp_path).to_pylist()
    assert sorted(r["request_id"] for r in rows) == sorted(f"r{i}" for i in range(20))
    assert all(r["live_mirrored"] and r["live_candidate_error"] == "timeout after 0.5 s" for r in rows)
    assert all(r["live_baseline_score"] == 0.25 and r["live_candidate_latency_ms"] >= 400 for r in rows)


@pytest.mark.parametrize("mode", ["500", "refuse"], ids=["http-500", "connection-refused"])
def test_a_failing_mirror_never_drops_the_routed_request(mode, tmp_path):
    async def main():
        weights = FakeWeights(state(weight=0, decision="dec_0"))
        async with running(weights, log_dir=tmp_path, mirror_percent=100) as (router, client, ups):
            await ups.set_mode(mode)
            answers = [await invoke(client, f"u{i}", rid=f"r{i}") for i in range(10)]
            assert [a.status_code for a in answers] == [200] * 10
            assert all(a.json() == {"predictions": [0.25]} for a in answers)

    asyncio.run(main())
    rows = read_log(tmp_path).to_pylist()
    assert len(rows) == 10 and all(r["live_candidate_error"] and r["live_baseline_error"] is None for r in rows)


def test_mirror_percentage_samples_requests(tmp_path):
    async def main():
        weights = FakeWeights(state(weight=0, decision="dec_0"))
        async with running(weights, mirror_percent=30) as (router, client, ups):
            for i in range(300):
                await invoke(client, rid=f"r{i}")
        return router.counts["mirrored"], ups.calls["candidate"]  # after stop: every mirror has ended

    mirrored, calls = asyncio.run(main())
    assert mirrored == calls == sum(bucket_of(f"r{i}", "mirror") < 3000 for i in range(300))
    assert 60 < mirrored < 120


def test_multi_row_requests_log_one_row_per_input_row(tmp_path):
    async def main():
        async with running(FakeWeights(state(weight=0)), log_dir=tmp_path) as (router, client, ups):
            r = await invoke(client, "u1", rid="batch", records=[{"x": 1.0, "c": "a"}, {"x": 2.0, "c": "b"}])
            assert r.json() == {"predictions": [0.25, 0.25]}

    asyncio.run(main())
    t = read_log(tmp_path)
    assert t.column("request_id").to_pylist() == ["batch:0", "batch:1"]
    assert t.column("x").to_pylist() == [1.0, 2.0] and t.column("c").to_pylist() == ["a", "b"]
    assert t.column("entity_key").to_pylist() == ["u1", "u1"]


# -- the SLO monitor -----------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_a_breaching_candidate_goes_to_zero_at_once_and_a_rollback_is_recorded():
    async def main():
        weights = FakeWeights(state(weight=100))
        weights.release = threading.Event()  # the record lands late: routing must not wait for it
        clock = Clock()
        async with running(weights, clock=clock, mirror_percent=100) as (router, client, ups):
            for i in range(10):
                await invoke(client, f"u{i}")
            assert router.check_slo().breached is False
            ups.mode = "500"
            for i in range(10):
                r = await invoke(client, f"u{i}")
                assert r.status_code == 200 and r.headers["x-canary-arm"] == "baseline"  # retried
            report = router.check_slo()
            assert report.breached and "10 errors in 20 requests" in report.reason
            assert router.effective_weight() == 0 and router.off_reason() == "rolled back"
            assert not router.mirroring()
            ups.mode = "ok"
            before = ups.calls["candidate"]
            for i in range(20):
                assert (await invoke(client, f"u{i}", {"X-Canary": "always"})).headers["x-canary-arm"] == "baseline"
            assert ups.calls["candidate"] == before and weights.rollbacks == []
            weights.release.set()
            for _ in range(200):
                if router.state.decision_id == "dec_rollback":
                    break
                await asyncio.sleep(0.01)
            [(pair, rep)] = weights.rollbacks
            assert pair == ("1", "2") and rep is report
            assert router.rollback["decision_id"] == "dec_rollback" and router.state.killed
            assert router.check_slo() is None  # nothing live any more

    asyncio.run(main())


def test_old_outcomes_leave_the_window():
    async def main():
        clock = Clock()
        async with running(FakeWeights(state(weight=100)), clock=clock, auto_rollback=True) as (router, client, ups):
            ups.mode = "500"
            for i in range(12):
                await invoke(client, f"u{i}")
            clock.t += 31  # the window is 30 s: the failures are forgotten
            ups.mode = "ok"
            for i in range(12):
                await invoke(client, f"u{i}")
            report = router.check_slo()
            assert not report.breached and report.stats["candidate"].requests == 12
            assert router.effective_weight() == 100

    asyncio.run(main())


def test_store_weights_records_a_signed_rollback_with_mlflow_down(tmp_path):
    """The real seam: DuckDB state, the signing key, and an MLflow URI where nothing listens."""
    home = tmp_path / "home"
    init_keys(home / "keys")
    settings = Settings(home=home, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}").ensure()
    signer = Signer.from_keys_dir(settings.keys_dir, "router@test")
    trusted = trusted_keys(settings.keys_dir, settings.trusted_keys_dir)
    with Store(settings.db_path) as store:
        seed_run(store, "run_a")
        for step in range(3):  # each step on new evidence
            signed, _ = build_decision(
                store, "run_a" if step == 0 else fresh_run(store, step), load_policy(), signer, justification="reviewed"
            )
            apply_decision(store, signed, trusted)
    weights = StoreWeights(settings, "fraud", POLICY, keys=KeyRing(trusted, signer))
    st = weights.read()
    assert (st.weight, st.verified, st.killed, weights.changed()) == (25, True, False, False)
    stats = {
        "baseline": ArmStats("baseline", 40, 0, 0.0, 0.0, 0.09, 2.0, 4.0),
        "candidate": ArmStats("candidate", 40, 12, 0.3, 0.18, 0.45, 2.0, 5.0),
    }
    report = judge(POLICY.live, stats, 0.95)
    decision_id = weights.rollback(("1", "2"), report)
    assert weights.changed()
    st = weights.read()
    assert (st.weight, st.killed, st.verified, st.decision_id) == (0, True, True, decision_id)
    with Store(settings.db_path) as store:
        row = store.get_decision(decision_id)
        record = json.loads(row["record"])
        assert record["verdict"] == "ROLLBACK" and record["kind"] == "kill" and record["signer"] == "router@test"
        assert record["reason"].startswith("live SLO: candidate error rate 0.3 [0.18, 0.45] (12 errors in 40")
        assert record["scorecard"]["checks"][0]["gate"] == "live.errors.max_rate"
        assert record["policy_hash"] == POLICY.hash
        assert row["pending_sync"] and "unreachable" in row["sync_error"]
        assert status(store, "fraud", trusted).verified
    assert weights.rollback(("1", "2"), report) is None  # already at 0: nothing more to record


def test_a_live_rollback_tags_the_mlflow_version(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    name = register_model(mlflow_server, "live_")
    client = MlflowClient(mlflow_server, mlflow_server)
    home = tmp_path / "home"
    init_keys(home / "keys")
    settings = Settings(home=home, mlflow_tracking_uri=mlflow_server).ensure()
    keys = KeyRing.from_settings(settings)  # the router's ring: its signer signs the rollback
    with Store(settings.db_path) as store:
        seed_run(store, "run_a", model=name)
        signed, _ = build_decision(store, "run_a", load_policy(), keys.signer, justification="reviewed")
        apply_decision(store, signed, keys.trusted)
    stats = {
        "baseline": ArmStats("baseline", 40, 0, 0.0, 0.0, 0.09, 2.0, 4.0),
        "candidate": ArmStats("candidate", 40, 40, 1.0, 0.91, 1.0, 2.0, 5.0),
    }
    decision_id = StoreWeights(settings, name, POLICY, keys=keys).rollback(("1", "2"), judge(POLICY.live, stats, 0.95))
    tags = client.get_model_version(name, "2").tags
    assert tags["canary.decision_id"] == decision_id and tags["canary.verdict"] == "ROLLBACK"
    assert tags["canary.weight"] == "0" and tags["canary.reason"].startswith("live SLO: candidate error rate 1")
    with Store(settings.db_path) as store:
        assert not store.get_decision(decision_id)["pending_sync"]


def test_router_reads_the_live_policy_defaults():
    r = Router(RouterConfig("fraud", BASE, CAND), parse_policy({}), FakeWeights(state()))
    assert r.live.window_s == 30 and r.live.segments == ()


# -- end to end: real `mlflow models serve` processes, the router as `workbench route` ------------------------
def save_models(root: Path, flag: Path) -> tuple[str, str]:
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    try:
        import tiny_model
    finally:
        sys.path.remove(str(REPO / "tests" / "fixtures"))
    return tiny_model.save(root / "baseline"), tiny_model.save(root / "candidate", shift=1.0, fail_flag=str(flag))


def spawn(args, log_path, env) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout=15) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_ready(url: str, procs: list, deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        for p, log_path in procs:
            assert p.poll() is None, Path(log_path).read_text()[-3000:]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready"
        time.sleep(0.1)


E2E_POLICY = """
[live]
window_s = 10
min_requests = 10
max_error_rate = 0.05
max_p99_ms = 2000.0
check_interval_s = 0.2
"""


@pytest.mark.slow
def test_end_to_end_rollback_on_loopback(seeded_home, tmp_path):
    """Two real model servers and `workbench route`: 25 % canary with 100 % mirroring; the candidate starts
    failing mid-load; it is rolled back within the window, every request is answered by a model, and the
    traffic log holds each request exactly once (and ingests into a traffic set)."""
    flag = tmp_path / "fail.flag"
    base_dir, cand_dir = save_models(tmp_path, flag)
    policy_path = tmp_path / "live.toml"
    policy_path.write_text(E2E_POLICY)
    with Store(seeded_home / "lake") as store:  # fraud v1 -> v2 at 1, 5, 25 %
        signer = Signer.from_keys_dir(seeded_home / "keys", "tester")
        trusted = trusted_keys(seeded_home / "keys", seeded_home / "keys" / "trusted")
        for step in range(3):  # each step on new evidence
            signed, _ = build_decision(
                store, "run_a" if step == 0 else fresh_run(store, step), load_policy(), signer, justification="reviewed"
            )
            apply_decision(store, signed, trusted)
    env = os.environ | {
        "WORKBENCH_HOME": str(seeded_home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
    }  # MLflow down: never blocks
    ports = {name: free_port() for name in ("baseline", "candidate", "router")}
    log_dir = tmp_path / "live"
    procs = []
    try:
        for name, model_dir in (("baseline", base_dir), ("candidate", cand_dir)):
            procs.append(
                (
                    spawn(
                        [
                            sys.executable,
                            "-m",
                            "mlflow",
                            "models",
                            "serve",
                            "-m",
                            str(model_dir),
                            "--env-manager",
                            "local",
                            "-h",
                            "127.0.0.1",
                            "-p",
                            str(ports[name]),
                        ],
                        tmp_path / f"{name}.log",
                        env,
                    ),
                    tmp_path / f"{name}.log",
                )
            )
        router_cmd = [
            sys.executable,
            "-m",
            "workbench.cli",
            "route",
            "fraud",
            "--json",
            "--baseline",
            f"http://127.0.0.1:{ports['baseline']}",
            "--candidate",
            f"http://127.0.0.1:{ports['candidate']}",
            "--port",
            str(ports["router"]),
            "--mirror",
            "100",
            "--policy",
            str(policy_path),
            "--log-dir",
            str(log_dir),
            "--poll",
            "0.2",
        ]
        router = subprocess.Popen(
            router_cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / "router.log", "wb"),
            start_new_session=True,
        )
        procs.append((router, tmp_path / "router.log"))
        for name in ("baseline", "candidate"):
            wait_ready(f"http://127.0.0.1:{ports[name]}/ping", procs)
        wait_ready(f"http://127.0.0.1:{ports['router']}/healthz", procs)
        url = f"http://127.0.0.1:{ports['router']}"
        assert httpx.get(url + "/healthz").json()["effective_weight"] == 25

        n, fail_at = 240, 80
        results: list[tuple[str, int, str]] = []
        t_fail = None

        async def load():
            nonlocal t_fail
            async with httpx.AsyncClient(base_url=url, timeout=20, trust_env=False) as client:

                async def one(i):
                    r = await client.post(
                        "/invocations",
                        json={"dataframe_records": [{"x": (i % 7) / 7}]},
                        headers={"X-Entity-Id": f"user-{i % 60}", "X-Request-Id": f"req-{i:04d}"},
                    )
                    results.append((f"req-{i:04d}", r.status_code, r.json()))

                for start in range(0, n, 4):  # bounded: 4 in flight, n requests in all
                    if start == fail_at:
                        flag.write_text("fail")
                        t_fail = time.time()
                    await asyncio.gather(*(one(i) for i in range(start, start + 4)))
                    await asyncio.sleep(0.01)

        asyncio.run(asyncio.wait_for(load(), 120))

        assert len(results) == n and all(code == 200 and len(body["predictions"]) == 1 for _, code, body in results)
        rollback = httpx.get(url + "/v1/router").json()["rollback"]
        assert rollback and rollback["at"] - t_fail < 10  # weight 0 within the 10 s window
        deadline = time.monotonic() + 30  # the signed record lands in a worker thread
        while not rollback["decision_id"] and not rollback["error"] and time.monotonic() < deadline:
            time.sleep(0.1)
            rollback = httpx.get(url + "/v1/router").json()["rollback"]
        assert rollback["decision_id"], json.dumps(rollback)
    finally:
        for p, _ in reversed(procs):
            stop(p)
    out = json.loads(router.stdout.read())
    assert out["requests"] == n and out["rollback"]["decision_id"] == rollback["decision_id"]
    assert out["state"]["weight"] == 0 and out["state"]["killed"] and out["state"]["verified"]

    table = read_log(log_dir)
    ids = table.column("request_id").to_pylist()
    assert len(ids) == n and sorted(ids) == sorted(r for r, _, _ in results)  # each request exactly once
    rows = table.to_pylist()
    assert any(r["live_routed_arm"] == "candidate" and r["live_candidate_score"] is not None for r in rows)
    assert any(r["live_candidate_error"] and r["live_candidate_error"].startswith("HTTP 400") for r in rows)
    held = [r for r in rows if r["live_reason"] in ("rolled back", "killed")]
    assert held and all(r["live_routed_arm"] == "baseline" and r["live_candidate_status"] is None for r in held)
    assert all(r["live_served_arm"] == "baseline" or r["live_candidate_score"] is not None for r in rows)
    assert not list(log_dir.glob("*.partial"))

    st = json.loads(run_cli("canary", "status", "fraud", "--json", home=seeded_home).stdout)
    assert (st["weight"], st["verified"], st["decision_id"]) == (0, True, out["rollback"]["decision_id"])
    with Store(seeded_home / "lake") as store:
        dec = store.get_decision(st["decision_id"])
        assert json.loads(dec["record"])["reason"].startswith("live SLO: candidate error rate")
        assert dec["pending_sync"] and dec["sync_error"]
    ing = json.loads(
        run_cli(
            "ingest",
            str(log_dir / "*.parquet"),
            "--name",
            "live",
            "--entity-col",
            "entity_key",
            "--nullable",
            "live_*",
            "--json",
            home=seeded_home,
        ).stdout
    )
    assert (ing["rows"], ing["quarantined"]) == (n, 0)
