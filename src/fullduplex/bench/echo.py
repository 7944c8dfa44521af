"""``fullduplex bench``: a load generator for WebSocket echo servers.

::

    fullduplex bench ws://127.0.0.1:8000/echo --connections 100 --size 32 --duration 10
    fullduplex bench ws://127.0.0.1:8000/echo --connections 1000 --size 512 --rate 20000

It opens ``--connections`` WebSocket connections with fullduplex's own client, then sends
``--size``-byte binary messages on each and times the echoes:

* ``--ping-pong`` (the default): each connection sends its next message as soon as the previous
  one has come back, so the server is driven as fast as it answers;
* ``--rate N``: N messages per second in total, spread evenly over the connections. Latency is
  measured from the moment a message *should* have been sent, so a server that falls behind
  shows it in the percentiles instead of silently slowing the load down (coordinated omission).

While it runs, one status line is updated in place on a terminal (carriage return); through a pipe a
line is printed every ``--interval`` seconds. The summary gives messages sent and received,
throughput and round-trip latency percentiles (p50, p90, p99, max).

Exit status: 0 after a run that received replies, 1 if no connection could be opened or no
reply came back, 2 for invalid arguments.

Run it on another CPU than the server (``taskset -c 1 fullduplex bench ...``); for comparisons
between servers see ``bench/run.py`` in the repository, which uses a leaner raw-socket client
on the same engine (:mod:`.load`, :mod:`.latency`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from ..asyncio import WebSocket, connect
from ..protocol import ConnectionClosed, InvalidHandshake, InvalidStatus
from .latency import LatencyHistogram
from .load import (
    DEFAULT_CONNECT_CONCURRENCY,
    BenchError,
    OpenError,
    open_many,
    raise_file_limit,
    run_loop,
)

__all__ = [
    "BenchConfig",
    "Progress",
    "Summary",
    "add_arguments",
    "build_parser",
    "config_from_args",
    "main",
    "run",
    "run_args",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: Largest ``--size`` accepted: 64 MiB.
MAX_SIZE = 64 * 2**20
#: Largest ``--connections`` accepted, to catch typos before opening file descriptors.
MAX_CONNECTIONS = 100_000
# -- configuration and results --------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Attributes:
        url: a ``ws://`` or ``wss://`` URL of an echo endpoint.
        connections: connections to open.
        size: payload bytes per message.
        rate: total messages per second, or None for ping-pong (as fast as echoes return).
        duration: seconds of measured load.
        text: send text messages (ASCII) instead of binary.
        compression: offer permessage-deflate (off by default: random payloads do not compress).
        open_timeout: seconds allowed for each opening handshake.
        interval: seconds between progress reports.
        subprotocols: subprotocols offered (for routes that require one).
    """

    url: str
    connections: int = 1
    size: int = 32
    rate: float | None = None
    duration: float = 10.0
    text: bool = False
    compression: bool = False
    open_timeout: float = 10.0
    interval: float = 1.0
    subprotocols: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise :class:`BenchError` with a readable message if an option is out of range."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise BenchError(f"URL must look like ws://host:port/path, got {self.url!r}")
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise BenchError(f"--connections must be between 1 and {MAX_CONNECTIONS:,}")
        if not 0 <= self.size <= MAX_SIZE:
            raise BenchError(f"--size must be between 0 and {MAX_SIZE:,} bytes")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise BenchError("--rate must be a positive number of messages per second")
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise BenchError("--duration must be a positive number of seconds")
        if not self.interval > 0:
            raise BenchError("--interval must be positive")


@dataclass(frozen=True)
class Progress:
    """A periodic report while the load runs."""

    elapsed: float
    sent: int
    received: int
    #: Messages received per second since the previous report.
    rate: float
    p50: float
    p99: float
    errors: int

    def line(self) -> str:
        """One human-readable status line."""
        return (
            f"{self.elapsed:6.1f}s  sent {self.sent:,}  received {self.received:,}  "
            f"{self.rate:,.0f} msg/s  p50 {_ms(self.p50)}  p99 {_ms(self.p99)}"
            + (f"  errors {self.errors}" if self.errors else "")
        )


