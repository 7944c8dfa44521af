"""Scale: fan-out over two worker processes and one Redis, and idle connections per process.

    python bench/scale.py                 # full: 20,000 subscribers, 50,000 idle: 1-3 minutes
    python bench/scale.py --quick         # 2,000 subscribers, 5,000 idle: under a minute
    python bench/scale.py --json out.json --servers fullduplex,picows --only idle

Two measurements, everything on 127.0.0.1, every wait bounded:

**fan-out**: a throwaway ``redis-server`` on a free port, and ``fullduplex serve --workers 2
--broker redis://...`` (the demo, as a user runs it; its per-IP limits, connection limit and
keepalive pings off, as every bench server: one client address opens 20,000 connections).
Client processes (bench/loadgen/scale_clients.py, uvloop, raw sockets, at most 10,000
connections each, each from its own source address) subscribe ``--subscribers`` ``/pubsub``
connections to the demo's ``chat`` topic; the kernel hands each connection to whichever worker
accepts it first. A publisher on ``/chat/ws`` (the chat room's route, the only way into the
topic) publishes one line per round carrying its ``time.monotonic()``; it goes to Redis through
the worker that holds the publisher's connection, and from Redis to both workers, which send it
to their subscribers. Per round: each delivery's latency (arrival minus the time in the
message), the workers' CPU time (process CPU clocks, both summed) from the publish until both
are idle again, per delivery, and Redis' CPU time per publish. Before the subscribers
connect, two bursts of ``--burst`` publishes through the hub's publish script from this process
(16 in flight): to a topic nobody reads, then to the demo's ``ticker`` with a few subscribers
on each worker (so both workers' XREADs return each message): Redis' CPU per publish at a
sustained rate, and its own execution time per command (``INFO commandstats``). Background
work measured while nothing is published (the demo's ticker publishes 5 prices a second from
worker 0) is subtracted from the workers' and Redis' CPU.

**idle**: for each server of bench/servers/ (the fullduplex ``async for`` echo route and its
listener API, picows, aiohttp, websockets; pinned to CPU 0 as in bench/run.py), the growth of
its RSS (``VmRSS``) from ``--idle`` open idle WebSocket connections, divided by their number,
after 50 connections opened and closed to load every code path; measured after each of
``steps`` equal steps, to show it is linear. The clients (CPU 1) are processes of at most
10,000 connections, each from its own source address (127.0.0.2, .3, ...; bound before
connecting, ``IP_BIND_ADDRESS_NO_PORT``). A process cannot hold more connections than its
``RLIMIT_NOFILE`` allows: the count is capped at the hard limit minus 200, and the cap is
reported.

Progress goes to stderr; the table to stdout; raw results to bench/results/scale-<time>.json
(and ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hub_bench  # bench/hub_bench.py: Redis, free_port
import run  # bench/run.py: Server, SERVERS, environment, _pin

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "loadgen"))
import loadgen as lg  # noqa: E402  bench/loadgen/loadgen.py: frames, CPU clocks, RSS

CLIENTS = BENCH / "loadgen" / "scale_clients.py"
RESULTS = BENCH / "results"
PY = sys.executable
#: Connections one client process holds (and the most from one source address).
PER_CLIENT_PROCESS = 10_000
#: File descriptors a process needs besides its connections.
FD_MARGIN = 200
#: A 10 ms interval in which the measured processes used less CPU than this is idle.
IDLE_NS = 100_000
#: Longest wait for the measured processes to go idle, in seconds.
IDLE_WAIT = 5.0
#: Most warm-up publishes (each waits up to WARMUP_WAIT s for every subscriber to have one).
WARMUP_PUBLISHES = 10
WARMUP_WAIT = 2.0
#: Seconds between fan-out rounds.
PAUSE = 0.1
#: Publishes in flight during the Redis burst.
BURST_CONCURRENCY = 16
#: The commands the hub's publish script calls (bench/scale.py separates them from the
#: script's own Lua time in INFO commandstats).
SCRIPT_COMMANDS = {"xadd", "xinfo|stream", "xtrim", "exists", "get", "time", "xrange", "set"}
#: Most batches of 16 ticker subscribers opened to give each worker one (see bursts()).
TICKER_BATCHES = 4
#: The idle test's servers (bench/run.py's names), fullduplex first: ratios are to it.
IDLE_SERVERS = ("fullduplex", "fd-listener", "picows", "aiohttp", "websockets")
#: `fullduplex serve` options of the fan-out: the per-IP limits would refuse one address's
#: 20,000 connections; the connection limit (10,000 a process) would refuse a worker that
#: happens to accept more than half; keepalive pings are off in every bench server.
SERVE_OPTIONS = [
    "--max-connections",
    "none",
    "--max-connections-per-ip",
    "none",
    "--rate-per-ip",
    "none",
    "--ping-interval",
    "none",
    "--log-level",
    "warning",
]


@dataclass
class Profile:
    """How much to measure; --quick measures less, never differently."""

    subscribers: int
    rounds: int
    burst: int
    idle: int
    steps: int
    timeout: float = 120.0


FULL = Profile(subscribers=20_000, rounds=10, burst=2_000, idle=50_000, steps=4)
QUICK = Profile(subscribers=2_000, rounds=5, burst=500, idle=5_000, steps=2, timeout=30.0)


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------


def cpu_ns(pids: list[int]) -> int:
    return sum(lg.cpu_clock_ns(pid) for pid in pids)


async def wait_idle(pids: list[int]) -> None:
    """Return once ``pids`` together used under IDLE_NS in two 10 ms intervals in a row."""
    quiet = 0
    before = cpu_ns(pids)
    end = time.monotonic() + IDLE_WAIT
    while quiet < 2 and time.monotonic() < end:
        await asyncio.sleep(0.01)
        now = cpu_ns(pids)
        quiet = quiet + 1 if now - before < IDLE_NS * len(pids) else 0
        before = now


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def connections_per_worker(workers: list[int], port: int) -> list[int]:
    """Established connections to ``port`` from 127.0.0.2 and up, held by each worker.

    Matched through the socket inodes of /proc/net/tcp: the publisher (from 127.0.0.1) and the
    workers' connections to Redis are not counted.
    """
    inodes = [socket_inodes(w) for w in workers]
    counts = [0] * len(workers)
    local = f":{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            # local_address rem_address st ... inode; addresses are hex, little-endian IPv4
            if fields[3] != "01" or not fields[1].endswith(local):
                continue
            if fields[2].startswith("0100007F:"):  # 127.0.0.1
                continue
            inode = int(fields[9])
            for i, held in enumerate(inodes):
                if inode in held:
                    counts[i] += 1
    return counts


class Clock:
    """CPU clocks of some processes, and of the machine (to see other load)."""

    def __init__(self, **pids: list[int]) -> None:
        self.pids = pids

    def take(self) -> dict[str, float]:
        snap = {name: cpu_ns(p) / 1e9 for name, p in self.pids.items()}
        ru = resource.getrusage(resource.RUSAGE_SELF)
        snap["self"] = ru.ru_utime + ru.ru_stime
        snap["busy"] = lg.system_busy_ticks() / lg.TICKS
        snap["wall"] = time.monotonic()
        return snap

    @staticmethod
    def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        return {k: b[k] - a[k] for k in a}


class ClientProcess:
    """One bench/loadgen/scale_clients.py process: commands in, JSON events out."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, timeout: float) -> None:
        self.proc = proc
        self.name = name
        self.timeout = timeout

    @classmethod
    async def start(
        cls,
        mode: str,
        port: int,
        source: str,
        cpu: int | None,
        log: Path,
        timeout: float,
        *extra: str,
    ) -> ClientProcess:
        command = [PY, str(CLIENTS), mode, "--port", str(port), "--sources", source]
        command += ["--timeout", str(timeout), *extra]
        with open(log, "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                preexec_fn=run._pin(cpu),
                limit=2**26,  # a round's event carries every latency of the process
            )
        return cls(proc, f"{mode} clients from {source}", timeout)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def event(self, timeout: float | None = None) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout or self.timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"{self.name}: no answer in {timeout or self.timeout:g} s") from None
        if not line:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode})")
        event: dict[str, Any] = json.loads(line)
        if event["event"] == "error":
            raise RuntimeError(f"{self.name}: {event['error']}")
        return event

    async def expect(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        event = await self.event(timeout)
        if event["event"] != name:
            raise RuntimeError(f"{self.name}: expected {name}, got {event['event']}")
        return event

    async def close(self) -> dict[str, Any]:
        """Ask the process to end its connections and exit; kill it if it does not."""
        result: dict[str, Any] = {}
        if self.proc.returncode is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, ConnectionError):
                self.send("close")
                result = await self.expect("closed", 20)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        return result


