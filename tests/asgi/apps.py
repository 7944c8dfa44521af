"""ASGI applications the tests serve: Starlette's and FastAPI's own endpoints, and a bare echo.

Importable as ``tests.asgi.apps:starlette_app`` (``python -m fullduplex serve`` loads it too).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi import WebSocket as FastAPIWebSocket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

#: What the lifespan and the endpoints did, in order (the tests read it).
EVENTS: list[Any] = []


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    EVENTS.append("startup")
    yield {"greeting": "hello from lifespan"}
    EVENTS.append("shutdown")


async def home(request: Request) -> Response:
    return PlainTextResponse(request.state.greeting)


async def upload(request: Request) -> Response:
    # request.stream(): the body as the server hands it over (http.request with more_body).
    digest = hashlib.sha256()
    parts = 0
    async for chunk in request.stream():
        digest.update(chunk)
        parts += 1
    return PlainTextResponse(f"{digest.hexdigest()} {parts}")


async def stream(request: Request) -> Response:
    count = int(request.query_params.get("n", "3"))

    async def numbers() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"{i}\n".encode()

    return StreamingResponse(numbers(), media_type="text/plain")


PAGE = """<!doctype html><title>asgi</title><pre id="log"></pre><script>
const ws = new WebSocket(`ws://${location.host}/ws`, ["chat"]);
ws.onopen = () => { ws.send("from chromium"); };
ws.onmessage = (e) => { document.getElementById("log").textContent = `${ws.protocol} ${e.data}`; };
</script>"""


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def ws_echo(websocket: WebSocket) -> None:
    offered = websocket.scope["subprotocols"]
    await websocket.accept(
        subprotocol="chat" if "chat" in offered else None,
        headers=[(b"x-accepted-by", b"starlette")],
    )
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                EVENTS.append(("ws-disconnect", message["code"], message.get("reason", "")))
                return
            if message.get("text") is not None:
                if message["text"] == "close me":
                    await websocket.close(4001, "bye")
                    return
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect as exc:  # pragma: no cover - receive() above returns instead
        EVENTS.append(("ws-disconnect", exc.code, exc.reason))


async def ws_deny(websocket: WebSocket) -> None:
    # The websocket.http.response extension: a real HTTP response instead of the upgrade.
    await websocket.send_denial_response(PlainTextResponse("members only", status_code=401))


async def ws_reject(websocket: WebSocket) -> None:
    await websocket.close(1008)  # before accept: 403


starlette_app = Starlette(
    routes=[
        Route("/", home, methods=["GET", "HEAD"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/page", page),
        WebSocketRoute("/ws", ws_echo),
        WebSocketRoute("/deny", ws_deny),
        WebSocketRoute("/reject", ws_reject),
    ],
    lifespan=lifespan,
)


fastapi_app = FastAPI()


@fastapi_app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
    return {"item_id": item_id, "q": q}


@fastapi_app.post("/items")
async def create_item(item: dict[str, Any]) -> dict[str, Any]:
    return {"created": item}


@fastapi_app.websocket("/ws/{room}")
async def room(websocket: FastAPIWebSocket, room: str) -> None:
    await websocket.accept()
    async for data in websocket.iter_json():
        await websocket.send_json({"room": room, "echo": data})


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI echo (no framework): WebSocket echo, HTTP "ok"."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            message["type"] = "websocket.send"
            await send(message)
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
