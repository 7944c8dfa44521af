"""HubApp's authenticator and topic rules (issue 9), mounted in FastAPI under uvicorn, with the
``websockets`` client and httpx on every transport: the native server's answers (401/403 with
the challenge before any 101, the same error replies, 1008 when a token expires)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import fullduplex
from fullduplex.asgi import HubApp
from fullduplex.auth import Forbidden, Identity, JWTAuth
from fullduplex.hub import Hub
from fullduplex.protocol.http11 import Request

from ..auth.conftest import AUDIENCE, RULES, SECRET
from ..auth.test_transports import BAD_TOKENS, MESSAGES
from .uvicorn_server import serve_uvicorn

JWT = JWTAuth(SECRET, audience=AUDIENCE)
PREFIX = "/rt"


async def jwt_but_not_mallory(request: Request) -> Identity | None:
    """An async authenticator: the JWT's identity, and one user refused with 403."""
    identity = JWT(request)
    if identity is not None and identity.id == "mallory":
        raise Forbidden("banned")
    return identity


@dataclass
class Mounted:
    hub: Hub
    port: int
    prefix: str = PREFIX

    def token(self, sub: str = "ann", **claims: Any) -> str:
        return JWT.issue(sub, **claims)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def ws_url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}{self.prefix}/pubsub{query}"

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=10)

    async def ws(self, token: str | None, query: str = "") -> Any:
        headers = [] if token is None else [("Authorization", f"Bearer {token}")]
        return await connect(self.ws_url(query), additional_headers=headers)


def fastapi_app(hub: Hub, auth: Any) -> tuple[FastAPI, HubApp]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub:
            yield

    app = FastAPI(lifespan=lifespan)
    hub_app = HubApp(hub, auth=auth, rules=RULES, heartbeat_interval=0.2, longpoll_timeout=5.0)
    app.mount(PREFIX, hub_app)
    return app, hub_app


@asynccontextmanager
async def under_uvicorn(auth: Any = JWT) -> AsyncIterator[Mounted]:
    hub = Hub()
    app, hub_app = fastapi_app(hub, auth)
    async with serve_uvicorn(app) as port:
        try:
            yield Mounted(hub, port)
        finally:
            hub_app.transports.close()


@pytest.fixture
async def mounted() -> AsyncIterator[Mounted]:
    async with under_uvicorn() as rt:
        yield rt


pytestmark = pytest.mark.one_loop  # uvicorn runs in the test's loop


async def refused_upgrade(rt: Mounted, token: str | None, query: str = "") -> Any:
    with pytest.raises(InvalidStatus) as info:
        await rt.ws(token, query)
    return info.value.response


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_credentials_refused_on_every_transport(mounted: Mounted, case: str) -> None:
    token = BAD_TOKENS[case](mounted)  # type: ignore[no-untyped-call]
    # WebSocket: 401 instead of 101, with the challenge; the session never ran.
    response = await refused_upgrade(mounted, token)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(response.body) == {"error": MESSAGES[case]}
    # The HTTP transports: 401, the JSON error and the challenge.
    async with mounted.client(token) as client:
        replies = [
            await client.get("/sse", params={"topic": "public.news"}),
            await client.get("/longpoll", params={"topic": "public.news", "since": 0}),
            await client.get("/poll", params={"topic": "public.news"}),
            await client.post("/publish", json={"topic": "user.ann", "data": 1}),
        ]
    for reply in replies:
        assert reply.status_code == 401, (reply.request.url, reply.text)
        assert reply.json() == {"error": MESSAGES[case]}
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert await mounted.hub.last_seq("user.ann") == 0  # nothing was published


