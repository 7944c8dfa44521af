"""The load generator of bench/hub_bench.py: N subscribers, one publish per round.

One uvloop process with raw sockets. Each test opens ``--clients`` subscribers of one kind on
one topic, then publishes one message per round with ``POST /publish`` on a keep-alive
connection of its own, and measures from the write of that request to the moment the last
subscriber has the message:

* ``ws``: WebSocket ``/pubsub``, subscribed with ``{"op":"subscribe","topic":T,"since":N}``;
  frames are counted from their headers (the payload is skipped, except on the warm-up round,
  where every connection's message is parsed and checked);
* ``floor``: WebSocket ``/floor``, no subscription: ``POST /floor/publish`` sends one frame
  to every connection with ``fullduplex.broadcast()`` (the floor: no hub at all);
* ``sse``: ``GET /sse?topic=T&since=N``; events are counted by their ``data:`` lines;
* ``longpoll``: ``GET /longpoll?topic=T&since=N`` on keep-alive connections; each response is
  read whole (Content-Length), its cursor taken from the end of the body and the next request
  sent at once, as a client would. The round's cost includes those re-polls: its window ends
  when the server is idle again.

Every subscriber starts from the topic's cursor read with ``GET /poll`` (so none misses the
warm-up message, however late its subscription becomes live) and must receive exactly one
message per round. A window ends when the server's CPU clock stops moving (under 0.1 ms in
10 ms, twice), so work left after the last delivery (re-polls, buffered writes) is counted.

Server (and Redis) CPU time comes from the process CPU clocks (``clock_gettime`` on the pid's
CPU-time clock); bytes are what the subscribers' sockets received (and sent: long-poll
requests) during the measured rounds, HTTP framing included, TCP/IP headers not. Prints one
JSON object::

    python bench/loadgen/hub_loadgen.py ws --port 8000 --server-pid 1234 --clients 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import loadgen as lg  # bench/loadgen/loadgen.py: frames, the handshake, CPU clocks

from fullduplex.bench.load import open_many

OP_TEXT, OP_CLOSE = 0x1, 0x8
#: The cursor of a long-poll answer (``..."cursor":N,"epoch":"..."}``), the last one in the body.
CURSOR = re.compile(rb'"cursor":(\d+)')
#: Server CPU time below which a 10 ms interval counts as idle (1% of a CPU).
IDLE_NS = 100_000
#: Longest wait for the server to go idle after a round, in seconds.
IDLE_WAIT = 3.0
#: Most warm-up publishes (each waits up to 1 s for every subscriber to have one).
WARMUP_PUBLISHES = 10


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Snapshot:
    wall: float
    server_ns: int
    redis_ns: int
    self_cpu: float
    busy_ticks: int


class Meter:
    """CPU clocks of the server, of Redis (if any), of this process and of the machine."""

    def __init__(self, server_pid: int, redis_pid: int | None) -> None:
        self.server_pid = server_pid
        self.redis_pid = redis_pid

    def take(self) -> Snapshot:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return Snapshot(
            time.perf_counter(),
            lg.cpu_clock_ns(self.server_pid),
            lg.cpu_clock_ns(self.redis_pid) if self.redis_pid else 0,
            ru.ru_utime + ru.ru_stime,
            lg.system_busy_ticks(),
        )

    async def wait_idle(self) -> None:
        """Return once the server used under IDLE_NS in two 10 ms intervals in a row."""
        quiet = 0
        before = lg.cpu_clock_ns(self.server_pid)
        end = time.monotonic() + IDLE_WAIT
        while quiet < 2 and time.monotonic() < end:
            await asyncio.sleep(0.01)
            now = lg.cpu_clock_ns(self.server_pid)
            quiet = quiet + 1 if now - before < IDLE_NS else 0
            before = now


def window(a: Snapshot, b: Snapshot) -> dict[str, float]:
    server = (b.server_ns - a.server_ns) / 1e9
    redis = (b.redis_ns - a.redis_ns) / 1e9
    loadgen = b.self_cpu - a.self_cpu
    busy = (b.busy_ticks - a.busy_ticks) / lg.TICKS
    return {
        "seconds": b.wall - a.wall,
        "server_cpu_s": server,
        "redis_cpu_s": redis,
        "loadgen_cpu_s": loadgen,
        "other_cpu_s": max(0.0, busy - server - redis - loadgen),
    }


# -- the publisher --------------------------------------------------------------------------


class HTTPClient(asyncio.Protocol):
    """One keep-alive connection, one request at a time, Content-Length responses only."""

    def __init__(self, host: str, port: int) -> None:
        self.host = f"{host}:{port}"
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end])
        size = _content_length(head)
        if len(self.buf) < end + 4 + size:
            return
        body = bytes(self.buf[end + 4 : end + 4 + size])
        del self.buf[: end + 4 + size]
        if not self.waiter.done():
            self.waiter.set_result((int(head[9:12]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("publisher connection closed"))

    def send(self, method: str, path: str, body: Any = None) -> asyncio.Future[tuple[int, bytes]]:
        """Write a request now; the future gets (status, body)."""
        self.waiter = asyncio.get_running_loop().create_future()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        data = b"" if body is None else json.dumps(body).encode()
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        self.transport.write(head.encode() + b"\r\n" + data)
        return self.waiter

    async def json(self, method: str, path: str, body: Any, timeout: float) -> Any:
        status, data = await asyncio.wait_for(self.send(method, path, body), timeout)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {data[:200]!r}")
        return json.loads(data)


def _content_length(head: bytes) -> int:
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = lower.find(b"\r\n", at + 2)
    return int(lower[at + 17 : end if end >= 0 else None])


# -- subscribers ----------------------------------------------------------------------------


class Round:
    """Deliveries of the current round, shared by every subscriber."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.delivered = 0
        self.first = 0.0
        self.last = 0.0
        self.done: asyncio.Future[None] | None = None

    def start(self) -> asyncio.Future[None]:
        self.delivered = 0
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def fail(self, why: str) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(RuntimeError(why))

    def got(self, n: int = 1) -> None:
        if self.delivered == 0:
            self.first = time.perf_counter()
        self.delivered += n
        if self.delivered >= self.target:
            self.last = time.perf_counter()
            if self.done is not None and not self.done.done():
                self.done.set_result(None)


