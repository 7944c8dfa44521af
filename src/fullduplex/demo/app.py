"""The demo: an echo page, the classic echo service, a plain echo and a JSON endpoint.

Routes:

* ``/`` - a page in plain HTML/JS that talks to ``/ws``;
* ``/ws`` - the echo service of the classic Netty example: subprotocol ``echo``, 10 KiB
  frames, each text message answered with ``HH:MM:SS: <message>``, binary refused with 1003;
* ``/echo`` - a plain echo for tools and conformance suites: text and binary returned
  unchanged, any or no subprotocol, permessage-deflate, limits raised to 16 MiB;
* ``/api/data`` - JSON ``{"message": ..., "time": ...}`` for the Ajax example.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ..asyncio import App, WebSocket
from ..protocol import CloseCode
from ..protocol.http11 import Request

__all__ = ["ECHO_MAX_FRAME_SIZE", "PLAIN_ECHO_MAX_SIZE", "STATIC_DIR", "create_app"]

#: Folder of the demo page.
STATIC_DIR = Path(__file__).parent / "static"
#: Frame limit of ``/ws``, as in the Netty example.
ECHO_MAX_FRAME_SIZE = 10 * 1024
#: Message and frame limit of ``/echo``, raised for conformance suites.
PLAIN_ECHO_MAX_SIZE = 16 * 2**20


def _any_subprotocol(request: Request, offered: Sequence[str]) -> str | None:
    return offered[0] if offered else None


def create_app() -> App:
    """Build the demo application."""
    app = App()

    @app.websocket(
        "/ws",
        subprotocols=["echo"],
        require_subprotocol=True,
        max_frame_size=ECHO_MAX_FRAME_SIZE,
        max_message_size=ECHO_MAX_FRAME_SIZE,
    )
    async def timestamped_echo(ws: WebSocket) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                await ws.close(CloseCode.UNSUPPORTED_DATA, "binary messages are not supported")
                return
            await ws.send(f"{time.strftime('%H:%M:%S')}: {message}")

    @app.websocket(
        "/echo",
        select_subprotocol=_any_subprotocol,
        max_frame_size=PLAIN_ECHO_MAX_SIZE,
        max_message_size=PLAIN_ECHO_MAX_SIZE,
    )
    async def plain_echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    @app.get("/api/data")
    async def data(request: Request) -> dict[str, object]:
        return {"message": "hello from fullduplex", "time": time.time()}

    app.static("/", STATIC_DIR)
    return app
