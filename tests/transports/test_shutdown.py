"""Held long polls and event streams get their answer before the server exits.

Issue 15, defect 6: a long poll held on `fullduplex serve` got no HTTP answer on SIGTERM,
only a FIN (an HTTP client then retries and meets a refused connection). Now every held long
poll answers (an empty batch with its cursor) and every event stream ends with its last chunk
before the server closes its connections, as WebSocket clients get their 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from ..hub.conftest import eventually
from .client import EventStream, request
from .conftest import make_setup


async def test_server_shutdown_answers_held_long_polls_and_ends_streams() -> None:
    setup = await make_setup(longpoll_timeout=30.0)
    await setup.hub.publish("t", "one")
    polls = [
        asyncio.ensure_future(request(setup.port, "GET", "/longpoll?topic=t&since=1"))
        for _ in range(3)
    ]
    stream = await EventStream.open(setup.port, "/sse?topic=t")
    await eventually(lambda: len(setup.transports.requests) == 4)
    # What `fullduplex serve` does on SIGTERM.
    setup.transports.close()
    await setup.transports.wait_closed()
    await setup.server.shutdown()
    for poll in polls:
        reply = await poll
        assert reply.status == 200
        assert reply.json()["messages"] == [] and reply.json()["cursor"] == 1
    assert await stream.next_block() is not None  # retry
    assert (await stream.next_block()).get("id") == "1"  # type: ignore[union-attr]
    assert await stream.next_block() is None and stream.ended  # the last chunk arrived
    await stream.close()
    await setup.hub.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fullduplex", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        time.sleep(0.05)
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


async def chat_subscribers(port: int) -> float:
    reply = await request(port, "GET", "/metrics")
    for line in reply.body.decode().splitlines():
        if line.startswith('fullduplex_topic_subscribers{topic="chat"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.one_loop
async def test_sigterm_answers_a_held_long_poll(
    serve_process: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = serve_process
    before = await chat_subscribers(port)
    # Nobody publishes to chat here: the poll is held until the server stops.
    poll = asyncio.ensure_future(request(port, "GET", "/longpoll?topic=chat", timeout=20))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await chat_subscribers(port) == before:  # the demo's /metrics: the poll is held
        assert loop.time() < deadline and not poll.done()
    assert not poll.done()
    proc.send_signal(signal.SIGTERM)
    reply = await poll
    assert reply.status == 200, reply
    assert reply.json()["messages"] == [] and isinstance(reply.json()["cursor"], int)
    assert await loop.run_in_executor(None, proc.wait, 15) == 0
