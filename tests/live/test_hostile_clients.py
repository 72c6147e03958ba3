"""The HTTP service against hostile clients, on a real `workbench serve` process on 127.0.0.1.

Huge bodies (declared and chunked), bodies that must not come back in errors, signed webhooks of the wrong
shape or nested too deeply, connections that never finish their header, and ten kills at once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_port, make_evaluation, seed_run
from workbench.live.limits import ServiceLimits
from workbench.live.service import signature_of
from workbench.store import Store

SECRET = "whsec-hostile"
TOKEN = "tok-" + "h" * 24
HEADER_TIMEOUT_S = 1.0
MiB = 1024 * 1024


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`workbench serve` on a home whose fraud canary is at 1 % (one applied PROMOTE), MLflow unreachable."""
    from workbench.decide.canary import Signer, apply_decision, build_decision
    from workbench.decide.policy import load_policy
    from workbench.decide.signing import init_keys, trusted_keys

    home = tmp_path_factory.mktemp("hostile") / "home"
    init_keys(home / "keys")
    with Store(home / "lake") as store:
        seed_run(store, "run_a", make_evaluation("run_a"))
        signed, _ = build_decision(
            store, "run_a", load_policy(), Signer.from_keys_dir(home / "keys", "tester"), justification="reviewed"
        )
        apply_decision(store, signed, trusted_keys(home / "keys", home / "none"))
    port = free_port()
    env = os.environ | {
        "WORKBENCH_HOME": str(home),
        "WORKBENCH_API_TOKEN": TOKEN,
        "WORKBENCH_WEBHOOK_SECRET": SECRET,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nothing listens: publishing stays pending
    }
    args = ["serve", "--port", str(port), "--header-timeout", str(HEADER_TIMEOUT_S)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else "the service died"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.1)
    yield {"url": url, "port": port, "pid": proc.pid, "home": home}
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_answer(s: socket.socket, limit: int = 1 << 20) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP/1.1 answer framed by Content-Length (or ended by EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    want = int(headers.get("content-length", limit))
    while len(body) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def head_of(method: str, path: str, headers: dict) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def signed_headers(body: bytes, delivery_id: str | None = None) -> dict:
    did = delivery_id or str(uuid.uuid4())
    ts = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": signature_of(SECRET, did, ts, body),
    }


def push_until_closed(s: socket.socket, total: int, chunked: bool = False) -> int:
    """Send up to ``total`` body bytes (raw or as 1 MiB chunks) until the server stops taking them."""
    block = b"x" * MiB
    sent = 0
    try:
        while sent < total:
            s.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            sent += len(block)
    except OSError:  # the server answered and closed: the rest is refused
        pass
    return sent


def jobs(home: Path) -> list:
    with Store(home / "lake") as store:
        return store.list_jobs()


# -- body sizes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, headers",
    [
        ("/webhooks/mlflow", {}),
        ("/webhooks/mlflow", "signed"),
        ("/v1/canary/fraud/kill", {}),
        ("/v1/canary/fraud/kill", {"Authorization": "Bearer " + TOKEN}),
    ],
    ids=["webhook-unsigned", "webhook-signed", "kill-no-token", "kill-token"],
)
def test_a_300_mb_body_gets_413_before_it_is_read(service, path, headers):
    size = 300 * MiB
    if headers == "signed":
        headers = signed_headers(b"")
    before = rss_mib(service["pid"])
    t0 = time.monotonic()
    with connect(service["port"]) as s:
        s.sendall(head_of("POST", path, {"Content-Type": "application/json", "Content-Length": size, **headers}))
        status, answer_headers, body = read_answer(s)
        answered = time.monotonic() - t0
        sent = push_until_closed(s, size)
    assert status == 413 and answered < 2, (status, answered)
    assert answer_headers["connection"] == "close" and "limit" in json.loads(body)["error"]
    assert sent < 100 * MiB  # the connection was closed long before the whole body went through
    assert rss_mib(service["pid"]) - before < 30, (before, rss_mib(service["pid"]))


def test_a_chunked_body_is_cut_off_at_the_limit(service):
    before = rss_mib(service["pid"])
    headers = signed_headers(b"")  # signature headers present: the service starts reading the body
    with connect(service["port"]) as s:
        s.sendall(head_of("POST", "/webhooks/mlflow", {**headers, "Transfer-Encoding": "chunked"}))
        t = threading.Thread(target=push_until_closed, args=(s, 200 * MiB, True), daemon=True)
        t.start()
        status, answer_headers, body = read_answer(s)
        t.join(timeout=20)
    assert status == 413 and answer_headers["connection"] == "close"
    assert not t.is_alive()  # the server closed the connection: the sender stopped
    assert rss_mib(service["pid"]) - before < 30
    assert jobs(service["home"]) == []


def test_an_unauthenticated_chunked_kill_is_refused_before_its_body(service):
    with connect(service["port"]) as s:
        s.sendall(head_of("POST", "/v1/canary/fraud/kill", {"Transfer-Encoding": "chunked"}))
        t0 = time.monotonic()
        status, headers, _ = read_answer(s)  # no body byte sent yet
    assert status == 401 and time.monotonic() - t0 < 2 and headers["www-authenticate"] == "Bearer"


# -- no echo ------------------------------------------------------------------------------------------------
MARK = "ECHO-MARK-"


