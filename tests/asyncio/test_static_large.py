"""Large static files are sent in chunks as clients read them, not read whole (real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import socket
from pathlib import Path

import fullduplex

MIB = 1 << 20


def rss() -> int:
    """This process's resident set size in bytes (the server runs in it)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def big_file(folder: Path, mib: int) -> str:
    """Write ``mib`` MiB of random bytes to folder/big.bin; return their SHA-256."""
    digest = hashlib.sha256()
    with open(folder / "big.bin", "wb") as f:
        for _ in range(mib):
            block = os.urandom(MIB)
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


async def test_a_64_mib_file_to_4_slow_readers_takes_little_memory(tmp_path: Path) -> None:
    expected = big_file(tmp_path, 64)
    (tmp_path / "small.txt").write_text("small\n")
    app = fullduplex.App()
    app.static("/", tmp_path)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    gc.collect()
    base = rss()
    peak = base

    async def slow_reader() -> tuple[str, bytes]:
        nonlocal peak
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=64 * 1024)
        # The big file, then a small one pipelined behind it on the same connection.
        writer.write(
            b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        status, fields = await read_head(reader)
        assert status == "HTTP/1.1 200 OK"
        remaining = int(fields["content-length"])
        assert remaining == 64 * MIB
        digest = hashlib.sha256()
        reads = 0
        while remaining:
            data = await asyncio.wait_for(reader.read(min(remaining, 64 * 1024)), 10)
            assert data, "the body was cut short"
            digest.update(data)
            remaining -= len(data)
            reads += 1
            if reads % 16 == 0:
                peak = max(peak, rss())
                await asyncio.sleep(0.001)  # a slow reader: the server must wait for it
        status, _ = await read_head(reader)
        assert status == "HTTP/1.1 200 OK"
        rest = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return digest.hexdigest(), rest

    try:
        results = await asyncio.wait_for(asyncio.gather(*(slow_reader() for _ in range(4))), 60)
    finally:
        await server.shutdown()
    assert results == [(expected, b"small\n")] * 4
    growth = peak - base
    print(f"RSS growth while serving 4 x 64 MiB: {growth / MIB:.1f} MiB")
    assert growth < 16 * MIB  # it was over 4 x 64 MiB: each request read the file whole


async def test_head_of_a_large_file_has_its_length_and_no_body(tmp_path: Path) -> None:
    big_file(tmp_path, 1)
    app = fullduplex.App()
    app.static("/", tmp_path, chunk_size=64 * 1024)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n"
            b"HEAD /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        for method in ("HEAD", "GET", "HEAD"):
            status, fields = await read_head(reader)
            assert status == "HTTP/1.1 200 OK"
            assert fields["content-length"] == str(MIB)
            assert fields["content-type"] == "application/octet-stream"
            if method == "GET":
                body = await asyncio.wait_for(reader.readexactly(MIB), 10)
                assert body == (tmp_path / "big.bin").read_bytes()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    finally:
        await server.shutdown()


async def test_a_file_truncated_while_it_is_sent_ends_the_connection(tmp_path: Path) -> None:
    # The head said its size: a shorter body cannot be followed by another answer. 32 MiB: more
    # than the socket buffers hold, so the server is still reading the file when it shrinks.
    big_file(tmp_path, 32)
    app = fullduplex.App()
    app.static("/", tmp_path, chunk_size=64 * 1024)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        status, fields = await read_head(reader)
        assert (status, fields["content-length"]) == ("HTTP/1.1 200 OK", str(32 * MIB))
        first = await asyncio.wait_for(reader.readexactly(64 * 1024), 10)
        os.truncate(tmp_path / "big.bin", MIB)
        rest = await asyncio.wait_for(reader.read(), 10)  # to the end of the connection
        assert MIB <= len(first) + len(rest) < 32 * MIB
        assert b"HTTP/1.1" not in rest
        writer.close()
    finally:
        await server.shutdown()


async def test_a_client_that_stops_reading_a_large_file_is_dropped_after_write_timeout(
    tmp_path: Path,
) -> None:
    # The file stays open (and its chunk in memory) only while the client reads: stalled for
    # write_timeout, the connection is aborted, as an event stream's is.
    big_file(tmp_path, 16)
    app = fullduplex.App()
    app.static("/", tmp_path, chunk_size=64 * 1024)
    stalled = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "stalled" in record.getMessage():
                loop.call_soon_threadsafe(stalled.set)

    watch = Watch()
    server_logger = logging.getLogger("fullduplex")
    server_logger.addHandler(watch)
    level = server_logger.level
    server_logger.setLevel(logging.INFO)
    server = await fullduplex.serve(app, "127.0.0.1", 0, write_timeout=0.5)
    stack = contextlib.ExitStack()
    try:
        sock = socket.socket()
        stack.callback(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")  # then do not read
        await asyncio.wait_for(stalled.wait(), 10)
        sock.setblocking(False)
        received = 0
        with contextlib.suppress(ConnectionError):
            for _ in range(100_000):  # bounded: what the buffers held, then the end
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
                if not data:
                    break
                received += len(data)
        assert received < 16 * MIB
    finally:
        stack.close()
        server_logger.removeHandler(watch)
        server_logger.setLevel(level)
        await server.shutdown()