class Subscriber(asyncio.Protocol):
    """A connection sending ``request``, then reading the response head; subclasses read on."""

    def __init__(self, request: bytes, rnd: Round) -> None:
        self.request = request
        self.round = rnd
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.head = b""
        self.is_open = False
        self.messages = 0
        self.bytes_in = 0  # after the response head (the one-time upgrade or stream head)
        self.bytes_out = 0  # after the first request
        self.capture: bytearray | None = None  # payload bytes kept for checking

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.is_open:
            self.bytes_in += len(data)
            self.body_received(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self.head[:end], self.head[end + 4 :]
        self.head = b""
        if not self.head_ok(head):
            if not self.opened.done():
                self.opened.set_exception(RuntimeError(f"bad response: {head[:120]!r}"))
            self.transport.close()
            return
        self.is_open = True
        self.opened.set_result(None)
        if rest:
            self.bytes_in += len(rest)
            self.body_received(rest)

    def head_ok(self, head: bytes) -> bool:
        return head.startswith(b"HTTP/1.1 200")

    def body_received(self, data: bytes) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the response"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


class WSSubscriber(Subscriber):
    """Counts text frames by their headers; keeps a payload only while ``capture`` is set."""

    def __init__(self, request: bytes, rnd: Round) -> None:
        super().__init__(request, rnd)
        self.partial = b""  # an incomplete frame header
        self.left = 0  # payload bytes still to come in the current frame
        self.opcode = 0
        self.closed_by_server = False

    def head_ok(self, head: bytes) -> bool:
        return head.startswith(b"HTTP/1.1 101") and lg.ACCEPT in head

    def body_received(self, data: bytes) -> None:
        left = self.left
        if left > len(data) and self.capture is None:  # the middle of a long payload
            self.left = left - len(data)
            return
        buf = self.partial + data if self.partial else data
        self.partial = b""
        i, n = 0, len(buf)
        while i < n:
            if self.left:
                take = min(self.left, n - i)
                if self.capture is not None and self.opcode == OP_TEXT and not self.messages:
                    self.capture += buf[i : i + take]
                self.left -= take
                i += take
                if not self.left:
                    self._frame_done()
                continue
            if n - i < 2:
                self.partial = buf[i:]
                return
            length = buf[i + 1] & 0x7F
            size = 2 if length < 126 else 4 if length == 126 else 10
            if n - i < size:
                self.partial = buf[i:]
                return
            if size > 2:
                length = int.from_bytes(buf[i + 2 : i + size], "big")
            self.opcode = buf[i] & 0x0F
            i += size
            self.left = length
            if not length:
                self._frame_done()

    def _frame_done(self) -> None:
        if self.opcode == OP_TEXT:
            self.messages += 1
            self.round.got()
        elif self.opcode == OP_CLOSE:
            self.closed_by_server = True

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(lg.CLOSE_FRAME)
            self.transport.close()


class SSESubscriber(Subscriber):
    """Counts events by their ``data:`` lines, across reads."""

    MARK = b"\ndata: "

    def __init__(self, request: bytes, rnd: Round) -> None:
        super().__init__(request, rnd)
        self.tail = b""

    def body_received(self, data: bytes) -> None:
        if self.capture is not None:
            self.capture += data
        chunk = self.tail + data
        n = chunk.count(self.MARK)
        self.tail = chunk[-(len(self.MARK) - 1) :]
        if n:
            self.messages += n
            self.round.got(n)


class LongPollSubscriber(Subscriber):
    """Reads each response whole, then asks again from the cursor it ends with."""

    def __init__(self, request: bytes, rnd: Round, template: str) -> None:
        super().__init__(request, rnd)
        self.template = template  # the request, with {since}
        self.buf = bytearray()
        self.cursor = 0
        self.opened.set_result(None)  # answered only when a message comes

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.buf += data
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        size = _content_length(bytes(buf[:end]))
        if len(buf) < end + 4 + size:
            return
        if not buf.startswith(b"HTTP/1.1 200"):
            self.round.fail(f"long poll answered {bytes(buf[: end + 4 + size])!r}")
            self.transport.close()
            return
        body = bytes(buf[end + 4 : end + 4 + size])
        del buf[: end + 4 + size]
        if self.capture is not None and not self.messages:
            self.capture += body
        self.cursor = int(CURSOR.findall(body)[-1])
        request = self.template.format(since=self.cursor).encode()
        self.bytes_out += len(request)
        self.transport.write(request)
        n = body.count(b'"seq":')
        if n:
            self.messages += n
            self.round.got(n)


# -- the test -------------------------------------------------------------------------------


@dataclass
class Plan:
    kind: str
    path: str  # subscription route
    publish_path: str


PLANS = {
    "ws": Plan("ws", "/pubsub", "/publish"),
    "floor": Plan("ws", "/floor", "/floor/publish"),
    "sse": Plan("sse", "/sse", "/publish"),
    "longpoll": Plan("longpoll", "/longpoll", "/publish"),
}


def make_factory(
    test: str, args: argparse.Namespace, since: int, rnd: Round
) -> Callable[[], Subscriber]:
    plan = PLANS[test]
    host = f"{args.host}:{args.port}"
    topic = args.topic
    if plan.kind == "ws":
        request = lg.handshake_request(args.host, args.port, plan.path)
        return lambda: WSSubscriber(request, rnd)
    if plan.kind == "sse":
        request = (
            f"GET {plan.path}?topic={topic}&since={since} HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        return lambda: SSESubscriber(request, rnd)
    template = f"GET {plan.path}?topic={topic}&since={{since}} HTTP/1.1\r\nHost: {host}\r\n\r\n"
    first = template.format(since=since).encode()
    return lambda: LongPollSubscriber(first, rnd, template)


async def open_all(
    factory: Callable[[], Subscriber], args: argparse.Namespace, deadline: float
) -> list[Subscriber]:
    """Open ``args.clients`` subscribers, ``args.concurrency`` at a time."""
    loop = asyncio.get_running_loop()

    async def one(left: float | None) -> Subscriber:
        _, sub = await asyncio.wait_for(loop.create_connection(factory, args.host, args.port), left)
        if not isinstance(sub, LongPollSubscriber):  # a long poll answers later
            try:
                await asyncio.wait_for(sub.opened, left)
            except BaseException:
                sub.close()
                raise
        return sub

    return await open_many(
        one, args.clients, close=lg.close_all, concurrency=args.concurrency, deadline=deadline
    )


async def warm_up(
    args: argparse.Namespace,
    pub: HTTPClient,
    subs: list[Subscriber],
    data: dict[str, Any],
    path: str,
) -> list[int]:
    """Publish until every subscriber has a message (WebSocket subscribes are not
    acknowledged), at most WARMUP_PUBLISHES times; return the sequence numbers published."""
    for sub in subs:
        sub.capture = bytearray()
    seqs = []
    for _ in range(WARMUP_PUBLISHES):
        reply = await pub.json("POST", path, {"topic": args.topic, "data": data}, args.timeout)
        seqs.append(reply["seq"])
        end = time.monotonic() + 1.0
        while time.monotonic() < end and any(s.messages == 0 for s in subs):
            await asyncio.sleep(0.01)
        if all(s.messages for s in subs):
            return seqs
    missing = sum(s.messages == 0 for s in subs)
    raise RuntimeError(f"{missing} subscribers got nothing after {len(seqs)} publishes")


def check_payloads(subs: list[Subscriber], test: str, topic: str, seqs: list[int]) -> int:
    """Parse the first message every subscriber captured; count the wrong ones."""
    errors = 0
    for sub in subs:
        raw = bytes(sub.capture or b"")
        sub.capture = None
        try:
            if test == "sse":
                raw = raw.split(b"\ndata: ", 1)[1].split(b"\n", 1)[0]
            message = json.loads(raw)
            if test == "longpoll":
                message = message["messages"][0]
            ok = message["topic"] == topic and message["seq"] in seqs and "data" in message
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        errors += not ok
    return errors


async def sweep(pub: HTTPClient, path: str, args: argparse.Namespace) -> None:
    """Make the server notice the event streams and long polls just closed.

    While a handler runs, the server does not read its connection, so a client's close goes
    unseen until a write fails: without this, each SSE or long-poll test left its 1,000
    connections open in the server (event streams forever, as heartbeats are off), and the
    open-file limit (20,000 here) later failed the floor's 10,000 connections. One publish
    answers the long polls (whose connections are then read again and closed); an event stream
    needs two writes: the first draws the peer's RST, the second fails.
    """
    for _ in range(2):
        await pub.json("POST", path, {"topic": args.topic, "data": {"end": True}}, args.timeout)
        await asyncio.sleep(0.1)


async def run_test(args: argparse.Namespace) -> dict[str, Any]:
    test = args.test
    plan = PLANS[test]
    loop = asyncio.get_running_loop()
    meter = Meter(args.server_pid, args.redis_pid)
    _, pub = await loop.create_connection(
        lambda: HTTPClient(args.host, args.port), args.host, args.port
    )
    assert isinstance(pub, HTTPClient)
    since = 0
    if test != "floor":
        since = (await pub.json("GET", f"/poll?topic={args.topic}", None, args.timeout))["cursor"]
    rnd = Round(args.clients)
    started = time.monotonic()
    first = meter.take()
    subs = await open_all(make_factory(test, args, since, rnd), args, started + args.timeout)
    if test == "ws":
        # Live from now, as a client that wants the feed does (no "since": no replay and no
        # history query per subscriber); the warm-up waits until every one is live.
        request = {"op": "subscribe", "topic": args.topic}
        frame = lg.client_frame(OP_TEXT, json.dumps(request).encode())
        for sub in subs:
            sub.transport.write(frame)
    connect_seconds = time.monotonic() - started
    data: dict[str, Any] = {"symbol": "FDX", "price": 101.25, "volume": 1200, "round": 0}
    warm_seqs = await warm_up(args, pub, subs, data, plan.publish_path)
    await meter.wait_idle()
    check_errors = check_payloads(subs, test, args.topic, warm_seqs)
    base = [s.messages for s in subs]
    rounds = []
    for i in range(args.rounds):
        data["round"] = i + 1
        before_in = sum(s.bytes_in for s in subs)
        before_out = sum(s.bytes_out for s in subs)
        done = rnd.start()
        a = meter.take()
        sent = time.perf_counter()
        reply = pub.send("POST", plan.publish_path, {"topic": args.topic, "data": data})
        await asyncio.wait_for(done, args.timeout)
        status, body = await asyncio.wait_for(reply, args.timeout)
        replied = time.perf_counter()
        if status != 200:
            raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
        await meter.wait_idle()
        b = meter.take()
        late = sum(s.messages - m != i + 1 for s, m in zip(subs, base, strict=True))
        if late:
            raise RuntimeError(f"round {i}: {late} subscribers did not get exactly one message")
        w = window(a, b)
        n = rnd.delivered
        rounds.append(
            {
                **w,
                "deliveries": n,
                "last_delivery_ms": 1e3 * (rnd.last - sent),
                "first_delivery_ms": 1e3 * (rnd.first - sent),
                "publish_reply_ms": 1e3 * (replied - sent),
                "server_cpu_us": 1e6 * w["server_cpu_s"] / n,
                "redis_cpu_us_per_publish": 1e6 * w["redis_cpu_s"],
                "bytes_in_per_delivery": (sum(s.bytes_in for s in subs) - before_in) / n,
                "bytes_out_per_delivery": (sum(s.bytes_out for s in subs) - before_out) / n,
                "loadgen_cpu_percent": 100 * w["loadgen_cpu_s"] / w["seconds"],
                "other_cpu_percent": 100 * w["other_cpu_s"] / w["seconds"],
            }
        )
        await asyncio.sleep(args.pause)
    whole = window(first, meter.take())
    closed = sum(isinstance(s, WSSubscriber) and s.closed_by_server for s in subs)
    await lg.close_all([*subs])
    if plan.kind != "ws":
        await sweep(pub, plan.publish_path, args)
    pub.transport.close()
    return {
        "test": test,
        "clients": args.clients,
        "topic": args.topic,
        "connect_seconds": connect_seconds,
        "rounds": rounds,
        "check_errors": check_errors,
        "closed_by_server": closed,
        # Over the whole run (seconds, not a few 10 ms clock ticks as in one round).
        "other_cpu_percent": 100 * whole["other_cpu_s"] / whole["seconds"],
        "run": whole,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("test", choices=sorted(PLANS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--redis-pid", type=int, help="also measure this Redis' CPU time")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--topic", default="bench")
    p.add_argument("--rounds", type=int, default=5, help="measured publishes")
    p.add_argument("--pause", type=float, default=0.05, help="seconds between rounds")
    p.add_argument("--concurrency", type=int, default=100, help="connections opening at once")
    p.add_argument("--timeout", type=float, default=60.0, help="bound on any one wait")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args(sys.argv[1:])
    result = lg.result_or_error(lambda: run_test(args), args.clients, "uvloop")
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
