"""``fullduplex serve``: your application (``MODULE:ATTR``) or the demo, in one process or N.

::

    fullduplex serve myproject.main:app --workers 4 --port 8000
    fullduplex serve myproject.main:create_app --factory --reload
    fullduplex serve main:app --uds /run/app.sock --root-path /api

The application is a :class:`fullduplex.App` or any ASGI 3 application (FastAPI, Starlette...).
The options follow uvicorn's names where they mean the same thing (``--app-dir``,
``--factory``, ``--workers``, ``--reload``, ``--reload-dir``, ``--uds``, ``--fd``,
``--root-path``, ``--ssl-certfile``, ``--ssl-keyfile``, ``--ws-max-size``, ``--ws-ping-interval``,
``--timeout-keep-alive``, ``--backlog``, ``--proxy-headers``, ``--forwarded-allow-ips``...), and
every limit and timeout of :class:`fullduplex.config.Config` has an option of its own name
(``--max-message-size``, ``--open-timeout``...; ``none`` disables it).

With ``--workers N`` (even 1) or ``--reload``, a supervisor runs the workers: see
:mod:`fullduplex.supervisor`. Without them, one process serves.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .asyncio.proxies import TrustedProxies
from .config import Config

__all__ = ["add_serve_parser", "serve_command"]

EXIT_CLEAN = 0
EXIT_FAILED = 2

# Config fields under a second, uvicorn's, option name where the meaning is the same.
_UVICORN_NAMES = {
    "max_message_size": "--ws-max-size",
    "max_queue": "--ws-max-queue",
    "ping_interval": "--ws-ping-interval",
    "ping_timeout": "--ws-ping-timeout",
    "keepalive_timeout": "--timeout-keep-alive",
}
# Config fields with options written out below (their own defaults or spellings).
_OWN_OPTIONS = {"forwarded_allow_ips", "root_path"}


def add_serve_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``sub`` (an argparse subparsers object)."""
    serve: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve an App or ASGI application (MODULE:ATTR), or the demo",
        description="Serve MODULE:ATTR (a fullduplex.App or an ASGI 3 application), or the "
        "demo (echo, live transports, chat) when no application is named.",
    )
    serve.add_argument(
        "app", nargs="?", metavar="MODULE:ATTR", help="the application, e.g. main:app"
    )
    where = serve.add_argument_group("where to listen")
    where.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    where.add_argument("--port", type=int, default=8000, help="port, 0 for any (default 8000)")
    where.add_argument("--uds", metavar="PATH", help="listen on this Unix domain socket instead")
    where.add_argument(
        "--fd", type=int, metavar="N", help="listen on this inherited socket file descriptor"
    )
    where.add_argument(
        "--ssl-certfile", "--certfile", dest="certfile", help="TLS certificate (PEM): https, wss"
    )
    where.add_argument("--ssl-keyfile", "--keyfile", dest="keyfile", help="TLS private key (PEM)")
    where.add_argument("--ssl-keyfile-password", help="password of an encrypted --ssl-keyfile")
    app = serve.add_argument_group("the application")
    app.add_argument(
        "--app-dir", default=".", metavar="DIR", help="import the app from DIR (default .)"
    )
    app.add_argument(
        "--factory", action="store_true", help="MODULE:ATTR is a function that returns the app"
    )
    app.add_argument(
        "--root-path",
        default="",
        metavar="PATH",
        help="the path prefix the app is mounted under behind a proxy (ASGI root_path)",
    )
    app.add_argument(
        "--broker",
        metavar="URL",
        help="demo only: hub backend shared by several processes, e.g. redis://127.0.0.1:6379/0 "
        "or a Redis Cluster, redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    )
    app.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve Prometheus metrics at /metrics, and /healthz and /readyz (the demo: on)",
    )
    procs = serve.add_argument_group("processes")
    procs.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N worker processes on one socket under a supervisor (restarts, SIGHUP)",
    )
    procs.add_argument(
        "--reload", action="store_true", help="restart the workers when a .py file changes"
    )
    procs.add_argument(
        "--reload-dir",
        action="append",
        metavar="DIR",
        help="folder to watch with --reload (repeatable; default: --app-dir)",
    )
    procs.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    procs.add_argument("--worker-channel", type=int, help=argparse.SUPPRESS)
    _add_config_options(serve.add_argument_group("limits and timeouts (none disables one)"))
    serve.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop of the serving processes (default auto: uvloop when installed)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level (default info)",
    )
    serve.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object per line (default text)",
    )
    serve.set_defaults(func=serve_command)
    return serve


