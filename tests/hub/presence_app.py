"""A pub/sub server with presence, for tests/hub/test_presence.py (run as a subprocess).

Usage: python -m tests.hub.presence_app URL PREFIX EXPIRY (a Redis or a Redis Cluster URL). It
prints its port, then serves until killed. A connection's identity is its ``?user=`` query
parameter.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import fullduplex
from fullduplex.auth import Identity
from fullduplex.hub import Hub, RedisBackend, RedisClusterBackend
from fullduplex.hub.presence import Presence
from fullduplex.transports.websocket import mount_websocket


def make_app(hub: Hub, presence: Presence) -> fullduplex.App:
    """The app: /pubsub with presence, identities from ``?user=``."""
    app = fullduplex.App()

    @app.authenticate
    def user(request: Any) -> Identity | None:
        name = request.query.get("user", [""])[0]
        return Identity(name) if name else None

    mount_websocket(app, hub, presence=presence)
    return app


async def main(url: str, prefix: str, expiry: float) -> None:
    from fullduplex.hub.presence import RedisPresence

    cluster = url.startswith("redis+cluster://")
    hub = Hub((RedisClusterBackend if cluster else RedisBackend)(url, prefix=prefix))
    await hub.start()
    presence = RedisPresence(url, prefix=prefix, expiry=expiry)
    server = await fullduplex.serve(make_app(hub, presence), "127.0.0.1", 0)
    print(server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
