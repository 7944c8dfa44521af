"""The client processes of bench/scale.py: many WebSocket connections from one uvloop process.

    python bench/loadgen/scale_clients.py idle --port P --path /echo --sources 127.0.0.2
    python bench/loadgen/scale_clients.py subscribers --port P --count 10000 --sources 127.0.0.2

Each connection is a raw socket bound to one of ``--sources`` (127.0.0.2, 127.0.0.3, ...:
loopback's ~28,000 ephemeral ports are per source address and destination) with
``IP_BIND_ADDRESS_NO_PORT``, so that the port is chosen at ``connect()`` for the whole
4-tuple rather than at ``bind()`` for the address alone. The handshake, the frames and the
client framing come from bench/loadgen/loadgen.py.

The process talks to bench/scale.py in lines: commands on stdin, one JSON object per event on
stdout (``{"event": ...}``). Every wait is bounded by ``--timeout``.

* ``idle``: ``open N`` opens N more connections (``{"event": "open", "total": ...}``);
  ``warm N`` opens N and closes them again; ``close`` ends every connection and the process
  (``{"event": "closed", "lost": ...}``: connections the server ended on its own meanwhile).
* ``subscribers``: opens ``--count`` connections to ``--path`` (``/pubsub``) at start, each
  sending ``{"op": "subscribe", "topic": T}``, then reports ``{"event": "open"}``. Every text
  frame received is kept with its arrival time (``time.monotonic()``, CLOCK_MONOTONIC: the
  same clock in every process of the machine), and parsed only once a round is complete, so
  that parsing does not delay the next arrival. ``{"event": "warm"}`` once every subscriber
  has had a message; ``mark`` starts counting rounds (``{"event": "marked"}``); after that,
  each time every subscriber has one more message, ``{"event": "round", "k": K, "latency_us":
  [...]}`` gives, for each delivery, its arrival time minus the publish time the message
  carries (the publisher writes ``"r=K t=<time.monotonic()>"`` as the chat text), and the
  count of deliveries that were not exactly one message of round K per subscriber, and the
  process's CPU time since the previous report up to the last arrival (``cpu_receiving``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import loadgen as lg  # bench/loadgen/loadgen.py: the handshake, frames, Client

OP_TEXT, OP_CLOSE = 0x1, 0x8
#: Linux's IP_BIND_ADDRESS_NO_PORT (<linux/in.h>), which Python's socket module may lack.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def emit(event: str, **fields: Any) -> None:
    """One event line for bench/scale.py."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


# -- opening connections --------------------------------------------------------------------


async def open_socket(source: str, host: str, port: int) -> socket.socket:
    """A TCP socket from ``source`` to ``host:port``, connected."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def open_many(
    factory: Callable[[], lg.Client],
    args: argparse.Namespace,
    n: int,
    first: int,
) -> list[lg.Client]:
    """Open ``n`` connections, ``args.concurrency`` at a time, sources in turn from ``first``."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(args.concurrency)
    deadline = time.monotonic() + args.timeout
    clients: list[lg.Client] = []

    async def one(i: int) -> None:
        async with sem:
            source = args.sources[(first + i) % len(args.sources)]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("connecting took too long")
            sock = await asyncio.wait_for(open_socket(source, args.host, args.port), left)
            _, client = await loop.create_connection(factory, sock=sock)
            clients.append(client)
            await asyncio.wait_for(client.opened, deadline - time.monotonic())

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for client in clients:
            client.transport.abort()
        raise RuntimeError(f"{len(errors)} of {n} connections failed: {errors[0]!r}")
    return clients


def abort_all(clients: list[lg.Client]) -> None:
    """End every connection at once (RST): the servers are stopped right after."""
    for client in clients:
        if not client.transport.is_closing():
            client.transport.abort()


# -- idle connections -----------------------------------------------------------------------


async def run_idle(args: argparse.Namespace, commands: asyncio.StreamReader) -> None:
    request = lg.handshake_request(args.host, args.port, args.path)
    clients: list[lg.Client] = []
    emit("ready")
    while True:
        line = (await asyncio.wait_for(commands.readline(), args.timeout)).decode().split()
        if not line or line[0] == "close":
            lost = sum(c.lost.done() for c in clients)
            abort_all(clients)
            emit("closed", lost=lost)
            return
        n = int(line[1])
        started = time.monotonic()
        batch = await open_many(lambda: lg.Client(request), args, n, len(clients))
        if line[0] == "warm":
            abort_all(batch)
            emit("warmed", n=n)
            continue
        clients += batch
        emit("open", n=n, total=len(clients), seconds=time.monotonic() - started)


# -- subscribers ----------------------------------------------------------------------------