def _add_config_options(group: Any) -> None:
    # One option per Config field, named after it, with its help and default from Config:
    # a new setting gets its option here without another line.
    defaults = Config()
    for spec in dataclasses.fields(Config):
        name = spec.name
        if name in _OWN_OPTIONS:
            continue
        flags = ["--" + name.replace("_", "-")]
        if name in _UVICORN_NAMES:
            flags.append(_UVICORN_NAMES[name])
        default = getattr(defaults, name)
        help_text = f"{Config.help(name)} (default {default})"
        if spec.type == "bool":
            group.add_argument(
                *flags,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        parse = _PARSERS[str(spec.type)]
        group.add_argument(
            *flags, dest=name, type=parse, default=argparse.SUPPRESS, metavar="N", help=help_text
        )
    group.add_argument(
        "--ws-per-message-deflate",
        dest="compression",
        type=_boolean,
        default=argparse.SUPPRESS,
        metavar="BOOL",
        help="uvicorn's spelling of --compression / --no-compression",
    )
    group.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        default=os.environ.get("FORWARDED_ALLOW_IPS", Config().forwarded_allow_ips),
        help="comma-separated trusted proxy IPs or networks, '*' for all (default "
        "$FORWARDED_ALLOW_IPS or 127.0.0.1)",
    )


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "off"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _boolean(text: str) -> bool:
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    try:
        return words[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"want true or false, got {text!r}") from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "float | None": _optional(float),
    "int | None": _optional(int),
    "int": int,
    "str": str,
}


def serve_command(args: argparse.Namespace) -> int:
    """Run ``fullduplex serve`` with parsed arguments; return the exit status."""
    from .logs import configure

    configure(args.log_level, args.log_format)
    options = {
        spec.name: getattr(args, spec.name)
        for spec in dataclasses.fields(Config)
        if hasattr(args, spec.name)
    }
    try:
        Config(**options)  # every setting checked here, with its name, before any process
    except (TypeError, ValueError) as exc:
        return _fail(str(exc))
    problem = _check_arguments(args)
    if problem:
        return _fail(problem)
    try:
        TrustedProxies(args.forwarded_allow_ips)
    except ValueError as exc:
        return _fail(f"--forwarded-allow-ips: {exc}")
    try:
        ctx = _ssl_context(args)
    except ssl.SSLError as exc:
        # OpenSSL's own text ("[SSL] PEM lib (_ssl.c:3905)") names neither file nor cause.
        files = args.certfile + (f" and {args.keyfile}" if args.keyfile else "")
        why = f" ({exc.reason})" if exc.reason else ""
        return _fail(
            f"cannot load the TLS certificate from {files}: not a PEM certificate with its"
            f" private key, or a wrong --ssl-keyfile-password{why}"
        )
    except OSError as exc:
        return _fail(f"cannot load the TLS certificate: {exc.strerror or exc}")
    if args.worker_channel is not None:
        return _serve_one(args, options, ctx, channel=socket.socket(fileno=args.worker_channel))
    if args.workers is not None or args.reload:
        return _supervise(args, options)
    return _serve_one(args, options, ctx, channel=None)


def _fail(message: str) -> int:
    print(f"fullduplex: {message}", file=sys.stderr)
    return EXIT_FAILED


