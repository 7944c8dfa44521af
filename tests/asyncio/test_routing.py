"""Routing: path parameters with converters, method routing with 405 and Allow."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets.asyncio.client as wsclient

import fullduplex
from fullduplex.asyncio.router import compile_path
from fullduplex.protocol.http11 import Request


def make_app() -> fullduplex.App:
    app = fullduplex.App()

    @app.get("/items/{id:int}")
    async def item(request: Request) -> dict[str, Any]:
        return {"id": request.path_params["id"], "type": "int"}

    @app.put("/items/{id:int}")
    async def replace(request: Request) -> dict[str, Any]:
        return {"replaced": request.path_params["id"]}

    @app.get("/items/{name}")
    async def named(request: Request) -> dict[str, Any]:
        return {"name": request.path_params["name"]}

    @app.get("/items/special")
    async def special(request: Request) -> dict[str, Any]:
        return {"exact": True, "params": dict(request.path_params)}

    @app.get("/price/{value:float}")
    async def price(request: Request) -> dict[str, Any]:
        return {"value": request.path_params["value"]}

    @app.get("/files/{rest:path}")
    async def files(request: Request) -> dict[str, Any]:
        return {"rest": request.path_params["rest"]}

    @app.get("/keys/{key:uuid}")
    async def key(request: Request) -> dict[str, Any]:
        value = request.path_params["key"]
        assert isinstance(value, uuid.UUID)
        return {"key": str(value)}

    @app.get("/thing")
    async def get_thing(request: Request) -> str:
        return "got"

    @app.post("/thing")
    async def post_thing(request: Request) -> str:
        return "posted"

    @app.websocket("/rooms/{room}/{seat:int}")
    async def room(ws: fullduplex.WebSocket) -> None:
        await ws.send(f"{ws.path_params['room']} {ws.path_params['seat'] + 1}")

    return app


@pytest.fixture
async def server() -> AsyncIterator[fullduplex.Server]:
    srv = await fullduplex.serve(make_app(), "127.0.0.1", 0)
    yield srv
    await srv.shutdown()


async def test_converters(server: fullduplex.Server) -> None:
    key = uuid.uuid4()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        assert (await client.get("/items/42")).json() == {"id": 42, "type": "int"}
        assert (await client.get("/items/pen")).json() == {"name": "pen"}
        assert (await client.get("/price/3.5")).json() == {"value": 3.5}
        assert (await client.get("/files/a/b/c.txt")).json() == {"rest": "a/b/c.txt"}
        assert (await client.get(f"/keys/{key}")).json() == {"key": str(key)}
        assert (await client.get("/keys/not-a-uuid")).status_code == 404
        assert (await client.get("/items/a/b")).status_code == 404  # str is one segment
        assert (await client.get("/items/caf%C3%A9")).json() == {"name": "café"}


async def test_exact_path_wins(server: fullduplex.Server) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        assert (await client.get("/items/special")).json() == {"exact": True, "params": {}}


async def test_methods_and_405(server: fullduplex.Server) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        assert (await client.get("/thing")).text == "got"
        assert (await client.post("/thing")).text == "posted"
        refused = await client.delete("/thing")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD, POST"
        assert (await client.put("/items/7")).json() == {"replaced": 7}
        refused = await client.post("/items/7")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD, PUT"


async def test_websocket_path_parameters(server: fullduplex.Server) -> None:
    async with wsclient.connect(f"ws://127.0.0.1:{server.port}/rooms/lobby/4") as ws:
        assert await ws.recv() == "lobby 5"


def test_compile_path() -> None:
    pattern, converters = compile_path("/a/{x}/b/{y:int}")
    match = pattern.match("/a/one/b/2")
    assert match is not None and match.groupdict() == {"x": "one", "y": "2"}
    assert converters["y"]("2") == 2
    assert pattern.match("/a/one/b/2/") is None
    assert compile_path("/a.b/{x}")[0].match("/aXb/1") is None  # literal parts are escaped
    with pytest.raises(ValueError, match="unknown path converter"):
        compile_path("/{x:nope}")
    with pytest.raises(ValueError, match="twice"):
        compile_path("/{x}/{x}")
    with pytest.raises(ValueError):
        fullduplex.App().get("/{x:bad}")
