"""The threaded client against our server and against the websockets library's server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import websockets.sync.server as wssync

import fullduplex
import fullduplex.sync
from fullduplex.demo import create_app


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
