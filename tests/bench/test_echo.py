"""fullduplex bench: runs of about a second against an in-process server; no timing asserted."""

from __future__ import annotations

import asyncio
import io
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import fullduplex
from fullduplex.bench import (
    BenchConfig,
    BenchError,
    Progress,
    Summary,
    main,
    run,
)
from fullduplex.bench.echo import _Display
from fullduplex.demo import create_app

# A ping-pong benchmark sends ~17,000 messages per second per connection: over the server's
# default per-WebSocket rate (1,000/s, closed with 1008), which test_rate_limited_server covers.
UNLIMITED: dict[str, Any] = {"max_messages_per_second": None}


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    server = await fullduplex.serve(create_app(), "127.0.0.1", 0, **UNLIMITED)
    try:
        yield f"ws://127.0.0.1:{server.port}/echo"
    finally:
        await server.shutdown()


@pytest.fixture
def threaded_echo_url() -> Iterator[str]:
    """A server on its own loop in a thread, for main(), which runs its own loop."""
    ready = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        server = await fullduplex.serve(create_app(), "127.0.0.1", 0, **UNLIMITED)
        stop = asyncio.Event()
        state.update(port=server.port, loop=asyncio.get_running_loop(), stop=stop)
        ready.set()
        await stop.wait()
        await server.shutdown()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    assert ready.wait(10)
    try:
        yield f"ws://127.0.0.1:{state['port']}/echo"
    finally:
        loop = state["loop"]
        assert isinstance(loop, asyncio.AbstractEventLoop)
        loop.call_soon_threadsafe(state["stop"].set)  # type: ignore[attr-defined]
        thread.join(15)


def assert_sane(summary: Summary, connections: int) -> None:
    assert summary.connections == connections
    assert summary.received > 0
    assert summary.received <= summary.sent
    assert summary.errors == 0
    assert summary.duration > 0
    assert summary.messages_per_second > 0
    assert 0 < summary.p50 <= summary.p90 <= summary.p99 <= summary.max
    assert summary.p50 <= summary.mean * 10  # same order of magnitude, not a timing


async def test_rate_limited_server_is_named_in_the_summary() -> None:
    # The server's default per-WebSocket rate closes a ping-pong run with 1008: the summary says
    # so and points at the limit instead of printing a bare error count.
    server = await fullduplex.serve(create_app(), "127.0.0.1", 0, max_messages_per_second=100)
    try:
        config = BenchConfig(f"ws://127.0.0.1:{server.port}/echo", connections=2, duration=1.0)
        summary = await run(config)
    finally:
        await server.shutdown()
    assert summary.errors == 2
    assert "1008" in summary.first_error
    assert "--max-messages-per-second" in summary.report()


async def test_byte_rate_limited_server_names_the_byte_limit() -> None:
    server = await fullduplex.serve(
        create_app(), "127.0.0.1", 0, max_messages_per_second=None, max_bytes_per_second=10_000
    )
    try:
        url = f"ws://127.0.0.1:{server.port}/echo"
        summary = await run(BenchConfig(url, connections=1, size=1000, duration=1.0))
    finally:
        await server.shutdown()
    assert "too many bytes per second" in summary.first_error
    assert "--max-bytes-per-second" in summary.report()
    assert "--max-messages-per-second" not in summary.report()


async def test_a_per_ip_refusal_names_the_limits_to_lift() -> None:
    # 60 handshakes at once from one IP: past the default rate_per_ip (a burst of 50).
    server = await fullduplex.serve(create_app(), "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.port}/echo"
        with pytest.raises(BenchError) as refused:
            await run(BenchConfig(url, connections=60, rate=60, duration=1.0))
    finally:
        await server.shutdown()
    assert "429" in str(refused.value)
    assert "--rate-per-ip none --max-connections-per-ip none" in str(refused.value)


@pytest.mark.one_loop
async def test_ctrl_c_prints_interrupted_and_no_traceback(echo_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "fullduplex", "bench", echo_url, "--rate", "20"),
        *("--duration", "20", "--interval", "0.2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(fullduplex.__file__).resolve().parents[1])},
    )
    assert proc.stderr is not None
    while b"sent" not in await asyncio.wait_for(proc.stderr.readline(), 30):
        pass  # "opening connections" lines, then the first progress line: the load runs
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert b"fullduplex bench: interrupted" in err
    assert b"Traceback" not in err and b"never retrieved" not in err, err
    assert proc.returncode == 1


async def test_ping_pong(echo_url: str) -> None:
    progress: list[Progress] = []
    config = BenchConfig(echo_url, connections=3, size=64, duration=1.0, interval=0.25)
    summary = await run(config, progress.append)
    assert_sane(summary, 3)
    assert summary.mode == "ping-pong"
    # Ping-pong: at most one message per connection is unanswered at the end.
    assert summary.sent - summary.received <= 3
    assert summary.bytes_per_second == summary.messages_per_second * 64
    assert progress and progress[-1].received <= summary.received
    assert "p99" in progress[0].line()


async def test_rate(echo_url: str) -> None:
    config = BenchConfig(echo_url, connections=2, size=16, rate=200, duration=1.0)
    summary = await run(config)
    assert_sane(summary, 2)
    assert summary.mode == "200 msg/s"
    # The schedule never sends more than rate x duration (+ one per connection).
    assert summary.sent <= 200 * 1.0 + 2


async def test_text_and_empty_messages(echo_url: str) -> None:
    summary = await run(BenchConfig(echo_url, size=0, text=True, duration=0.3))
    assert_sane(summary, 1)


async def test_connection_refused() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BenchError, match="cannot open 2 of 2"):
        await run(BenchConfig(f"ws://127.0.0.1:{port}/echo", connections=2, duration=0.2))


