"""The authenticator hook in the server: WebSocket and HTTP routes, sync and async, CORS, logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import fullduplex
from fullduplex.auth import CORS, Forbidden, Identity, JWTAuth, Unauthorized
from fullduplex.hub import Hub
from fullduplex.protocol.http11 import Request
from fullduplex.transports import TopicRules, mount_all, mount_publish

from ..transports.client import request
from .conftest import SECRET

ORIGIN = "https://app.example"


def build_app() -> fullduplex.App:
    app = fullduplex.App(cors=CORS([ORIGIN], credentials=True))
    calls: list[str] = []
    app.state_calls = calls  # type: ignore[attr-defined]

    @app.authenticate
    async def who(request: Request) -> Identity | None:
        calls.append(request.path)
        await asyncio.sleep(0)  # a real await: the async path of the server
        name = request.headers.get("X-User")
        if name is None:
            raise Unauthorized("who are you?", www_authenticate='Custom realm="test"')
        if name == "banned":
            raise Forbidden("banned")
        if name == "bug":
            raise RuntimeError("authenticator bug")
        if name == "anon":
            return None
        return Identity(name, {"role": "user"})

    @app.websocket("/ws")
    async def ws_route(ws: fullduplex.WebSocket) -> None:
        identity = ws.identity
        await ws.send(json.dumps([identity.id, identity.anonymous]))
        async for message in ws:
            await ws.send(f"{identity.id}: {message}")

    @app.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        return {"id": request.identity.id, "anonymous": request.identity.anonymous}

    @app.get("/public", auth=None)
    async def public(request: Request) -> dict[str, Any]:
        return {"identity": request.identity}

    def sync_auth(request: Request) -> Identity:
        return Identity("sync-" + (request.headers.get("X-User") or "nobody"))

    @app.websocket("/sync", auth=sync_auth)
    async def sync_route(ws: fullduplex.WebSocket) -> None:
        await ws.send(ws.identity.id)

    return app


@pytest.fixture
async def served() -> AsyncIterator[tuple[fullduplex.App, int]]:
    app = build_app()
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    yield app, server.port
    await server.shutdown()


async def test_websocket_identity_and_refusals_before_101(
    served: tuple[fullduplex.App, int],
) -> None:
    app, port = served
    url = f"ws://127.0.0.1:{port}/ws"
    async with connect(url, additional_headers=[("X-User", "ann")]) as ws:
        assert json.loads(await ws.recv()) == ["ann", False]
        await ws.send("hi")
        assert await ws.recv() == "ann: hi"
    async with connect(url, additional_headers=[("X-User", "anon")]) as ws:
        assert json.loads(await ws.recv()) == ["", True]
    expected = {
        None: (401, 'Custom realm="test"', {"error": "who are you?"}),
        "banned": (403, None, {"error": "banned"}),
        "bug": (500, None, {"error": "internal server error"}),
    }
    for user, (status, challenge, body) in expected.items():
        headers = [("X-User", user)] if user else []
        with pytest.raises(InvalidStatus) as info:
            await connect(url, additional_headers=headers)
        response = info.value.response
        assert response.status_code == status
        assert response.headers.get("WWW-Authenticate") == challenge
        assert json.loads(response.body) == body  # never the exception's text
    async with connect(f"ws://127.0.0.1:{port}/sync", additional_headers=[("X-User", "x")]) as ws:
        assert await ws.recv() == "sync-x"  # the route's own authenticator
    assert "/sync" not in app.state_calls  # type: ignore[attr-defined]


async def test_frames_sent_with_the_handshake_wait_for_an_async_authenticator(
    served: tuple[fullduplex.App, int],
) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # The upgrade and a masked text frame "hello" in one write: the frame arrives while the
    # authenticator is still running, and must reach the handler after it.
    frame = bytes([0x81, 0x85, 1, 2, 3, 4]) + bytes(
        b ^ k for b, k in zip(b"hello", b"\x01\x02\x03\x04" * 2, strict=False)
    )
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"X-User: ann\r\n\r\n" + frame
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    seen = b""
    async with asyncio.timeout(5):
        while b"ann: hello" not in seen:
            chunk = await reader.read(4096)
            assert chunk
            seen += chunk
    writer.close()


async def test_http_routes(served: tuple[fullduplex.App, int]) -> None:
    _, port = served
    reply = await request(port, "GET", "/me", headers=[("X-User", "ann")])
    assert (reply.status, reply.json()) == (200, {"id": "ann", "anonymous": False})
    reply = await request(port, "GET", "/me")
    assert reply.status == 401 and reply.headers["www-authenticate"] == 'Custom realm="test"'
    assert reply.json() == {"error": "who are you?"}
    reply = await request(port, "GET", "/me", headers=[("X-User", "banned")])
    assert (reply.status, reply.json()) == (403, {"error": "banned"})
    assert "www-authenticate" not in reply.headers
    reply = await request(port, "GET", "/public")  # auth=None: no authenticator, no identity
    assert (reply.status, reply.json()) == (200, {"identity": None})
    reply = await request(port, "GET", "/index-that-does-not-exist")
    assert reply.status == 404


async def test_cors(served: tuple[fullduplex.App, int]) -> None:
    _, port = served
    preflight = [
        ("Origin", ORIGIN),
        ("Access-Control-Request-Method", "GET"),
        ("Access-Control-Request-Headers", "authorization, x-user"),
    ]
    reply = await request(port, "OPTIONS", "/me", headers=preflight)
    assert reply.status == 403  # X-User is not an allowed header
    reply = await request(port, "OPTIONS", "/me", headers=preflight[:2])
    assert reply.status == 204  # no authenticator on a preflight: browsers send no credentials
    assert reply.headers["access-control-allow-origin"] == ORIGIN
    assert reply.headers["access-control-allow-credentials"] == "true"
    assert reply.headers["access-control-allow-methods"] == "GET, HEAD"
    assert "authorization" in reply.headers["access-control-allow-headers"].lower()
    assert reply.headers["access-control-max-age"] == "600"
    assert reply.headers["vary"] == "Origin"
    reply = await request(
        port,
        "OPTIONS",
        "/me",
        headers=[("Origin", "https://evil.example"), ("Access-Control-Request-Method", "GET")],
    )
    assert reply.status == 403 and "access-control-allow-origin" not in reply.headers
    # Actual requests: marked for the allowed origin, refusals included (pages read the 401).
    reply = await request(port, "GET", "/me", headers=[("Origin", ORIGIN), ("X-User", "ann")])
    assert reply.headers["access-control-allow-origin"] == ORIGIN
    assert reply.headers["vary"] == "Origin"
    reply = await request(port, "GET", "/me", headers=[("Origin", ORIGIN)])
    assert reply.status == 401 and reply.headers["access-control-allow-origin"] == ORIGIN
    assert reply.headers["access-control-expose-headers"] == "WWW-Authenticate"
    reply = await request(port, "GET", "/me", headers=[("Origin", "https://evil.example")])
    assert "access-control-allow-origin" not in reply.headers
    # Without a policy: no CORS header, OPTIONS is 405.
    plain = fullduplex.App()
    plain.get("/x")(lambda r: {})
    server = await fullduplex.serve(plain, "127.0.0.1", 0)
    try:
        reply = await request(server.port, "OPTIONS", "/x", headers=preflight[:2])
        assert reply.status == 405 and "access-control-allow-origin" not in reply.headers
    finally:
        await server.shutdown()


async def test_query_tokens_never_reach_the_access_log(caplog: pytest.LogCaptureFixture) -> None:
    auth = JWTAuth(SECRET)
    app = fullduplex.App(auth=auth)
    app.get("/x")(lambda r: {"id": r.identity.id})
    app.websocket("/w")(_hold)
    token = auth.issue("ann")
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        with caplog.at_level(logging.INFO, logger="fullduplex"):
            reply = await request(server.port, "GET", f"/x?token={token}&a=1")
            assert reply.json() == {"id": "ann"}
            reply = await request(server.port, "GET", "/x?token=forged")
            assert reply.status == 401
            async with connect(f"ws://127.0.0.1:{server.port}/w?token={token}"):
                pass
    finally:
        await server.shutdown()
    text = "\n".join(r.getMessage() + repr(getattr(r, "__dict__", {})) for r in caplog.records)
    assert "/x?token=[redacted]&a=1" in text and "/w?token=[redacted]" in text
    assert token not in text and "forged" not in text


async def _hold(ws: fullduplex.WebSocket) -> None:
    async for _ in ws:
        pass


async def test_startup_warning_when_anyone_may_publish(caplog: pytest.LogCaptureFixture) -> None:
    hub = Hub()
    app = fullduplex.App()
    mount_all(app, hub, rules=TopicRules(publish=["news", "user.{id}"]))
    quiet = fullduplex.App(auth=JWTAuth(SECRET))
    mount_publish(quiet, hub, rules=TopicRules(publish=["news"]))
    with caplog.at_level(logging.WARNING, logger="fullduplex.transports"):
        for one in (app, quiet):
            server = await fullduplex.serve(one, "127.0.0.1", 0)
            await server.shutdown()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # /pubsub and /publish of the unauthenticated app
    assert all("lets anyone publish to news" in w for w in warnings)
    assert {w.split()[0] for w in warnings} == {"/pubsub", "/publish"}


async def test_no_authenticator_means_no_identity_and_no_cost() -> None:
    app = fullduplex.App()
    seen: list[Any] = []

    @app.websocket("/w")
    async def w(ws: fullduplex.WebSocket) -> None:
        seen.append(ws.identity)

    app.get("/x")(lambda r: {"identity": r.identity})
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        assert (await request(server.port, "GET", "/x")).json() == {"identity": None}
        async with connect(f"ws://127.0.0.1:{server.port}/w") as ws:
            await ws.wait_closed()
        assert seen == [None]
    finally:
        await server.shutdown()


async def test_a_429_is_readable_with_its_retry_after_by_an_allowed_origin() -> None:
    # A page of an allowed origin read the 429 but not its Retry-After (not a CORS-safelisted
    # response header): it could not tell when to try again.
    app = fullduplex.App(cors=CORS([ORIGIN], expose_headers=["X-Seq"]))
    app.get("/x", auth=None)(lambda r: {})
    server = await fullduplex.serve(app, "127.0.0.1", 0, rate_per_ip=1)
    try:
        replies = [await request(server.port, "GET", "/x", headers=[("Origin", ORIGIN)])]
        assert replies[0].status == 200
        assert replies[0].headers["access-control-expose-headers"] == "X-Seq"
        for _ in range(5):  # bounded: the bucket holds one request
            replies.append(await request(server.port, "GET", "/x", headers=[("Origin", ORIGIN)]))
            if replies[-1].status == 429:
                break
        reply = replies[-1]
        assert reply.status == 429 and int(reply.headers["retry-after"]) >= 1
        assert reply.headers["access-control-allow-origin"] == ORIGIN
        assert reply.headers["access-control-expose-headers"] == "X-Seq, Retry-After"
        other = await request(
            server.port, "GET", "/x", headers=[("Origin", "https://evil.example")]
        )
        assert other.status == 429 and "access-control-expose-headers" not in other.headers
    finally:
        await server.shutdown()
