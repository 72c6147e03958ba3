"""A lean HTTP/1.1 client for the router's upstream calls: keep-alive connections to one server, on the loop.

``httpx`` cost the router ~1 ms of CPU per proxied request (httpcore, anyio and h11 layers); this client is an
:class:`asyncio.Protocol` per connection with ``httptools``' response parser (llhttp, what uvicorn uses), so
one call is a write and a parse. It does what the router needs and nothing more:

- ``POST`` with a ``Content-Length`` body; the answer's body by ``Content-Length``, chunked, or read to EOF.
- A pool of idle keep-alive connections per server (:class:`Pool`), most recently used first; a connection
  that errors, times out, or is closed by the server (or answers ``Connection: close``) is discarded.
- A request that fails on a *reused* connection before any byte of the answer came back (the server closed
  the idle connection as the request went out) is retried once on a fresh connection; a fresh connection's
  failure is never retried (the request may have reached the model).
- One deadline for the whole call, connecting included (:func:`asyncio.timeout`).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """The call got no HTTP answer; ``type(e).__name__`` and the message name what went wrong."""


class ConnectError(UpstreamError):
    """The server could not be reached (refused, unresolvable, unreachable)."""


class RemoteProtocolError(UpstreamError):
    """The server closed the connection before a whole answer, or answered something that is not HTTP/1.1."""


class UpstreamTimeout(UpstreamError):
    """The call did not finish within its deadline."""


@dataclass(frozen=True)
class Response:
    """An upstream's answer."""

    status: int
    body: bytes
    content_type: str | None


class _Connection(asyncio.Protocol):
    """One keep-alive connection: ``request`` writes a request and waits for ``on_message_complete``."""

    __slots__ = (
        "pool",
        "transport",
        "parser",
        "waiter",
        "status",
        "chunks",
        "ctype",
        "framed",
        "got_bytes",
        "closed",
        "reusable",
        "uses",
        "idle_since",
        "close_exc",
    )

    def __init__(self, pool: Pool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.status = 0
        self.chunks: list[bytes] = []
        self.ctype: str | None = None
        self.framed = False  # the answer has Content-Length or is chunked (else its body ends at EOF)
        self.got_bytes = False  # any byte of the current answer arrived
        self.closed = False
        self.reusable = True
        self.uses = 0
        self.idle_since = 0.0
        self.close_exc: BaseException | None = None

    # asyncio.Protocol --------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection is out of step, drop it
            self._abort()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            self._fail(RemoteProtocolError(f"invalid HTTP answer: {e}"))
            self._abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.reusable = False
        w = self.waiter
        if w is None or w.done():
            return
        if self.got_bytes and self.status and not self.framed:  # the body ran to EOF: a whole answer
            self._deliver()
            return
        if exc is None:
            what = (
                "server closed the connection without a whole answer"
                if self.got_bytes
                else "server closed the connection without an answer"
            )
            self._fail(RemoteProtocolError(what))
        else:
            self._fail(RemoteProtocolError(f"connection lost: {type(exc).__name__}: {exc}"))

    # httptools callbacks -------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"content-type":
            self.ctype = value.decode("latin-1")
        elif n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:  # an interim answer (100 Continue): the real one follows
            self._reset_message()
            return
        if not self.parser.should_keep_alive():
            self.reusable = False
        self._deliver()

    # --------------------------------------------------------------------------------------------------
    def _reset_message(self) -> None:
        self.status, self.chunks, self.ctype, self.framed = 0, [], None, False

    def _deliver(self) -> None:
        w, self.waiter = self.waiter, None
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        if w is not None and not w.done():
            w.set_result(Response(self.status, body, self.ctype))

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    def _abort(self) -> None:
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def request(self, data: bytes) -> Response:
        if self.closed:  # the server closed it before we wrote anything
            raise RemoteProtocolError("server closed the connection without an answer")
        loop, transport = self.pool.loop, self.transport
        if loop is None or transport is None:
            raise RuntimeError("request on a connection that was never opened")
        self._reset_message()
        self.got_bytes = False
        self.uses += 1
        self.waiter = loop.create_future()
        transport.write(data)
        return await self.waiter


class Pool:
    """Keep-alive connections to the server of ``url`` (``http://`` or ``https://``), for ``POST`` calls.

    ``max_idle`` idle connections are kept (the rest closed as they come back), each for ``idle_s`` seconds.
    """

    def __init__(self, url: str, *, max_idle: int = 64, idle_s: float = 60.0):
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if u.scheme == "https" else None
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        netloc = self.host if u.port is None else f"{self.host}:{u.port}"
        if ":" in self.host:  # IPv6 literal
            netloc = f"[{self.host}]" + ("" if u.port is None else f":{u.port}")
        self._head = f"POST {self.path} HTTP/1.1\r\nhost: {netloc}\r\n".encode("latin-1")
        self.max_idle, self.idle_s = max_idle, idle_s
        self._idle: deque[_Connection] = deque()
        self._busy: set[_Connection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections_opened = 0

    async def _connect(self) -> _Connection:
        self.loop = loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self.ssl)
        except OSError as e:
            raise ConnectError(f"{self.host}:{self.port}: {os.strerror(e.errno) if e.errno else e}") from None
        self.connections_opened += 1
        return conn

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        expired = time.monotonic() - self.idle_s
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since >= expired:
                return conn
            conn._abort()
        return None

    def _release(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if not conn.reusable or conn.closed or len(self._idle) >= self.max_idle:
            conn._abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def post(self, body: bytes, headers: dict[str, str] | None = None, *, timeout: float) -> Response:
        """``POST`` ``body`` with ``headers`` (besides host and content-length) within ``timeout`` seconds.

        Raises :class:`ConnectError`, :class:`RemoteProtocolError` or :class:`UpstreamTimeout`.
        """
        parts = [self._head]
        if headers:
            for k, v in headers.items():
                if "\r" in v or "\n" in v or "\r" in k or "\n" in k:
                    raise ValueError(f"header {k!r} holds a line break")
                parts.append(f"{k}: {v}\r\n".encode("latin-1"))
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        parts.append(body)
        data = b"".join(parts)
        try:
            async with asyncio.timeout(timeout):
                conn = self._take_idle()
                if conn is not None:
                    try:
                        return await self._exchange(conn, data)
                    except RemoteProtocolError:
                        if conn.got_bytes:
                            raise
                        # the server closed the idle connection as the request went out: once more, fresh
                return await self._exchange(await self._connect(), data)
        except TimeoutError:
            raise UpstreamTimeout(f"timeout after {timeout:g} s") from None

    async def _exchange(self, conn: _Connection, data: bytes) -> Response:
        self._busy.add(conn)
        ok = False
        try:
            r = await conn.request(data)
            ok = True
            return r
        finally:
            if not ok:  # an error, a timeout or a cancellation mid-call: the connection is out of step
                conn._abort()
            self._release(conn)

    async def aclose(self) -> None:
        """Close every connection, idle and busy (their calls fail)."""
        for conn in (*self._idle, *self._busy):
            conn._abort()
        self._idle.clear()
        self._busy.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost
