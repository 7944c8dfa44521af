"""``fullduplex serve --broker``: servers in separate processes share topics through Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .client import EventStream, request

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class ChatClient:
    """A chat page's connection to ``/chat/ws``: clients publish to ``chat`` only through it
    (the demo refuses anonymous ``POST /publish``)."""

    def __init__(self, ws: Any, name: str) -> None:
        self.ws = ws
        self.name = name

    @classmethod
    async def join(cls, port: int, name: str) -> ChatClient:
        import websockets.asyncio.client as wsclient

        ws = await wsclient.connect(f"ws://127.0.0.1:{port}/chat/ws")
        # From history: a live-only subscription may start after the join is published.
        await ws.send(json.dumps({"op": "subscribe", "topic": "chat", "since": 0}))
        join = {"op": "publish", "topic": "chat", "data": {"type": "join", "name": name}}
        await ws.send(json.dumps(join))
        async with asyncio.timeout(10):  # until the join itself comes back, numbered
            while json.loads(await ws.recv()).get("data") != {"type": "join", "name": name}:
                pass
        return cls(ws, name)

    async def say(self, text: str) -> int:
        """Send a line; return its seq, as the hub numbered it."""
        line = {"op": "publish", "topic": "chat", "data": {"type": "message", "text": text}}
        await self.ws.send(json.dumps(line))
        async with asyncio.timeout(10):
            while True:
                item = json.loads(await self.ws.recv())
                data = item.get("data") or {}
                if data.get("name") == self.name and data.get("text") == text:
                    return int(item["seq"])

    async def close(self) -> None:
        await self.ws.close()


async def chat_say(port: int, text: str) -> int:
    """Join the demo's chat on ``port`` under a fresh name, say ``text``, return its seq."""
    client = await ChatClient.join(port, f"t{time.monotonic_ns() % 10**9}")
    try:
        return await client.say(text)
    finally:
        await client.close()


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
            sent = await chat_say(port_a, "probe")
            while True:  # skip joins and leaves: only this test says "probe"
                event = await stream.next_event(timeout=10)
                assert event is not None
                if event.json()["data"].get("text") == "probe":
                    break
            assert event.json()["seq"] == sent
            assert int(event.get("id") or 0) == sent
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
        # Six connections (the kernel spreads them over the workers), all joined before any
        # speaks: their lines, one after the other, get consecutive numbers.
        tag = time.monotonic_ns() % 10**9
        clients = [await ChatClient.join(port, f"w{i}-{tag}") for i in range(6)]
        try:
            seqs = [await client.say(f"line {i}") for i, client in enumerate(clients)]
        finally:
            for client in clients:
                await client.close()
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
        # Joined before the cursor is taken: the line is the only message after it.
        sender = await ChatClient.join(port_a, f"sender-{time.monotonic_ns() % 10**9}")
        cursor = (await request(port_b, "GET", "/poll?topic=chat")).json()["cursor"]
        ws = await wsclient.connect(f"ws://127.0.0.1:{port_b}/pubsub")
        stream = await EventStream.open(port_b, f"/sse?topic=chat&since={cursor}")
        try:
            await ws.send(json.dumps({"op": "subscribe", "topic": "chat", "since": cursor}))
            longpoll = asyncio.create_task(
                request(port_b, "GET", f"/longpoll?topic=chat&since={cursor}")
            )
            await asyncio.sleep(0.3)  # the long poll is held, the subscriptions are live
            sent = await sender.say("across")

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
            await sender.close()