async def test_not_an_echo_endpoint() -> None:
    app = fullduplex.App()

    @app.websocket("/sink")
    async def sink(ws: fullduplex.WebSocket) -> None:
        async for _ in ws:
            pass

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.port}/sink"
        with pytest.raises(BenchError, match="no echo received"):
            await run(BenchConfig(url, rate=50, duration=0.2))
    finally:
        await server.shutdown()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (BenchConfig("http://127.0.0.1:1/"), "URL must look like"),
        (BenchConfig("ws:///nohost"), "URL must look like"),
        (BenchConfig("ws://h/", connections=0), "--connections"),
        (BenchConfig("ws://h/", size=-1), "--size"),
        (BenchConfig("ws://h/", rate=0), "--rate"),
        (BenchConfig("ws://h/", rate=math.inf), "--rate"),
        (BenchConfig("ws://h/", duration=0), "--duration"),
        (BenchConfig("ws://h/", interval=0), "--interval"),
    ],
)
def test_invalid_config(config: BenchConfig, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        config.validate()


@pytest.mark.one_loop
def test_main_prints_summary(threaded_echo_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [threaded_echo_url, "--connections", "4", "--size", "100", "--duration", "1"]
    assert main([*argv, "--interval", "0.3"]) == 0
    out, err = capsys.readouterr()
    assert "4 connection(s), 100-byte messages, ping-pong" in out
    for word in ("throughput", "msg/s", "p50", "p90", "p99", "max"):
        assert word in out
    # Not a terminal: progress comes as separate lines.
    assert "\r" not in err
    assert err.count("received") >= 1


@pytest.mark.parametrize(
    "argv",
    [
        ["ftp://example/"],
        ["ws://127.0.0.1:1/", "--connections", "0"],
        ["ws://127.0.0.1:1/", "--size", "-5"],
        ["ws://127.0.0.1:1/", "--rate", "-1"],
        ["ws://127.0.0.1:1/", "--duration", "0"],
        ["ws://127.0.0.1:1/", "--rate", "10", "--ping-pong"],
        ["ws://127.0.0.1:1/", "--connections", "many"],
        [],
    ],
)
@pytest.mark.one_loop
def test_main_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.strip()


@pytest.mark.one_loop
def test_main_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main([f"ws://127.0.0.1:{port}/", "--duration", "0.2"]) == 1
    assert "cannot open 1 of 1 connection(s)" in capsys.readouterr().err


def test_display_redraws_one_line_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    display = _Display(stream)
    display(Progress(1.0, 10, 9, 9.0, 0.001, 0.002, 0))
    display(Progress(2.0, 20, 19, 10.0, 0.001, 0.002, 1))
    display.finish()
    text = stream.getvalue()
    assert text.count("\r") == 2
    assert text.endswith("\n") and text.count("\n") == 1
    assert "errors 1" in text


async def test_subprotocol_and_opening_progress() -> None:
    app = fullduplex.App()

    @app.websocket("/strict", subprotocols=["chat.v1"], require_subprotocol=True)
    async def strict(ws: fullduplex.WebSocket) -> None:
        assert ws.subprotocol == "chat.v1"
        async for message in ws:
            await ws.send(message)

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.port}/strict"
        with pytest.raises(BenchError, match="400"):
            await run(BenchConfig(url, connections=2, duration=0.2))  # refused without it
        opened: list[tuple[int, int]] = []
        summary = await run(
            BenchConfig(url, connections=3, duration=0.3, subprotocols=("chat.v1",)),
            opening=lambda done, wanted: opened.append((done, wanted)),
        )
    finally:
        await server.shutdown()
    assert summary.received > 0
    assert opened[0] == (0, 3) and opened[-1] == (3, 3)
    assert all(wanted == 3 for _, wanted in opened)
