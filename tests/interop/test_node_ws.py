"""Interoperability with Node's `ws` package as client and as server, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import fullduplex
from fullduplex.demo import create_app
from fullduplex.protocol.exceptions import InvalidStatus


async def run_node_client(
    node_ws: Path, url: str, scenario: str, subprotocol: str = "", origin: str = ""
) -> list[dict[str, Any]]:
    env = dict(os.environ, WS_ORIGIN=origin)
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(node_ws / "client.mjs"),
        url,
        scenario,
        subprotocol,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.fixture
async def server() -> AsyncIterator[fullduplex.Server]:
    app = create_app()

    @app.websocket("/boom")
    async def boom(ws: fullduplex.WebSocket) -> None:
        await ws.recv()
        raise RuntimeError("boom")

    srv = await fullduplex.serve(app, "127.0.0.1", 0)
    yield srv
    await srv.shutdown()


def base(server: fullduplex.Server) -> str:
    return f"ws://127.0.0.1:{server.port}"


# -- Node client, our server ------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["echo", "compressed"])
async def test_node_client_echo(
    node_ws: Path, echo_server: fullduplex.Server, scenario: str
) -> None:
    steps = await run_node_client(node_ws, base(echo_server) + "/echo", scenario)
    assert steps[0]["open"] is True
    if scenario == "compressed":
        assert "permessage-deflate" in steps[0]["extensions"]
    assert steps[1]["received"] == [
        {"text": "héllo"},
        {"binary": [0, 1, 2, 255]},
        {"text": "fragmented"},
        {"text_len": 100000},
    ]
    assert steps[-1] == {"close": 1000, "reason": ""}  # the code is echoed, not the reason


async def test_node_client_ping(node_ws: Path, echo_server: fullduplex.Server) -> None:
    steps = await run_node_client(node_ws, base(echo_server) + "/echo", "ping")
    assert {"pong": "node-ping"} in steps
    assert steps[-1]["close"] == 1000


async def test_node_client_close_codes(node_ws: Path, server: fullduplex.Server) -> None:
    steps = await run_node_client(node_ws, base(server) + "/ws", "binary", "echo")
    assert steps[0]["protocol"] == "echo"
    assert steps[-1]["close"] == 1003
    steps = await run_node_client(node_ws, base(server) + "/ws", "oversize", "echo")
    assert steps[-1]["close"] == 1009
    steps = await run_node_client(node_ws, base(server) + "/boom", "text")
    assert steps[-1] == {"close": 1011, "reason": "internal error"}


async def test_node_client_gets_1001_on_shutdown(
    node_ws: Path, echo_server: fullduplex.Server
) -> None:
    srv = echo_server
    task = asyncio.create_task(run_node_client(node_ws, base(srv) + "/echo", "wait"))
    for _ in range(100):
        if srv.websockets:
            break
        await asyncio.sleep(0.05)
    await srv.shutdown()
    steps = await task
    assert steps[-1]["close"] == 1001


async def test_node_client_refused_origin_and_subprotocol(
    node_ws: Path, server: fullduplex.Server
) -> None:
    steps = await run_node_client(
        node_ws, base(server) + "/echo", "text", origin="https://evil.example"
    )
    assert steps[0] == {"status": 403}
    steps = await run_node_client(node_ws, base(server) + "/ws", "text", "chat")
    assert steps[0] == {"status": 400}


# -- our client, Node server ------------------------------------------------------------------


@pytest.fixture
async def node_server(node_ws: Path) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(node_ws / "server.mjs"), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    port = json.loads(line)["port"]
    yield f"ws://127.0.0.1:{port}/"
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def test_our_client_against_node_server(node_server: str) -> None:
    async with fullduplex.connect(node_server, subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff" * 40000)
        assert await ws.recv() == b"\x00\xff" * 40000
        await ws.send(["frag", "ment", "ed"])
        assert await ws.recv() == "fragmented"
        assert await ws.ping() >= 0
    assert ws.close_code == 1000


async def test_our_client_uncompressed_against_node_server(node_server: str) -> None:
    async with fullduplex.connect(node_server, compression=False) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        await ws.send("plain")
        assert await ws.recv() == "plain"


async def test_our_client_close_codes_from_node_server(node_server: str) -> None:
    ws = await fullduplex.connect(node_server)
    await ws.send("close-1003")
    with pytest.raises(fullduplex.ConnectionClosedError):
        await ws.recv()
    assert ws.close_code == 1003
    ws = await fullduplex.connect(node_server, compression=False)
    await ws.send(b"x" * (2**20 + 1))
    with pytest.raises(fullduplex.ConnectionClosedError):
        await ws.recv()
    assert ws.close_code == 1009
    ws = await fullduplex.connect(node_server)
    await ws.send("shutdown")
    with pytest.raises(fullduplex.ConnectionClosedOK):
        await ws.recv()
    assert ws.close_code == 1001


async def test_our_client_refused_by_node_server(node_server: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        await fullduplex.connect(node_server, origin="https://evil.example")
    assert info.value.status == 401
    # ws answers no subprotocol when none matches; our client then has none.
    async with fullduplex.connect(node_server, subprotocols=["other"]) as ws:
        assert ws.subprotocol is None
