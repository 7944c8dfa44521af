"""``fullduplex serve --broker``: servers in separate processes share topics through Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .client import EventStream, publish, request

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "process exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    folder: Path = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def serve(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fullduplex", "serve", "--log-level", "warning", *args],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.one_loop
async def test_publish_on_one_server_reaches_sse_on_another(redis_url: str) -> None:
    port_a, port_b = free_port(), free_port()
    with (
        serve("--port", str(port_a), "--broker", redis_url) as a,
        serve("--port", str(port_b), "--broker", redis_url) as b,
    ):
        await asyncio.to_thread(wait_port, port_a, a)
        await asyncio.to_thread(wait_port, port_b, b)
        stream = await EventStream.open(port_b, "/sse?topic=chat")
        try:
            await stream.next_block()  # retry
            await stream.next_block()  # id: the current cursor
            sent = await publish(port_a, "chat", {"type": "probe"})
            while True:  # skip nothing else: only this test publishes to chat
                event = await stream.next_event(timeout=10)
                assert event is not None
                if event.json()["data"] == {"type": "probe"}:
                    break
            assert event.json()["seq"] == sent["seq"]
            assert int(event.get("id") or 0) == sent["seq"]
        finally:
            await stream.close()
        # The ticker runs in each single-process server: both publish to one shared sequence.
        reply = await request(port_b, "GET", "/poll?topic=ticker&since=0&limit=5")
        seqs = [m["seq"] for m in reply.json()["messages"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.one_loop
async def test_workers_share_one_port(redis_url: str) -> None:
    port = free_port()
    with serve("--port", str(port), "--broker", redis_url, "--workers", "2") as process:
        await asyncio.to_thread(wait_port, port, process)
        await asyncio.sleep(0.5)  # the second worker
        seqs = [(await publish(port, "chat", {"i": i}))["seq"] for i in range(6)]
        assert seqs == list(range(seqs[0], seqs[0] + 6))


def test_workers_without_broker_are_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fullduplex", "serve", "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--workers > 1 needs --broker" in result.stderr


@pytest.mark.one_loop
async def test_publish_on_one_server_reaches_every_transport_on_another(redis_url: str) -> None:
    import json

    import websockets.asyncio.client as wsclient

    port_a, port_b = free_port(), free_port()
    with (
        serve("--port", str(port_a), "--broker", redis_url) as a,
        serve("--port", str(port_b), "--broker", redis_url) as b,
    ):
        await asyncio.to_thread(wait_port, port_a, a)
        await asyncio.to_thread(wait_port, port_b, b)
        cursor = (await request(port_b, "GET", "/poll?topic=chat")).json()["cursor"]
        ws = await wsclient.connect(f"ws://127.0.0.1:{port_b}/pubsub")
        stream = await EventStream.open(port_b, f"/sse?topic=chat&since={cursor}")
        try:
            await ws.send(json.dumps({"op": "subscribe", "topic": "chat", "since": cursor}))
            longpoll = asyncio.create_task(
                request(port_b, "GET", f"/longpoll?topic=chat&since={cursor}")
            )
            await asyncio.sleep(0.3)  # the long poll is held, the subscriptions are live
            sent = (await publish(port_a, "chat", {"type": "probe", "text": "across"}))["seq"]

            async def ws_seq() -> int:
                while True:
                    item = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if item.get("data", {}).get("text") == "across":
                        return int(item["seq"])

            async def sse_seq() -> int:
                while True:
                    event = await stream.next_event(timeout=10)
                    assert event is not None
                    if event.json()["data"].get("text") == "across":
                        return int(event.json()["seq"])

            held = (await asyncio.wait_for(longpoll, 10)).json()["messages"]
            polled = (await request(port_b, "GET", f"/poll?topic=chat&since={cursor}")).json()
            seqs = {
                "websocket": await ws_seq(),
                "sse": await sse_seq(),
                "longpoll": held[-1]["seq"],
                "poll": polled["messages"][-1]["seq"],
            }
            assert seqs == dict.fromkeys(seqs, sent)
        finally:
            await stream.close()
            await ws.close()
