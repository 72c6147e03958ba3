"""Limits that keep the HTTP service's memory and connections bounded, whatever a client sends.

- :class:`BodyLimit` (ASGI middleware): a request whose ``Content-Length`` exceeds the limit gets 413 before
  the app runs and before any body byte is read; a chunked body is counted as it is read and refused with
  413 once it passes the limit, so no handler ever holds more than the limit in memory. A 413 closes the
  connection (``connection: close``), so the rest of the body is never read.
- :func:`guarded_http` (a uvicorn protocol class on httptools): a connection must deliver a request's
  complete header within ``header_timeout_s`` of connecting (or of the request's first byte on a kept-alive
  connection), else it gets 408 and is closed; a header larger than ``max_header_bytes`` gets 431 and is
  closed. uvicorn alone waits for headers forever.
- :func:`serve` runs an ASGI app under uvicorn with both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

CLOSE = {"connection": "close"}


@dataclass(frozen=True)
class ServiceLimits:
    """The service's limits: request body bytes, the time to send a header, and a header's bytes."""

    max_body_bytes: int = 1024 * 1024
    header_timeout_s: float = 5.0
    max_header_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.max_body_bytes < 0 or self.header_timeout_s <= 0 or self.max_header_bytes <= 0:
            raise ValueError(f"invalid service limits: {self}")


def too_large(limit: int) -> HTTPException:
    """The 413 answer for a body over ``limit`` bytes (the connection is closed after it)."""
    return HTTPException(413, f"request body over the {limit} byte limit", headers=CLOSE)


class BodyLimit:
    """Refuse request bodies over ``max_body_bytes`` before reading them (Content-Length) or while reading
    them (chunked): 413, and the connection is closed."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.limit = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _answer(too_large(self.limit), scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large(self.limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except HTTPException as e:  # raised by limited_receive where no handler turned it into an answer
            if e.status_code != 413 or started:
                raise
            await _answer(e, scope, receive, send)


async def _answer(e: HTTPException, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"error": e.detail}, status_code=e.status_code, headers=e.headers)(scope, receive, send)


def _raw(status: int, reason: str) -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode("ascii")


def guarded_http(limits: ServiceLimits) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class that times out slow headers and refuses oversized ones."""

    class GuardedHttp(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            self._header_timer: asyncio.TimerHandle | None = None
            self._header_bytes = 0
            self._in_header = True
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _refuse(self, answer: bytes) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # never interleave with an answer
                self.transport.write(answer)
            self.transport.close()

        def _header_timeout(self) -> None:
            self._header_timer = None
            self._refuse(_raw(408, "Request Timeout"))

        def data_received(self, data: bytes) -> None:
            if self._in_header:  # every byte since the request began belongs to its header until it ends
                self._header_bytes += len(data)
            super().data_received(data)
            if self._in_header and self._header_bytes > limits.max_header_bytes:
                self._refuse(_raw(431, "Request Header Fields Too Large"))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_header:  # a new request on a kept-alive connection: its header is timed too
                self._in_header, self._header_bytes = True, 0
                self._arm()

        def on_headers_complete(self) -> None:
            self._in_header, self._header_bytes = False, 0
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedHttp


def serve(app: ASGIApp, host: str, port: int, limits: ServiceLimits, *, log_level: str = "info") -> None:
    """Run ``app`` under uvicorn with the header timeout and header size limit of ``limits``."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, http=guarded_http(limits))
