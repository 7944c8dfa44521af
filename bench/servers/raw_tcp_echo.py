"""Raw TCP echo (an ``asyncio.Protocol`` writing back what it reads): the ceiling.

No WebSocket at all: the load generator skips the handshake and expects its own (masked) frame
bytes back. With ``--broadcast``, bytes read from one connection are written to all others.
"""

from __future__ import annotations

import argparse
import asyncio

import _common

protocols: set[Echo] = set()


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Relay(Echo):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        protocols.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        protocols.discard(self)

    def data_received(self, data: bytes) -> None:
        for other in protocols:
            if other is not self:
                other.transport.write(data)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    factory = Relay if args.broadcast else Echo
    server = await loop.create_server(factory, args.host, args.port, backlog=_common.BACKLOG)
    _common.announce(server.sockets[0].getsockname()[1])
    await server.serve_forever()


if __name__ == "__main__":
    _common.run(main, _common.parse_args(__doc__ or ""))
