"""The ``fullduplex`` command: ``serve`` the demo, ``connect`` to a WebSocket, ``bench`` a server.

``fullduplex connect URL`` is an interactive client like wscat: each line of standard input is
sent as a text message, each message received is printed. On a terminal, lines get a timestamp
and a direction marker (``>`` sent, ``<`` received); through a pipe, received messages are
printed as they are, one per line. Commands: ``/ping``, ``/close [code [reason]]``,
``/binary HEX``. The exit status is 0 when the connection closed cleanly (1000 or 1001), 1 when
it closed otherwise, 2 when it could not be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from . import __version__
from .asyncio.proxies import DEFAULT_FORWARDED_ALLOW_IPS, TrustedProxies

__all__ = ["main"]

EXIT_CLEAN = 0
EXIT_UNCLEAN = 1
EXIT_FAILED = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The load generator has its own parser (fullduplex.bench): hand it every argument.
        from .bench import main as bench_main

        return bench_main(argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_FAILED
    result: int = args.func(args)
    return result


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fullduplex", description="Real-time full-duplex messaging: WebSocket tools."
    )
    parser.add_argument("--version", action="version", version=f"fullduplex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the demo server (echo, live transports, chat; /ws, /echo, /api/data)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--certfile", help="TLS certificate (PEM) to serve https:// and wss://")
    serve.add_argument("--keyfile", help="TLS private key (PEM), with --certfile")
    serve.add_argument(
        "--broker",
        metavar="URL",
        help="hub backend shared by several servers, e.g. redis://127.0.0.1:6379/0 "
        "(default: in memory, this process only)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes sharing the port with SO_REUSEPORT (needs --broker; default 1)",
    )
    serve.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    _add_proxy_arguments(serve)
    serve.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve Prometheus metrics at /metrics, and /healthz and /readyz (the demo: on)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level (default info)",
    )
    serve.set_defaults(func=_serve)

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

    # Listed for --help; main() hands "bench ..." to fullduplex.bench before parsing.
    sub.add_parser(
        "bench",
        help="load generator: connections, message size, rate or ping-pong, latency percentiles",
        add_help=False,
    )
    return parser


def _add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    # uvicorn's names and defaults, so that a deployment moves over unchanged.
    parser.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take the client address and scheme from X-Forwarded-For / X-Forwarded-Proto "
        "when the peer is a trusted proxy (default on)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        default=os.environ.get("FORWARDED_ALLOW_IPS", DEFAULT_FORWARDED_ALLOW_IPS),
        help="comma-separated trusted proxy IPs or networks, '*' for all (default "
        "$FORWARDED_ALLOW_IPS or 127.0.0.1)",
    )


# -- serve ------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.workers < 1:
        print("fullduplex: --workers must be at least 1", file=sys.stderr)
        return EXIT_FAILED
    if args.workers > 1 and not args.broker:
        print(
            "fullduplex: --workers > 1 needs --broker: each process has its own hub, so "
            "without a shared broker (redis://...) clients of different processes would "
            "see different topics",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.broker and not args.broker.startswith(("redis://", "rediss://", "unix://")):
        print(f"fullduplex: --broker wants a redis:// URL, got {args.broker!r}", file=sys.stderr)
        return EXIT_FAILED
    try:
        TrustedProxies(args.forwarded_allow_ips)
    except ValueError as exc:
        print(f"fullduplex: --forwarded-allow-ips: {exc}", file=sys.stderr)
        return EXIT_FAILED
    ctx = None
    if args.certfile:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.certfile, args.keyfile)
    elif args.keyfile:
        print("fullduplex: --keyfile needs --certfile", file=sys.stderr)
        return EXIT_FAILED
    http, ws = ("https", "wss") if ctx else ("http", "ws")
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"{host}:{args.port}"
    if args.worker_index == 0:
        workers = f", {args.workers} workers" if args.workers > 1 else ""
        broker = f" (hub: {args.broker})" if args.broker else ""
        print(f"fullduplex {__version__} serving on {http}://{base}/{workers}{broker}", flush=True)
        print(f"  page      {http}://{base}/", flush=True)
        print(f"  echo      {ws}://{base}/ws  (subprotocol echo, timestamped)", flush=True)
        print(f"  raw echo  {ws}://{base}/echo", flush=True)
        print(f"  JSON      {http}://{base}/api/data", flush=True)
        print(f"  live      {http}://{base}/live.html  chat {http}://{base}/chat.html", flush=True)
    if args.workers > 1 and args.worker_index == 0:
        return _run_workers_with_metrics(args)
    try:
        _run(_serve_main(args, ctx))
    except OSError as exc:
        print(f"fullduplex: cannot serve on {base}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_CLEAN


async def _serve_main(args: argparse.Namespace, ctx: ssl.SSLContext | None) -> None:
    import signal

    from .asyncio.server import serve
    from .demo import create_app

    # One process of several publishes the ticker; the broker shares it with the others.
    app = create_app(args.broker, ticker=args.worker_index == 0, metrics=args.metrics is not False)
    await app.start()
    try:
        server = await serve(
            app,
            args.host,
            args.port,
            ssl=ctx,
            reuse_port=args.workers > 1,
            proxy_headers=args.proxy_headers,
            forwarded_allow_ips=args.forwarded_allow_ips,
        )
    except BaseException:
        await app.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Event streams and long polls are never idle: end them first, then close gracefully.
    app.transports.close()
    await server.shutdown()
    await app.stop()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _run_workers_with_metrics(args: argparse.Namespace) -> int:
    """Run the workers, with a directory where their metrics find each other (if on)."""
    if args.metrics is False:
        return _run_workers(args)
    from .metrics import ENV_DIR, prepare_directory

    given = os.environ.get(ENV_DIR)
    directory = prepare_directory()  # exported to the workers through the environment
    try:
        return _run_workers(args)
    finally:
        if not given:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


def _run_workers(args: argparse.Namespace) -> int:
    """Start worker processes 1..N-1 on the same port, serve as worker 0, stop them all."""
    import signal
    import subprocess

    argv = [sys.executable, "-m", "fullduplex", "serve", "--host", args.host]
    argv += ["--port", str(args.port), "--broker", args.broker, "--workers", str(args.workers)]
    argv += ["--log-level", args.log_level, "--forwarded-allow-ips", args.forwarded_allow_ips]
    argv += ["--proxy-headers" if args.proxy_headers else "--no-proxy-headers"]
    if args.metrics is not None:
        argv += ["--metrics" if args.metrics else "--no-metrics"]
    if args.certfile:
        argv += ["--certfile", args.certfile] + (
            ["--keyfile", args.keyfile] if args.keyfile else []
        )
    children = [subprocess.Popen([*argv, "--worker-index", str(i)]) for i in range(1, args.workers)]
    status = EXIT_CLEAN
    try:
        ctx = None
        if args.certfile:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(args.certfile, args.keyfile)
        _run(_serve_main(args, ctx))
    except OSError as exc:
        print(
            f"fullduplex: cannot serve on port {args.port}: {exc.strerror or exc}", file=sys.stderr
        )
        status = EXIT_FAILED
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return status


# -- connect ----------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> int:
    headers = []
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"fullduplex: --header wants NAME:VALUE, got {item!r}", file=sys.stderr)
            return EXIT_FAILED
        headers.append((name.strip(), value.strip()))
    return asyncio.run(_connect_main(args, headers))


class _Console:
    """Prints what was sent and received: decorated on a terminal, raw through a pipe."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last_received = time.monotonic()

    def received(self, message: str | bytes) -> None:
        self.last_received = time.monotonic()
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
    from .protocol import ConnectionClosed, InvalidHandshake, InvalidStatus

    console = _Console()
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
    except (OSError, InvalidHandshake, TimeoutError, ValueError) as exc:
        print(f"fullduplex: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    console.info(f"connected to {args.url} (subprotocol: {ws.subprotocol or 'none'})")

    async def receive() -> None:
        try:
            async for message in ws:
                console.received(message)
        except ConnectionClosed:
            pass

    receiver = asyncio.create_task(receive())
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_read_stdin, args=(loop, lines), daemon=True).start()
    closed = asyncio.ensure_future(ws.wait_closed())
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
            if not await _command(ws, line, console):
                break
    except ConnectionClosed:
        pass
    await ws.wait_closed()
    await receiver
    code, reason = ws.close_code, ws.close_reason
    console.info(f"closed: {code} {reason or ''}".rstrip())
    return EXIT_CLEAN if code in (1000, 1001) else EXIT_UNCLEAN


async def _linger(console: _Console, linger: float, closed: asyncio.Future[None]) -> None:
    while not closed.done():
        idle = time.monotonic() - console.last_received
        if idle >= linger:
            return
        await asyncio.sleep(linger - idle)


async def _command(ws: object, line: str, console: _Console) -> bool:
    """Handle one input line; return False once the connection is being closed."""
    from .asyncio.connection import WebSocket

    assert isinstance(ws, WebSocket)
    if line.startswith("/ping"):
        rtt = await ws.ping()
        console.info(f"pong in {rtt * 1000:.2f} ms")
    elif line.startswith("/close"):
        parts = line.split(maxsplit=2)
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
    return True