async def test_an_identity_uses_its_own_topics_and_nothing_else(mounted: Mounted) -> None:
    ann = mounted.token("ann")
    async with await mounted.ws(ann) as ws, await mounted.ws(mounted.token("bob")) as bob:
        await bob.send(json.dumps({"op": "subscribe", "topic": "user.bob"}))
        cases = [
            ({"op": "subscribe", "topic": "user.bob"}, "unknown topic"),
            ({"op": "subscribe", "topic": "live.x", "since": 0}, "history not readable"),
            ({"op": "publish", "topic": "user.bob", "data": 1}, "topic not publishable"),
            ({"op": "publish", "topic": "public.news", "data": 1}, "topic not publishable"),
        ]
        for op, error in cases:
            await ws.send(json.dumps(op))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply == {"error": error, "op": op["op"], "topic": op["topic"]}, op
        await ws.send(json.dumps({"op": "subscribe", "topic": "user.ann"}))
        await ws.send(json.dumps({"op": "publish", "topic": "user.ann", "data": "mine", "id": 1}))
        got = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
        assert {"ack": 1, "topic": "user.ann", "seq": 1} in [
            {k: m[k] for k in ("ack", "topic", "seq") if k in m} for m in got
        ]
        assert any(m.get("data") == "mine" and m.get("seq") == 1 for m in got)
        # bob heard nothing of ann's attempts: his first message is his own.
        await bob.send(json.dumps({"op": "publish", "topic": "user.bob", "data": "his"}))
        first = json.loads(await asyncio.wait_for(bob.recv(), 5))
        assert (first["topic"], first["seq"], first["data"]) == ("user.bob", 1, "his")
    async with mounted.client(ann) as client:
        assert (await client.post("/publish", json={"topic": "user.ann", "data": 2})).json()[
            "seq"
        ] == 2
        forbidden = [
            (
                await client.post("/publish", json={"topic": "user.bob", "data": 1}),
                "topic not publishable",
            ),
            (await client.get("/poll", params={"topic": "user.bob"}), "unknown topic: user.bob"),
            (
                await client.get("/longpoll", params={"topic": "live.x", "since": 0}),
                "history not readable: live.x",
            ),
            (
                await client.get("/sse", params={"topic": "user.bob"}),
                "unknown topic: user.bob",
            ),
        ]
        for reply, error in forbidden:
            assert reply.status_code == 403, (reply.request.url, reply.text)
            assert error in reply.json()["error"]
        poll = await client.get("/poll", params={"topic": "user.ann", "since": 0})
        assert [m["data"] for m in poll.json()["messages"]] == ["mine", 2]
        async with client.stream("GET", "/sse", params={"topic": "user.ann", "since": 0}) as sse:
            assert sse.status_code == 200
            text = ""
            async for chunk in sse.aiter_text():
                text += chunk
                if '"seq":2' in text:
                    break
            assert '"data":"mine"' in text
    assert (
        await mounted.hub.last_seq("user.bob") == 1
        and await mounted.hub.last_seq("public.news") == 0
    )


async def test_token_in_the_query_for_browsers(mounted: Mounted) -> None:
    async with await mounted.ws(None, f"?token={mounted.token('ann')}") as ws:
        await ws.send(json.dumps({"op": "publish", "topic": "user.ann", "data": 1, "id": 7}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["ack"] == 7
    response = await refused_upgrade(mounted, None, "?token=not-a-token")
    assert response.status_code == 401


async def test_an_async_authenticator_refusing_with_403() -> None:
    async with under_uvicorn(jwt_but_not_mallory) as rt:
        response = await refused_upgrade(rt, rt.token("mallory"))
        assert response.status_code == 403
        assert "WWW-Authenticate" not in response.headers
        assert json.loads(response.body) == {"error": "banned"}
        async with rt.client(rt.token("mallory")) as client:
            reply = await client.get("/poll", params={"topic": "public.news"})
            assert (reply.status_code, reply.json()) == (403, {"error": "banned"})
        async with await rt.ws(rt.token("ann")) as ws:  # others get in
            await ws.send(json.dumps({"op": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"pong": True}


async def test_an_authenticator_that_fails_is_a_500_and_nothing_leaks() -> None:
    def broken(request: Request) -> Identity:
        raise RuntimeError("database password is hunter2")

    async with under_uvicorn(broken) as rt:
        response = await refused_upgrade(rt, None)
        assert response.status_code == 500
        assert b"hunter2" not in response.body
        async with rt.client(None) as client:
            reply = await client.get("/poll", params={"topic": "public.news"})
        assert (reply.status_code, reply.json()) == (500, {"error": "internal server error"})


async def test_expiry_ends_every_transport(mounted: Mounted) -> None:
    # A token valid 1-2 s more (whole seconds): the WebSocket is closed with 1008, the event
    # stream ends, the held long poll is answered 401; as the native server does.
    token = mounted.token("ann", expires_in=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with mounted.client(token) as client:

        async def stream() -> str:
            text = ""
            async with client.stream("GET", "/sse", params={"topic": "user.ann"}) as sse:
                assert sse.status_code == 200
                async for chunk in sse.aiter_text():
                    text += chunk
            return text  # ended by the server

        streaming = asyncio.ensure_future(stream())
        held = asyncio.ensure_future(client.get("/longpoll", params={"topic": "user.ann"}))
        async with await mounted.ws(token) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topic": "user.ann"}))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1008 and ws.close_reason == "token expired"
        reply = await asyncio.wait_for(held, 5)
        assert reply.status_code == 401 and reply.json() == {"error": "token expired"}
        assert "retry:" in await asyncio.wait_for(streaming, 5)
    assert loop.time() - started < 4  # at the expiry, not at a timeout (long poll: 5 s)


async def test_native_asgi_server_refuses_the_same_way() -> None:
    # HubApp served by fullduplex's own ASGI server: the same 401 before any 101.
    hub = Hub()
    app = HubApp(hub, auth=JWT, rules=RULES)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{server.port}/pubsub")
        assert info.value.response.status_code == 401
        assert json.loads(info.value.response.body) == {"error": "authentication required"}
        headers = {"Authorization": f"Bearer {JWT.issue('ann')}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            reply = await client.post(
                "/publish", json={"topic": "user.ann", "data": 1}, headers=headers
            )
            assert reply.json()["seq"] == 1
            assert (await client.get("/poll", params={"topic": "x"})).status_code == 401
    finally:
        app.transports.close()
        await server.shutdown()
