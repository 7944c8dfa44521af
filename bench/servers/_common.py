"""Shared plumbing of the benchmark servers: options, file limit, event loop, port announcement.

Every server in this folder is an echo server on 127.0.0.1 that prints its port on the first
line of stdout. With ``--broadcast``, each message received from a connection (the load
generator's control connection) is sent to every *other* open connection instead.

All servers run with keepalive pings off and compression off so that every one does the same
work per message (the load generator counts bytes and would see a ping as a corrupt echo).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from collections.abc import Callable, Coroutine
from typing import Any

#: Message limit for every server: the throughput test sends 1 MiB messages.
MAX_SIZE = 16 * 2**20
#: Listen backlog for every server that lets us choose (Node's default is 511).
BACKLOG = 1024


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--broadcast", action="store_true", help="relay to every other connection")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--api",
        choices=["async", "listener"],
        default="async",
        help="fullduplex only: async for/await send, or the WebSocketListener callbacks",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="fullduplex only: app.enable_metrics() (bench/metrics_bench.py)",
    )
    parser.add_argument(
        "--guarded",
        action="store_true",
        help="fullduplex only: an Origin allow-list and an authenticator on the route "
        "(the load generator then sends GUARD_HEADERS)",
    )
    return parser.parse_args()


#: What a client of a ``--guarded`` server sends (bench/run.py passes them to the load generator).
GUARD_HEADERS = ("Origin: https://app.example.com", "Authorization: Bearer bench-token")
#: The Origin allow-list of a ``--guarded`` server.
GUARD_ORIGINS = ["https://app.example.com"]


def raise_nofile() -> None:
    """Raise the soft open-file limit to the hard limit (10,000 connections need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def announce(port: int) -> None:
    print(port, flush=True)


def run(
    main: Callable[[argparse.Namespace], Coroutine[Any, Any, None]], args: argparse.Namespace
) -> None:
    """Run ``main(args)`` forever on the chosen loop; SIGTERM ends the process."""
    raise_nofile()
    factory: Any = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main(args))
    except KeyboardInterrupt:
        sys.exit(0)


async def forever() -> None:
    await asyncio.get_running_loop().create_future()
