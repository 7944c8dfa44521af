"""A clean close over TLS is silent: no ERROR and no warning on either side (issue 13).

Without uvloop, a wss:// close used to make the server log ``Error calling eof_received()``
(an AttributeError in the WebSocket's flush after ``transport.close()``), and both ends warned
``returning true from eof_received() has no effect when using ssl``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trustme
import websockets.asyncio.client as wsclient

import fullduplex
import fullduplex.sync

from .conftest import start


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class Records(logging.Handler):
    """Every record of level WARNING or above, from any logger (asyncio's included)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in self.records]


@pytest.fixture
def loud() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    root.addHandler(handler)
    # asyncio logs at WARNING and above; make sure nothing filters them out on the way.
    previous = logging.getLogger("asyncio").level
    logging.getLogger("asyncio").setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        logging.getLogger("asyncio").setLevel(previous)


def tls_app(server_closes: asyncio.Event) -> fullduplex.App:
    app = fullduplex.App()

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            if message == "server closes":
                await ws.close(1000, "as asked")
                break
            await ws.send(message)

    @app.websocket("/bye")
    async def bye(ws: fullduplex.WebSocket) -> None:
        await ws.send("bye")
        await ws.close(1001, "leaving")
        server_closes.set()

    return app


async def settle(server: fullduplex.Server) -> None:
    """Wait (bounded) until the server forgot every connection: its side of the close ran."""
    for _ in range(500):
        if not server.connections and not server.websockets:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server kept the connection")


Scenario = Callable[[str, ssl.SSLContext], Awaitable[None]]


async def ours_client_closes(base: str, ctx: ssl.SSLContext) -> None:
    async with fullduplex.connect(base + "/echo", ssl=ctx) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
    assert ws.close_code == 1000


async def ours_server_closes(base: str, ctx: ssl.SSLContext) -> None:
    ws = await fullduplex.connect(base + "/bye", ssl=ctx)
    assert await ws.recv() == "bye"
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1001


async def ours_server_closes_on_request(base: str, ctx: ssl.SSLContext) -> None:
    async with fullduplex.connect(base + "/echo", ssl=ctx) as ws:
        await ws.send("server closes")
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1000


async def sync_client_closes(base: str, ctx: ssl.SSLContext) -> None:
    def use() -> int | None:
        with fullduplex.sync.connect(base + "/echo", ssl=ctx) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"
        return ws.close_code

    assert await asyncio.to_thread(use) == 1000


async def sync_server_closes(base: str, ctx: ssl.SSLContext) -> None:
    def use() -> int | None:
        ws = fullduplex.sync.connect(base + "/bye", ssl=ctx)
        assert ws.recv(timeout=5) == "bye"
        for _ in ws:
            pass
        return ws.close_code

    assert await asyncio.to_thread(use) == 1001


async def websockets_client_closes(base: str, ctx: ssl.SSLContext) -> None:
    async with wsclient.connect(base + "/echo", ssl=ctx) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"


SCENARIOS: dict[str, Scenario] = {
    "asyncio client closes": ours_client_closes,
    "server closes (asyncio client)": ours_server_closes,
    "server closes on request (asyncio client)": ours_server_closes_on_request,
    "sync client closes": sync_client_closes,
    "server closes (sync client)": sync_server_closes,
    "websockets client closes": websockets_client_closes,
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_tls_close_logs_nothing(
    scenario: str,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    loud: Records,
) -> None:
    server = await start(tls_app(asyncio.Event()), ssl=server_ctx)
    try:
        base = f"wss://127.0.0.1:{server.port}"
        for _ in range(3):  # a few times: nothing logged, nothing left behind
            await SCENARIOS[scenario](base, client_ctx)
            await settle(server)
    finally:
        await server.shutdown()
    assert loud.lines() == []


async def test_tls_shutdown_with_open_clients_logs_nothing(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, loud: Records
) -> None:
    server = await start(tls_app(asyncio.Event()), ssl=server_ctx)
    base = f"wss://127.0.0.1:{server.port}"
    clients = [await fullduplex.connect(base + "/echo", ssl=client_ctx) for _ in range(5)]
    await server.shutdown()  # 1001 to each, over TLS
    for ws in clients:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1001
    assert loud.lines() == []
