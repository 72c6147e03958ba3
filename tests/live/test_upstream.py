"""The router's upstream HTTP/1.1 client against real loopback servers: keep-alive reuse, framing (length,
chunked, EOF), servers closing connections, deadlines, refused connections and large bodies."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import free_port
from loopback_http import LoopbackServer, Request, json_reply, reply
from workbench.live.upstream import ConnectError, Pool, RemoteProtocolError, UpstreamTimeout


async def echo(req: Request) -> bytes:
    return reply(200, req.body, content_type=req.headers.get("content-type"))


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Runs a test's coroutine on the standard loop and on uvloop (what ``workbench route`` runs on)."""
    import uvloop

    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def go(coro):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(coro, 20))

    return go


def test_keep_alive_connections_are_reused_and_headers_sent(run):
    async def main():
        server = await LoopbackServer(echo).start()
        pool = Pool(server.url + "/invocations")
        for i in range(20):
            r = await pool.post(
                b'{"i": %d}' % i, {"content-type": "application/json", "x-request-id": f"r{i}"}, timeout=5
            )
            assert (r.status, r.body, r.content_type) == (200, b'{"i": %d}' % i, "application/json")
        answers = await asyncio.gather(*(pool.post(b"x" * i, timeout=5) for i in range(8)))
        assert [a.body for a in answers] == [b"x" * i for i in range(8)]
        await pool.aclose()
        await server.close()
        return server, pool

    server, pool = run(main())
    assert pool.connections_opened == server.connections == 8  # 1 for the sequential calls, reused, +7 in parallel
    req = server.requests[3]
    assert (req.method, req.path) == ("POST", "/invocations")
    assert req.headers["host"] == f"127.0.0.1:{server.port}" and req.headers["x-request-id"] == "r3"
    assert req.headers["content-length"] == str(len(req.body))


@pytest.mark.parametrize(
    "framing", [{"chunks": 5}, {"length": False}, {"close": True}], ids=["chunked", "to-eof", "connection-close"]
)
def test_answer_framings(framing, run):
    body = bytes(range(256)) * 40

    async def main():
        async def handler(req):
            return reply(201, body, **framing)

        server = await LoopbackServer(handler).start()
        pool = Pool(server.url)
        answers = [await pool.post(b"{}", timeout=5) for _ in range(3)]
        await server.close()
        return server, pool, answers

    server, pool, answers = run(main())
    assert all((a.status, a.body) == (201, body) for a in answers)
    reused = "chunks" in framing
    assert server.connections == pool.connections_opened == (1 if reused else 3)
    assert server.requests[0].path == "/"


def test_large_bodies_both_ways(run):
    big = bytes(range(251)) * 40_000  # ~10 MB

    async def main():
        async def handler(req):
            return reply(200, req.body[::-1], chunks=7)

        server = await LoopbackServer(handler).start()
        pool = Pool(server.url)
        r = await pool.post(big, timeout=10)
        await server.close()
        return r

    assert run(main()).body == big[::-1]


def test_an_idle_connection_the_server_closed_is_not_used(run):
    async def main():
        server = await LoopbackServer(echo).start()
        pool = Pool(server.url)
        assert (await pool.post(b"a", timeout=5)).body == b"a"
        await server.drop_connections()  # the server's keep-alive timeout
        assert (await pool.post(b"b", timeout=5)).body == b"b"
        await server.close()
        return server, pool

    server, pool = run(main())
    assert pool.connections_opened == server.connections == 2 and len(server.requests) == 2


def test_a_reused_connection_closed_without_an_answer_is_retried_once_on_a_fresh_one(run):
    async def main():
        seen = []

        async def handler(req):
            seen.append(req.body)
            return None if req.body == b"second" and seen.count(b"second") == 1 else reply(200, req.body)

        server = await LoopbackServer(handler).start()
        pool = Pool(server.url)
        assert (await pool.post(b"first", timeout=5)).body == b"first"
        assert (await pool.post(b"second", timeout=5)).body == b"second"
        await server.close()
        return seen, pool

    seen, pool = run(main())
    assert seen == [b"first", b"second", b"second"] and pool.connections_opened == 2


