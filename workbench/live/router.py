"""The reference router (``workbench route``): live traffic to a baseline and a candidate model server.

An ASGI app (run on uvicorn) that proxies MLflow scoring requests (``POST /invocations``) over keep-alive
connections of its own lean HTTP/1.1 client (:mod:`workbench.live.upstream`):

- **Weight**: the model's canary state from its verified chain, cross-checked against the published weight
  document, re-read when the DuckDB file or the document changes (a ``stat`` every ``poll_s``);
  only a verified state routes anything to the candidate.
- **Sticky, monotone**: the entity key (a header, else a field of the first input row, else the request id)
  hashes to a bucket in [0, 10000); the candidate serves it iff ``bucket < weight * 100``
  (:func:`workbench.decide.canary.bucket_of`), so a user in the 1 % cohort stays a canary user at 5, 25 and 50 %.
- **Overrides**, in order: weight 0 (no decision, unverified, killed, rolled back) sends everything to the
  baseline; ``X-Canary: always|never``; the policy's live segment rules; then the bucket.
- **Retry**: a candidate answer that fails (no answer, or a non-2xx status) is retried on the baseline.
- **Shadow mirroring** (``mirror_percent``): a baseline-routed request is also sent to the candidate in a
  background task; the user gets the routed answer as soon as it is there, whatever the mirror does.
- **Traffic log**: every request, with both arms' answers, latencies and errors, once
  (:mod:`workbench.live.trafficlog`).
- **Automated rollback**: per-arm sliding windows (:mod:`workbench.live.slo`) judged every ``check_interval_s``;
  on a breach the candidate goes to weight 0 at once (locally), and a signed ROLLBACK record is applied and
  published to MLflow in a worker thread, so neither DuckDB nor MLflow can hold up routing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Protocol

from workbench import WorkbenchError
from workbench.decide.canary import bucket_of, in_canary
from workbench.decide.policy import LiveSegment, Policy
from workbench.decide.signing import KeyRing
from workbench.live.slo import ArmWindow, SloReport, judge
from workbench.live.trafficlog import LiveRecord, Outcome, TrafficLog, request_rows
from workbench.live.upstream import Pool, UpstreamError, UpstreamTimeout
from workbench.roles import ROLES as ARMS

log = logging.getLogger(__name__)
CANARY_HEADER = b"x-canary"


# -- the live state ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveState:
    """The model's canary state as the router uses it."""

    model: str
    weight: int
    baseline_version: str | None
    candidate_version: str | None
    decision_id: str | None
    verified: bool
    killed: bool
    problem: str | None = None
    paused: bool = False  # held at its weight by an approver: the weight (which the router follows) stays

    @classmethod
    def empty(cls, model: str, problem: str = "no decision has been applied to this model") -> LiveState:
        return cls(model, 0, None, None, None, False, False, problem)

    @property
    def pair(self) -> tuple[str | None, str | None]:
        return self.baseline_version, self.candidate_version

    def to_dict(self) -> dict:
        return asdict(self)


class WeightSource(Protocol):
    """Where the router reads the canary state and records a rollback (the DuckDB store; fakes in tests)."""

    def changed(self) -> bool: ...

    def read(self) -> LiveState: ...

    def rollback(self, pair: tuple, report: SloReport) -> str | None: ...


