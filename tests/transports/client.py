"""Small HTTP/1.1 and SSE clients over raw asyncio sockets, for the transport tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    head_size: int

    def json(self) -> Any:
        return json.loads(self.body)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], int]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers, len(head)


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    size_line = await reader.readuntil(b"\r\n")
    size = int(size_line.split(b";")[0], 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


def _request_bytes(
    method: str, target: str, port: int, body: bytes, headers: list[tuple[str, str]]
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def request(
    port: int,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    timeout: float = 10.0,
) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        hdrs = [("Connection", "close"), *(headers or [])]
        writer.write(_request_bytes(method, target, port, body, hdrs))
        async with asyncio.timeout(timeout):
            status, head, size = await _read_head(reader)
            if head.get("transfer-encoding") == "chunked":
                parts = []
                while chunk := await _read_chunk(reader):
                    parts.append(chunk)
                data = b"".join(parts)
            elif "content-length" in head:
                data = await reader.readexactly(int(head["content-length"]))
            else:
                data = await reader.read()
        return Reply(status, head, data, size)
    finally:
        writer.close()


async def get_json(port: int, target: str, **kwargs: Any) -> Any:
    reply = await request(port, "GET", target, **kwargs)
    assert reply.status == 200, (reply.status, reply.body)
    return reply.json()


async def publish(port: int, topic: str, data: Any) -> Any:
    body = json.dumps({"topic": topic, "data": data}).encode()
    reply = await request(
        port, "POST", "/publish", body=body, headers=[("Content-Type", "application/json")]
    )
    assert reply.status == 200, (reply.status, reply.body)
    return reply.json()


@dataclass
class Event:
    fields: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.fields if k == name]
        return values[-1] if values else None

    @property
    def data(self) -> str:
        return "\n".join(v for k, v in self.fields if k == "data")

    def json(self) -> Any:
        return json.loads(self.data)


class EventStream:
    """Reads a text/event-stream response chunk by chunk."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.buffer = ""
        self.comments: list[str] = []
        self.bytes_read = 0
        self.ended = False

    @classmethod
    async def open(
        cls, port: int, target: str, headers: list[tuple[str, str]] | None = None
    ) -> EventStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request_bytes("GET", target, port, b"", headers or []))
        stream = cls(reader, writer)
        stream.status, stream.headers, size = await _read_head(reader)
        stream.bytes_read = size
        if stream.headers.get("transfer-encoding") != "chunked":
            stream.body = await reader.readexactly(int(stream.headers["content-length"]))
            stream.ended = True
        return stream

    async def _fill(self) -> bool:
        if self.ended:
            return False
        chunk = await _read_chunk(self.reader)
        if not chunk:
            self.ended = True
            return False
        self.bytes_read += len(chunk)
        self.buffer += chunk.decode()
        return True

    async def next_block(self, timeout: float = 5.0) -> Event | None:
        """The next block ending with a blank line (comments are collected apart)."""
        async with asyncio.timeout(timeout):
            while True:
                event = self._parse()
                if event is not None:
                    return event
                if not await self._fill():
                    return None

    async def next_event(self, timeout: float = 5.0) -> Event | None:
        """The next block that has data (skips id-only and retry-only blocks)."""
        while True:
            block = await self.next_block(timeout)
            if block is None or block.get("data") is not None:
                return block

    def _parse(self) -> Event | None:
        event = Event()
        while "\n" in self.buffer:
            line, _, rest = self.buffer.partition("\n")
            self.buffer = rest
            if line == "":
                if event.fields:
                    return event
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            event.fields.append((name, value[1:] if value.startswith(" ") else value))
        # Incomplete block: put it back.
        self.buffer = "".join(f"{k}: {v}\n" for k, v in event.fields) + self.buffer
        return None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
