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