class StoreWeights:
    """The canary state in the workbench's DuckDB, checked by ``stat`` and read (read-only) when it changed.

    ``rollback`` signs and applies a ROLLBACK record (``build_kill`` with source ``live SLO`` and the SLO's
    checks as the scorecard), then publishes it to MLflow; MLflow being down leaves it ``pending_sync``.
    ``keys`` is the router's key ring, made once at its start: the state verifies against its trusted keys and
    the rollback is signed by its signer.
    """

    def __init__(
        self, settings, model: str, policy: Policy, *, keys: KeyRing, publish: bool = True, read_wait_s: float = 0.0
    ):
        from workbench.store import Store

        self.settings, self.model, self.policy = settings, model, policy
        self.keys, self.publish, self.read_wait_s = keys, publish, read_wait_s
        self._sig: tuple | None = None
        # the poller's reads and the rollback's writes take turns
        self._lock = threading.Lock()
        with Store(settings.db_path):  # creates the storage and schema, so read-only opens work from now on
            pass

    def _signature(self) -> tuple:
        out: list[tuple[int, int] | None] = []
        from workbench.decide.witness import WeightDocuments
        from workbench.store import change_marks

        document = WeightDocuments(self.settings.published_dir).path(self.model)
        for p in (*change_marks(self.settings.db_path), document):
            try:
                st = os.stat(p)
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def changed(self) -> bool:
        return self._signature() != self._sig

    def read(self) -> LiveState:
        from workbench.decide.chain import status
        from workbench.decide.decisions import witnesses
        from workbench.store import Store

        sig = self._signature()  # taken before reading: a write during the read triggers another read
        with self._lock, Store(self.settings.db_path, read_only=True, wait_s=self.read_wait_s) as store:
            st = status(store, self.model, self.keys.trusted, witnesses(self.settings))
        self._sig = sig
        if st.decision_id is None:
            return LiveState.empty(self.model, st.problem or "no decision has been applied to this model")
        return LiveState(
            self.model,
            st.weight,
            st.baseline_version,
            st.candidate_version,
            st.decision_id,
            st.verified,
            st.killed,
            st.problem,
            st.paused,
        )

    def rollback(self, pair: tuple, report: SloReport) -> str | None:
        """Record the live rollback of ``pair``; None when the state has moved on (another pair, already 0)."""
        from workbench.decide.canary import apply_decision, build_kill, record_sync, try_publish
        from workbench.decide.chain import status
        from workbench.decide.decisions import witnesses
        from workbench.store import Store

        signer, trusted, witness = self.keys.signer, self.keys.trusted, witnesses(self.settings)
        with self._lock, Store(self.settings.db_path, wait_s=60) as store:
            st = status(store, self.model, trusted, witness)
            if (st.baseline_version, st.candidate_version) != tuple(pair) or st.weight == 0:
                return None
            signed = build_kill(
                store, self.model, report.reason, signer, self.policy, source="live SLO", scorecard=report.scorecard()
            )
            apply_decision(store, signed, trusted, witnesses=witness)
        if self.publish:  # MLflow outside the store: a slow or dead MLflow never holds DuckDB's lock
            from workbench.decide.registry import Registry

            s = self.settings
            run_id, err = try_publish(signed, lambda d: Registry(s.mlflow_tracking_uri, s.artifacts_dir).publish(d))
            with self._lock, Store(self.settings.db_path, wait_s=60) as store:
                record_sync(store, signed.decision_id, run_id, err)
        return signed.decision_id


# -- routing ---------------------------------------------------------------------------------------
def choose_arm(
    weight: int,
    bucket: int,
    x_canary: str | None = None,
    segment: LiveSegment | None = None,
    off_reason: str = "weight 0",
) -> tuple[str, str]:
    """(arm, reason) of one request. Weight 0 wins over everything (kill switch, rollback, no verified
    decision); then ``X-Canary``; then the first matching segment rule; then the sticky bucket."""
    if weight <= 0:
        return "baseline", off_reason
    if x_canary is not None:
        v = x_canary.strip().lower()
        if v == "always":
            return "candidate", "header"
        if v == "never":
            return "baseline", "header"
        raise ValueError(f"X-Canary must be 'always' or 'never', not {x_canary!r}")
    if segment is not None:
        return segment.arm, f"segment:{segment.name}"
    return ("candidate" if in_canary(bucket, weight) else "baseline"), "bucket"


@dataclass(frozen=True)
class RouterConfig:
    """What ``workbench route`` is told: the model, its two servers, the entity key, mirroring, timeouts."""

    model: str
    baseline_url: str
    candidate_url: str
    entity_header: str | None = "X-Entity-Id"
    entity_field: str | None = None
    mirror_percent: float = 0.0
    timeout_s: float = 10.0
    mirror_timeout_s: float = 10.0
    poll_s: float = 1.0
    auto_rollback: bool = True
    max_mirrors: int = 256

    def __post_init__(self):
        if not 0 <= self.mirror_percent <= 100:
            raise WorkbenchError(f"--mirror must be a percent in 0..100, not {self.mirror_percent:g}")
        for url in (self.baseline_url, self.candidate_url):
            if not url.startswith(("http://", "https://")):
                raise WorkbenchError(f"model server URL {url!r} must start with http:// or https://")


def _invocations_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/invocations") else base + "/invocations"


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


