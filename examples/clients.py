"""The asyncio client and the threaded client against `fullduplex serve`.

Run: fullduplex serve & python examples/clients.py
"""

from __future__ import annotations

import asyncio

import fullduplex
import fullduplex.sync

URL = "ws://127.0.0.1:8000/echo"


async def with_asyncio() -> None:
    async with fullduplex.connect(URL) as ws:
        await ws.send("hello from asyncio")
        print(await ws.recv())
        print(f"round trip: {await ws.ping() * 1000:.2f} ms")


def with_threads() -> None:
    with fullduplex.sync.connect(URL) as ws:
        ws.send("hello from a thread")
        print(ws.recv(timeout=5))


if __name__ == "__main__":
    asyncio.run(with_asyncio())
    with_threads()
