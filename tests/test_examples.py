"""The examples under examples/ run as documented."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import fullduplex

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sansio_example_prints_the_echo() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "sansio_echo.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert "subprotocol: chat" in out
    assert "HELLO, SANS-I/O" in out
    assert "server closes TCP: True code: 1000" in out


async def test_chat_example_relays_to_everyone() -> None:
    app = load("chat_server").app
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.port}/chat"
        async with fullduplex.connect(url) as alice, fullduplex.connect(url) as bob:
            await alice.send("hi all")
            assert await bob.recv() == "hi all"
            assert await alice.recv() == "hi all"
    finally:
        await server.shutdown()


async def test_listener_example_echoes() -> None:
    app = load("listener_echo").app
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        async with fullduplex.connect(f"ws://127.0.0.1:{server.port}/echo") as ws:
            await ws.send(b"\x00\x01")
            assert await ws.recv() == b"\x00\x01"
    finally:
        await server.shutdown()


async def test_pubsub_example_delivers_a_publish_to_a_poller() -> None:
    import json

    module = load("pubsub_server")
    server = await fullduplex.serve(module.app, "127.0.0.1", 0)
    try:
        import asyncio

        body = json.dumps({"topic": "news", "data": "hi"}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)
        )
        assert (await reader.read()).startswith(b"HTTP/1.1 2")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /poll?topic=news&since=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = (await reader.read()).partition(b"\r\n\r\n")[2]
        writer.close()
        assert [m["data"] for m in json.loads(answer)["messages"]] == ["hi"]
    finally:
        await server.shutdown()


async def test_asgi_fastapi_example_on_fullduplex() -> None:
    import httpx

    app = load("asgi_fastapi").app
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{server.port}/items/7")
            assert reply.json() == {"item_id": 7}
        async with fullduplex.connect(f"ws://127.0.0.1:{server.port}/ws/lobby") as ws:
            await ws.send("hi")
            assert await ws.recv() == "lobby: hi"
    finally:
        await server.shutdown()


async def test_asgi_mount_hub_example_delivers_to_a_subscriber() -> None:
    import json

    import httpx

    app = load("asgi_mount_hub").app
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        async with fullduplex.connect(f"ws://127.0.0.1:{server.port}/rt/pubsub") as ws:
            await ws.send(json.dumps({"op": "subscribe", "topic": "orders"}))
            await ws.send(json.dumps({"op": "unsubscribe", "topic": "none"}))
            assert json.loads(await ws.recv())["error"] == "not subscribed"  # subscribed now
            async with httpx.AsyncClient() as client:
                reply = await client.post(f"http://127.0.0.1:{server.port}/orders", json={"pen": 2})
            assert reply.json() == {"seq": 1}
            message = json.loads(await ws.recv())
            assert (message["seq"], message["data"]) == (1, {"pen": 2})
    finally:
        await server.shutdown()
