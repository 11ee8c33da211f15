"""A loopback HTTP/1.1 proxy that can drop a connection after the upstream answered.

It simulates the network failing between tracklayerd's commit and the client receiving the
200, the case where a client must retry and the retry must be stored once.
"""

from __future__ import annotations

import asyncio
import contextlib


class DroppingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, drop_first: int = 1) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.drop_remaining = drop_first
        self.forwarded = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                response = await self._forward(request)
                self.forwarded += 1
                if self.drop_remaining > 0:
                    self.drop_remaining -= 1
                    self.dropped += 1
                    break  # committed upstream, but the client never hears back
                writer.write(response)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _forward(self, request: bytes) -> bytes:
        head, _, body = request.partition(b"\r\n\r\n")
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
        request = b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body
        reader, writer = await asyncio.open_connection(*self.upstream)
        writer.write(request)
        await writer.drain()
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
        head, _, body = response.partition(b"\r\n\r\n")
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
        return b"\r\n".join([*lines, b"Connection: keep-alive"]) + b"\r\n\r\n" + body


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head + body
