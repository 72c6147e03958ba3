"""An HTTP/1.1 server on 127.0.0.1 inside a test's event loop: real sockets, answers the test writes byte by byte.

``handler(request)`` returns the raw answer (see :func:`reply`), or None to close the connection without one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def reply(
    status: int = 200,
    body: bytes = b"",
    *,
    content_type: str | None = "application/json",
    chunks: int = 0,
    close: bool = False,
    length: bool = True,
) -> bytes:
    """An HTTP/1.1 answer: ``Content-Length`` framing, or ``chunks`` chunks, or (``length=False``) to EOF."""
    head = [f"HTTP/1.1 {status} X"]
    if content_type:
        head.append(f"content-type: {content_type}")
    if close or not length:
        head.append("connection: close")
    if chunks:
        head.append("transfer-encoding: chunked")
        step = max(1, -(-len(body) // chunks))
        parts = [body[i : i + step] for i in range(0, len(body), step)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    else:
        if length:
            head.append(f"content-length: {len(body)}")
        payload = body
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def json_reply(status: int, obj) -> bytes:
    return reply(status, json.dumps(obj).encode())


class LoopbackServer:
    """Serves ``handler`` on a free port; counts connections and keeps the requests it read."""

    def __init__(self, handler: Callable[[Request], Awaitable[bytes | None]]):
        self.handler = handler
        self.requests: list[Request] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self.port = 0

    async def start(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        self._tasks.add(asyncio.current_task())
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Request(method, path, headers, body)
                self.requests.append(req)
                out = await self.handler(req)
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
                if b"connection: close" in out.split(b"\r\n\r\n", 1)[0].lower():
                    return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(asyncio.current_task())
            writer.close()

    async def drop_connections(self) -> None:
        """Close every open connection (as a server does with idle keep-alive connections)."""
        for w in list(self._writers):
            w.close()
        await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Stop listening (new connections are refused) and end every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        for w in list(self._writers):
            w.transport.abort()
        await asyncio.sleep(0.02)
