"""fullduplex: the demo app's ``/echo`` route, or a broadcast route with ``--broadcast``.

fullduplex has no broadcast helper (yet): the broadcast route sends to each connection with
``await ws.send(message)``, which frames the message once per receiver.
"""

from __future__ import annotations

import argparse

import _common

import fullduplex
from fullduplex.demo import create_app


def broadcast_app() -> fullduplex.App:
    app = fullduplex.App()
    clients: set[fullduplex.WebSocket] = set()

    @app.websocket("/echo", max_message_size=_common.MAX_SIZE, max_frame_size=_common.MAX_SIZE)
    async def relay(ws: fullduplex.WebSocket) -> None:
        clients.add(ws)
        try:
            async for message in ws:
                for other in list(clients):
                    if other is not ws:
                        try:  # noqa: SIM105 - cheaper than contextlib.suppress in this loop
                            await other.send(message)
                        except fullduplex.ConnectionClosed:
                            pass
        finally:
            clients.discard(ws)

    return app


async def main(args: argparse.Namespace) -> None:
    app = broadcast_app() if args.broadcast else create_app()
    # serve() listens with a backlog of 1024, like the other servers here.
    server = await fullduplex.serve(
        app,
        args.host,
        args.port,
        compression=False,
        ping_interval=None,
        max_connections=None,  # the broadcast test opens 10,001 connections
    )
    _common.announce(server.port)
    await _common.forever()


if __name__ == "__main__":
    _common.run(main, _common.parse_args(__doc__ or ""))