async def close_clients(clients: list[ClientProcess]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(c.close() for c in clients)))


def source(i: int) -> str:
    """The i-th client process's source address: 127.0.0.2, 127.0.0.3, ..."""
    return f"127.0.{(2 + i) // 256}.{(2 + i) % 256}"


def split(n: int, per: int) -> list[int]:
    """``n`` as near-equal parts of at most ``per``."""
    k = max(1, -(-n // per))
    return [n // k + (i < n % k) for i in range(k)]


# -- the fan-out ----------------------------------------------------------------------------


class Supervised:
    """``fullduplex serve --workers N --broker URL`` (the demo): its workers' pids, its port."""

    def __init__(self, broker: str, workers: int, log: Path, timeout: float = 30.0) -> None:
        self.port = hub_bench.free_port()
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        command = [PY, "-m", "fullduplex", "serve", "--workers", str(workers)]
        command += ["--broker", broker, "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*command, *SERVE_OPTIONS], stdout=subprocess.PIPE, stderr=self.log
        )
        self.workers: list[int] = []
        deadline = time.monotonic() + timeout
        try:
            self._wait_banner(deadline)
            while len(self.workers) < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"found {len(self.workers)} of {workers} workers")
                self.workers = self._children()
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _wait_banner(self, deadline: float) -> None:
        import select

        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if b" serving " in line:
                    return
            elif self.proc.poll() is not None:
                break
        raise RuntimeError(f"fullduplex serve did not start (see {self.log.name})")

    def _children(self) -> list[int]:
        pid = self.proc.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(p) for p in f.read().split()]
        workers = []
        for p in pids:
            with contextlib.suppress(OSError), open(f"/proc/{p}/cmdline", "rb") as f:
                if b"--worker-index" in f.read():
                    workers.append(p)
        return sorted(workers)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Publisher:
    """A chat client on ``/chat/ws``: joins once, then publishes lines and reads their acks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, timeout: float) -> Publisher:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(lg.handshake_request("127.0.0.1", port, "/chat/ws"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"/chat/ws refused the publisher: {head[:80]!r}")
        self = cls(reader, writer)
        data = {"type": "join", "name": "scale-bench"}
        self.send({"op": "publish", "topic": "chat", "data": data, "id": "join"})
        await self.ack("join", timeout)
        return self

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(lg.client_frame(0x1, json.dumps(message).encode()))

    def publish(self, k: int, tag: str) -> float:
        """Publish round ``k``'s line; return the time it carries (time.monotonic())."""
        t = time.monotonic()
        text = f"r={k} t={t:.6f}"
        self.send(
            {"op": "publish", "topic": "chat", "data": {"type": "message", "text": text}, "id": tag}
        )
        return t

    async def recv(self) -> Any:
        head = await self.reader.readexactly(2)
        length = head[1] & 0x7F
        if length >= 126:
            ext = await self.reader.readexactly(2 if length == 126 else 8)
            length = int.from_bytes(ext, "big")
        payload = await self.reader.readexactly(length)
        if head[0] & 0x0F == 0x8:
            raise RuntimeError(f"/chat/ws closed the publisher: {payload[2:]!r}")
        return json.loads(payload)

    async def ack(self, tag: str, timeout: float) -> dict[str, Any]:
        """Read until the ack of ``tag``; an error about it raises."""
        while True:
            message = await asyncio.wait_for(self.recv(), timeout)
            if message.get("ack") == tag:
                return dict(message)
            if "error" in message:
                raise RuntimeError(f"/chat/ws: {message}")

    async def close(self) -> None:
        """Close the connection (and wait until closed: the server is stopped next, and an
        open connection would make it wait for a closing handshake)."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


def commandstats(port: int) -> dict[str, tuple[int, int]]:
    """Redis' own count of calls and microseconds per command (``INFO commandstats``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, _ = data.partition(b"\r\n")
            if len(data) >= len(head) + 2 + int(head[1:]) + 2:
                break
    stats = {}
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[8:].partition(":")
            kv = dict(f.split("=") for f in fields.split(","))
            stats[name] = (int(kv["calls"]), int(kv["usec"]))
    return stats


def commandstats_delta(
    a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]
) -> dict[str, dict[str, int]]:
    out = {}
    for name, (calls, usec) in b.items():
        c0, u0 = a.get(name, (0, 0))
        if calls > c0:
            out[name] = {"calls": calls - c0, "usec": usec - u0}
    return out


