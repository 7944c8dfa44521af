"""fullduplex's transports over a hub, for bench/hub_bench.py; prints its port.

Routes: ``mount_all(app, hub)`` (``/pubsub``, ``/sse``, ``/longpoll``, ``/poll``,
``/publish``) over a memory hub or, with ``--backend redis://...``, a Redis one; and the floor
the hub is compared with, no hub at all: ``/floor`` (a WebSocket route that only collects its
connections) and ``POST /floor/publish``, which builds the same JSON envelope as the hub would
and sends it to every ``/floor`` connection with ``fullduplex.broadcast()``.

SSE heartbeats are off (the load generator counts events, not comments) and long polls are
held 120 s (a round never waits that long); keepalive pings and compression are off, as in
every server of bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

import _common

import fullduplex
from fullduplex.hub import Hub
from fullduplex.protocol.http11 import Request, Response
from fullduplex.transports import TopicRules, mount_all
from fullduplex.transports.common import dumps


class FloorListener(fullduplex.WebSocketListener):
    """Collects the connections of ``/floor``; ignores what they send."""

    clients: set[fullduplex.WebSocket] = set()

    def on_open(self, ws: fullduplex.WebSocket) -> None:
        self.clients.add(ws)

    def on_close(self, ws: fullduplex.WebSocket) -> None:
        self.clients.discard(ws)


def create_app(hub: Hub) -> fullduplex.App:
    app = fullduplex.App()
    # The load generator publishes to any topic, without credentials.
    rules = TopicRules(publish=["*"])
    mount_all(app, hub, rules=rules, heartbeat_interval=None, longpoll_timeout=120.0)
    app.websocket("/floor")(FloorListener)
    seqs = itertools.count(1)

    @app.post("/floor/publish")
    async def floor_publish(request: Request) -> Response:
        payload = json.loads(request.body)
        seq = next(seqs)
        envelope = {"topic": payload["topic"], "seq": seq, "data": payload["data"]}
        envelope["time"] = time.time()
        sent = fullduplex.broadcast(FloorListener.clients, dumps(envelope))
        return fullduplex.json_response({"topic": payload["topic"], "seq": seq, "sent": sent})

    return app


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend", default="memory", help="memory, or redis://host:port/db")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    hub = Hub(args.backend)
    await hub.start()
    server = await fullduplex.serve(
        create_app(hub),
        args.host,
        args.port,
        compression=False,
        ping_interval=None,
        max_connections=None,  # 10,000 subscribers and more
        # Limits on but never reached (one client IP opens 10,000 subscribers and publishes
        # without pause), as in fullduplex_echo.py: the enabled path is what is measured.
        max_connections_per_ip=10**9,
        rate_per_ip=1e9,
        max_messages_per_second=10**12,
        max_bytes_per_second=10**15,
    )
    _common.announce(server.port)
    try:
        await _common.forever()
    except asyncio.CancelledError:
        await hub.close()
        raise


if __name__ == "__main__":
    _common.run(main, parse_args())