async def _send(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(send, status: int, obj: dict) -> None:
    await _send(send, status, json.dumps(obj, default=str).encode(), [(b"content-type", b"application/json")])


class Router:
    """The ASGI app; ``clock`` is the monotonic clock of the SLO windows."""

    def __init__(
        self,
        config: RouterConfig,
        policy: Policy,
        weights: WeightSource,
        *,
        traffic_log: TrafficLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg, self.policy, self.weights, self.traffic_log = config, policy, weights, traffic_log
        self.live = policy.live_options
        self.clock = clock
        self.urls = {
            "baseline": _invocations_url(config.baseline_url),
            "candidate": _invocations_url(config.candidate_url),
        }
        self.windows = {a: ArmWindow(a, self.live.window_s) for a in ARMS}
        self.state = LiveState.empty(config.model, "not read yet")
        self.held_pair: tuple | None = None  # a pair rolled back here: weight 0 before the record lands
        self.last_report: SloReport | None = None
        self.rollback: dict | None = None
        self.counts: Counter = Counter()
        self._entity_header = config.entity_header.lower().encode() if config.entity_header else None
        self._segments = [(s, s.header.lower().encode() if s.header else None) for s in self.live.segments]
        self._needs_rows = bool(config.entity_field) or any(s.field for s in self.live.segments)
        self._pools: dict[str, Pool] = {}
        # request ids for requests that come without one: a random prefix per router and a counter (32 hex
        # digits like a uuid4's, unique across routers and restarts, without a uuid4 per request)
        self._rid_prefix = os.urandom(8).hex()
        self._rid_seq = itertools.count()
        self._mirrors: set[asyncio.Task] = set()
        self._background: list[asyncio.Task] = []
        self._rollback_task: asyncio.Task | None = None

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self, wait_s: float = 10.0) -> None:
        """Read the state (waiting up to ``wait_s`` for a database another process is writing), open the
        upstream client, start the poller and the SLO monitor."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                state = await asyncio.to_thread(self.weights.read)
                break
            except WorkbenchError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)
        self.apply_state(state)
        self._pools = {arm: Pool(url, max_idle=64, idle_s=60) for arm, url in self.urls.items()}
        self._background = [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._monitor_loop())]

    async def stop(self) -> None:
        """Stop the loops, let mirrors and a pending rollback record finish, close the client and the log."""
        for t in self._background:
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._mirrors:
            _, late = await asyncio.wait(set(self._mirrors), timeout=self.cfg.mirror_timeout_s + 1)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)  # their requests are logged as they end
        if self._rollback_task is not None:
            await asyncio.wait({self._rollback_task}, timeout=120)
        for pool in self._pools.values():
            await pool.aclose()
        if self.traffic_log is not None:
            await asyncio.to_thread(self.traffic_log.close)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_s)
            try:
                if self.weights.changed():
                    await self.refresh()
            except Exception:  # the poller must outlive any one failure
                log.exception("%s: polling the canary state failed", self.cfg.model)

    async def refresh(self) -> None:
        """Re-read the canary state; a failed read (the database locked by a writer) is retried at the next
        poll, and the router keeps routing by the state it has."""
        try:
            state = await asyncio.to_thread(self.weights.read)
        except Exception as e:  # whatever the store raised, the poller must live on
            log.debug("canary state not re-read (%s: %s); retrying at the next poll", type(e).__name__, e)
            return
        self.apply_state(state)

    def apply_state(self, state: LiveState) -> None:
        old = self.state
        if state.pair != old.pair:
            for w in self.windows.values():
                w.clear()
        if (state.weight, state.decision_id, state.verified) != (old.weight, old.decision_id, old.verified):
            log.warning(
                "%s: candidate v%s at %d%% (decision %s)%s",
                state.model,
                state.candidate_version,
                state.weight,
                state.decision_id,
                "" if state.verified else f"; NOT verified, routing 0%: {state.problem}",
            )
        self.state = state

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.live.check_interval_s)
            try:
                self.check_slo()
            except Exception:  # the monitor must outlive any one failure
                log.exception("%s: the live SLO check failed", self.cfg.model)

    # -- weight and SLO ----------------------------------------------------------------------------
    def off_reason(self) -> str | None:
        """Why the candidate gets no live traffic now (None when it does)."""
        st = self.state
        if st.decision_id is None:
            return "no decision"
        if not st.verified:
            return "unverified"
        if self.held_pair is not None and self.held_pair == st.pair:
            return "rolled back"
        if st.killed:
            return "killed"
        return "weight 0" if st.weight == 0 else None

    def effective_weight(self) -> int:
        return 0 if self.off_reason() else self.state.weight

    def mirroring(self) -> bool:
        st = self.state
        held = self.held_pair is not None and self.held_pair == st.pair
        return self.cfg.mirror_percent > 0 and not st.killed and not held

    def check_slo(self) -> SloReport | None:
        """Judge the candidate's window while it has live traffic; on a breach, weight 0 now and the signed
        rollback recorded in a worker thread."""
        if not self.cfg.auto_rollback or self.effective_weight() == 0:
            return None
        now = self.clock()
        stats = {a: w.stats(now, self.policy.confidence) for a, w in self.windows.items()}
        report = judge(self.live, stats, self.policy.confidence)
        self.last_report = report
        if report.breached:
            self.trip(report)
        return report

    def trip(self, report: SloReport) -> None:
        st = self.state
        self.held_pair = st.pair
        self.rollback = rollback = {
            "candidate_version": st.candidate_version,
            "weight_before": st.weight,
            "reason": report.reason,
            "decision_id": None,
            "error": None,
            "at": time.time(),
        }
        log.warning(
            "%s: live SLO breached, candidate v%s to 0%% now: %s", st.model, st.candidate_version, report.reason
        )
        self._rollback_task = asyncio.create_task(self._record_rollback(st.pair, report, rollback))

    async def _record_rollback(self, pair: tuple, report: SloReport, rollback: dict) -> None:
        """Sign and apply the rollback in a worker thread, noting the outcome in ``rollback`` (shown in status)."""
        t0 = time.monotonic()
        try:
            rollback["decision_id"] = await asyncio.to_thread(self.weights.rollback, pair, report)
            rollback["recorded_s"] = round(time.monotonic() - t0, 3)
            log.warning(
                "%s: rollback recorded as decision %s in %.2f s",
                self.cfg.model,
                rollback["decision_id"],
                rollback["recorded_s"],
            )
        except Exception as e:  # the local hold stays: routing is already at 0 for this pair
            rollback["error"] = f"{type(e).__name__}: {e}"
            log.error(
                "%s: the rollback could not be recorded (%s); the candidate stays at 0%% in this router",
                self.cfg.model,
                rollback["error"],
            )
        await self.refresh()

    # -- ASGI ------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            path = scope["path"]
            if path == "/invocations":
                if scope["method"] != "POST":
                    await _send_json(send, 405, {"error": "use POST /invocations"})
                else:
                    await self._invocations(scope, receive, send)
            elif path in ("/healthz", "/health", "/ping"):
                await _send_json(
                    send,
                    200,
                    {
                        "status": "ok",
                        "model": self.cfg.model,
                        "weight": self.state.weight,
                        "effective_weight": self.effective_weight(),
                    },
                )
            elif path == "/v1/router":
                await _send_json(send, 200, self.status())
            else:
                await _send_json(
                    send, 404, {"error": f"no route {path}: POST /invocations, GET /healthz, GET /v1/router"}
                )

    async def _lifespan(self, receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _decide(self, headers: dict, body: bytes, ctype: str, rid: str) -> tuple[str, str, str | None]:
        """(arm, reason, entity key) of a request."""
        row = request_rows(body, ctype)[0] if self._needs_rows else {}  # never empty: [{}] when unreadable
        entity = None
        if self._entity_header is not None and self._entity_header in headers:
            entity = headers[self._entity_header].decode("utf-8", "replace")
        elif self.cfg.entity_field:
            v = row.get(self.cfg.entity_field)
            entity = None if v is None else str(v)
        off = self.off_reason()
        if off:
            return "baseline", off, entity
        segment = None
        for seg, header in self._segments:
            if header is not None:
                value = headers[header].decode("utf-8", "replace") if header in headers else None
            else:
                v = row.get(seg.field)
                value = None if v is None else str(v)
            if value is not None and value in seg.values:
                segment = seg
                break
        x_canary = headers[CANARY_HEADER].decode("utf-8", "replace") if CANARY_HEADER in headers else None
        bucket = bucket_of(entity if entity is not None else rid, self.cfg.model)
        arm, reason = choose_arm(self.state.weight, bucket, x_canary, segment)
        return arm, reason, entity

    async def _invocations(self, scope, receive, send) -> None:
        arrived = datetime.now(UTC)
        body = await _read_body(receive)
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"application/json").decode("latin-1")
        rid = (
            headers[b"x-request-id"].decode("latin-1")
            if b"x-request-id" in headers
            else f"{self._rid_prefix}{next(self._rid_seq):016x}"
        )
        try:
            arm, reason, entity = self._decide(headers, body, ctype, rid)
        except ValueError as e:
            self.counts["rejected"] += 1
            await _send_json(send, 400, {"error": str(e)})
            return
        st = self.state
        rec = LiveRecord(
            request_id=rid,
            event_time=arrived,
            entity=entity,
            routed=arm,
            reason=reason,
            weight=self.effective_weight(),
            decision_id=st.decision_id,
            body=body,
            content_type=ctype,
        )
        mirror = None
        if arm == "baseline" and self.mirroring() and self._mirror_sampled(rid):
            if len(self._mirrors) < self.cfg.max_mirrors:
                rec.mirrored = True
                mirror = asyncio.create_task(self._mirror(rec))
                self._mirrors.add(mirror)
                mirror.add_done_callback(self._mirrors.discard)
            else:
                self.counts["mirror_skipped"] += 1
        out = await self._call(arm, body, ctype, rid, self.cfg.timeout_s)
        rec.outcomes[arm] = out
        served = arm
        if arm == "candidate" and not out.ok:  # the user still gets an answer: the baseline's
            served = "baseline"
            out = rec.outcomes["baseline"] = await self._call("baseline", body, ctype, rid, self.cfg.timeout_s)
            self.counts["retried"] += 1
        rec.served = served
        hdrs = [(b"x-canary-arm", served.encode()), (b"x-request-id", rid.encode("latin-1"))]
        if out.status is None:
            await _send(
                send,
                502,
                json.dumps({"error": f"{served} model server: {out.error}"}).encode(),
                [(b"content-type", b"application/json"), *hdrs],
            )
        else:
            await _send(send, out.status, out.body, [(b"content-type", out.content_type.encode("latin-1")), *hdrs])
        if mirror is None:
            self._complete(rec)
        else:
            mirror.add_done_callback(lambda _t: self._complete(rec))

    def _mirror_sampled(self, rid: str) -> bool:
        pct = self.cfg.mirror_percent
        return pct >= 100 or bucket_of(rid, "mirror") < pct * 100

    async def _mirror(self, rec: LiveRecord) -> None:
        t0 = time.perf_counter()
        try:
            rec.outcomes["candidate"] = await self._call(
                "candidate", rec.body, rec.content_type, rec.request_id, self.cfg.mirror_timeout_s
            )
        except asyncio.CancelledError:  # shutdown: the request is still logged, with the mirror's fate
            rec.outcomes["candidate"] = Outcome(None, b"", (time.perf_counter() - t0) * 1000, "cancelled at shutdown")
            raise

    async def _call(self, arm: str, body: bytes, ctype: str, rid: str, timeout: float) -> Outcome:
        t0 = time.perf_counter()
        try:  # one deadline for the whole call, connecting included
            r = await self._pools[arm].post(body, {"content-type": ctype, "x-request-id": rid}, timeout=timeout)
        except UpstreamTimeout as e:
            return Outcome(None, b"", (time.perf_counter() - t0) * 1000, str(e))
        except UpstreamError as e:
            return Outcome(None, b"", (time.perf_counter() - t0) * 1000, f"{type(e).__name__}: {e}")
        return Outcome(r.status, r.body, (time.perf_counter() - t0) * 1000, None, r.content_type or "application/json")

    def _complete(self, rec: LiveRecord) -> None:
        """Count a finished request (both arms answered or gave up) in the SLO windows and the log."""
        now = self.clock()
        base = rec.outcomes.get("baseline")
        for arm, o in rec.outcomes.items():
            failed = not o.ok
            if (
                failed
                and arm == "candidate"
                and base is not None
                and o.status is not None
                and 400 <= o.status < 500
                and base.status == o.status
            ):
                failed = False  # both arms refuse the request: the client's error, not the candidate's
            self.windows[arm].add(now, o.latency_ms, failed)
            self.counts[f"{arm}_calls"] += 1
            self.counts[f"{arm}_errors"] += failed
        self.counts["requests"] += 1
        self.counts[f"served_{rec.served}"] += 1
        self.counts["mirrored"] += rec.mirrored
        if self.traffic_log is not None:
            self.traffic_log.append(rec)

    def status(self) -> dict:
        """What the router is doing: state, effective weight, counters, SLO windows, a rollback if any."""
        now = self.clock()
        windows = {a: w.stats(now, self.policy.confidence).to_dict() for a, w in self.windows.items()}
        tl = self.traffic_log
        return {
            "model": self.cfg.model,
            "state": self.state.to_dict(),
            "effective_weight": self.effective_weight(),
            "off_reason": self.off_reason(),
            "mirror_percent": self.cfg.mirror_percent,
            "mirroring": self.mirroring(),
            "counts": dict(self.counts),
            "windows": windows,
            "last_check": self.last_report.to_dict() if self.last_report else None,
            "rollback": self.rollback,
            "traffic_log": None
            if tl is None
            else {
                "dir": str(tl.dir),
                "requests_written": tl.requests_written,
                "failed": tl.failed,
                "files": list(tl.files),
            },
        }
