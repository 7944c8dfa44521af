"""The load generators' shared engine: opening many connections, the file limit, the loop."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import AsyncIterator

import pytest

from fullduplex.bench import OpenError, open_many, raise_file_limit, run_loop

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and ignores them."""
    accepted: list[asyncio.BaseTransport] = []

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    server = await asyncio.get_running_loop().create_server(Accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for transport in accepted:
        transport.close()
    server.close()
    await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def close_streams(streams: list[Stream]) -> None:
    for _, writer in streams:
        writer.close()
    for _, writer in streams:
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_opens_every_connection_at_most_concurrency_at_a_time(port: int) -> None:
    opening = peak = ended = 0

    async def one(timeout: float | None) -> Stream:
        nonlocal opening, peak
        opening += 1
        peak = max(peak, opening)
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        finally:
            opening -= 1

    def count_end() -> None:
        nonlocal ended
        ended += 1

    streams = await open_many(one, 30, close=close_streams, concurrency=4, ended=count_end)
    assert len(streams) == 30
    assert ended == 30
    assert peak == 4
    await close_streams(streams)


async def test_one_failure_closes_the_others_and_says_why(port: int) -> None:
    refused = closed_port()
    calls = 0
    closed: list[Stream] = []

    async def one(timeout: float | None) -> Stream:
        nonlocal calls
        calls += 1
        return await asyncio.open_connection("127.0.0.1", refused if calls == 3 else port)

    async def close(streams: list[Stream]) -> None:
        closed.extend(streams)
        await close_streams(streams)

    with pytest.raises(OpenError) as caught:
        await open_many(one, 5, close=close, concurrency=2)
    assert (caught.value.failed, caught.value.wanted) == (1, 5)
    assert isinstance(caught.value.first, ConnectionRefusedError)
    assert len(closed) == 4  # every other attempt ended, opened, and was closed
    assert "1 of 5 connections failed" in str(caught.value)


async def test_each_connection_gets_the_time_left_before_the_deadline(port: int) -> None:
    given: list[float | None] = []

    async def one(timeout: float | None) -> Stream:
        given.append(timeout)
        return await asyncio.open_connection("127.0.0.1", port)

    streams = await open_many(
        one, 3, close=close_streams, deadline=time.monotonic() + 30, concurrency=1
    )
    await close_streams(streams)
    assert all(t is not None and 0 < t <= 30 for t in given)

    with pytest.raises(OpenError) as caught:
        await open_many(one, 2, close=close_streams, deadline=time.monotonic() - 1)
    assert isinstance(caught.value.first, TimeoutError)


def test_file_limit_is_raised_to_what_the_connections_need() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = soft + 10 if hard == resource.RLIM_INFINITY else min(soft + 10, hard) - 64
    raise_file_limit(wanted)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted + 64


def test_run_loop_runs_on_the_loop_asked_for() -> None:
    async def loop_name() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_loop(loop_name(), "uvloop").startswith("uvloop")
    assert run_loop(loop_name(), "asyncio").startswith("asyncio")
    assert run_loop(loop_name()).startswith("uvloop")  # installed here: "auto" takes it
    with pytest.raises(ValueError):
        run_loop(loop_name(), "trio")  # closes the coroutine it will not run