@dataclass(frozen=True)
class Summary:
    """The result of a run. Times are in seconds."""

    url: str
    mode: str
    connections: int
    size: int
    duration: float
    sent: int
    received: int
    errors: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float
    #: What went wrong first, when ``errors`` is not 0 (e.g. the server's close code and reason).
    first_error: str = ""

    @property
    def messages_per_second(self) -> float:
        """Echoes received per second."""
        return self.received / self.duration if self.duration else 0.0

    @property
    def bytes_per_second(self) -> float:
        """Payload bytes received per second."""
        return self.messages_per_second * self.size

    def report(self) -> str:
        """The summary as printed by the command."""
        return "\n".join(
            [
                f"{self.url}: {self.connections:,} connection(s), {self.size:,}-byte messages, "
                f"{self.mode}, {self.duration:.1f} s",
                f"  messages   {self.sent:,} sent, {self.received:,} received, "
                f"{self.errors} error(s)"
                + (f" (first: {self.first_error})" if self.errors and self.first_error else ""),
                f"  throughput {self.messages_per_second:,.0f} msg/s, "
                f"{self.bytes_per_second / 1e6:,.2f} MB/s",
                f"  latency    p50 {_ms(self.p50)}  p90 {_ms(self.p90)}  p99 {_ms(self.p99)}  "
                f"max {_ms(self.max)}  (mean {_ms(self.mean)})",
            ]
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


# -- the load -------------------------------------------------------------------------------


class _Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.latency = LatencyHistogram()
        self.first_error: BaseException | None = None
        #: perf_counter() of the last echo received.
        self.last_received = 0.0

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = exc


async def _open_all(
    config: BenchConfig, opening: Callable[[int, int], None] | None = None
) -> list[WebSocket]:
    max_size = max(config.size, 2**20)
    done = 0

    def ended() -> None:
        nonlocal done
        done += 1

    async def one(timeout: float | None) -> WebSocket:
        return await connect(
            config.url,
            subprotocols=config.subprotocols,
            compression=config.compression,
            open_timeout=config.open_timeout,
            ping_interval=None,
            max_size=max_size,
            max_frame_size=max_size,
        )

    async def close(opened: list[WebSocket]) -> None:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)

    async def report() -> None:
        assert opening is not None
        while True:  # bounded: cancelled once every handshake ended
            opening(done, config.connections)
            await asyncio.sleep(config.interval)

    reporter = asyncio.ensure_future(report()) if opening is not None else None
    try:
        return await open_many(
            one,
            config.connections,
            close=close,
            concurrency=DEFAULT_CONNECT_CONCURRENCY,
            ended=ended,
        )
    except OpenError as exc:
        raise BenchError(
            f"cannot open {exc.failed} of {exc.wanted} connection(s) to {config.url}: "
            f"{_describe(exc.first)}"
        ) from None
    finally:
        if reporter is not None:
            reporter.cancel()
        if opening is not None:
            opening(done, config.connections)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ConnectionClosed) and exc.code == 1008:
        # A fullduplex server's per-WebSocket rates (1,000 messages/s, 16 MiB/s by default)
        # close a ping-pong benchmark; say how to lift them rather than leave a bare 1008.
        option = "bytes" if "bytes" in text else "messages"
        text += f" (a server limit such as fullduplex's --max-{option}-per-second)"
    elif isinstance(exc, InvalidStatus) and exc.status == 429:
        # Every benchmark connection comes from one IP: past fullduplex's per-IP defaults (50
        # handshakes a second, 256 open), a server that protects itself refuses the rest.
        text += (
            " (a per-IP limit: serve the benchmark with --rate-per-ip none"
            " --max-connections-per-ip none)"
        )
    return text


async def _ping_pong(ws: WebSocket, payload: str | bytes, stats: _Stats, until: float) -> None:
    clock = time.perf_counter
    while clock() < until:
        started = clock()
        await ws.send(payload)
        stats.sent += 1
        await ws.recv()
        stats.received += 1
        stats.last_received = now = clock()
        stats.latency.record(now - started)


async def _at_rate(
    ws: WebSocket, payload: str | bytes, interval: float, offset: float, stats: _Stats, until: float
) -> None:
    clock = time.perf_counter
    scheduled: collections.deque[float] = collections.deque()  # sends awaiting their echo

    async def receive() -> None:
        while True:
            await ws.recv()
            stats.received += 1
            stats.last_received = now = clock()
            if scheduled:
                stats.latency.record(now - scheduled.popleft())

    receiver = asyncio.ensure_future(receive())
    try:
        due = clock() + offset
        while due < until:
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if receiver.done():
                receiver.result()  # the connection closed: raise why
            scheduled.append(due)
            await ws.send(payload)
            stats.sent += 1
            due += interval
        # Give the last echoes a moment to arrive (bounded by one interval, at most 1 s).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiver), min(1.0, max(interval, 0.1)))
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await receiver


async def _guard(coro: Any, stats: _Stats) -> None:
    try:
        await coro
    except (ConnectionClosed, OSError) as exc:
        stats.error(exc)