def _check_arguments(args: argparse.Namespace) -> str | None:
    if args.workers is not None and args.workers < 1:
        return "--workers must be at least 1"
    if not 0 <= args.port <= 65535:
        return f"--port must be between 0 and 65535, not {args.port}"
    if args.keyfile and not args.certfile:
        return "--ssl-keyfile needs --ssl-certfile"
    if args.app is not None:
        module, sep, attr = args.app.partition(":")
        if not (module and sep and attr):
            return f"the app must be MODULE:ATTR (e.g. main:app), got {args.app!r}"
        if args.broker:
            return "--broker is the demo's option: your app creates its own hub"
        return None
    if args.factory:
        return "--factory needs an application, MODULE:ATTR"
    if (args.workers or 1) > 1 and not args.broker and args.worker_channel is None:
        return (
            "the demo with --workers > 1 needs --broker: each process has its own hub, so "
            "without a shared broker (redis://...) clients of different processes would see "
            "different topics"
        )
    if args.broker and args.broker.lower().startswith("redis+cluster://"):
        try:
            from .hub.slots import parse_cluster_url
        except ImportError:
            return "--broker needs the redis package: pip install '.[redis]' in a checkout"
        try:
            parse_cluster_url(args.broker)
        except ValueError as exc:
            return f"--broker: {exc}"
        return None
    if args.broker and not args.broker.startswith(("redis://", "rediss://", "unix://")):
        return (
            "--broker wants a redis:// URL (or redis+cluster://host:port,host:port for a "
            f"Redis Cluster), got {args.broker!r}"
        )
    if args.broker:
        try:
            import redis.asyncio  # noqa: F401  # the hub's Redis backend imports it later
        except ImportError:
            return "--broker needs the redis package: pip install '.[redis]' in a checkout"
    return None


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.certfile:
        return None
    for option, path in (("--ssl-certfile", args.certfile), ("--ssl-keyfile", args.keyfile)):
        if path and not os.path.isfile(path):
            # load_cert_chain's FileNotFoundError does not say which of the two is missing.
            raise OSError(errno.ENOENT, f"{option} {path}: no such file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.certfile, args.keyfile, args.ssl_keyfile_password)
    return ctx


def _load(args: argparse.Namespace) -> Any:
    if args.app is None:
        from .demo import create_app

        # One process of several publishes the ticker; the broker shares it with the others.
        ticker = args.worker_index == 0
        return create_app(args.broker, ticker=ticker, metrics=args.metrics is not False)
    from .asyncio.router import App
    from .importer import load_app

    app = load_app(args.app, app_dir=args.app_dir, factory=args.factory)
    if args.metrics:
        if not isinstance(app, App):
            from .asgi import ASGIAdapter

            app = ASGIAdapter(app)  # metrics answer in front of the ASGI application
        app.enable_metrics()
    return app


def _bind(args: argparse.Namespace, options: dict[str, Any]) -> socket.socket:
    from .supervisor import bind_socket

    backlog = options.get("backlog", Config().backlog)
    return bind_socket(args.host, args.port, uds=args.uds, fd=args.fd, backlog=backlog)


def _where(args: argparse.Namespace) -> str:
    if args.fd is not None:
        return f"fd {args.fd}"
    if args.uds:
        return f"unix:{args.uds}"
    return f"{args.host}:{args.port}"


def _serve_one(
    args: argparse.Namespace,
    options: dict[str, Any],
    ctx: ssl.SSLContext | None,
    *,
    channel: socket.socket | None,
) -> int:
    """One process: alone, or a supervisor's worker (``channel``)."""
    from .hub.base import HubUnavailable
    from .importer import ImportFromStringError
    from .supervisor import run_worker

    try:
        app = _load(args)
    except ImportFromStringError as exc:
        return _fail(str(exc))
    try:
        sock = _bind(args, options)
    except OSError as exc:
        return _fail(f"cannot serve on {_where(args)}: {exc.strerror or exc}")
    on_ready = None if channel is not None else _banner(args, sock, ctx is not None)
    try:
        run_worker(
            app, sock, ssl=ctx, options=options, channel=channel, on_ready=on_ready, loop=args.loop
        )
    except HubUnavailable as exc:  # at startup: a broker that does not answer
        return _fail(f"the hub's broker cannot be reached: {exc}")
    finally:
        sock.close()
        if args.uds and channel is None and args.fd is None:
            _unlink(args.uds)
    return EXIT_CLEAN


def _supervise(args: argparse.Namespace, options: dict[str, Any]) -> int:
    from .supervisor import DRAIN_TIMEOUT, Supervisor

    if args.reload:
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            return _fail("--reload needs watchfiles: pip install 'fullduplex[reload]'")
    try:
        sock = _bind(args, options)
    except OSError as exc:
        return _fail(f"cannot serve on {_where(args)}: {exc.strerror or exc}")
    reload_dirs = (args.reload_dir or [args.app_dir]) if args.reload else None
    close_timeout = options.get("close_timeout", Config().close_timeout)
    argv = list(args.serve_argv)

    def command(index: int, listen_fd: int, channel_fd: int) -> Sequence[str]:
        # The worker parses the same options; the last --fd wins over the user's own.
        extra = ["--fd", str(listen_fd), "--worker-index", str(index)]
        extra += ["--worker-channel", str(channel_fd)]
        return [sys.executable, "-m", "fullduplex", "serve", *argv, *extra]

    supervisor = Supervisor(
        command,
        sock,
        workers=args.workers or 1,
        reload_dirs=reload_dirs,
        stop_timeout=(close_timeout or 30.0) + DRAIN_TIMEOUT + 5.0,
        on_ready=_banner(args, sock, bool(args.certfile), workers=args.workers or 1),
    )
    metrics_dir = _prepare_metrics(args)
    try:
        return supervisor.run()
    finally:
        sock.close()
        if args.uds and args.fd is None:
            _unlink(args.uds)
        if metrics_dir is not None:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)


def _prepare_metrics(args: argparse.Namespace) -> str | None:
    """The workers' metrics directory (they sum each other's figures), if metrics are on.

    Returns the directory to remove at exit: None when metrics are off or when the
    directory was given in the environment.
    """
    if args.metrics is False or (args.metrics is None and args.app is not None):
        return None
    from .metrics import ENV_DIR, prepare_directory

    given = os.environ.get(ENV_DIR)
    directory = prepare_directory()  # exported to the workers through the environment
    return None if given else directory


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _banner(
    args: argparse.Namespace, sock: socket.socket, tls: bool, *, workers: int = 0
) -> Callable[[], None]:
    from .supervisor import describe_address

    base = describe_address(sock, tls=tls)
    processes = f", {workers} worker{'s' if workers > 1 else ''}" if workers else ""
    reload = ", reloading on changes" if args.reload else ""

    def banner() -> None:
        what = args.app or "the demo"
        # Called once listening: a taken port fails before, and never shows this.
        logging.getLogger("fullduplex").info("serving %s on %s/", what, base)
        print(
            f"fullduplex {__version__} serving {what} on {base}/ "
            f"(pid {os.getpid()}{processes}{reload})",
            flush=True,
        )
        if args.app is None and not base.startswith("unix:"):
            ws = base.replace("http", "ws", 1)
            print(f"  page      {base}/", flush=True)
            print(f"  echo      {ws}/ws  (subprotocol echo, timestamped)", flush=True)
            print(f"  raw echo  {ws}/echo", flush=True)
            print(f"  JSON      {base}/api/data", flush=True)
            print(f"  live      {base}/live.html  chat {base}/chat.html", flush=True)

    return banner