async def redis_burst(url: str, topic: str, n: int, redis: hub_bench.Redis) -> dict[str, Any]:
    """Redis CPU time of ``n`` hub publishes to ``topic`` (the workers' Lua script)."""
    from fullduplex.hub import Hub

    async with Hub(url) as hub:
        await hub.publish(topic, {"warm": True})
        sem = asyncio.Semaphore(BURST_CONCURRENCY)

        async def one(i: int) -> None:
            async with sem:
                await hub.publish(topic, {"symbol": "SCALE", "price": 100.0 + i, "change": 0.01})

        clock = Clock(redis=[redis.pid])
        stats = commandstats(redis.port)
        a = clock.take()
        await asyncio.gather(*(one(i) for i in range(n)))
        b = clock.take()
        stats = commandstats_delta(stats, commandstats(redis.port))
    d = Clock.delta(a, b)
    return {"publishes": n, "seconds": d["wall"], "redis_cpu_s": d["redis"], "commandstats": stats}


async def background(clock: Clock, seconds: float) -> dict[str, float]:
    """CPU rates of the measured processes while nothing is published (the demo's ticker)."""
    a = clock.take()
    await asyncio.sleep(seconds)
    d = Clock.delta(a, clock.take())
    return {k: v / d["wall"] for k, v in d.items() if k != "wall"}


