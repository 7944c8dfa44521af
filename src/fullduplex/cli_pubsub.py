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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from .asyncio.subscriber import SubscriptionError, subscribe
from .hub.base import Gap

__all__ = ["add_pubsub_commands"]

EXIT_OK = 0
EXIT_FAILED = 2


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


def _subscribe(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_subscribe_main(args))
    return EXIT_OK


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
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_publish_main(args))
    return EXIT_FAILED


def _parse(text: str, raw: bool) -> Any:
    if raw:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _publish_main(args: argparse.Namespace) -> int:
    stdin = (line.rstrip("\r\n") for line in sys.stdin)
    lines = [args.data] if args.data is not None else stdin
    try:
        async with subscribe(args.url, [], **_options(args)) as pub:
            for line in lines:
                ack = await pub.publish(args.topic, _parse(line, args.raw), timeout=args.timeout)
                print(ack.seq, flush=True)
    except (SubscriptionError, TimeoutError) as exc:
        print(f"fullduplex: {exc or 'no acknowledgement in time'}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