@pytest.mark.parametrize(
    "path, payload",
    [
        ("/v1/decisions", {"record": [MARK * 50_000], "signature": 1}),
        ("/v1/decisions", {"record": {"x": MARK * 50_000}}),
        ("/v1/canary/fraud/kill", {"reason": [MARK * 50_000]}),
        ("/v1/decisions", MARK * 1_200_000),  # over the limit
    ],
    ids=["wrong-types", "missing-field", "kill-wrong-type", "over-limit"],
)
def test_errors_never_echo_the_body(service, path, payload):
    body = json.dumps(payload).encode()
    r = httpx.post(
        service["url"] + path,
        content=body,
        headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code in (413, 422), r.status_code
    assert MARK not in r.text and len(r.content) < 4096
    assert r.json()["error"]


def test_a_signed_webhook_of_garbage_is_400_without_echo(service):
    body = (MARK * 10_000).encode()
    r = httpx.post(service["url"] + "/webhooks/mlflow", content=body, headers=signed_headers(body), timeout=10)
    assert r.status_code == 400 and MARK not in r.text


# -- malformed shapes ---------------------------------------------------------------------------------------------
def event(data, entity="model_version", action="created") -> str:
    return json.dumps({"entity": entity, "action": action, "timestamp": "2027-01-15T08:00:00+00:00", "data": data})


DEEP = 100_000


@pytest.mark.parametrize(
    "body",
    [
        event([{"name": "fraud", "version": "7"}]),
        event("fraud/7"),
        event({"name": ["fraud"], "version": "7"}),
        event({"name": "fraud", "version": {"v": 7}}),
        event({"name": "fraud", "version": True}),
        event({"name": "fraud", "alias": 3, "version": "7"}, "model_version_alias"),
        event({"name": "fraud", "version": "7"}, entity={"x": 1}),
        json.dumps([{"entity": "model_version", "action": "created"}]),
        '{"entity": "model_version", "action": "created", "data": ' + "[" * DEEP + "]" * DEEP + "}",
        "[" * DEEP + "]" * DEEP,
        '{"a":' * DEEP + "1" + "}" * DEEP,
    ],
    ids=[
        "data-list",
        "data-string",
        "name-list",
        "version-object",
        "version-bool",
        "alias-number",
        "entity-object",
        "payload-list",
        "deep-data",
        "deep-list",
        "deep-object",
    ],
)
def test_signed_webhooks_of_the_wrong_shape_get_400(service, body):
    raw = body.encode() if isinstance(body, str) else body
    r = httpx.post(service["url"] + "/webhooks/mlflow", content=raw, headers=signed_headers(raw), timeout=10)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert jobs(service["home"]) == []
    assert httpx.get(service["url"] + "/healthz", timeout=5).status_code == 200


def test_deep_json_to_the_api_is_4xx(service):
    deep = b'{"record": ' + b"[" * DEEP + b"]" * DEEP + b', "signature": "x"}'
    r = httpx.post(
        service["url"] + "/v1/decisions",
        content=deep,
        headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"},
        timeout=10,
    )
    assert 400 <= r.status_code < 500, r.status_code


# -- slow headers ---------------------------------------------------------------------------------------------
def test_the_default_header_timeout_is_a_few_seconds():
    assert 1 <= ServiceLimits().header_timeout_s <= 10


def test_slow_header_connections_are_closed_within_the_timeout(service):
    """Five connections trickle a header one byte at a time, a sixth sends nothing: all are closed."""
    conns = [connect(service["port"]) for _ in range(6)]
    t0 = time.monotonic()
    closed_at: dict[int, float] = {}
    first = b"POST /webhooks/mlflow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    for s in conns[:5]:
        s.sendall(first)
    for s in conns:
        s.setblocking(False)
    while len(closed_at) < len(conns) and time.monotonic() - t0 < HEADER_TIMEOUT_S + 5:
        for i, s in enumerate(conns):
            if i in closed_at:
                continue
            try:
                if i < 5:
                    s.send(b"a")
                data = s.recv(4096)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed_at[i] = time.monotonic() - t0
            except BlockingIOError:
                pass
            except OSError:
                closed_at[i] = time.monotonic() - t0
        time.sleep(0.2)
    for s in conns:
        s.close()
    assert len(closed_at) == len(conns), closed_at
    assert max(closed_at.values()) < HEADER_TIMEOUT_S + 1.5, closed_at
    assert httpx.get(service["url"] + "/healthz", timeout=5).status_code == 200  # others are still served


def test_a_header_that_completes_in_time_is_served(service):
    with connect(service["port"]) as s:
        for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
            s.sendall(part)
            time.sleep(HEADER_TIMEOUT_S / 4)
        status, _, body = read_answer(s)
    assert status == 200 and json.loads(body) == {"status": "ok"}


# -- concurrent writers -----------------------------------------------------------------------------------------
def test_ten_concurrent_kills_answer_200_or_409_never_500(service):
    barrier = threading.Barrier(10)
    codes: list[int] = []
    bodies: list[dict] = []

    def kill(i: int) -> None:
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            r = client.post(
                service["url"] + "/v1/canary/fraud/kill",
                json={"reason": f"pager {i}"},
                headers={"Authorization": "Bearer " + TOKEN},
            )
            codes.append(r.status_code)
            bodies.append(r.json())

    threads = [threading.Thread(target=kill, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(codes) == 10 and set(codes) <= {200, 409}, codes
    assert 200 in codes
    for code, body in zip(codes, bodies, strict=True):
        if code == 409:
            assert body["error"] and "Traceback" not in body["error"]
    state = httpx.get(service["url"] + "/v1/canary/fraud", timeout=10).json()
    assert state["weight"] == 0 and state["killed"] and state["verified"]
