"""Every refusal on every transport, with the exact status or close code, over real sockets.

The ``websockets`` library is the WebSocket client (a Bearer header on the upgrade); raw HTTP
over asyncio sockets is the HTTP client. The rules are those of conftest.RULES.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fullduplex.auth import JWTAuth

from ..transports.client import EventStream, request
from .conftest import AUDIENCE, AuthSetup

BAD_TOKENS = {
    "no token": lambda s: None,
    "bad signature": lambda s: JWTAuth("some other secret, long enough for HS256").issue(
        "ann", aud=AUDIENCE
    ),
    "expired": lambda s: s.token("ann", expires_in=-60),
    "wrong audience": lambda s: s.token("ann", aud="another-service"),
}
MESSAGES = {
    "no token": "authentication required",
    "bad signature": "token signature invalid",
    "expired": "token expired",
    "wrong audience": "token audience not accepted",
}


def bearer(token: str | None) -> list[tuple[str, str]]:
    return [] if token is None else [("Authorization", f"Bearer {token}")]


async def ws_open(setup: AuthSetup, token: str | None) -> Any:
    headers = bearer(token)
    return await connect(f"ws://127.0.0.1:{setup.port}/pubsub", additional_headers=headers)


async def ws_ask(ws: Any, request: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(request))
    reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    return reply


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_credentials_refused_on_every_transport(secured: AuthSetup, case: str) -> None:
    token = BAD_TOKENS[case](secured)
    # WebSocket: 401 instead of 101, with the challenge; no handler ran.
    with pytest.raises(InvalidStatus) as info:
        await ws_open(secured, token)
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(response.body) == {"error": MESSAGES[case]}
    # HTTP transports: 401 with a JSON error and the challenge.
    targets = [
        ("GET", "/sse?topic=public.news"),
        ("GET", "/longpoll?topic=public.news&since=0"),
        ("GET", "/poll?topic=public.news"),
        ("POST", "/publish"),
    ]
    body = json.dumps({"topic": "user.ann", "data": 1}).encode()
    for method, target in targets:
        headers = [*bearer(token), ("Content-Type", "application/json")]
        reply = await request(
            secured.port, method, target, headers=headers, body=body if method == "POST" else b""
        )
        assert reply.status == 401, (target, reply.status, reply.body)
        assert reply.json() == {"error": MESSAGES[case]}
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert await secured.hub.last_seq("user.ann") == 0  # nothing was published


async def test_bearer_websocket_subscribes_and_publishes_its_own_topic(
    secured: AuthSetup,
) -> None:
    async with await ws_open(secured, secured.token("ann")) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": "user.ann"}))
        await ws.send(json.dumps({"op": "publish", "topic": "user.ann", "data": {"n": 1}}))
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (message["topic"], message["seq"], message["data"]) == ("user.ann", 1, {"n": 1})


async def test_forbidden_topics_on_the_websocket(secured: AuthSetup) -> None:
    async with (
        await ws_open(secured, secured.token("ann")) as ws,
        await ws_open(secured, secured.token("bob")) as bob,
    ):
        # bob listens to his own topic: nothing ann tries may reach him.
        await bob.send(json.dumps({"op": "subscribe", "topic": "user.bob"}))
        cases = [
            ({"op": "subscribe", "topic": "user.bob"}, "unknown topic"),
            ({"op": "subscribe", "topic": "secret"}, "unknown topic"),
            ({"op": "subscribe", "topic": "live.x", "since": 0}, "history not readable"),
            ({"op": "subscribe", "topic": "user.bob", "since": 0}, "unknown topic"),
            ({"op": "publish", "topic": "user.bob", "data": 1}, "topic not publishable"),
            ({"op": "publish", "topic": "public.news", "data": 1}, "topic not publishable"),
        ]
        for op, error in cases:
            reply = await ws_ask(ws, op)
            assert reply == {"error": error, "op": op["op"], "topic": op["topic"]}, op
        # Live reading without history is allowed there.
        await ws.send(json.dumps({"op": "subscribe", "topic": "live.x"}))
        # bob publishes to himself: the first thing bob receives is his own message, seq 1.
        await bob.send(json.dumps({"op": "publish", "topic": "user.bob", "data": "mine"}))
        first = json.loads(await asyncio.wait_for(bob.recv(), 5))
        assert (first["seq"], first["data"]) == (1, "mine")
    assert await secured.hub.last_seq("public.news") == 0


async def test_forbidden_topics_on_http_transports(secured: AuthSetup) -> None:
    auth = bearer(secured.token("ann"))
    cases = [
        ("/sse?topic=user.bob", 403, "unknown topic: user.bob"),
        ("/sse?topic=live.x&since=0", 403, "history not readable: live.x"),
        ("/longpoll?topic=user.bob", 403, "unknown topic: user.bob"),
        ("/longpoll?topic=live.x&since=0", 403, "history not readable: live.x"),
        ("/poll?topic=user.bob", 403, "unknown topic: user.bob"),
        ("/poll?topic=live.x&since=0", 403, "history not readable: live.x"),
    ]
    for target, status, error in cases:
        reply = await request(secured.port, "GET", target, headers=auth)
        assert (reply.status, reply.json()) == (status, {"error": error}), target
    # SSE with Last-Event-ID asks for history too.
    stream = await EventStream.open(
        secured.port, "/sse?topic=live.x", [*auth, ("Last-Event-ID", "3")]
    )
    assert stream.status == 403
    await stream.close()
    for topic in ("user.bob", "public.news", "live.x"):
        body = json.dumps({"topic": topic, "data": 1}).encode()
        headers = [*auth, ("Content-Type", "application/json")]
        reply = await request(secured.port, "POST", "/publish", body=body, headers=headers)
        assert (reply.status, reply.json()) == (403, {"error": "topic not publishable"})
        assert await secured.hub.last_seq(topic) == 0
    # And what is allowed works: own topic, history included; live.x without a cursor.
    body = json.dumps({"topic": "user.ann", "data": "hi"}).encode()
    headers = [*auth, ("Content-Type", "application/json")]
    reply = await request(secured.port, "POST", "/publish", body=body, headers=headers)
    assert reply.status == 200 and reply.json()["seq"] == 1
    reply = await request(secured.port, "GET", "/poll?topic=user.ann&since=0", headers=auth)
    assert [m["data"] for m in reply.json()["messages"]] == ["hi"]
    reply = await request(secured.port, "GET", "/poll?topic=live.x", headers=auth)
    assert reply.status == 200


async def test_sse_with_a_cookie_and_a_query_token(secured: AuthSetup) -> None:
    cookie = [("Cookie", f"theme=dark; token={secured.token('ann')}")]
    stream = await EventStream.open(secured.port, "/sse?topic=user.ann&since=0", cookie)
    assert stream.status == 200
    await secured.hub.publish("user.ann", "by cookie")
    event = await stream.next_event()
    assert event is not None and json.loads(event.get("data") or "")["data"] == "by cookie"
    await stream.close()
    target = f"/sse?topic=user.ann&since=1&token={secured.token('ann')}"
    stream = await EventStream.open(secured.port, target)
    assert stream.status == 200
    await secured.hub.publish("user.ann", "by query")
    event = await stream.next_event()
    assert event is not None and json.loads(event.get("data") or "")["data"] == "by query"
    await stream.close()


async def test_websocket_closed_with_1008_when_its_token_expires(secured: AuthSetup) -> None:
    token = secured.token("ann", expires_in=1.0)
    async with await ws_open(secured, token) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": "user.ann"}))
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "token expired")


async def test_event_stream_ends_when_its_token_expires(secured: AuthSetup) -> None:
    token = secured.token("ann", expires_in=1.0)
    stream = await EventStream.open(secured.port, f"/sse?topic=user.ann&token={token}")
    assert stream.status == 200
    # Heartbeats come every 0.2 s until the server closes the connection at exp.
    with pytest.raises(asyncio.IncompleteReadError):
        async with asyncio.timeout(10):
            while await stream._fill():
                pass
    assert ": " in stream.buffer  # heartbeats came before the end
    await stream.close()
