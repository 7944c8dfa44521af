"""The hub transports mounted in a FastAPI app (HubApp), under uvicorn, hypercorn and fullduplex.

The transports' own consistency tests (tests/transports/test_consistency.py) run unchanged
against the mounted hub under uvicorn: the same sequence numbers on all four transports as on
the native server, and a cursor carried from one transport to the next.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets.asyncio.client as wsclient
import websockets.exceptions
from fastapi import FastAPI

import fullduplex
from fullduplex.asgi import HubApp
from fullduplex.hub import Hub
from fullduplex.hub.presence import MemoryPresence
from fullduplex.protocol.http11 import Request
from fullduplex.transports import TopicRules

from ..transports import test_consistency
from ..transports.client import EventStream
from .uvicorn_server import serve_uvicorn


def fastapi_with_hub(hub: Hub, prefix: str, **options: Any) -> tuple[FastAPI, HubApp]:
    """A FastAPI app with a route of its own and a HubApp (``options``: HubApp's) at ``prefix``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/api/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    rules = TopicRules(subscribe=["*"], publish=["chat", "open.*", "t"])
    settings: dict[str, Any] = {"heartbeat_interval": 0.2, "longpoll_timeout": 1.0, **options}
    hub_app = HubApp(hub, rules=rules, **settings)

    @hub_app.routes.get("/boom")
    async def boom(request: Request) -> str:
        raise RuntimeError("a handler bug")

    app.mount(prefix or "/", hub_app)
    return app, hub_app


@dataclass
class Mounted:
    """What tests/transports' consistency tests read of their ``rt`` fixture."""

    hub: Hub
    port: int
    prefix: str
    app: HubApp | None = None

    def ws_url(self, path: str = "/pubsub") -> str:
        return f"ws://127.0.0.1:{self.port}{self.prefix}{path}"


@asynccontextmanager
async def under_uvicorn(
    prefix: str,
    uvicorn_options: dict[str, Any] | None = None,
    wrap: Callable[[Any], Any] | None = None,
    **options: Any,
) -> AsyncIterator[Mounted]:
    """:func:`fastapi_with_hub` served by uvicorn (``uvicorn_options``: its Config's; ``wrap``:
    a middleware around the whole application)."""
    hub = Hub()
    app, hub_app = fastapi_with_hub(hub, prefix, **options)
    served = app if wrap is None else wrap(app)
    async with serve_uvicorn(served, **(uvicorn_options or {})) as port:
        try:
            yield Mounted(hub, port, prefix, hub_app)
        finally:
            hub_app.transports.close()


@asynccontextmanager
async def under_hypercorn(prefix: str, **options: Any) -> AsyncIterator[Mounted]:
    """:func:`fastapi_with_hub` served by hypercorn."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    hub = Hub()
    app, hub_app = fastapi_with_hub(hub, prefix, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # hypercorn binds it again (a port picked free, not held)
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        for _ in range(500):  # bounded: 5 s for hypercorn to listen
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            break
        yield Mounted(hub, port, prefix, hub_app)
    finally:
        hub_app.transports.close()
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.mark.one_loop  # uvicorn runs its own loop policy checks; the loop is the test's
async def test_a_handler_that_raises_answers_500_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As on the native server (the same fullduplex.asyncio.router.call_handler).
    async with under_uvicorn("") as rt, httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{rt.port}/boom")
    assert (response.status_code, response.text) == (500, "internal server error\n")
    assert "a handler bug" not in response.text
    logged = [r for r in caplog.records if r.name == "fullduplex.asgi"]
    assert [r.getMessage() for r in logged] == ["HTTP handler for /boom raised"]
    assert logged[0].exc_info is not None


@pytest.mark.one_loop  # uvicorn runs its own loop policy checks; the loop is the test's
async def test_plain_get_on_pubsub_is_426_as_natively() -> None:
    # fuzz/attack.py: it was 404 ("not found") under HubApp, 426 on the native server.
    async with under_uvicorn("/rt") as rt, httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{rt.port}/rt/pubsub")
        missing = await http.get(f"http://127.0.0.1:{rt.port}/rt/nothing")
    assert response.status_code == 426
    assert response.headers["Upgrade"] == "websocket"
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert missing.status_code == 404


@pytest.mark.one_loop  # uvicorn runs its own loop policy checks; the loop is the test's
async def test_head_on_sse_ends_at_once_and_subscribes_nothing() -> None:
    # fuzz/attack.py: HEAD /sse kept its stream (and hub subscription) open, sending nothing.
    async with under_uvicorn("/rt") as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", rt.port)
        try:
            writer.write(
                b"HEAD /rt/sse?topic=chat HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /rt/poll?topic=chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert rt.hub.subscriber_counts().get("chat", 0) == 0
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head
    assert rest.startswith(b"HTTP/1.1 200 ") and b'"cursor":0' in rest


@pytest.mark.one_loop  # uvicorn runs its own loop policy checks; the loop is the test's
async def test_mounted_hub_same_sequence_numbers_under_uvicorn() -> None:
    async with under_uvicorn("") as rt:
        await test_consistency.test_same_sequence_numbers_everywhere(rt)  # type: ignore[arg-type]


@pytest.mark.one_loop
async def test_mounted_hub_carries_cursors_under_uvicorn() -> None:
    async with under_uvicorn("") as rt:
        await test_consistency.test_a_client_carries_its_cursor_across_transports(rt)  # type: ignore[arg-type]


async def exercise(port: int, prefix: str) -> None:
    """Every transport under ``prefix``, and the app's own route beside them."""
    base = f"http://127.0.0.1:{port}"
    async with wsclient.connect(f"ws://127.0.0.1:{port}{prefix}/pubsub") as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": "t"}))
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            assert (await client.get("/api/hello")).json() == {"hello": "world"}
            # The subscription is registered once an error reply to a later op comes back.
            await ws.send(json.dumps({"op": "unsubscribe", "topic": "nope"}))
            assert json.loads(await ws.recv())["error"] == "not subscribed"
            for i in range(3):
                reply = await client.post(f"{prefix}/publish", json={"topic": "t", "data": i})
                assert reply.json()["seq"] == i + 1
            poll = await client.get(f"{prefix}/poll", params={"topic": "t", "since": 0})
            assert [m["seq"] for m in poll.json()["messages"]] == [1, 2, 3]
            held = await client.get(f"{prefix}/longpoll", params={"topic": "t", "since": 2})
            assert [m["data"] for m in held.json()["messages"]] == [2]
            assert (await client.get(f"{prefix}/nothing")).status_code == 404
            assert (await client.delete(f"{prefix}/publish")).status_code == 405
        got = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(3)]
        assert [(m["seq"], m["data"]) for m in got] == [(1, 0), (2, 1), (3, 2)]
        await ws.send(b"binary")  # protocol abuse, as natively: 1008
        with pytest.raises(Exception):  # noqa: B017  (websockets' ConnectionClosedError)
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1008
    stream = await EventStream.open(port, f"{prefix}/sse?topic=t&since=1")
    try:
        events = [await stream.next_event() for _ in range(2)]
        assert [e.json()["seq"] for e in events if e is not None] == [2, 3]
    finally:
        await stream.close()


