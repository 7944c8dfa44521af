"""wsproto (sans-I/O) under a minimal ``asyncio.Protocol``: echo, or relay with ``--broadcast``.

Each ``data_received`` feeds ``WSConnection.receive_data``, walks ``events()`` and writes what
``send()`` returned in one ``transport.write``.
"""

from __future__ import annotations

import argparse
import asyncio

import _common
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)

relays: set[WsprotoServer] = set()


class WsprotoServer(asyncio.Protocol):
    def __init__(self, broadcast: bool) -> None:
        self.broadcast = broadcast
        self.ws = WSConnection(ConnectionType.SERVER)
        self.parts: list[bytes | str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        if self.broadcast:
            relays.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        relays.discard(self)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        out = []
        close = False
        for event in ws.events():
            if isinstance(event, Message):
                self.parts.append(event.data)
                if not event.message_finished:
                    continue
                payload = self.parts[0] if len(self.parts) == 1 else _join(self.parts)
                self.parts = []
                message = (
                    TextMessage(payload) if isinstance(payload, str) else BytesMessage(payload)
                )
                if self.broadcast:
                    for other in relays:
                        if other is not self and other.ws.state is ConnectionState.OPEN:
                            other.transport.write(other.ws.send(message))
                else:
                    out.append(ws.send(message))
            elif isinstance(event, Request):
                out.append(ws.send(AcceptConnection()))
            elif isinstance(event, Ping):
                out.append(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    out.append(ws.send(event.response()))
                close = True
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()


def _join(parts: list[bytes | str]) -> bytes | str:
    if isinstance(parts[0], str):
        return "".join(parts)  # type: ignore[arg-type]
    return b"".join(parts)  # type: ignore[arg-type]


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: WsprotoServer(args.broadcast), args.host, args.port, backlog=_common.BACKLOG
    )
    _common.announce(server.sockets[0].getsockname()[1])
    await server.serve_forever()


if __name__ == "__main__":
    _common.run(main, _common.parse_args(__doc__ or ""))
