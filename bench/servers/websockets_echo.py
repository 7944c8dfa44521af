"""websockets (``websockets.asyncio.server``): echo, or ``broadcast()`` with ``--broadcast``."""

from __future__ import annotations

import argparse

import _common
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def main(args: argparse.Namespace) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def relay(ws: ServerConnection) -> None:
        async for message in ws:
            broadcast([c for c in server.connections if c is not ws], message)

    server = await serve(
        relay if args.broadcast else echo,
        args.host,
        args.port,
        compression=None,
        ping_interval=None,
        max_size=_common.MAX_SIZE,
        backlog=_common.BACKLOG,
    )
    _common.announce(server.sockets[0].getsockname()[1])
    await server.serve_forever()


if __name__ == "__main__":
    _common.run(main, _common.parse_args(__doc__ or ""))
