"""The abuse limits on fullduplex's ASGI server, as on native routes (issues 9 and 10).

A bare ASGI callable and a Starlette application served on 127.0.0.1, real clients (the
`websockets` library, httpx, raw sockets): per-IP connections and handshake/request rates (429
with Retry-After before any 101), per-connection message and byte rates (close 1008), each off
when set to None, and the client IP taken from X-Forwarded-For only from a trusted proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
import websockets.asyncio.client as wsclient
from websockets.exceptions import ConnectionClosed as WSClosed
from websockets.exceptions import InvalidStatus

import fullduplex

from ..hub.conftest import eventually
from . import apps

LOCAL = "127.0.0.1"


async def serve(app: Any, **options: Any) -> fullduplex.Server:
    return await fullduplex.serve(app, LOCAL, 0, **options)


def ws_url(server: fullduplex.Server, path: str) -> str:
    return f"ws://{LOCAL}:{server.port}{path}"


def open_count(server: fullduplex.Server, ip: str = LOCAL) -> int:
    assert server.limits is not None
    return server.limits.open_connections(ip)


async def connect(
    server: fullduplex.Server, path: str, headers: Sequence[tuple[str, str]] = ()
) -> wsclient.ClientConnection:
    return await asyncio.wait_for(
        wsclient.connect(ws_url(server, path), additional_headers=list(headers)), 5
    )


async def try_connect(
    server: fullduplex.Server, path: str, headers: Sequence[tuple[str, str]] = ()
) -> wsclient.ClientConnection | int:
    """The connection, or the HTTP status it was refused with (checked to be a 429 answer)."""
    try:
        return await connect(server, path, headers)
    except InvalidStatus as exc:
        response = exc.response
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "1"
            assert response.body == b"too many requests from this address\n"
        return response.status_code


@pytest.fixture
async def starlette_app() -> AsyncIterator[Any]:
    apps.EVENTS.clear()
    yield apps.starlette_app


# -- connections per client IP -----------------------------------------------------------------


@pytest.mark.parametrize("limit", [5, None])
async def test_connections_per_ip(limit: int | None) -> None:
    server = await serve(apps.echo_app, max_connections_per_ip=limit, rate_per_ip=None)
    clients: list[wsclient.ClientConnection] = []
    try:
        outcomes = [await try_connect(server, "/") for _ in range(6)]
        clients = [c for c in outcomes if not isinstance(c, int)]
        if limit is None:
            assert len(clients) == 6 and server.limits is None
        else:
            assert len(clients) == 5 and outcomes[5] == 429  # the 6th, before any 101
            assert open_count(server) == 5
            # An HTTP request from the same IP is over the limit too (native: the same).
            async with httpx.AsyncClient() as http:
                reply = await http.get(f"http://{LOCAL}:{server.port}/")
            assert reply.status_code == 429 and reply.headers["retry-after"] == "1"
            assert reply.text == "too many requests from this address\n"
        for ws in clients:  # the admitted ones work
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), 5) == "x"
        if limit is not None:
            await clients.pop().close()
            await eventually(lambda: open_count(server) == 4)
            clients.append(await connect(server, "/"))  # the freed slot is usable again
    finally:
        for ws in clients:
            await ws.close()
        await server.shutdown()
    if limit is not None:
        assert open_count(server) == 0  # every session released its IP's count


async def test_held_http_request_counts_as_a_connection() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/hold":
            entered.set()
            await release.wait()
        await apps.echo_app(scope, receive, send)

    server = await serve(app, max_connections_per_ip=1, rate_per_ip=None)
    try:
        async with httpx.AsyncClient(base_url=f"http://{LOCAL}:{server.port}") as http:
            held = asyncio.ensure_future(http.get("/hold"))
            await asyncio.wait_for(entered.wait(), 5)
            assert open_count(server) == 1
            assert await try_connect(server, "/") == 429
            assert (await http.get("/")).status_code == 429
            release.set()
            assert (await asyncio.wait_for(held, 5)).text == "ok"
            await eventually(lambda: open_count(server) == 0)
            ws = await connect(server, "/")
            await ws.close()
    finally:
        await server.shutdown()


async def test_refused_and_rejected_upgrades_release_their_count(starlette_app: Any) -> None:
    server = await serve(starlette_app, max_connections_per_ip=2, rate_per_ip=None)
    try:
        for path in ["/reject", "/deny", "/reject", "/deny"]:  # 403, then an app's own 401
            status = await try_connect(server, path)
            assert status in (401, 403)
        await eventually(lambda: open_count(server) == 0)
        # Both slots are free again, and counted again once used.
        async with wsclient.connect(ws_url(server, "/ws")) as ws:
            async with wsclient.connect(ws_url(server, "/ws")):
                assert await try_connect(server, "/ws") == 429
            await ws.send("still admitted")
            assert await ws.recv() == "still admitted"
    finally:
        await server.shutdown()


# -- handshakes and requests per client IP per second --------------------------------------------


@pytest.mark.parametrize("rate", [5.0, None])
async def test_handshake_rate_per_ip(starlette_app: Any, rate: float | None) -> None:
    server = await serve(starlette_app, rate_per_ip=rate, max_connections_per_ip=None)
    statuses: list[int] = []
    try:
        for _ in range(10):
            outcome = await try_connect(server, "/ws")
            if isinstance(outcome, int):
                statuses.append(outcome)
            else:
                statuses.append(101)
                await outcome.close()
        if rate is None:
            assert statuses == [101] * 10
        else:
            # A bucket of 5: the first 5 pass at once; the test takes far less than the
            # second it would need to refill 5 more.
            assert statuses[:5] == [101] * 5 and 429 in statuses[5:]
            assert set(statuses) == {101, 429}
    finally:
        await server.shutdown()


@pytest.mark.parametrize("rate", [3.0, None])
async def test_http_request_rate_per_ip(rate: float | None) -> None:
    server = await serve(apps.echo_app, rate_per_ip=rate)
    try:
        reader, writer = await asyncio.open_connection(LOCAL, server.port)
        heads = []
        for _ in range(5):  # one keep-alive connection: a 429 does not close it
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), 5)
            heads.append(head)
        writer.close()
        if rate is None:
            assert all(h.startswith(b"HTTP/1.1 200") for h in heads)
        else:
            assert all(h.startswith(b"HTTP/1.1 200") for h in heads[:3])
            assert heads[3].startswith(b"HTTP/1.1 429") and b"retry-after: 1\r\n" in heads[3]
    finally:
        await server.shutdown()


# -- messages and bytes per connection per second -------------------------------------------------


async def flood(ws: wsclient.ClientConnection, message: str, count: int, echo: bool) -> int:
    """Send ``count`` messages at once (one read for the server), then read to the end.

    Returns:
        The echoes read (``echo``), or 0 once the server closed (a sink answers nothing).
    """
    for _ in range(count):
        await ws.send(message)
    echoed = 0
    try:
        while echoed < (count if echo else 1):
            await asyncio.wait_for(ws.recv(), 5)
            echoed += 1
    except WSClosed:
        pass
    return echoed


@pytest.mark.parametrize("limit", [100, None])
async def test_message_flood_closed_1008(starlette_app: Any, limit: int | None) -> None:
    server = await serve(starlette_app, max_messages_per_second=limit)
    try:
        ws = await connect(server, "/ws")
        echoed = await flood(ws, "f", 1000, echo=True)  # bounded: sent in far under 1 s
        if limit is None:
            assert echoed == 1000
            await ws.close()
            await eventually(lambda: ("ws-disconnect", 1000, "") in apps.EVENTS)
        else:
            assert echoed <= limit
            assert (ws.close_code, ws.close_reason) == (1008, "too many messages per second")
            # Starlette's endpoint ended (its send after the close told it: 1006, its code).
            await eventually(lambda: any(e[0] == "ws-disconnect" for e in apps.EVENTS[1:]))
    finally:
        await server.shutdown()


@pytest.mark.parametrize("limit", [20_000, None])
async def test_byte_flood_closed_1008(limit: int | None) -> None:
    received: list[int] = []
    ended: list[dict[str, Any]] = []

    async def sink(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await apps.echo_app(scope, receive, send)
        await receive()
        await send({"type": "websocket.accept"})
        count = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                received.append(count)
                ended.append(dict(message))
                return
            count += 1

    server = await serve(sink, max_bytes_per_second=limit, max_messages_per_second=None)
    try:
        ws = await connect(server, "/")
        if limit is None:
            for _ in range(100):  # 100 KB, five times the budget
                await ws.send("b" * 1000)
            await ws.close()
            await eventually(lambda: bool(ended))
            assert received == [100] and ended[0]["code"] == 1000
        else:
            await flood(ws, "b" * 1000, 100, echo=False)
            closed = (1008, "too many bytes per second")
            assert (ws.close_code, ws.close_reason) == closed
            await eventually(lambda: bool(ended))
            # The application is told how its connection ended; it got at most the budget.
            assert (ended[0]["code"], ended[0]["reason"]) == closed
            assert received[0] <= 20
    finally:
        await server.shutdown()


# -- the client IP: X-Forwarded-For only from a trusted proxy ------------------------------------


@pytest.mark.parametrize("trusted", [True, False])
async def test_forwarded_for_from_trusted_proxy_only(trusted: bool) -> None:
    # 127.0.0.1 is a trusted proxy by default; 10.0.0.1 alone leaves it untrusted.
    proxies = {} if trusted else {"forwarded_allow_ips": "10.0.0.1"}
    server = await serve(apps.echo_app, max_connections_per_ip=2, rate_per_ip=None, **proxies)
    a, b = [("X-Forwarded-For", "203.0.113.7")], [("X-Forwarded-For", "198.51.100.9")]
    clients = []
    try:
        clients = [await connect(server, "/", a), await connect(server, "/", a)]
        third = await try_connect(server, "/", b)
        if trusted:
            assert open_count(server, "203.0.113.7") == 2 and open_count(server) == 0
            assert await try_connect(server, "/", a) == 429  # the forwarded IP is full
            assert not isinstance(third, int)  # another forwarded IP is not
            clients.append(third)
            assert open_count(server, "198.51.100.9") == 1
        else:
            assert third == 429  # every connection is the proxy's own
            assert open_count(server) == 2 and open_count(server, "203.0.113.7") == 0
    finally:
        for ws in clients:
            await ws.close()
        await server.shutdown()


@pytest.mark.parametrize("trusted", [True, False])
async def test_forwarded_for_request_rate(trusted: bool) -> None:
    proxies = {} if trusted else {"forwarded_allow_ips": "10.0.0.1"}
    server = await serve(apps.echo_app, rate_per_ip=1.0, **proxies)
    try:
        async with httpx.AsyncClient(base_url=f"http://{LOCAL}:{server.port}") as http:
            first = await http.get("/", headers={"X-Forwarded-For": "203.0.113.7"})
            again = await http.get("/", headers={"X-Forwarded-For": "203.0.113.7"})
            other = await http.get("/", headers={"X-Forwarded-For": "198.51.100.9"})
        assert first.status_code == 200 and again.status_code == 429
        assert other.status_code == (200 if trusted else 429)
    finally:
        await server.shutdown()