async def run(
    config: BenchConfig,
    progress: Callable[[Progress], None] | None = None,
    opening: Callable[[int, int], None] | None = None,
) -> Summary:
    """Run the benchmark described by ``config`` on the running loop and return its summary.

    Args:
        config: what to run.
        progress: called every ``config.interval`` seconds while the load runs.
        opening: called with (handshakes ended, connections wanted) every ``config.interval``
            seconds while the connections open, and once they all did.

    Raises:
        BenchError: invalid configuration, connections that could not be opened, or no echo
            received at all.
    """
    config.validate()
    raise_file_limit(config.connections)
    sockets = await _open_all(config, opening)
    payload: str | bytes = "x" * config.size if config.text else os.urandom(config.size)
    stats = _Stats()
    started = time.perf_counter()
    until = started + config.duration
    if config.rate is None:
        jobs = [_ping_pong(ws, payload, stats, until) for ws in sockets]
    else:
        per_connection = config.rate / len(sockets)
        interval = 1 / per_connection
        # Spread the connections' send times evenly over one interval.
        jobs = [
            _at_rate(ws, payload, interval, interval * i / len(sockets), stats, until)
            for i, ws in enumerate(sockets)
        ]
    load = asyncio.ensure_future(asyncio.gather(*(_guard(j, stats) for j in jobs)))
    reporter = asyncio.ensure_future(_report(config, stats, started, progress))
    try:
        # Ping-pong jobs stop after their last echo; a stalled server is given 5 s more.
        await asyncio.wait_for(asyncio.shield(load), config.duration + 5)
    except asyncio.TimeoutError:
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await load
    finally:
        # Interrupted (Ctrl-C cancels this task): the shielded jobs are cancelled too, and
        # their gather's CancelledError is taken here, not reported at exit as "exception was
        # never retrieved" with a traceback.
        load.add_done_callback(_retrieve)
        load.cancel()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    # Throughput counts from the first send to the last echo.
    elapsed = max(stats.last_received - started, 1e-9)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    if stats.received == 0:
        why = f" (first error: {_describe(stats.first_error)})" if stats.first_error else ""
        raise BenchError(f"no echo received from {config.url}: is it an echo endpoint?{why}")
    h = stats.latency
    return Summary(
        url=config.url,
        mode="ping-pong" if config.rate is None else f"{config.rate:,.0f} msg/s",
        connections=len(sockets),
        size=config.size,
        duration=elapsed,
        sent=stats.sent,
        received=stats.received,
        errors=stats.errors,
        p50=h.percentile(50),
        p90=h.percentile(90),
        p99=h.percentile(99),
        max=h.max,
        mean=h.mean,
        first_error=_describe(stats.first_error) if stats.first_error else "",
    )


async def _report(
    config: BenchConfig, stats: _Stats, started: float, progress: Callable[[Progress], None] | None
) -> None:
    if progress is None:
        return
    last_received, last_time = 0, started
    while True:
        await asyncio.sleep(config.interval)
        now = time.perf_counter()
        rate = (stats.received - last_received) / (now - last_time)
        last_received, last_time = stats.received, now
        h = stats.latency
        progress(
            Progress(
                now - started,
                stats.sent,
                stats.received,
                rate,
                h.percentile(50),
                h.percentile(99),
                stats.errors,
            )
        )


# -- command line ---------------------------------------------------------------------------


class _Display:
    """Progress on a stream: one line redrawn in place on a terminal, else one per report."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.width = 0

    def __call__(self, progress: Progress) -> None:
        line = progress.line()
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()


class _OneLineParser(argparse.ArgumentParser):
    # A usage mistake is one line (and status 2), as for the other fullduplex commands.
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(prog: str = "fullduplex bench") -> argparse.ArgumentParser:
    """The argument parser of ``fullduplex bench``."""
    parser = _OneLineParser(
        prog=prog, description="Load an echo WebSocket endpoint and report throughput and latency."
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fullduplex bench`` to ``parser`` (for a CLI subcommand)."""
    parser.add_argument("url", help="ws:// or wss:// URL of an echo endpoint")
    parser.add_argument("--connections", "-c", type=int, default=1, help="connections (1)")
    parser.add_argument("--size", "-s", type=int, default=32, help="message payload bytes (32)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--rate", "-r", type=float, metavar="MSG_PER_S", help="total messages per second"
    )
    mode.add_argument(
        "--ping-pong",
        action="store_true",
        help="next message when the echo of the previous one arrives (the default)",
    )
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="seconds (10)")
    parser.add_argument("--text", action="store_true", help="send text instead of binary")
    parser.add_argument(
        "--compression", action="store_true", help="offer permessage-deflate (off by default)"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between progress reports (1)"
    )
    parser.add_argument(
        "--open-timeout", type=float, default=10.0, help="seconds allowed per handshake (10)"
    )
    parser.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        metavar="NAME",
        help="offer a subprotocol, for routes that require one (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A :class:`BenchConfig` from parsed arguments."""
    return BenchConfig(
        url=args.url,
        connections=args.connections,
        size=args.size,
        rate=args.rate,
        duration=args.duration,
        text=args.text,
        compression=args.compression,
        open_timeout=args.open_timeout,
        interval=args.interval,
        subprotocols=tuple(args.subprotocol),
    )


def run_args(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run with parsed arguments, print progress and the summary; return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    config = config_from_args(args)
    try:
        config.validate()
    except BenchError as exc:
        print(f"fullduplex bench: {exc}", file=err)
        return EXIT_USAGE
    display = _Display(err)

    def opening(done: int, wanted: int) -> None:
        print(f"opening connections: {done:,} of {wanted:,}", file=err, flush=True)

    try:
        summary = run_loop(run(config, display, opening))
    except (BenchError, InvalidHandshake) as exc:
        display.finish()
        print(f"fullduplex bench: {exc}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        display.finish()
        print("fullduplex bench: interrupted", file=err)
        return EXIT_FAILED
    display.finish()
    print(summary.report(), file=out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fullduplex bench`` with ``argv`` (without the program name); return the status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error (or --help)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run_args(args)