def test_a_fresh_connection_closed_without_an_answer_is_an_error_not_a_retry(run):
    async def main():
        async def handler(req):
            return None

        server = await LoopbackServer(handler).start()
        pool = Pool(server.url)
        with pytest.raises(RemoteProtocolError, match="server closed the connection without an answer"):
            await pool.post(b"x", timeout=5)
        await server.close()
        return server

    assert len(run(main()).requests) == 1


def test_a_truncated_answer_is_an_error(run):
    async def main():
        async def handler(req):
            return b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n01234"

        server = await LoopbackServer(handler).start()
        with pytest.raises(RemoteProtocolError, match="without a whole answer"):
            await Pool(server.url).post(b"x", timeout=5)
        await server.close()

    run(main())


def test_garbage_is_not_an_answer(run):
    async def main():
        async def handler(req):
            return b"SMTP ready\r\n\r\n"

        server = await LoopbackServer(handler).start()
        with pytest.raises(RemoteProtocolError, match="invalid HTTP answer"):
            await Pool(server.url).post(b"x", timeout=5)
        await server.close()

    run(main())


def test_an_interim_answer_is_skipped(run):
    async def main():
        async def handler(req):
            return b"HTTP/1.1 100 Continue\r\n\r\n" + json_reply(200, {"ok": 1})

        server = await LoopbackServer(handler).start()
        r = await Pool(server.url).post(b"x", timeout=5)
        await server.close()
        return r

    r = run(main())
    assert (r.status, r.body) == (200, b'{"ok": 1}')


def test_the_deadline_covers_the_whole_call_and_drops_the_connection(run):
    async def main():
        slow = {"on": True}

        async def handler(req):
            if slow["on"]:
                await asyncio.sleep(3)
            return reply(200, b"late" if slow["on"] else b"ok")

        server = await LoopbackServer(handler).start()
        pool = Pool(server.url)
        t0 = time.perf_counter()
        with pytest.raises(UpstreamTimeout, match=r"^timeout after 0.2 s$"):
            await pool.post(b"x", timeout=0.2)
        elapsed = time.perf_counter() - t0
        slow["on"] = False
        r = await pool.post(b"x", timeout=5)  # never the late answer of the abandoned call
        await server.close()
        return elapsed, r, pool

    elapsed, r, pool = run(main())
    # uvloop's timers have millisecond resolution: the deadline may fire up to 1 ms before 0.2 s by perf_counter
    assert 0.195 <= elapsed < 1.5 and r.body == b"ok" and pool.connections_opened == 2


def test_a_refused_connection_is_a_connect_error(run):
    port = free_port()

    async def main():
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}: .*[Rr]efused"):
            await Pool(f"http://127.0.0.1:{port}/invocations").post(b"x", timeout=5)

    run(main())


def test_bad_urls_and_header_values_are_refused(run):
    with pytest.raises(ValueError, match="not an http"):
        Pool("ftp://host/x")

    async def main():
        server = await LoopbackServer(echo).start()
        with pytest.raises(ValueError, match="line break"):
            await Pool(server.url).post(b"x", {"x-request-id": "a\r\nx-evil: 1"}, timeout=5)
        await server.close()
        return server

    assert run(main()).requests == []


def test_aclose_closes_the_idle_connections(run):
    async def main():
        server = await LoopbackServer(echo).start()
        pool = Pool(server.url)
        await asyncio.gather(*(pool.post(b"x", timeout=5) for _ in range(3)))
        assert len(server._writers) == 3
        await pool.aclose()
        await asyncio.sleep(0.05)
        open_after = len(server._writers)
        await server.close()
        return open_after

    assert run(main()) == 0