async def fanout(p: Profile, log_dir: Path) -> dict[str, Any]:
    """The fan-out measurement: see the module docstring."""
    out: dict[str, Any] = {"subscribers": p.subscribers, "rounds": []}
    async with contextlib.AsyncExitStack() as stack:
        redis = hub_bench.Redis(None, log_dir / "redis.log")
        stack.callback(redis.stop)
        # The hub's own defaults: the URL without bench/hub_bench.py's raised pool.
        broker = f"redis://127.0.0.1:{redis.port}/0"
        server = Supervised(broker, 2, log_dir / "serve.log")
        stack.callback(server.stop)
        workers = server.workers
        progress(f"redis pid {redis.pid}, workers {workers} on port {server.port}")
        clock = Clock(workers=workers, redis=[redis.pid])
        await wait_idle(workers)  # imports and the hub's start
        # Long enough to see the ticker's 5 publishes a second; short for short runs.
        out["background_per_s"] = bg = await background(clock, min(2.0, 0.25 * p.rounds))
        ms = {k: f"{1e3 * v:.2f} ms/s" for k, v in bg.items()}
        progress(f"background: workers {ms['workers']}, redis {ms['redis']}")
        out["burst"] = await bursts(p, broker, redis, server, bg["redis"], log_dir)
        publisher = await Publisher.open(server.port, p.timeout)
        stack.push_async_callback(publisher.close)
        counts = split(p.subscribers, PER_CLIENT_PROCESS)
        clients: list[ClientProcess] = []
        try:
            for i, n in enumerate(counts):
                clients.append(
                    await ClientProcess.start(
                        "subscribers",
                        server.port,
                        source(i),
                        None,
                        log_dir / "clients.log",
                        p.timeout,
                        "--path",
                        "/pubsub",
                        "--count",
                        str(n),
                    )
                )
            started = time.monotonic()
            opened = await asyncio.gather(*(c.expect("open") for c in clients))
            out["connect_seconds"] = time.monotonic() - started
            out["per_worker"] = connections_per_worker(workers, server.port)
            progress(
                f"{sum(e['n'] for e in opened):,} subscribers in {out['connect_seconds']:.1f} s, "
                f"per worker {out['per_worker']}"
            )
            await warm_up(publisher, clients, p.timeout)
            await wait_idle(workers)
            clock = Clock(workers=workers, redis=[redis.pid], clients=[c.proc.pid for c in clients])
            for c in clients:
                c.send("mark")
            await asyncio.gather(*(c.expect("marked") for c in clients))
            stats = commandstats(redis.port)
            for k in range(1, p.rounds + 1):
                out["rounds"].append(await one_round(k, publisher, clients, clock, p))
                r = out["rounds"][-1]
                progress(
                    f"round {k}/{p.rounds}: last delivery {r['latency_max_ms']:.1f} ms, "
                    f"workers {r['workers_cpu_us']:.2f} us/delivery"
                )
                await asyncio.sleep(PAUSE)
            out["rounds_commandstats"] = commandstats_delta(stats, commandstats(redis.port))
        finally:
            out["clients_closed"] = await close_clients(clients)
    return out


