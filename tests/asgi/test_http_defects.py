"""HTTP/1.1 defects of the ASGI server found by fuzz/attack.py, each over a real socket.

A bare ASGI application served by :func:`fullduplex.serve`; raw sockets, because clients hide
what these tests look at (framing, pipelining, what the server does after a bad request).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import fullduplex
from fullduplex.asgi import ASGIAdapter

UPGRADE = (
    b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/echo`` answers the body it read, ``/long`` and ``/short`` lie about their length."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})
        return
    path = scope["path"]
    body = b""
    if path == "/slow":
        await asyncio.sleep(1.5)  # a slow application, over the open timeout
        path = "/echo"
    if path == "/echo":
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message["body"]
            more = message["more_body"]
    declared = None
    if path == "/long":
        declared, body = 5, b"0123456789"
    elif path == "/short":
        declared, body = 10, b"01234"
    elif path == "/big":
        body = b"b" * 16384
    elif path != "/echo":
        body = b"ok"
    headers = [(b"content-type", b"text/plain")]
    if declared is not None:
        headers.append((b"content-length", b"%d" % declared))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server() -> AsyncIterator[fullduplex.Server]:
    server = await fullduplex.serve(
        ASGIAdapter(app, lifespan="off"), "127.0.0.1", 0, rate_per_ip=None
    )
    yield server
    await server.shutdown()


async def exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data``, read until the server closes (the test fails if it does not)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def statuses(data: bytes) -> list[int]:
    # The bodies here never hold such a string; a response may follow a body on its line.
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            501,
        ),
    ],
)
async def test_version_and_codings_refused_as_natively(
    server: fullduplex.Server, head: bytes, status: int
) -> None:
    answer = await exchange(server.port, head + b"3\r\nabc\r\n0\r\n\r\n")
    assert statuses(answer) == [status]


async def test_chunked_alone_still_accepted(server: fullduplex.Server) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    answer = await exchange(server.port, head + b"\r\n3\r\nabc\r\n0\r\n\r\n")
    assert statuses(answer) == [200] and answer.endswith(b"\r\n\r\nabc")


async def test_upgrade_with_post_is_refused_as_natively(server: fullduplex.Server) -> None:
    # RFC 6455 4.1: the method must be GET; the native server answers 400, not 101.
    answer = await exchange(server.port, b"POST /ws HTTP/1.1\r\n" + UPGRADE + b"\r\n")
    assert statuses(answer) == [400]
    assert b"requires GET" in answer


@pytest.mark.parametrize(("path", "sent"), [("/long", b"01234"), ("/short", b"01234")])
async def test_body_not_matching_content_length_closes(
    server: fullduplex.Server, path: str, sent: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # An application error: what was declared (or what there was) goes out, then the
    # connection closes, so a keep-alive client neither reads the rest as its next answer
    # nor waits forever; the pipelined request behind it is not answered.
    request = b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode()
    with caplog.at_level(logging.ERROR, "fullduplex.asgi"):
        answer = await exchange(server.port, request + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(answer) == [200]
    assert answer.endswith(b"\r\n\r\n" + sent)
    assert any("Content-Length" in r.getMessage() + str(r.exc_info) for r in caplog.records)


async def test_pipelined_request_then_garbage_answered_in_order(server: fullduplex.Server) -> None:
    # The valid request is answered first, then 400 and the close, as natively.
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await exchange(server.port, request * 2 + b"\x00\x01garbage\r\n\r\n")
    assert statuses(answer) == [200, 200, 400]
    assert answer.index(b"\r\n\r\nok") < answer.index(b"400")


async def test_pipelined_chunked_body_then_garbage(server: fullduplex.Server) -> None:
    # The second request's body is malformed: the first is answered, the second never runs.
    first = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    second = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    answer = await exchange(server.port, first + second)
    assert statuses(answer) == [200, 400]
    assert b"\r\n\r\nabc" in answer


async def test_upgrade_pipelined_behind_get_upgrades_after_it(server: fullduplex.Server) -> None:
    # As natively: the GET is answered, then the upgrade gets its 101.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /ws HTTP/1.1\r\n" + UPGRADE + b"\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 5)
        second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert statuses(first) == [200]
    assert second.startswith(b"HTTP/1.1 101 ")


async def test_pipelined_answers_wait_for_a_client_that_does_not_read(
    server: fullduplex.Server,
) -> None:
    # fuzz/attack.py pipelined_no_read: requests pipelined and never read had each answer
    # queued in the server's write buffer (+106 MiB). Now it stops taking requests above the
    # write high-water mark until the client reads, as the native server does.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=2**20)
    try:
        get = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(get * 1000 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        buffered = []
        for _ in range(50):  # while the server takes what it will take
            await asyncio.sleep(0.02)
            buffered += [c.transport.get_write_buffer_size() for c in server.connections]
        assert buffered and max(buffered) < 200_000  # not 1,000 x 16 KiB = 16 MiB
        answer = await asyncio.wait_for(reader.read(), 30)  # then every answer, in order
    finally:
        writer.close()
    assert statuses(answer) == [200] * 1001
    assert answer.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize(
    ("framing", "piece"),
    [(b"Content-Length: 1000", b"a"), (b"Transfer-Encoding: chunked", b"1\r\na\r\n")],
)
async def test_slow_body_is_ended_by_the_open_timeout(framing: bytes, piece: bytes) -> None:
    # fuzz/attack.py slowloris_body, slowloris_chunked_body: a body sent a byte at a time
    # held the connection forever. open_timeout covers the whole request, as natively.
    server = await fullduplex.serve(
        ASGIAdapter(app, lifespan="off"), "127.0.0.1", 0, rate_per_ip=None, open_timeout=1
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
        start = asyncio.get_running_loop().time()
        eof = asyncio.ensure_future(reader.read())
        try:
            for _ in range(40):  # 8 s at most, one piece every 0.2 s
                done, _ = await asyncio.wait([eof], timeout=0.2)
                if done:
                    break
                writer.write(piece)
            elapsed = asyncio.get_running_loop().time() - start
            assert eof.done() and eof.result() == b""  # closed, the application never answered
            assert elapsed < 3
        finally:
            eof.cancel()
            writer.close()
    finally:
        await server.shutdown()


async def test_an_application_slow_to_read_a_body_is_not_cut() -> None:
    # The open timeout is the client's time to send: it stops while reading waits for the
    # application (body buffered above the high-water mark).
    server = await fullduplex.serve(
        ASGIAdapter(app, lifespan="off"), "127.0.0.1", 0, rate_per_ip=None, open_timeout=1
    )
    body = b"x" * 300_000
    try:
        head = b"POST /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        answer = await exchange(server.port, head + b"Content-Length: 300000\r\n\r\n" + body)
    finally:
        await server.shutdown()
    assert statuses(answer) == [200] and answer.endswith(b"\r\n\r\n" + body)


CHUNKED = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_slow_chunk_extension_is_refused(server: fullduplex.Server) -> None:
    # llhttp streams chunk extensions without a limit (fuzz/attack.py chunk_extension_huge: 1 MB
    # accepted): a chunk-size line is bounded by max_head_size (16 KiB), counted across reads
    # holding nothing else: 431 and the connection closed, as natively (an over-long line).
    # A piece at a time, waiting for the answer: bytes still arriving at a closed socket would
    # make the client's kernel drop the answer on the reset.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(CHUNKED + b"2;")
        answer = asyncio.ensure_future(reader.read())
        for _ in range(100):  # 100 x 1 KiB: over the 16 KiB limit by the 17th
            done, _ = await asyncio.wait([answer], timeout=0.05)
            if done:
                break
            writer.write(b"a" * 1024)
        assert statuses(await asyncio.wait_for(answer, 5)) == [431]
    finally:
        writer.close()


async def test_chunked_body_split_anywhere_is_read(server: fullduplex.Server) -> None:
    # Chunk-size lines cut across reads, extensions and big chunks: no false alarm.
    body = b"".join(b"%x;ext=%d\r\n%s\r\n" % (n, n, b"z" * n) for n in (1, 70_000, 3, 30_000))
    data = CHUNKED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + body + b"0\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for i in range(0, len(data), 7_001):
            writer.write(data[i : i + 7_001])
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert statuses(answer) == [200]
    assert answer.endswith(b"\r\n\r\n" + b"z" * 100_004)


async def test_access_log_line_as_native(
    server: fullduplex.Server, caplog: pytest.LogCaptureFixture
) -> None:
    # The native server's format: client "METHOD target HTTP/version" status size, the size
    # being the body bytes sent (none for HEAD), logged once the response ended.
    caplog.set_level(logging.INFO, logger="fullduplex.access")
    post = b"POST /echo?token=secret HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    head = b"HEAD /big HTTP/1.0\r\n\r\n"
    answer = await exchange(server.port, post + head)
    assert statuses(answer) == [200, 200]
    lines = [r.getMessage() for r in caplog.records if r.name == "fullduplex.access"]
    assert lines == [
        '127.0.0.1 "POST /echo?token=[redacted] HTTP/1.1" 200 3',
        '127.0.0.1 "HEAD /big HTTP/1.0" 200 0',
    ]


async def test_a_client_that_never_reads_is_ended_by_the_keepalive_timeout() -> None:
    # Held behind its unread answers, the connection is aborted at keepalive_timeout: close()
    # would wait for a write buffer that never drains.
    server = await fullduplex.serve(
        ASGIAdapter(app, lifespan="off"), "127.0.0.1", 0, rate_per_ip=None, keepalive_timeout=1
    )
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
        for _ in range(100):  # 10 s at most
            await asyncio.sleep(0.1)
            if not server.connections:
                break
        assert not server.connections
        writer.close()
    finally:
        await server.shutdown()
