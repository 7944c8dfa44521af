"""The ``fullduplex`` command: ``serve`` an app, ``connect`` to a WebSocket, ``bench`` a server.

``fullduplex serve [MODULE:ATTR]`` is in :mod:`fullduplex.cli_serve`.

``fullduplex connect URL`` is an interactive client like wscat: each line of standard input is
sent as a text message, each message received is printed. On a terminal, lines get a timestamp
and a marker (``<`` received, ``*`` the tool's own notes; what you type is the terminal's echo);
through a pipe, received messages are printed as they are, one per line, and notes go to
stderr. Commands: ``/help``, ``/ping``, ``/close [code [reason]]``, ``/binary HEX``;
``//text`` sends ``/text``, and any other ``/word`` is refused with a hint.
The exit status is 0 when the connection closed cleanly (1000 or 1001), 1 when it closed
otherwise, 2 when it could not be opened, 130 after Ctrl-C (which closes with 1000 first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .cli_serve import add_serve_parser

__all__ = ["main"]

EXIT_CLEAN = 0
EXIT_UNCLEAN = 1
EXIT_FAILED = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The load generator has its own parser (fullduplex.bench): hand it every argument.
        from .bench import main as bench_main

        return bench_main(argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.serve_argv = argv[1:]  # a supervisor gives its workers the same options
    if args.command is None:
        parser.print_help()
        return EXIT_FAILED
    result: int = args.func(args)
    return result


class _OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line on standard error and status 2, not the usage block first.

    ``--port abc`` printed the 24 lines of ``serve``'s usage above the one that says what is
    wrong; ``--help`` still prints all of it.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_FAILED, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="fullduplex", description="Real-time full-duplex messaging: WebSocket tools."
    )
    parser.add_argument("--version", action="version", version=f"fullduplex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)

    add_serve_parser(sub)

    connect = sub.add_parser("connect", help="interactive WebSocket client, like wscat")
    connect.add_argument("url", help="ws:// or wss:// URL")
    connect.add_argument(
        "--subprotocol", action="append", default=[], help="offer a subprotocol (repeatable)"
    )
    connect.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="extra header"
    )
    connect.add_argument("--origin", help="Origin header to send")
    connect.add_argument(
        "--no-compression", action="store_true", help="do not offer permessage-deflate"
    )
    connect.add_argument("--insecure", action="store_true", help="skip TLS certificate checks")
    connect.add_argument(
        "--linger",
        type=float,
        default=0.5,
        help="after input ends, wait until no message arrived for this long (default 0.5 s)",
    )
    connect.set_defaults(func=_connect)

    from .cli_pubsub import add_pubsub_commands

    add_pubsub_commands(sub)  # subscribe, publish

    # Listed for --help; main() hands "bench ..." to fullduplex.bench before parsing.
    sub.add_parser(
        "bench",
        help="load generator: connections, message size, rate or ping-pong, latency percentiles",
        add_help=False,
    )
    return parser


# -- connect ----------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> int:
    headers = []
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"fullduplex: --header wants NAME:VALUE, got {item!r}", file=sys.stderr)
            return EXIT_FAILED
        headers.append((name.strip(), value.strip()))
    try:
        return asyncio.run(_connect_main(args, headers))
    except KeyboardInterrupt:  # a second Ctrl-C while closing
        return EXIT_INTERRUPTED


class _Console:
    """Prints what was sent and received: decorated on a terminal, raw through a pipe."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        #: When a message was last sent or received: --linger waits for this to be old.
        self.last_activity = time.monotonic()

    def received(self, message: str | bytes) -> None:
        self.last_activity = time.monotonic()
        text = message if isinstance(message, str) else f"[binary {len(message)} B] {message.hex()}"
        if self.tty:
            print(f"{time.strftime('%H:%M:%S')} < {text}", flush=True)
        else:
            print(text, flush=True)

    def info(self, text: str) -> None:
        if self.tty:
            print(f"{time.strftime('%H:%M:%S')} * {text}", flush=True)
        else:
            print(f"* {text}", file=sys.stderr, flush=True)


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
    loop.call_soon_threadsafe(lines.put_nowait, None)


