"""fullduplex's hub ``/pubsub`` route as a public deployment runs it, for handshake counts.

``mount_all(app, hub)`` over a memory hub, with the checks of ``fullduplex_echo.py
--guarded``: an Origin allow-list (``mount_all(origins=...)``) and the application's
authenticator (a bearer token looked up in a dict), and the per-IP limits on. The load
generator connects to ``/pubsub`` and closes at once (``bench/run.py``'s ``fd-pubsub``
column: handshake and idle only; the topic protocol answers no echo).
"""

from __future__ import annotations

import argparse
import asyncio

import _common
from fullduplex_echo import token_auth

import fullduplex
from fullduplex.hub import Hub
from fullduplex.transports import TopicRules, mount_all


async def main(args: argparse.Namespace) -> None:
    hub = Hub("memory")
    await hub.start()
    app = fullduplex.App(auth=token_auth)
    mount_all(app, hub, rules=TopicRules(subscribe=["*"]), origins=_common.GUARD_ORIGINS)
    server = await fullduplex.serve(
        app,
        args.host,
        args.port,
        compression=False,
        ping_interval=None,
        max_connections=None,
        # Limits on but never reached, as in fullduplex_echo.py.
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
    _common.run(main, _common.parse_args(__doc__ or ""))
