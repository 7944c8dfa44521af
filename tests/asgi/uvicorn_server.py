"""An ASGI application served by uvicorn on 127.0.0.1 for the length of a ``with`` block."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


@asynccontextmanager
async def serve_uvicorn(app: Any, **config: Any) -> AsyncIterator[int]:
    """Serve ``app`` (``config``: uvicorn Config options); yields the port, stops on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings: dict[str, Any] = {"log_level": "warning", "lifespan": "on", **config}
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        for _ in range(500):  # bounded: 5 s for uvicorn's startup
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
