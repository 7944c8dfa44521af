"""The threaded client against our server and against the websockets library's server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest
import websockets.sync.server as wssync

import fullduplex
import fullduplex.sync
from fullduplex.demo import create_app

from .conftest import BOTH_LOOPS


@pytest.fixture
def our_server() -> Iterator[int]:
    import asyncio

    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        server = await fullduplex.serve(create_app(), "127.0.0.1", 0)
        state["port"] = server.port
        state["stop"] = asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        ready.set()
        await state["stop"].wait()  # type: ignore[attr-defined]
        await server.shutdown()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    ready.wait(5)
    yield int(state["port"])  # type: ignore[call-overload]
    state["loop"].call_soon_threadsafe(state["stop"].set)  # type: ignore[attr-defined]
    thread.join(10)


def test_echo_against_our_server(our_server: int) -> None:
    with fullduplex.sync.connect(f"ws://127.0.0.1:{our_server}/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\xff")
        assert ws.recv(timeout=5) == b"\x00\xff"
        ws.send(["a", "b"])
        assert ws.recv(timeout=5) == "ab"
        assert ws.ping(timeout=5) >= 0
    assert ws.close_code == 1000


def test_recv_timeout(our_server: int) -> None:
    with (
        fullduplex.sync.connect(f"ws://127.0.0.1:{our_server}/echo") as ws,
        pytest.raises(TimeoutError),
    ):
        ws.recv(timeout=0.2)


def test_subprotocol_and_close_code(our_server: int) -> None:
    ws = fullduplex.sync.connect(f"ws://127.0.0.1:{our_server}/ws", subprotocols=["echo"])
    assert ws.subprotocol == "echo"
    ws.send(b"binary")
    with pytest.raises(fullduplex.ConnectionClosedError) as info:
        ws.recv(timeout=5)
    assert info.value.code == 1003


def test_non_101_answer_keeps_status_and_body(our_server: int) -> None:
    with pytest.raises(fullduplex.InvalidStatus) as info:
        fullduplex.sync.connect(f"ws://127.0.0.1:{our_server}/nope")
    assert info.value.status == 404
    assert b"not found" in info.value.body


def test_refused_connection() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        fullduplex.sync.connect(f"ws://127.0.0.1:{port}/")


def test_against_websockets_sync_server() -> None:
    def echo(ws: wssync.ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with wssync.serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            with fullduplex.sync.connect(f"ws://127.0.0.1:{port}/") as ws:
                text = "compressible " * 1000
                ws.send(text)
                assert ws.recv(timeout=5) == text
                messages = []
                for i in range(3):
                    ws.send(str(i))
                    messages.append(ws.recv(timeout=5))
                assert messages == ["0", "1", "2"]
        finally:
            server.shutdown()
            thread.join(5)


def test_refused_with_a_large_body_gets_invalid_status() -> None:
    # Issue 15: as for the asyncio client, InvalidStatus (body cut at 1 MiB), not MessageTooBig.
    body = "no entry. " * 300_000  # 3 MB

    def refuse(connection: wssync.ServerConnection, request: object) -> object:
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, body)

    with wssync.serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            with pytest.raises(fullduplex.InvalidStatus) as info:
                fullduplex.sync.connect(f"ws://127.0.0.1:{port}/")
            assert info.value.status == 503
            assert info.value.body == body.encode()[: 2**20]
        finally:
            server.shutdown()
            thread.join(5)


def test_keepalive_pings_measure_latency_against_websockets() -> None:
    def echo(ws: wssync.ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with wssync.serve(echo, "127.0.0.1", 0) as server:
        port = server.socket.getsockname()[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with fullduplex.sync.connect(
            f"ws://127.0.0.1:{port}/", ping_interval=0.05, ping_timeout=5
        ) as ws:
            deadline = time.monotonic() + 5
            while ws.latency == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert 0 < ws.latency < 5
            ws.send("still open")
            assert ws.recv(timeout=5) == "still open"
        server.shutdown()


def _silent_server(received: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """Accepts one WebSocket handshake (RFC 6455 4.2.2, by hand), then never answers."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = re.search(rb"(?i)sec-websocket-key: *(\S+)", head)
            assert key is not None
            digest = hashlib.sha1(key.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
            accept = base64.b64encode(digest.digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            while data := conn.recv(4096):
                received.append(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, thread


def test_a_peer_that_stops_answering_pings_is_closed_with_1011() -> None:
    received: list[bytes] = []
    listener, thread = _silent_server(received)
    port = listener.getsockname()[1]
    started = time.monotonic()
    ws = fullduplex.sync.connect(
        f"ws://127.0.0.1:{port}/", compression=False, ping_interval=0.1, ping_timeout=0.2
    )
    with pytest.raises(fullduplex.ConnectionClosedError):
        ws.recv(timeout=10)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 5
    assert ws.close_code == 1011
    thread.join(5)
    listener.close()
    data = b"".join(received)
    frames = []  # (first byte, unmasked payload): every client frame is masked and short here
    while data:
        length = data[1] & 0x7F
        key, payload = data[2:6], data[6 : 6 + length]
        frames.append((data[0], bytes(b ^ key[i % 4] for i, b in enumerate(payload))))
        data = data[6 + length :]
    # Pings (FIN + opcode 9), then one close frame (FIN + opcode 8) with 1011 and the reason.
    assert frames[0][0] == 0x89
    assert frames[-1] == (0x88, (1011).to_bytes(2, "big") + b"keepalive ping timeout")
    assert all(first == 0x89 for first, _ in frames[:-1])


@pytest.fixture(params=sorted(BOTH_LOOPS))
def burst_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A server (on each event loop) whose /burst{N} sends N messages, then closes with 1000."""
    app = fullduplex.App()
    for count in (3, 16):

        @app.websocket(f"/burst{count}")
        async def burst(ws: fullduplex.WebSocket, count: int = count) -> None:
            for i in range(count):
                await ws.send(f"m{i}")
            await ws.close(1000)

    loop = BOTH_LOOPS[request.param]()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        server = await fullduplex.serve(app, "127.0.0.1", 0, ping_interval=None)
        state["port"] = server.port
        state["stop"] = asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await server.shutdown()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    assert ready.wait(5)
    yield int(state["port"])
    loop.call_soon_threadsafe(state["stop"].set)
    thread.join(10)
    loop.close()


def _iterate_in_thread(ws: fullduplex.sync.ClientConnection, pause: float) -> list[object]:
    """``for message in ws`` with ``pause`` seconds of work per message, bounded by a join."""
    got: list[object] = []

    def run() -> None:
        for message in ws:
            got.append(message)
            time.sleep(pause)  # the application's work, not a synchronisation
        got.append("end")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(15)
    return got


def test_iteration_ends_after_close_while_the_application_was_busy(burst_server: int) -> None:
    # Issue 15: 16 messages (a full default queue) and a close 1000 arrive while the
    # application is busy (2 s there, 0.7 s here: longer than the 0.5 s the end marker used to
    # wait for room before it was dropped); the iteration then never ended.
    ws = fullduplex.sync.connect(f"ws://127.0.0.1:{burst_server}/burst16", ping_interval=None)
    time.sleep(0.7)  # the application is busy elsewhere
    got = _iterate_in_thread(ws, 0)
    assert got == [f"m{i}" for i in range(16)] + ["end"]
    assert ws.close_code == 1000
    with pytest.raises(fullduplex.ConnectionClosedOK):
        ws.recv()  # no timeout: it must not block


def test_iteration_ends_when_each_message_takes_long(burst_server: int) -> None:
    # Issue 15: 20 messages through a 16-message queue, 0.6 s of work each; here 3 messages
    # through a queue of 2, the same shape: the queue is still full when the connection ends.
    ws = fullduplex.sync.connect(
        f"ws://127.0.0.1:{burst_server}/burst3", ping_interval=None, max_queue=2
    )
    got = _iterate_in_thread(ws, 0.6)
    assert got == ["m0", "m1", "m2", "end"]
    assert ws.close_code == 1000


def test_close_with_a_full_queue_does_not_wait_for_the_timeout(burst_server: int) -> None:
    # The reader waits for room in a full queue; close() lets it read on (dropping what finds
    # the queue full) so that the closing handshake completes at once.
    ws = fullduplex.sync.connect(
        f"ws://127.0.0.1:{burst_server}/burst16", ping_interval=None, max_queue=1
    )
    assert ws.recv(timeout=5) == "m0"
    # Wait until the reader has queued m1 (the queue holds one) and waits with m2: a close()
    # sent before m1 was even read would make it a message after the close, not one queued.
    deadline = time.monotonic() + 5
    while len(ws._messages) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.monotonic()
    ws.close()
    assert time.monotonic() - started < 5  # close_timeout is 10 s
    assert ws.close_code == 1000
    assert ws.recv(timeout=5) == "m1"  # queued before close(): still there
    with pytest.raises(fullduplex.ConnectionClosedOK):
        ws.recv(timeout=5)
