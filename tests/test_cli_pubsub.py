"""`fullduplex subscribe` and `fullduplex publish` as a user meets them: real processes, real
sockets, wrong inputs, a closed pipe and a line typed long after the last."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import fullduplex
from fullduplex.hub import Hub
from fullduplex.transports import TopicRules, mount_all

SRC = str(Path(fullduplex.__file__).resolve().parents[1])

pytestmark = pytest.mark.one_loop  # subprocesses: the test's own loop does not matter


async def run(*args: str, stdin: bytes = b"", suffix: str = "") -> tuple[int, str, str]:
    """Run `fullduplex ARGS` (through bash when a shell suffix such as a pipe is given)."""
    command = [sys.executable, "-m", "fullduplex", *args]
    if suffix:
        line = " ".join(f"'{part}'" for part in command)
        command = ["bash", "-c", f"set -o pipefail; {line}{suffix}"]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def served() -> AsyncIterator[tuple[fullduplex.Server, Hub]]:
    hub = Hub()
    app = fullduplex.App()
    rules = TopicRules(subscribe=["news"], publish=["news"])
    mount_all(app, hub, rules=rules)
    await hub.start()
    # Pings every 0.2 s: a client that cannot answer for 0.4 s is closed with 1011.
    server = await fullduplex.serve(app, "127.0.0.1", 0, ping_interval=0.2, ping_timeout=0.2)
    yield server, hub
    await server.shutdown()
    await hub.close()


@pytest.mark.parametrize(
    "command", [["subscribe", "notaurl", "news"], ["publish", "notaurl", "news", "x"]]
)
async def test_a_malformed_url_is_one_line_not_a_silent_retry(command: list[str]) -> None:
    status, out, err = await run(*command)
    assert status == 2, err
    assert err.splitlines() == [
        "fullduplex: invalid WebSocket URI 'notaurl': the scheme must be ws or wss"
    ]
    assert out == ""


async def test_a_forbidden_topic_says_the_servers_reason_in_text(
    served: tuple[fullduplex.Server, Hub],
) -> None:
    server, _ = served
    status, _, err = await run("subscribe", f"ws://127.0.0.1:{server.port}/pubsub", "secret")
    assert status == 2
    assert err.splitlines() == ["fullduplex: secret: HTTP 403: unknown topic: secret"]  # no b'...'


async def test_subscribe_into_head_ends_quietly(served: tuple[fullduplex.Server, Hub]) -> None:
    server, hub = served
    url = f"ws://127.0.0.1:{server.port}/pubsub"
    running = asyncio.ensure_future(
        run("subscribe", url, "news", "--since", "0", suffix=" | head -2")
    )
    # A live feed, as `head` meets it: once head left, the next line written fails.
    for i in range(600):  # at most 30 s
        if running.done():
            break
        await hub.publish("news", i)
        await asyncio.sleep(0.05)
    status, out, err = await running
    assert [line.count('"seq"') for line in out.splitlines()] == [1, 1]
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert status == 0, err


async def test_a_refused_connection_is_reported_while_retrying() -> None:
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "fullduplex", "subscribe", f"ws://127.0.0.1:{port}/pubsub"),
        *("news", "--max-delay", "0.2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.stderr is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert b"connection failed" in first and b"reconnecting in" in first, first
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert b"Traceback" not in err, err


async def test_publish_keeps_answering_pings_while_waiting_for_a_line(
    served: tuple[fullduplex.Server, Hub], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = served
    caplog.set_level(logging.INFO, logger="fullduplex.access")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "fullduplex", "publish"),
        *(f"ws://127.0.0.1:{server.port}/pubsub", "news"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"one\n")
    await proc.stdin.drain()
    assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"1\n"
    # A person typing: 2 s without a line, ten missed pings' worth. Reading standard input
    # in the event loop left the server's pings unanswered, and it closed with 1011.
    await asyncio.sleep(2)
    proc.stdin.write(b"two\n")
    proc.stdin.close()
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert out == b"2\n", err
    assert proc.returncode == 0, err
    assert b"reconnecting" not in err, err
    closes = [
        r.getMessage() for r in caplog.records if "websocket /pubsub closed" in r.getMessage()
    ]
    assert len(closes) == 1 and "closed 1000" in closes[0], closes