async def _connect_main(args: argparse.Namespace, headers: list[tuple[str, str]]) -> int:
    from .asyncio.client import connect
    from .auth import redact_target
    from .protocol import ConnectionClosed, InvalidHandshake, InvalidStatus

    console = _Console()
    shown = redact_target(args.url)  # a ?token= stays off the screen and out of CI logs
    ctx = None
    if args.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        ws = await connect(
            args.url,
            subprotocols=args.subprotocol,
            origin=args.origin,
            headers=headers,
            compression=not args.no_compression,
            ssl=ctx,
        )
    except InvalidStatus as exc:
        body = exc.body.decode(errors="replace").strip()
        print(f"fullduplex: server answered HTTP {exc.status}: {body}", file=sys.stderr)
        return EXIT_FAILED
    except ssl.SSLCertVerificationError as exc:
        # A self-signed or private-CA certificate (a development server): say how to go on.
        print(
            f"fullduplex: cannot connect to {shown}: {exc.verify_message or exc}"
            " (--insecure skips the certificate check)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except (OSError, InvalidHandshake, TimeoutError, ValueError) as exc:
        print(f"fullduplex: cannot connect to {shown}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    console.info(f"connected to {shown} (subprotocol: {ws.subprotocol or 'none'})")

    async def receive() -> None:
        closing: asyncio.Future[None] | None = None
        try:
            async for message in ws:
                if closing is not None:
                    continue  # read on, so that the server's close frame gets through
                try:
                    console.received(message)
                except BrokenPipeError:
                    # Whoever read our output left (``| head -1``): close, quietly. Later
                    # writes to stdout (and the last flush) go to /dev/null, not to a traceback.
                    _silence_stdout()
                    closing = asyncio.ensure_future(ws.close())
        except ConnectionClosed:
            pass
        if closing is not None:
            await closing

    receiver = asyncio.create_task(receive())
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_read_stdin, args=(loop, lines), daemon=True).start()
    closed = asyncio.ensure_future(ws.wait_closed())
    interrupted = False
    try:
        while True:
            getter = asyncio.ensure_future(lines.get())
            await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            line = getter.result()
            if line is None:
                await _linger(console, args.linger, closed)
                await ws.close()
                break
            if not await _command(ws, line, console, args.linger, closed):
                break
    except ConnectionClosed:
        pass
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancelled this task. Close properly instead of leaving the
        # server a 1006 and the user a KeyboardInterrupt traceback.
        interrupted = True
        await ws.close()
    await ws.wait_closed()
    await receiver
    code, reason = ws.close_code, ws.close_reason
    console.info(f"closed: {code} {reason or ''}".rstrip())
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_CLEAN if code in (1000, 1001) else EXIT_UNCLEAN


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


#: ``connect``'s commands, listed by ``/help``.
_COMMANDS = {
    "/help": "this list",
    "/ping": "send a ping and show the round-trip time",
    "/close [CODE [REASON]]": "close the connection (default 1000)",
    "/binary HEX": "send a binary message, e.g. /binary 00ff10",
    "//TEXT": "send the text /TEXT (a line starting with / is a command)",
}


async def _linger(console: _Console, linger: float, closed: asyncio.Future[None]) -> None:
    while not closed.done():
        idle = time.monotonic() - console.last_activity
        if idle >= linger:
            return
        await asyncio.sleep(linger - idle)


async def _command(
    ws: object, line: str, console: _Console, linger: float, closed: asyncio.Future[None]
) -> bool:
    """Handle one input line; return False once the connection is being closed."""
    from .asyncio.connection import WebSocket

    assert isinstance(ws, WebSocket)
    command = line.split(maxsplit=1)[0] if line.startswith("/") else ""
    if line.startswith("//"):
        await ws.send(line[1:])
    elif command == "/help":
        for usage, what in _COMMANDS.items():
            console.info(f"{usage:24} {what}")
    elif command not in ("", "/ping", "/close", "/binary"):
        console.info(f"unknown command {command} (not sent): /help lists them, //text sends /text")
    elif line.startswith("/ping"):
        rtt = await ws.ping()
        console.info(f"pong in {rtt * 1000:.2f} ms")
    elif line.startswith("/close"):
        parts = line.split(maxsplit=2)
        if len(parts) > 1 and not parts[1].isdigit():
            console.info(f"/close wants a close code, e.g. /close 1000 bye, not {parts[1]!r}")
            return True
        # The answers to what was sent just before (a pipe: 'hello' then '/close') are
        # printed first, as at the end of the input: messages received after our close frame
        # are not delivered.
        await _linger(console, linger, closed)
        try:
            code = int(parts[1]) if len(parts) > 1 else 1000
            await ws.close(code, parts[2] if len(parts) > 2 else "")
        except ValueError as exc:
            console.info(f"cannot close that way: {exc}")
            return True
        except Exception as exc:
            console.info(f"cannot close that way: {exc}")
            return True
        return False
    elif line.startswith("/binary"):
        try:
            data = bytes.fromhex(line[len("/binary") :].strip())
        except ValueError:
            console.info("/binary wants hexadecimal digits, e.g. /binary 00ff10")
            return True
        await ws.send(data)
    else:
        await ws.send(line)
    console.last_activity = time.monotonic()  # its answer is worth lingering for
    return True