@pytest.mark.one_loop
async def test_mounted_under_a_prefix_under_uvicorn() -> None:
    async with under_uvicorn("/rt") as rt:
        await exercise(rt.port, "/rt")


async def test_mounted_under_a_prefix_on_fullduplex() -> None:
    hub = Hub()
    app, hub_app = fastapi_with_hub(hub, "/rt")
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        await exercise(server.port, "/rt")
    finally:
        hub_app.transports.close()
        await server.shutdown()


@pytest.mark.one_loop
async def test_mounted_under_a_prefix_under_hypercorn() -> None:
    async with under_hypercorn("/rt") as rt:
        await exercise(rt.port, "/rt")


async def test_hub_app_served_alone_runs_the_hub_lifespan() -> None:
    # Served on its own, HubApp answers lifespan: the hub starts (a publish needs a running
    # hub), and closes at shutdown.
    hub = Hub()
    rules = TopicRules(publish=["x"])  # clients publish nothing by default
    server = await fullduplex.serve(HubApp(hub, rules=rules), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"http://127.0.0.1:{server.port}/publish", json={"topic": "x", "data": 1}
            )
        assert reply.json()["seq"] == 1
    finally:
        await server.shutdown()
    with pytest.raises(RuntimeError, match="not running"):
        await hub.publish("x", 2)


