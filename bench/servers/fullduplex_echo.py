"""fullduplex: an echo route, or a broadcast route with ``--broadcast``.

``--api async`` (the default) is an ``/echo`` route written as the demo app's is (``async for``
/ ``await send``), on an app with nothing else (the demo's ticker would add ~1% of background
work); ``--api listener`` is the same echo through the low-level ``WebSocketListener``
callbacks. The
broadcast routes relay with ``fullduplex.broadcast``, which frames each message once.

``--guarded`` puts the checks a public deployment has on the route: an Origin allow-list and
an authenticator (a bearer token looked up in a dict: the authentication hook's own cost, not
a JWT library's; ``bench/auth_bench.py`` measures ``JWTAuth``). The per-IP limits are on in
every mode.
"""

from __future__ import annotations

import argparse
from typing import Any

import _common

import fullduplex
from fullduplex.auth import Identity, Unauthorized, bearer_token
from fullduplex.protocol.http11 import Request

#: The tokens a ``--guarded`` server knows (the load generator sends the first).
TOKENS = {"bench-token": Identity("bench", {"role": "user"})}


def token_auth(request: Request) -> Identity:
    """A synchronous authenticator: the bearer token's identity, or 401."""
    identity = TOKENS.get(bearer_token(request) or "")
    if identity is None:
        raise Unauthorized("unknown token")
    return identity


class Echo(fullduplex.WebSocketListener):
    def on_message(self, ws: fullduplex.WebSocket, message: fullduplex.Data) -> None:
        ws.send_nowait(message)


class Relay(fullduplex.WebSocketListener):
    clients: set[fullduplex.WebSocket] = set()

    def on_open(self, ws: fullduplex.WebSocket) -> None:
        self.clients.add(ws)

    def on_message(self, ws: fullduplex.WebSocket, message: fullduplex.Data) -> None:
        fullduplex.broadcast(self.clients - {ws}, message)

    def on_close(self, ws: fullduplex.WebSocket) -> None:
        self.clients.discard(ws)


def broadcast_app(guarded: bool = False) -> fullduplex.App:
    app = fullduplex.App(auth=token_auth if guarded else None)
    clients: set[fullduplex.WebSocket] = set()

    @app.websocket("/echo", **route_options(guarded))
    async def relay(ws: fullduplex.WebSocket) -> None:
        clients.add(ws)
        try:
            async for message in ws:
                fullduplex.broadcast(clients - {ws}, message)
        finally:
            clients.discard(ws)

    return app


def echo_app(guarded: bool = False) -> fullduplex.App:
    app = fullduplex.App(auth=token_auth if guarded else None)

    @app.websocket("/echo", **route_options(guarded))
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    return app


def listener_app(
    listener: type[fullduplex.WebSocketListener], guarded: bool = False
) -> fullduplex.App:
    app = fullduplex.App(auth=token_auth if guarded else None)
    app.websocket("/echo", **route_options(guarded))(listener)
    return app


def route_options(guarded: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_message_size": _common.MAX_SIZE,
        "max_frame_size": _common.MAX_SIZE,
    }
    if guarded:
        options["origins"] = _common.GUARD_ORIGINS
    return options


async def main(args: argparse.Namespace) -> None:
    if args.api == "listener":
        app = listener_app(Relay if args.broadcast else Echo, args.guarded)
    else:
        app = broadcast_app(args.guarded) if args.broadcast else echo_app(args.guarded)
    if args.metrics:
        app.enable_metrics()  # /metrics, /healthz, /readyz: what bench/metrics_bench.py costs
    # serve() listens with a backlog of 1024, like the other servers here.
    server = await fullduplex.serve(
        app,
        args.host,
        args.port,
        compression=False,
        ping_interval=None,
        max_connections=None,  # the broadcast test opens 10,001 connections
        # Limits on but never reached (one client IP opens 10,001 connections and floods):
        # the enabled path is what the benchmark measures.
        max_connections_per_ip=10**9,
        rate_per_ip=1e9,
        max_messages_per_second=10**12,
        max_bytes_per_second=10**15,
    )
    _common.announce(server.port)
    await _common.forever()


if __name__ == "__main__":
    _common.run(main, _common.parse_args(__doc__ or ""))
