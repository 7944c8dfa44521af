"""HubApp's abuse limits (issue 9) under uvicorn (one test under hypercorn), with real clients.

The native server's limits, settings and defaults on the hub transports mounted in FastAPI:
per-IP connections and handshake/request rate, keyed by ``scope["client"]`` (429 with
``Retry-After`` and the native text; a WebSocket refused before it is accepted), and per
``/pubsub`` WebSocket messages and bytes a second (close 1008 with the native reasons). Each
limit refuses, and the same traffic goes through with that limit set to None.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import websockets.asyncio.client as wsclient
from starlette.middleware.cors import CORSMiddleware
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fullduplex.asgi import HubApp
from fullduplex.hub import Hub

from ..hub.conftest import eventually
from .test_hub import Mounted, under_hypercorn, under_uvicorn

pytestmark = pytest.mark.one_loop  # uvicorn and hypercorn run in the test's loop

PREFIX = "/rt"
LOCAL = "127.0.0.1"
TOO_MANY = "too many requests from this address\n"  # the native server's 429 body
PING = json.dumps({"op": "ping"})


def open_count(rt: Mounted, ip: str = LOCAL) -> int:
    assert rt.app is not None and rt.app.limits is not None
    return rt.app.limits.open_connections(ip)


def http(rt: Mounted) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{LOCAL}:{rt.port}{PREFIX}", timeout=10)


async def try_connect(
    rt: Mounted, headers: Sequence[tuple[str, str]] = ()
) -> wsclient.ClientConnection | int:
    """A ``/pubsub`` connection, or the status it was refused with (a 429 checked whole)."""
    try:
        return await asyncio.wait_for(
            wsclient.connect(rt.ws_url(), additional_headers=list(headers)), 5
        )
    except InvalidStatus as exc:
        response = exc.response
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "1"
            assert response.body == TOO_MANY.encode()
        return response.status_code


def assert_too_many(reply: httpx.Response) -> None:
    assert reply.status_code == 429, reply.text
    assert reply.headers["retry-after"] == "1" and reply.text == TOO_MANY


async def flood(ws: wsclient.ClientConnection, message: str, count: int) -> int:
    """Send ``count`` messages at once (stopping if the server closed), then count the pongs."""
    with contextlib.suppress(ConnectionClosed):
        for _ in range(count):
            await ws.send(message)
    return await pongs(ws, count)


async def pongs(ws: wsclient.ClientConnection, count: int) -> int:
    """Read up to ``count`` pongs; stop early when the server closes."""
    got = 0
    try:
        while got < count:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"pong": True}
            got += 1
    except ConnectionClosed:
        pass
    return got


# -- connections per client IP -------------------------------------------------------------------


@pytest.mark.parametrize("limit", [3, None])
async def test_connections_per_ip(limit: int | None) -> None:
    async with under_uvicorn(PREFIX, max_connections_per_ip=limit) as rt:
        clients: list[wsclient.ClientConnection] = []
        try:
            outcomes = [await try_connect(rt) for _ in range(4)]
            clients = [c for c in outcomes if not isinstance(c, int)]
            async with http(rt) as client:
                poll = await client.get("/poll", params={"topic": "t"})
            if limit is None:
                assert len(clients) == 4 and poll.status_code == 200
            else:
                assert len(clients) == 3 and outcomes[3] == 429  # before it was accepted
                assert open_count(rt) == 3
                assert_too_many(poll)  # an HTTP request from the same IP: over it too
            for ws in clients:  # the admitted ones work
                await ws.send(PING)
                assert await pongs(ws, 1) == 1
            if limit is not None:
                await clients.pop().close()
                await eventually(lambda: open_count(rt) == 2)
                again = await try_connect(rt)  # the freed slot is usable again
                assert not isinstance(again, int)
                clients.append(again)
        finally:
            for ws in clients:
                await ws.close()
        if limit is not None:
            await eventually(lambda: open_count(rt) == 0)  # every WebSocket released its count


async def test_a_held_long_poll_counts_as_a_connection() -> None:
    hold = under_uvicorn(PREFIX, max_connections_per_ip=1, longpoll_timeout=5.0)
    async with hold as rt, http(rt) as client, http(rt) as other:
        params = {"topic": "t", "since": 0}
        held = asyncio.ensure_future(client.get("/longpoll", params=params))
        await eventually(lambda: open_count(rt) == 1)
        assert_too_many(await other.get("/poll", params={"topic": "t"}))
        # A publish too (its body left unread), and an upgrade, before it is accepted.
        assert_too_many(await other.post("/publish", json={"topic": "t", "data": 0}))
        assert await try_connect(rt) == 429
        await rt.hub.publish("t", "news")  # answers the long poll
        reply = await asyncio.wait_for(held, 5)
        assert [m["data"] for m in reply.json()["messages"]] == ["news"]
        await eventually(lambda: open_count(rt) == 0)
        assert (await other.get("/poll", params={"topic": "t"})).status_code == 200


# -- handshakes and requests per client IP per second ------------------------------------------


@pytest.mark.parametrize("rate", [3.0, None])
async def test_handshake_rate_per_ip(rate: float | None) -> None:
    async with under_uvicorn(PREFIX, rate_per_ip=rate) as rt:
        # Eight at once: a bucket of 3 admits 3, and refills one more only after 1/3 s.
        outcomes = await asyncio.gather(*(try_connect(rt) for _ in range(8)))
        clients = [c for c in outcomes if not isinstance(c, int)]
        refused = [c for c in outcomes if isinstance(c, int)]
        for ws in clients:
            await ws.close()
        if rate is None:
            assert len(clients) == 8
        else:
            assert len(clients) >= 3 and refused and set(refused) == {429}


@pytest.mark.parametrize("rate", [3.0, None])
async def test_http_request_rate_per_ip(rate: float | None) -> None:
    async with under_uvicorn(PREFIX, rate_per_ip=rate) as rt, http(rt) as client:
        replies = await asyncio.gather(
            *(client.get("/poll", params={"topic": "t"}) for _ in range(8))
        )
        statuses = [r.status_code for r in replies]
        if rate is None:
            assert statuses == [200] * 8
        else:
            assert statuses.count(200) >= 3 and 429 in statuses
            for reply in replies:
                if reply.status_code == 429:
                    assert_too_many(reply)


async def test_a_429_carries_the_cors_headers_of_the_other_answers() -> None:
    # HubApp sets no CORS header of its own: the application's middleware does, on every
    # answer, the 429 included (it goes out through the same send as the others).
    origin = "https://app.example"

    def cors(app: Any) -> Any:
        return CORSMiddleware(app, allow_origins=[origin], expose_headers=["Retry-After"])

    async with under_uvicorn(PREFIX, wrap=cors, rate_per_ip=1) as rt, http(rt) as client:
        replies = []
        for _ in range(5):  # bounded: the bucket holds one request
            replies.append(await client.get("/poll?topic=t", headers={"Origin": origin}))
            if replies[-1].status_code == 429:
                break
        first, last = replies[0], replies[-1]
        assert first.status_code == 200
        assert_too_many(last)
        for reply in (first, last):
            assert reply.headers["access-control-allow-origin"] == origin
            assert reply.headers["access-control-expose-headers"] == "Retry-After"


@pytest.mark.parametrize("rate", [1.0, None])
async def test_plain_requests_to_pubsub_count_as_natively(rate: float | None) -> None:
    # A GET /pubsub without an Upgrade is answered 426, after the per-IP rate as natively: a
    # flood of them is refused like any other request.
    async with under_uvicorn(PREFIX, rate_per_ip=rate) as rt, http(rt) as client:
        replies = [await client.get("/pubsub") for _ in range(2)]
        assert replies[0].status_code == 426
        if rate is None:
            assert replies[1].status_code == 426
        else:
            assert_too_many(replies[1])  # the bucket of one takes a second to refill
            assert open_count(rt) == 0  # counted in the rate only, not held


@pytest.mark.parametrize("trusted", [True, False])
async def test_the_client_ip_is_the_servers_scope_client(trusted: bool) -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default (--forwarded-allow-ips): the
    # forwarded address is scope["client"], and each has its own budget; untrusted, every
    # connection is the proxy's own.
    server = {} if trusted else {"forwarded_allow_ips": "10.0.0.1"}
    a, b = [("X-Forwarded-For", "203.0.113.7")], [("X-Forwarded-For", "198.51.100.9")]
    async with under_uvicorn(PREFIX, server, max_connections_per_ip=1) as rt:
        first = await try_connect(rt, a)
        assert not isinstance(first, int)
        clients = [first]
        try:
            assert await try_connect(rt, a) == 429
            other = await try_connect(rt, b)
            if trusted:
                assert not isinstance(other, int)
                clients.append(other)
                assert open_count(rt, "203.0.113.7") == open_count(rt, "198.51.100.9") == 1
                assert open_count(rt) == 0
            else:
                assert other == 429 and open_count(rt) == 1
        finally:
            for ws in clients:
                await ws.close()


# -- messages and bytes per /pubsub WebSocket per second -------------------------------------------


@pytest.mark.parametrize("limit", [100, None])
async def test_message_flood_closed_1008(limit: int | None) -> None:
    async with under_uvicorn(PREFIX, max_messages_per_second=limit) as rt:
        ws = await try_connect(rt)
        assert not isinstance(ws, int)
        answered = await flood(ws, PING, 1000)  # bounded: sent in far under a second
        if limit is None:
            assert answered == 1000
            await ws.close()
        else:
            # A second's budget (two if the flood straddles the first window's end).
            assert answered <= 2 * limit
            assert (ws.close_code, ws.close_reason) == (1008, "too many messages per second")


@pytest.mark.parametrize("limit", [20_000, None])
async def test_byte_flood_closed_1008(limit: int | None) -> None:
    big = json.dumps({"op": "ping", "pad": "b" * 1000})
    async with under_uvicorn(PREFIX, max_bytes_per_second=limit) as rt:
        ws = await try_connect(rt)
        assert not isinstance(ws, int)
        answered = await flood(ws, big, 100)  # 100 KB, five times the budget
        if limit is None:
            assert answered == 100
            await ws.close()
        else:
            assert answered <= 2 * 20
            assert (ws.close_code, ws.close_reason) == (1008, "too many bytes per second")


# -- other servers, and the settings ------------------------------------------------------------


async def test_limits_under_hypercorn() -> None:
    async with under_hypercorn(PREFIX, rate_per_ip=1.0, max_messages_per_second=10) as rt:
        ws = await try_connect(rt)  # the bucket's one token (a new one takes a second)
        assert not isinstance(ws, int)
        outcomes = await asyncio.gather(*(try_connect(rt) for _ in range(3)))
        for other in outcomes:
            if not isinstance(other, int):
                await other.close()
        assert outcomes.count(429) >= 2  # through hypercorn's websocket.http.response
        async with http(rt) as client:
            assert_too_many(await client.get("/poll", params={"topic": "t"}))
        assert await flood(ws, PING, 50) <= 2 * 10
        assert (ws.close_code, ws.close_reason) == (1008, "too many messages per second")


def without_the_response_extension(app: Any) -> Any:
    """``app`` as a server without ``websocket.http.response`` would call it."""

    async def call(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, "extensions": {}}
        await app(scope, receive, send)

    return call


async def test_without_the_response_extension_a_refusal_closes_before_accepting() -> None:
    wrap = without_the_response_extension
    async with under_uvicorn(PREFIX, wrap=wrap, max_connections_per_ip=1) as rt:
        first = await try_connect(rt)
        assert not isinstance(first, int)
        try:
            # uvicorn answers a close before accepting with 403: no 101, nothing counted.
            assert await try_connect(rt) == 403
            assert open_count(rt) == 1
        finally:
            await first.close()


def test_settings_are_checked_as_the_servers() -> None:
    for name, bad in [
        ("rate_per_ip", 0),
        ("max_connections_per_ip", 0),
        ("max_messages_per_second", -1),
        ("max_bytes_per_second", 0),
    ]:
        with pytest.raises(ValueError, match=name):
            HubApp(Hub(), **{name: bad})
    quiet = HubApp(Hub(), max_connections_per_ip=None, rate_per_ip=None)
    assert quiet.limits is None  # nothing counted per IP
    default = HubApp(Hub())
    assert default.limits is not None
    assert (default.limits.max_connections_per_ip, default.limits.rate_per_ip) == (256, 50.0)
    assert (default.max_messages_per_second, default.max_bytes_per_second) == (1000, 16 << 20)
