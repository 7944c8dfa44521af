"""A pub/sub server for the client tests, run in-process or as a process of its own.

    python -m tests.clients.serve_app PORT [REDIS_URL]

Every transport (``mount_all``: clients may publish to every topic), the browser library, and
the test page at ``/t.html``. As a process it stops gracefully on SIGTERM (``/pubsub`` clients
get 1012) and prints ``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import fullduplex
from fullduplex.hub import Hub
from fullduplex.protocol.http11 import Headers, Request, Response
from fullduplex.transports import TopicRules, Transports, mount_all

PAGE = (Path(__file__).parent / "page.html").read_bytes()
RULES = TopicRules(subscribe=["*"], publish=["*"])


def make_app(hub: Hub, **options: object) -> tuple[fullduplex.App, Transports]:
    """The app: transports over ``hub`` and the test page."""
    app = fullduplex.App()
    transports = mount_all(app, hub, rules=RULES, **options)  # type: ignore[arg-type]

    @app.get("/t.html")
    def page(request: Request) -> Response:
        return Response(200, Headers([("Content-Type", "text/html; charset=utf-8")]), PAGE)

    return app, transports


async def main(port: int, broker: str | None) -> None:
    hub = Hub(broker)
    await hub.start()
    app, _ = make_app(hub, heartbeat_interval=1.0, longpoll_timeout=2.0)
    # Every client of these tests comes from 127.0.0.1, thousands of them in the storm test: the
    # per-IP limits (tested in tests/asyncio/test_abuse_limits.py) are off here.
    server = await fullduplex.serve(
        app, "127.0.0.1", port, max_connections_per_ip=None, rate_per_ip=None
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.shutdown()
    await hub.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