async def bursts(
    p: Profile,
    broker: str,
    redis: hub_bench.Redis,
    server: Supervised,
    redis_background: float,
    log_dir: Path,
) -> dict[str, Any]:
    """Redis' CPU per publish at a sustained rate: to a topic nobody reads, then to one both
    workers read (the demo's ``ticker``, with a few subscribers on each worker)."""
    out = {"none": await redis_burst(broker, "scale.burst", p.burst, redis)}
    # The kernel hands a connection to whichever worker accepts first: a few connections
    # opened slowly can all land on one. Batches of 16 until each worker has a reader.
    readers: list[ClientProcess] = []
    try:
        for i in range(TICKER_BATCHES):
            readers.append(
                await ClientProcess.start(
                    "subscribers",
                    server.port,
                    source(250 + i),
                    None,
                    log_dir / "clients.log",
                    p.timeout,
                    "--path",
                    "/pubsub",
                    "--count",
                    "16",
                    "--topic",
                    "ticker",
                )
            )
            await readers[-1].expect("open")
            await readers[-1].expect("warm")  # the ticker publishes 5 a second
            split_ = connections_per_worker(server.workers, server.port)
            if min(split_) > 0:
                break
        out["two"] = await redis_burst(broker, "ticker", p.burst, redis)
        out["two"]["ticker_subscribers_per_worker"] = split_
        out["two"]["readers"] = sum(x > 0 for x in split_)
    finally:
        await close_clients(readers)
    for b in out.values():
        b["redis_cpu_s_net"] = b["redis_cpu_s"] - redis_background * b["seconds"]
        # Redis' own execution time (INFO commandstats: no socket I/O, no event loop) of the
        # script, of the commands it calls (counted inside its EVALSHA too) and of the
        # readers' XREADs, per publish.
        stats = b["commandstats"]
        usec = {c: stats.get(c, {}).get("usec", 0) / b["publishes"] for c in ("evalsha", "xread")}
        usec["script_commands"] = (
            sum(v["usec"] for c, v in stats.items() if c in SCRIPT_COMMANDS) / b["publishes"]
        )
        b["redis_exec_us_per_publish"] = usec
        progress(
            f"burst of {b['publishes']}: redis {1e6 * b['redis_cpu_s_net'] / b['publishes']:.1f}"
            f" us per publish, {b['publishes'] / b['seconds']:,.0f}/s"
        )
    return out


async def warm_up(publisher: Publisher, clients: list[ClientProcess], timeout: float) -> None:
    """Publish until every subscriber has had a message (a subscribe is not acknowledged)."""
    warm = [asyncio.ensure_future(c.expect("warm", timeout)) for c in clients]
    try:
        for i in range(WARMUP_PUBLISHES):
            publisher.publish(0, f"w{i}")
            await publisher.ack(f"w{i}", timeout)
            done, _ = await asyncio.wait(warm, timeout=WARMUP_WAIT)
            if len(done) == len(warm):
                for f in done:
                    f.result()
                return
        raise RuntimeError(f"subscribers not all live after {WARMUP_PUBLISHES} publishes")
    finally:
        for f in warm:
            f.cancel()


async def one_round(
    k: int, publisher: Publisher, clients: list[ClientProcess], clock: Clock, p: Profile
) -> dict[str, Any]:
    events = [asyncio.ensure_future(c.expect("round", p.timeout)) for c in clients]
    a = clock.take()
    publisher.publish(k, f"r{k}")
    ack = await publisher.ack(f"r{k}", p.timeout)
    acked = time.monotonic() - a["wall"]
    results = await asyncio.gather(*events)
    await wait_idle(clock.pids["workers"])
    d = Clock.delta(a, clock.take())
    latencies = sorted(us for e in results for us in e["latency_us"])
    wrong = sum(e["wrong"] for e in results)
    if wrong or any(e["k"] != k for e in results):
        raise RuntimeError(f"round {k}: {wrong} deliveries were not one message of the round")
    n = len(latencies)
    other = d["busy"] - d["workers"] - d["redis"] - d["clients"] - d["self"]
    # The clients' own CPU clocks until the round's last arrival: without their parsing of
    # the round's messages afterwards, which measures and does not deliver.
    receiving = sum(e["cpu_receiving"] for e in results)
    return {
        "k": k,
        "seq": ack.get("seq"),
        "deliveries": n,
        "seconds": d["wall"],
        "ack_ms": 1e3 * acked,
        "workers_cpu_s": d["workers"],
        "redis_cpu_s": d["redis"],
        "workers_cpu_us": 1e6 * d["workers"] / n,
        "latency_us": latencies,  # dropped from the saved results (summarize_fanout)
        "clients_cpu_s": receiving,
        "clients_cpu_s_with_parsing": d["clients"],
        "latency_p50_ms": _pct(latencies, 50) / 1e3,
        "latency_p99_ms": _pct(latencies, 99) / 1e3,
        "latency_max_ms": latencies[-1] / 1e3,
        # The machine's CPU use by processes other than the workers, Redis, the client
        # processes and this one: other work on a shared machine.
        "others_cpu_percent": 100 * max(0.0, other) / d["wall"],
    }


def _pct(sorted_values: list[float], p: float) -> float:
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


PERCENTILES = (1, 10, 25, 50, 75, 90, 99, 99.9)


