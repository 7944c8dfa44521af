"""The applications ``fuzz/attack.py`` attacks besides the demo.

* ``fuzz.attack_apps:starlette_app``: a Starlette app for ``fullduplex serve`` (profile
  ``asgi``): ``GET /http`` (text), ``POST /http`` (the body echoed), ``GET /stream`` (a
  streaming response of 1,000 parts), ``GET /raise`` (a route that raises), ``/ws`` (an echo
  WebSocket that raises on the text ``raise``).
* ``fuzz.attack_apps:fastapi_app``: FastAPI with :class:`fullduplex.asgi.HubApp` mounted at
  ``/rt``, anyone publishing to topics ``t*`` (profile ``hubapp``; serve it with uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from fullduplex.asgi import HubApp
from fullduplex.hub import Hub
from fullduplex.transports import TopicRules


async def http(request: Request) -> Response:
    if request.method == "POST":
        return Response(await request.body(), media_type="application/octet-stream")
    return PlainTextResponse("ok")


async def stream(request: Request) -> Response:
    async def parts() -> AsyncIterator[bytes]:
        for i in range(1000):
            yield b"part %d\n" % i
            await asyncio.sleep(0.01)

    return StreamingResponse(parts(), media_type="text/plain")


async def fail(request: Request) -> Response:
    raise RuntimeError("boom: secret detail")


async def echo(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "raise":
                raise RuntimeError("boom: secret detail")
            if message.get("text") is not None:
                await ws.send_text(message["text"])
            elif message.get("bytes") is not None:
                await ws.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


async def misbehaving(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI app breaking the protocol in the way its path names (mounted at /bad)."""
    path = scope["path"]
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if path.endswith("/never-accept"):
            await asyncio.sleep(3600)
        elif path.endswith("/send-before-accept"):
            await send({"type": "websocket.send", "text": "too early"})
        elif path.endswith("/accept-twice"):
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.accept"})
        return
    if path.endswith("/no-response"):
        return
    if path.endswith("/raise-after-start"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom: secret detail")
    if path.endswith("/start-twice"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.start", "status": 200, "headers": []})
    if path.endswith("/body-before-start"):
        await send({"type": "http.response.body", "body": b"x"})
    if path.endswith("/bad-status"):
        await send({"type": "http.response.start", "status": 99, "headers": []})
    if path.endswith("/bad-header"):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"a\r\nb: c")]}
        )
    if path.endswith("/wrong-length"):
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"12345678901234567890"})
    if path.endswith("/short-length"):
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"12345"})
    if path.endswith("/ignores-body"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ignored"})


starlette_app = Starlette(
    routes=[
        Route("/http", http, methods=["GET", "POST"]),
        Route("/stream", stream),
        Route("/raise", fail),
        WebSocketRoute("/ws", echo),
        Mount("/bad", app=misbehaving),
    ]
)

hub = Hub()
# The per-IP limits off: the harness opens hundreds of connections a second from one IP.
realtime = HubApp(
    hub,
    rules=TopicRules(publish=["t*"]),
    max_connections_per_ip=None,
    rate_per_ip=None,
    max_messages_per_second=None,
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with realtime:
        yield


fastapi_app = FastAPI(lifespan=lifespan)
fastapi_app.mount("/rt", realtime)