class RecordingPresence(MemoryPresence):
    """A memory presence that records when its heartbeat would start and stop."""

    def __init__(self) -> None:
        super().__init__()
        self.lifecycle: list[str] = []

    async def start(self) -> None:
        self.lifecycle.append("start")

    async def close(self) -> None:
        self.lifecycle.append("close")


@pytest.mark.one_loop  # uvicorn runs its own loop policy checks; the loop is the test's
async def test_mounted_hub_app_runs_its_hooks_from_the_applications_lifespan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Starlette's Mount does not pass the lifespan on: `async with realtime:` in the
    # application's lifespan starts the hub and what the transports run beside it (presence,
    # the open-publish warning), and stops them at shutdown.
    hub = Hub()
    presence = RecordingPresence()
    realtime = HubApp(hub, rules=TopicRules(publish=["*"]), presence=presence)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with realtime:
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/rt", realtime)
    async with serve_uvicorn(app) as port:
        assert presence.lifecycle == ["start"]
        warned = [r.getMessage() for r in caplog.records if "lets anyone publish" in r.getMessage()]
        assert warned and "/pubsub" in warned[0]
        async with wsclient.connect(f"ws://127.0.0.1:{port}/rt/pubsub?user=ann") as ws:
            await ws.send(json.dumps({"op": "subscribe", "topic": "room"}))
            await ws.send(json.dumps({"op": "presence", "topic": "room"}))
            for _ in range(10):  # bounded: the subscribed ack, then the answer
                item = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if "presence" in item:
                    break
            assert item["presence"]["connections"] == 1
    assert presence.lifecycle == ["start", "close"]
    with pytest.raises(RuntimeError, match="not running"):
        await hub.publish("room", 1)


async def test_a_mounted_hub_app_not_started_answers_503_with_a_hint_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Mounted without starting it in the lifespan (Mount does not pass the lifespan on): every
    # transport answered 500 and logged the hub's traceback, once per request.
    hub = Hub()
    realtime = HubApp(hub, rules=TopicRules(subscribe=["*"], publish=["t"]))
    app = FastAPI()
    app.mount("/rt", realtime)
    caplog.set_level("INFO", logger="fullduplex")
    async with serve_uvicorn(app) as port, httpx.AsyncClient(timeout=10) as http:
        base = f"http://127.0.0.1:{port}/rt"
        for _ in range(2):
            for answer in (
                await http.get(f"{base}/poll?topic=t"),
                await http.get(f"{base}/sse?topic=t"),
                await http.get(f"{base}/longpoll?topic=t"),
                await http.post(f"{base}/publish", json={"topic": "t", "data": 1}),
            ):
                assert answer.status_code == 503, answer.text
                assert answer.text.startswith("hub not started: use `async with hub_app:`")
        async with wsclient.connect(f"ws://127.0.0.1:{port}/rt/pubsub") as ws:
            await ws.send(json.dumps({"op": "subscribe", "topic": "t"}))
            with pytest.raises(websockets.exceptions.ConnectionClosedError):
                await asyncio.wait_for(ws.recv(), 10)
        assert (ws.close_code, ws.close_reason) == (1011, "hub not started")
        logged = [r for r in caplog.records if r.name.startswith("fullduplex")]
        assert [r.getMessage() for r in logged if "hub not" in r.getMessage()] == [
            "HubApp: hub not started: use `async with hub_app:` or `await hub_app.startup()`"
            " in the application's lifespan (Starlette's Mount does not run a mounted app's"
            " lifespan) (answering 503 until it runs)"
        ]
        assert not [r for r in logged if r.exc_info]  # no traceback
        # Started, it serves.
        async with realtime:
            answer = await http.get(f"{base}/poll?topic=t")
            assert answer.status_code == 200, answer.text