def summarize_fanout(raw: dict[str, Any]) -> dict[str, Any]:
    """The figures of the table; the rounds' latency lists are dropped from ``raw``."""
    rounds = raw["rounds"]
    bg = raw["background_per_s"]
    latencies = sorted(us for r in rounds for us in r.pop("latency_us"))
    deliveries = sum(r["deliveries"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    workers = sum(r["workers_cpu_s"] for r in rounds)
    redis = sum(r["redis_cpu_s"] for r in rounds)
    workers_net = workers - bg["workers"] * seconds
    redis_net = redis - bg["redis"] * seconds
    per_delivery = 1e6 * workers_net / deliveries
    none, two = raw["burst"]["none"], raw["burst"]["two"]
    redis_publish = 1e6 * none["redis_cpu_s_net"] / none["publishes"]
    redis_publish_2 = 1e6 * two["redis_cpu_s_net"] / two["publishes"]
    redis_fanout_publish = 1e6 * redis_net / len(rounds)
    clients = sum(r["clients_cpu_s"] for r in rounds)
    # What one publish asks of the machine's CPUs: the fan-out cannot end sooner than this
    # divided by the CPUs the processes share (the clients read while the workers write).
    demand = statistics.median(
        r["workers_cpu_s"] + r["clients_cpu_s"] + r["redis_cpu_s"] for r in rounds
    )
    cpus = len(os.sched_getaffinity(0))
    return {
        "subscribers": raw["subscribers"],
        "per_worker": raw["per_worker"],
        "connect_seconds": raw["connect_seconds"],
        "rounds": len(rounds),
        "deliveries": deliveries,
        "latency_p50_ms": _pct(latencies, 50) / 1e3,
        "latency_p99_ms": _pct(latencies, 99) / 1e3,
        "latency_max_ms": latencies[-1] / 1e3,
        "latency_percentiles_ms": {q: _pct(latencies, q) / 1e3 for q in PERCENTILES},
        "last_delivery_median_ms": statistics.median(r["latency_max_ms"] for r in rounds),
        "cpu_per_publish_ms": 1e3 * demand,
        "cpus": cpus,
        "clients_cpu_us_per_delivery": 1e6 * clients / deliveries,
        "workers_cpu_us_per_delivery": per_delivery,
        "workers_cpu_us_per_delivery_rounds": [r["workers_cpu_us"] for r in rounds],
        "workers_background_ms_per_s": 1e3 * bg["workers"],
        "redis_background_ms_per_s": 1e3 * bg["redis"],
        "redis_cpu_us_per_publish_burst": redis_publish,
        "redis_cpu_us_per_publish_burst_2_readers": redis_publish_2,
        "redis_cpu_us_per_fanout_publish": redis_fanout_publish,
        "others_cpu_percent": statistics.median(r["others_cpu_percent"] for r in rounds),
        "predicted_deliveries_per_s_per_core": 1e6 / per_delivery,
        # With a core for each worker and the clients elsewhere: each worker's share in turn.
        "predicted_last_delivery_ms": max(raw["per_worker"]) * per_delivery / 1e3,
        "predicted_publishes_per_s_per_shard": 1e6 / redis_publish_2,
        "predicted_publishes_per_s_per_shard_no_reader": 1e6 / redis_publish,
        "redis_exec_us_per_publish_2_readers": two["redis_exec_us_per_publish"],
        "burst_publishes_per_s": two["publishes"] / two["seconds"],
    }


# -- idle connections -----------------------------------------------------------------------


async def settle(pid: int) -> int:
    """The server's RSS once it is idle and its RSS stopped moving (bounded)."""
    await wait_idle([pid])
    rss = lg.rss_bytes(pid)
    for _ in range(10):
        await asyncio.sleep(0.2)
        now = lg.rss_bytes(pid)
        if abs(now - rss) < 64 * 1024:
            return now
        rss = now
    return rss


async def idle_one(
    spec: run.ServerSpec, n: int, wanted: int, steps: int, log_dir: Path, timeout: float
) -> dict[str, Any]:
    """RSS growth of one server from ``n`` idle connections; its RSS at ``wanted`` by a fit."""
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    log = log_dir / f"idle-{spec.name}.log"
    with run.Server(spec, False, server_cpu, log) as server:
        parts = split(n, PER_CLIENT_PROCESS)
        clients = []
        try:
            for i in range(len(parts)):
                clients.append(
                    await ClientProcess.start(
                        "idle", server.port, source(i), client_cpu, log, timeout
                    )
                )
            await asyncio.gather(*(c.expect("ready") for c in clients))
            clients[0].send("warm 50")
            await clients[0].expect("warmed")
            before = await settle(server.pid)
            points = []
            seconds = 0.0
            for s in range(steps):
                for c, part in zip(clients, parts, strict=True):
                    c.send(f"open {part // steps + (s < part % steps)}")
                events = await asyncio.gather(*(c.expect("open") for c in clients))
                total = sum(e["total"] for e in events)
                seconds += max(e["seconds"] for e in events)
                rss = await settle(server.pid)
                points.append({"connections": total, "rss": rss})
                progress(
                    f"{spec.name}: {total:,} idle, {(rss - before) / total / 1024:.2f} KiB each"
                )
        finally:
            closed = await close_clients(clients)
    lost = sum(c.get("lost", 0) for c in closed)
    if lost:
        raise RuntimeError(f"{lost} idle connections were closed by the server")
    after = points[-1]["rss"]
    slope = fit([0, *(q["connections"] for q in points)], [before, *(q["rss"] for q in points)])
    return {
        "connections": n,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_connection": (after - before) / n,
        "points": points,
        "open_seconds": seconds,
        "bytes_per_connection_fit": slope,
        "predicted_rss_at_wanted": before + slope * wanted,
        "wanted": wanted,
    }


def fit(x: list[float], y: list[float]) -> float:
    """The least-squares slope of y over x."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
        (a - mx) ** 2 for a in x
    )


async def idle(
    p: Profile, servers: list[str], n: int, log_dir: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    specs = {s.name: s for s in run.SERVERS}
    for name in servers:
        spec = specs[name]
        why = spec.available()
        if why:
            skipped[name] = why
            progress(f"{name}: skipped ({why})")
            continue
        progress(f"{name}: opening {n:,} idle connections")
        try:
            results[name] = await idle_one(spec, n, p.idle, p.steps, log_dir, p.timeout)
        except RuntimeError as exc:
            skipped[name] = str(exc)
            progress(f"{name}: failed ({exc})")
    return results, skipped


# -- the report -----------------------------------------------------------------------------


def _fmt(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fanout_table(s: dict[str, Any]) -> Iterator[str]:
    w = s["per_worker"]
    rows = [
        ("subscribers (per worker)", f"{s['subscribers']:,} ({', '.join(f'{x:,}' for x in w)})"),
        ("deliveries measured", f"{s['deliveries']:,} ({s['rounds']} publishes)"),
        ("delivery latency p50 (ms)", _fmt(s["latency_p50_ms"])),
        ("delivery latency p99 (ms)", _fmt(s["latency_p99_ms"])),
        ("delivery latency max (ms)", _fmt(s["latency_max_ms"])),
        ("last delivery, median publish (ms)", _fmt(s["last_delivery_median_ms"])),
        ("workers' CPU per delivery (us)", _fmt(s["workers_cpu_us_per_delivery"])),
        ("client processes' CPU per delivery (us)", _fmt(s["clients_cpu_us_per_delivery"])),
        (
            "CPU per publish, all processes (ms)",
            f"{_fmt(s['cpu_per_publish_ms'])}: {_fmt(s['cpu_per_publish_ms'] / s['cpus'])} "
            f"on {s['cpus']} CPUs",
        ),
        ("Redis CPU per fan-out publish, alone (us)", _fmt(s["redis_cpu_us_per_fanout_publish"])),
        (
            "Redis CPU per publish, burst (us)",
            f"{_fmt(s['redis_cpu_us_per_publish_burst_2_readers'])} with 2 readers, "
            f"{_fmt(s['redis_cpu_us_per_publish_burst'])} with none "
            f"(at {s['burst_publishes_per_s']:,.0f}/s)",
        ),
        ("predicted deliveries/s per core", f"{s['predicted_deliveries_per_s_per_core']:,.0f}"),
        ("predicted last delivery, a core a worker (ms)", _fmt(s["predicted_last_delivery_ms"])),
        (
            "of which Redis executes (us)",
            "EVALSHA {evalsha:.1f} (its commands {script_commands:.1f}), XREAD {xread:.1f}".format(
                **s["redis_exec_us_per_publish_2_readers"]
            ),
        ),
        (
            "predicted publishes/s per Redis shard",
            f"{s['predicted_publishes_per_s_per_shard']:,.0f} with 2 readers "
            f"({s['predicted_publishes_per_s_per_shard_no_reader']:,.0f} with none)",
        ),
        ("other processes' CPU during rounds (%)", _fmt(s["others_cpu_percent"])),
    ]
    width = max(len(k) for k, _ in rows) + 2
    yield "fan-out: fullduplex serve --workers 2 --broker redis://, /pubsub subscribers of 'chat'"
    for k, v in rows:
        yield f"  {k:<{width}}{v}"


def idle_table(results: dict[str, Any]) -> Iterator[str]:
    base = results.get("fullduplex", {}).get("bytes_per_connection")
    wanted = next(iter(results.values()))["wanted"] if results else 0
    yield "idle connections: RSS growth per open idle WebSocket connection, one server process"
    head = ("connections", "RSS before", "RSS after", "KiB/conn", "ratio", "KiB/conn fit")
    head += (f"RSS at {wanted:,}", "opened/s")
    yield f"  {'':<12}" + "".join(f"{h:>14}" for h in head)
    for name, r in results.items():
        per = r["bytes_per_connection"]
        cells = (
            f"{r['connections']:,}",
            f"{r['rss_before'] / 2**20:.1f} MiB",
            f"{r['rss_after'] / 2**20:.1f} MiB",
            f"{per / 1024:.2f}",
            f"{per / base:.2f}x" if base else "-",
            f"{r['bytes_per_connection_fit'] / 1024:.2f}",
            f"{r['predicted_rss_at_wanted'] / 2**20:,.0f} MiB",
            f"{r['connections'] / r['open_seconds']:,.0f}",
        )
        yield f"  {name:<12}" + "".join(f"{c:>14}" for c in cells)


# -- main -----------------------------------------------------------------------------------


def nofile_cap(wanted: int) -> tuple[int, str | None]:
    """How many connections one process can hold here, and a note when fewer than wanted."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    if hard == resource.RLIM_INFINITY or wanted + FD_MARGIN <= hard:
        return wanted, None
    n = hard - FD_MARGIN
    note = (
        f"{wanted:,} idle connections need RLIMIT_NOFILE >= {wanted + FD_MARGIN:,} in the "
        f"server; the hard limit here is {hard:,} (raising it needs CAP_SYS_RESOURCE): "
        f"measured {n:,}"
    )
    return n, note


async def main_async(args: argparse.Namespace, p: Profile, log_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    if args.only in (None, "fanout"):
        progress(f"fan-out: {p.subscribers:,} subscribers, {p.rounds} publishes")
        raw = await fanout(p, log_dir)
        report["fanout"] = {"summary": summarize_fanout(raw), "raw": raw}
    if args.only in (None, "idle"):
        n, note = nofile_cap(p.idle)
        if note:
            progress(note)
        results, skipped = await idle(p, args.servers, n, log_dir)
        report["idle"] = {
            "wanted": p.idle,
            "measured": n,
            "cap": note,
            "results": results,
            "skipped": skipped,
        }
    return report


def print_report(report: dict[str, Any]) -> None:
    lines: list[str] = []
    if "fanout" in report:
        lines += fanout_table(report["fanout"]["summary"])
        lines.append("")
    if "idle" in report:
        lines += idle_table(report["idle"]["results"])
        if report["idle"]["cap"]:
            lines.append(f"  ({report['idle']['cap']})")
        for name, why in report["idle"]["skipped"].items():
            lines.append(f"  {name}: skipped ({why})")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2,000 subscribers, 5,000 idle")
    parser.add_argument("--subscribers", type=int, help="fan-out subscribers")
    parser.add_argument("--rounds", type=int, help="measured publishes")
    parser.add_argument("--idle", type=int, help="idle connections per server")
    parser.add_argument("--steps", type=int, help="idle: RSS read after each of these steps")
    parser.add_argument("--burst", type=int, help="publishes of the Redis burst")
    parser.add_argument(
        "--servers", default=",".join(IDLE_SERVERS), help="idle: comma-separated, from bench/run.py"
    )
    parser.add_argument("--only", choices=["fanout", "idle"], help="one of the two measurements")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="folder of the raw results and logs"
    )
    args = parser.parse_args(argv)
    p = QUICK if args.quick else FULL
    for name in ("subscribers", "rounds", "idle", "steps", "burst"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name} must be at least 1")
            setattr(p, name, value)
    args.servers = args.servers.split(",")
    unknown = set(args.servers) - {s.name for s in run.SERVERS}
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = args.results / "logs" / f"scale-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    nofile_cap(0)  # the soft limit up to the hard one, for every child
    started = time.monotonic()
    report = asyncio.run(main_async(args, p, log_dir))
    report = {
        "environment": run.environment(False),
        "profile": vars(p),
        "seconds": time.monotonic() - started,
        **report,
    }
    encoded = json.dumps(report, indent=1, default=str)
    out = args.results / f"scale-{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(encoded)
    if args.json:
        args.json.write_text(encoded)
    print()
    print_report(report)
    print(f"raw results: {out}  ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
