r"""``fullduplex subscribe`` and ``fullduplex publish``: the pub/sub transports from a shell.

::

    fullduplex subscribe ws://127.0.0.1:8000/pubsub ticker chat --since 0
    {"topic":"ticker","seq":1,"data":{...},"time":1700000000.1}
    {"topic":"ticker","gap":{"since":1,"first_available":40,"reason":"trimmed"}}

    fullduplex publish ws://127.0.0.1:8000/pubsub chat '{"text": "hi"}'
    42
    printf 'one\ntwo\n' | fullduplex publish ws://127.0.0.1:8000/pubsub chat --raw
    43
    44

``subscribe`` prints one JSON line per message and per gap, forever: it reconnects across server
restarts and resumes every topic from its cursor (:func:`fullduplex.subscribe`), so the lines
of a topic have every seq once, in order, or a gap line where history no longer holds them.
``publish`` publishes DATA (JSON if it parses, else the text; ``--raw`` always sends text), or
each line of standard input without DATA, and prints each message's sequence number once the
server acknowledged it.

Both say on standard error why they are not getting anywhere (a refused connection, a server
restarting: ``fullduplex: subscriber: connection failed: ...; reconnecting in 1.2 s``) and stop
with one line and status 2 when retrying cannot help (a malformed URL, an unknown topic, a
refused token). Their output may go into a pipe that closes (``| head -3``): they end quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from .asyncio.subscriber import SubscriptionError, subscribe
from .hub.base import Gap
from .protocol.handshake import ClientHandshake

__all__ = ["add_pubsub_commands"]

EXIT_OK = 0
EXIT_FAILED = 2
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it


def add_pubsub_commands(sub: Any) -> None:
    """Add the ``subscribe`` and ``publish`` commands to the CLI's subparsers."""
    subscribe_cmd = sub.add_parser(
        "subscribe",
        help="print a topic's messages as JSON lines, resuming across reconnections",
    )
    subscribe_cmd.add_argument("url", help="the /pubsub route, e.g. ws://127.0.0.1:8000/pubsub")
    subscribe_cmd.add_argument("topics", nargs="+", metavar="TOPIC", help="topics to follow")
    subscribe_cmd.add_argument(
        "--since", type=int, help="start after this seq (0: all the history kept; default now)"
    )
    _add_common(subscribe_cmd)
    subscribe_cmd.set_defaults(func=_subscribe)

    publish_cmd = sub.add_parser(
        "publish", help="publish DATA (or each line of standard input) and print its seq"
    )
    publish_cmd.add_argument("url", help="the /pubsub route, e.g. ws://127.0.0.1:8000/pubsub")
    publish_cmd.add_argument("topic", help="the topic")
    publish_cmd.add_argument("data", nargs="?", help="the message (default: standard input)")
    publish_cmd.add_argument(
        "--raw", action="store_true", help="send DATA as text even if it parses as JSON"
    )
    publish_cmd.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each acknowledgement"
    )
    _add_common(publish_cmd)
    publish_cmd.set_defaults(func=_publish)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", help="credential, sent as Authorization: Bearer")
    parser.add_argument(
        "--token-param", metavar="NAME", help="also send the token as this query parameter"
    )
    parser.add_argument(
        "--max-delay", type=float, default=20.0, help="backoff cap in seconds (default 20)"
    )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"token": args.token, "token_param": args.token_param, "max_delay": args.max_delay}


def _show_retries() -> None:
    # The subscriber logs why it reconnects at INFO on fullduplex.client: the user of a
    # command line wants to see that rather than a silent wait.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fullduplex: %(message)s"))
    client_log = logging.getLogger("fullduplex.client")
    client_log.addHandler(handler)
    client_log.setLevel(logging.INFO)
    client_log.propagate = False


def _run(url: str, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command's coroutine: a bad URL is one line, Ctrl-C and a closed stdout quiet."""
    try:
        ClientHandshake(url)  # what subscribe() checks too, before any coroutine exists
    except ValueError as exc:
        print(f"fullduplex: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _show_retries()
    try:
        result: int = asyncio.run(main())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output left (``| head -3``). The interpreter's last flush of
        # stdout would fail again: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    return result


def _subscribe(args: argparse.Namespace) -> int:
    return _run(args.url, lambda: _subscribe_main(args))


async def _subscribe_main(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        async with subscribe(args.url, args.topics, since=args.since, **_options(args)) as sub:
            async for item in sub:
                line: dict[str, Any]
                if isinstance(item, Gap):
                    gap = {"since": item.since, "first_available": item.first_available}
                    line = {"topic": item.topic, "gap": {**gap, "reason": str(item.reason)}}
                else:
                    line = {"topic": item.topic, "seq": item.seq, "data": item.data}
                    line["time"] = item.time
                out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
                out.flush()
    except SubscriptionError as exc:
        print(f"fullduplex: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _publish(args: argparse.Namespace) -> int:
    return _run(args.url, lambda: _publish_main(args))


def _parse(text: str, raw: bool) -> Any:
    if raw:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _lines(args: argparse.Namespace) -> AsyncIterator[str]:
    if args.data is not None:
        yield args.data
        return
    # Standard input is read by a daemon thread: waiting for a line typed by hand must not
    # stop the event loop, which answers the server's keepalive pings meanwhile (and a thread
    # of the default executor, blocked in readline, would hold up the exit after Ctrl-C).
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    while (line := await lines.get()) is not None:
        yield line


async def _publish_main(args: argparse.Namespace) -> int:
    try:
        async with subscribe(args.url, [], **_options(args)) as pub:
            async for line in _lines(args):
                ack = await pub.publish(args.topic, _parse(line, args.raw), timeout=args.timeout)
                print(ack.seq, flush=True)
    except (SubscriptionError, TimeoutError) as exc:
        print(f"fullduplex: {exc or 'no acknowledgement in time'}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