class Feed:
    """What every subscriber of this process received: arrival times and payloads."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.warm = 0  # subscribers that have had a message
        self.marked = False
        self.counted = 0  # messages since the mark
        self.rounds = 0  # rounds reported
        self.arrivals: list[float] = []
        self.payloads: list[bytes] = []
        self.closed_by_server = 0
        self.subscribers: list[Subscriber] = []
        self.cpu_mark = 0.0  # this process's CPU time at the mark or the last report

    def got(self, sub: Subscriber, payload: bytes) -> None:
        sub.messages += 1
        if sub.messages == 1:
            self.warm += 1
            if self.warm == self.n:
                emit("warm")
        if not self.marked:
            return
        self.arrivals.append(time.monotonic())
        self.payloads.append(payload)
        self.counted += 1
        if self.counted == self.n * (self.rounds + 1):
            self.report()

    def mark(self) -> None:
        for sub in self.subscribers:
            sub.base = sub.messages
        self.marked = True
        self.cpu_mark = time.process_time()

    def report(self) -> None:
        """Round K is complete: every arrival's latency, and what was not as expected."""
        receiving = time.process_time() - self.cpu_mark
        self.rounds += 1
        k = self.rounds
        latencies = []
        wrong = 0
        for arrived, payload in zip(self.arrivals, self.payloads, strict=True):
            try:
                message = json.loads(payload)
                text = message["data"]["text"]
                ok = message["topic"] == "chat" and message["data"]["type"] == "message"
                r, t = (float(part[2:]) for part in text.split())
            except (ValueError, KeyError, TypeError):
                wrong += 1
                continue
            if not ok or r != k:
                wrong += 1
                continue
            latencies.append(round(1e6 * (arrived - t)))
        wrong += sum(s.messages - s.base != k for s in self.subscribers)
        self.arrivals.clear()
        self.payloads.clear()
        self.cpu_mark = time.process_time()
        emit(
            "round",
            k=k,
            deliveries=len(latencies),
            wrong=wrong,
            cpu_receiving=receiving,
            latency_us=latencies,
        )


class Subscriber(lg.Client):
    """A /pubsub connection: subscribes once open, then hands each text message to the feed."""

    def __init__(self, request: bytes, subscribe: bytes, feed: Feed) -> None:
        super().__init__(request)
        self.subscribe = subscribe
        self.feed = feed
        self.messages = 0
        self.base = 0
        self.buf = b""
        self.on_data = self.frames

    def _open(self) -> None:
        super()._open()
        self.transport.write(self.subscribe)

    def frames(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        i, n = 0, len(buf)
        while n - i >= 2:
            length = buf[i + 1] & 0x7F
            size = 2 if length < 126 else 4 if length == 126 else 10
            if n - i < size:
                break
            if size > 2:
                length = int.from_bytes(buf[i + 2 : i + size], "big")
            if n - i < size + length:
                break
            opcode = buf[i] & 0x0F
            if opcode == OP_TEXT:
                self.feed.got(self, buf[i + size : i + size + length])
            elif opcode == OP_CLOSE:
                self.feed.closed_by_server += 1
            i += size + length
        self.buf = buf[i:]


async def run_subscribers(args: argparse.Namespace, commands: asyncio.StreamReader) -> None:
    request = lg.handshake_request(args.host, args.port, args.path)
    subscribe = lg.client_frame(
        OP_TEXT, json.dumps({"op": "subscribe", "topic": args.topic}).encode()
    )
    feed = Feed(args.count)
    started = time.monotonic()

    def factory() -> lg.Client:
        sub = Subscriber(request, subscribe, feed)
        feed.subscribers.append(sub)
        return sub

    clients = await open_many(factory, args, args.count, 0)
    emit("open", n=len(clients), seconds=time.monotonic() - started)
    while True:
        line = (await asyncio.wait_for(commands.readline(), args.timeout)).decode().strip()
        if line == "mark":
            feed.mark()
            emit("marked")
            continue
        lost = sum(c.lost.done() for c in clients)
        abort_all(clients)
        emit("closed", lost=lost, closed_by_server=feed.closed_by_server)
        return


# -- main -----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    if args.mode == "idle":
        await run_idle(args, commands)
    else:
        await run_subscribers(args, commands)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("mode", choices=["idle", "subscribers"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/echo")
    p.add_argument("--sources", default="127.0.0.1", help="comma-separated source addresses")
    p.add_argument("--count", type=int, default=0, help="subscribers: connections to open")
    p.add_argument("--topic", default="chat", help="subscribers: the topic")
    p.add_argument("--concurrency", type=int, default=100, help="connections opening at once")
    p.add_argument("--timeout", type=float, default=120.0, help="bound on any one wait")
    args = p.parse_args(argv)
    args.sources = args.sources.split(",")
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main_async(args))
    except Exception as exc:  # reported as an event for bench/scale.py
        emit("error", error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
