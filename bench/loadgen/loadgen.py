"""The load generator of bench/run.py: one process, uvloop, raw sockets, pre-built frames.

It does the opening handshake itself (one fixed request, the accept key checked), sends
pre-built masked frames and counts the bytes that come back, so a received message costs one
``data_received`` call and a few integer operations: it stays well below the cost of any server
it drives. The first echo on each connection is compared byte for byte with the expected frame.

Each run does one test and prints one JSON object on stdout::

    python bench/loadgen/loadgen.py echo --port 8000 --server-pid 1234 --connections 100

Tests: ``echo`` (per-message server cost), ``latency`` (1-connection ping-pong), ``throughput``
(1 MiB echo), ``memory`` (RSS per idle connection), ``broadcast`` (one message to N
connections), ``handshake`` (connect, handshake, close per second). With ``--raw`` it speaks to
the raw TCP echo server: no handshake, and the echo is the masked frame itself.

Server CPU time is read two ways at every window boundary: the process CPU clock
(``clock_gettime`` on the pid's CPU-time clock: nanoseconds, every thread) and utime+stime from
``/proc/<pid>/stat`` (clock ticks). With ``--perf-events``, ``perf stat`` counts those events in
the server over exactly the same windows (enabled and disabled through its control FIFO).

With ``--callgrind``, the server runs under ``valgrind --tool=callgrind --instr-atstart=no``
(bench/run.py --callgrind starts it so) and each window also counts the instructions the server
executed in user space (callgrind's ``Ir``, every thread), switched on, zeroed and read through
``vgdb``. Such a server is 20-50x slower, so the echo test then measures a fixed number of
messages (``--count``) sent after the load has stopped, rather than a time window, and every
window ends ``--tail`` seconds after its last reply so the server finishes the work it does after
writing that reply. With ``--callgrind-dump`` too, callgrind also writes each window's profile
(``callgrind.out.<pid>.<n>`` beside the server's, or its ``--callgrind-out-file``), to read by
function with ``callgrind_annotate`` (bench/README.md, "Profiling a per-message path by function").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

# The engine `fullduplex bench` runs on (in the wheel): percentiles, opening many connections,
# the open-file limit, the event loop.
from fullduplex.bench.latency import percentile
from fullduplex.bench.load import open_many, raise_file_limit, run_loop

# RFC 6455 1.3: the sample nonce and its accept value; every connection sends the same key.
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
MASK = b"\x37\xfa\x21\x3d"
OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8
TICKS = os.sysconf("SC_CLK_TCK")

# -- frames ---------------------------------------------------------------------------------


def _header(opcode: int, length: int, masked: bool) -> bytes:
    bit = 0x80 if masked else 0
    if length < 126:
        return bytes([0x80 | opcode, bit | length])
    if length < 2**16:
        return bytes([0x80 | opcode, bit | 126]) + struct.pack("!H", length)
    return bytes([0x80 | opcode, bit | 127]) + struct.pack("!Q", length)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3), built once and sent many times."""
    n = len(payload)
    mask = (MASK * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return _header(opcode, n, True) + MASK + (masked if n else b"")


def server_frame(opcode: int, payload: bytes) -> bytes:
    """The unmasked frame a server sends back for ``payload``."""
    return _header(opcode, len(payload), False) + payload


CLOSE_FRAME = client_frame(OP_CLOSE, struct.pack("!H", 1000))


def handshake_request(host: str, port: int, path: str, headers: Sequence[str] = ()) -> bytes:
    """The upgrade request; ``headers`` are more ``Name: value`` lines (Origin, a token)."""
    extra = "".join(f"{line}\r\n" for line in headers)
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: "
        f"{KEY.decode()}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


# -- measuring the server -------------------------------------------------------------------


class Perf:
    """``perf stat`` attached to the server, counting only between enable() and disable()."""

    def __init__(self, pid: int, events: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="fdbench-perf-")
        self.ctl = os.path.join(self.dir, "ctl")
        self.ack = os.path.join(self.dir, "ack")
        os.mkfifo(self.ctl)
        os.mkfifo(self.ack)
        self.out = os.path.join(self.dir, "out")
        self.proc = subprocess.Popen(
            [
                *("perf", "stat", "-x,", "-e", events, "-D", "-1", "-o", self.out),
                *("--control", f"fifo:{self.ctl},{self.ack}", "-p", str(pid)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ctl_fd = os.open(self.ctl, os.O_RDWR)
        self.ack_fd = os.open(self.ack, os.O_RDWR)

    def _command(self, word: bytes) -> None:
        os.write(self.ctl_fd, word + b"\n")
        os.read(self.ack_fd, 5)  # "ack\n\0"

    def enable(self) -> None:
        self._command(b"enable")

    def disable(self) -> None:
        self._command(b"disable")

    def finish(self) -> dict[str, float | None]:
        """Stop perf and return {event: count}, None where the event is not supported."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.ctl_fd)
        os.close(self.ack_fd)
        counts: dict[str, float | None] = {}
        with open(self.out) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) < 3 or line.startswith("#"):
                    continue
                try:
                    counts[parts[2]] = float(parts[0])
                except ValueError:
                    counts[parts[2]] = None  # <not supported> / <not counted>
        return counts


class Callgrind:
    """User-space instruction counts of a server running under callgrind, window by window.

    The server must run as ``valgrind --tool=callgrind --instr-atstart=no ...``: instrumentation
    is off outside the windows (the server then runs ~5x slower than natively, not 50x). Commands
    go through ``vgdb`` (what ``callgrind_control`` wraps), which wakes a server blocked in
    ``epoll_wait`` through ptrace (after 1 ms here, not vgdb's default 100 ms). A window opens
    with ``instrumentation on`` then ``zero``, in one vgdb call, so nothing from before the
    window is counted; it closes with ``status internal`` (the ``Ir`` count of each thread since
    the zero: the figure a dump's ``summary:`` line gives) then ``instrumentation off``, again
    in one call. The load generator's traffic must be stopped during those calls (~0.1 s each):
    the tests open and close windows only when nothing is in flight.
    """

    def __init__(self, pid: int, dump: bool = False) -> None:
        self.pid = pid
        self.dump = dump  # also write each window's profile (callgrind's own dump)
        self.vgdb = shutil.which("vgdb") or "vgdb"

    def _commands(self, *commands: str) -> str:
        """Send monitor commands to the server's gdbserver, in order, in one vgdb call."""
        argv = [self.vgdb, f"--pid={self.pid}", "--max-invoke-ms=1"]
        for i, command in enumerate(commands):
            argv += (["-c"] if i else []) + command.split()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"vgdb {' / '.join(commands)}: {proc.stderr.strip()[-200:]}")
        return proc.stdout

    def start(self) -> None:
        self._commands("instrumentation on", "zero")

    def stop(self) -> dict[str, int]:
        """Instructions executed since start(), by thread id; instrumentation off again."""
        # The count first: a dump zeroes the counters.
        status = self._commands(
            "status internal", *(["dump"] if self.dump else []), "instrumentation off"
        )
        if "instrumentation: on" not in status:
            raise RuntimeError(f"callgrind instrumentation was not on in {self.pid}")
        counts = re.findall(r"^events-(\d+): (\d+)", status, re.MULTILINE)
        if not counts:
            raise RuntimeError(f"no instruction count in vgdb's answer: {status[-200:]!r}")
        return {tid: int(n) for tid, n in counts}


@dataclass
class Snapshot:
    """The state of both processes at one instant."""

    wall: float
    server_cpu_ns: int  # process CPU clock of the server (all threads)
    server_ticks: int  # utime + stime from /proc/<pid>/stat
    self_cpu: float  # this process: user + system seconds
    system_busy_ticks: int  # every CPU, every process: to see other load on the machine

    @classmethod
    def take(cls, pid: int) -> Snapshot:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            time.perf_counter(),
            cpu_clock_ns(pid),
            _stat_ticks(pid),
            ru.ru_utime + ru.ru_stime,
            system_busy_ticks(),
        )


def cpu_clock_ns(pid: int) -> int:
    # clock_getcpuclockid(pid): CPUCLOCK_SCHED (2) of the whole process (bit 2 clear).
    return time.clock_gettime_ns(((~pid) << 3) | 2)


def _stat_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def system_busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@dataclass
class Window:
    """Server and load-generator cost over one measured interval."""

    seconds: float
    server_cpu_s: float
    server_stat_cpu_s: float
    loadgen_cpu_s: float
    other_cpu_s: float  # CPU time of every other process on the machine
    instructions: int | None = None  # user-space instructions of the server (--callgrind)
    thread_instructions: dict[str, int] | None = None  # the same by thread id ("1": main)

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot) -> Window:
        server = (b.server_cpu_ns - a.server_cpu_ns) / 1e9
        loadgen = b.self_cpu - a.self_cpu
        busy = (b.system_busy_ticks - a.system_busy_ticks) / TICKS
        return cls(
            b.wall - a.wall,
            server,
            (b.server_ticks - a.server_ticks) / TICKS,
            loadgen,
            max(0.0, busy - server - loadgen),
        )

    def per(self, count: int) -> dict[str, Any]:
        """Costs per unit of work (message, delivery, handshake)."""
        out: dict[str, Any] = {
            "count": count,
            "seconds": self.seconds,
            "rate_per_s": count / self.seconds if self.seconds else None,
            "server_cpu_us": 1e6 * self.server_cpu_s / count if count else None,
            "server_stat_cpu_us": 1e6 * self.server_stat_cpu_s / count if count else None,
            "server_cpu_percent": 100 * self.server_cpu_s / self.seconds,
            "loadgen_cpu_percent": 100 * self.loadgen_cpu_s / self.seconds,
            "other_cpu_percent": 100 * self.other_cpu_s / self.seconds,
        }
        if self.instructions is not None:
            out["instructions"] = self.instructions
            out["instructions_per_unit"] = self.instructions / count if count else None
            out["thread_instructions"] = self.thread_instructions
        return out


class Meter:
    """Takes snapshots of the server (and perf or callgrind counts, if asked) around windows."""

    def __init__(
        self,
        pid: int | None,
        perf_events: str | None,
        callgrind: bool = False,
        tail: float = 0.0,
        dump: bool = False,
    ) -> None:
        self.pid = pid or os.getpid()
        self.perf = Perf(self.pid, perf_events) if perf_events and pid else None
        self.callgrind = Callgrind(self.pid, dump) if callgrind and pid else None
        self.tail_seconds = tail if self.callgrind is not None else 0.0
        self.instructions = 0  # callgrind: the sum over every window
        self._start: Snapshot | None = None

    def start(self) -> None:
        if self.callgrind is not None:
            self.callgrind.start()  # before the snapshot: its ~0.1 s is not in the window
        self._start = Snapshot.take(self.pid)
        if self.perf is not None:
            self.perf.enable()

    async def tail(self) -> None:
        """Under callgrind, let the server finish what it does after its last write."""
        if self.tail_seconds:
            await asyncio.sleep(self.tail_seconds)

    def stop(self) -> Window:
        if self.perf is not None:
            self.perf.disable()
        assert self._start is not None
        window = Window.between(self._start, Snapshot.take(self.pid))
        if self.callgrind is not None:
            window.thread_instructions = self.callgrind.stop()
            window.instructions = sum(window.thread_instructions.values())
            self.instructions += window.instructions
        return window

    def close(self) -> dict[str, float | None]:
        return self.perf.finish() if self.perf is not None else {}


# -- connections ----------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """One connection: the opening handshake, then ``on_data(n)`` for each chunk of n bytes.

    A fixed-size reply is recognised by counting bytes, never by parsing frames: every server
    under test runs without pings, so the only bytes coming back are the replies.
    """

    def __init__(self, request: bytes | None) -> None:
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.head = b""
        self.is_open = False
        self.on_data: Callable[[bytes], None] = _ignore

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.request is None:
            self._open()
        else:
            self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.is_open:
            self.on_data(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self.head[:end], self.head[end + 4 :]
        if not head.startswith(b"HTTP/1.1 101") or ACCEPT not in head:
            if not self.opened.done():
                self.opened.set_exception(RuntimeError(f"handshake failed: {head[:80]!r}"))
            self.transport.close()
            return
        self._open()
        if rest:
            self.on_data(rest)

    def _open(self) -> None:
        self.is_open = True
        self.head = b""
        if not self.opened.done():
            self.opened.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        """Start a clean close: our close frame, then FIN."""
        if not self.transport.is_closing():
            if self.is_open and self.request is not None:
                self.transport.write(CLOSE_FRAME)
            self.transport.close()


def _ignore(data: bytes) -> None:
    pass


@dataclass
class Target:
    host: str
    port: int
    path: str
    raw: bool
    headers: Sequence[str] = ()

    def request(self) -> bytes | None:
        if self.raw:
            return None
        return handshake_request(self.host, self.port, self.path, self.headers)


async def connect(
    target: Target, timeout: float | None = 10.0, cls: type[Client] = Client
) -> Client:
    loop = asyncio.get_running_loop()
    request = target.request()
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: cls(request), target.host, target.port), timeout
    )
    await asyncio.wait_for(client.opened, timeout)
    return client


async def connect_many(
    target: Target, n: int, concurrency: int, deadline: float, cls: type[Client] = Client
) -> list[Client]:
    """Open ``n`` connections, at most ``concurrency`` handshakes at a time."""
    return await open_many(
        lambda left: connect(target, left, cls),
        n,
        close=close_all,
        concurrency=concurrency,
        deadline=deadline,
    )


class Closable(Protocol):
    """What close_all needs of a client: this file's Client and hub_loadgen's Subscriber."""

    lost: asyncio.Future[None]
    transport: asyncio.Transport

    def close(self) -> None: ...


async def close_all(clients: Sequence[Closable], timeout: float = 5.0) -> None:
    for client in clients:
        client.close()
    pending = [c.lost for c in clients if not c.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
        for client in clients:
            if not client.lost.done():
                client.transport.abort()


# -- tests ----------------------------------------------------------------------------------


def frames(size: int, raw: bool, opcode: int = OP_BINARY) -> tuple[bytes, bytes]:
    """The frame to send and the exact bytes expected back."""
    payload = os.urandom(size)
    out = client_frame(opcode, payload)
    return out, out if raw else server_frame(opcode, payload)


class Checker:
    """Compares the first reply on each connection with the expected bytes."""

    def __init__(self, expected: bytes) -> None:
        self.expected = expected
        self.errors = 0

    def wrap(self, client: Client, then: Callable[[bytes], None]) -> None:
        got = bytearray()

        def first(data: bytes) -> None:
            got.extend(data)
            if len(got) < len(self.expected):
                return
            if bytes(got[: len(self.expected)]) != self.expected:
                self.errors += 1
            client.on_data = then
            then(bytes(got))

        client.on_data = first


class EchoClient(Client):
    """A client of the echo test: its own ``data_received`` keeps the per-message path short."""

    frame = b""
    expect = 0
    running = True
    in_flight = 0

    def __init__(self, request: bytes | None) -> None:
        super().__init__(request)
        self.count = 0
        self.quota = 2**62  # --count: replies to wait for before stopping
        self.pending = 0
        self.checking = True  # the handshake, then the first echo
        self.checker = Checker(b"")
        self.got = bytearray()

    def start(self, checker: Checker) -> None:
        self.checker = checker
        self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        if self.checking:
            self._check(data)
            return
        self.pending += len(data)
        if self.pending >= self.expect:
            self.pending -= self.expect
            self.count += 1
            if EchoClient.running and self.count < self.quota:
                self.transport.write(self.frame)
            else:
                EchoClient.in_flight -= 1

    def _check(self, data: bytes) -> None:
        if not self.is_open:
            super().data_received(data)  # the handshake response
            return
        self.got.extend(data)
        expected = self.checker.expected
        if len(self.got) < len(expected):
            return
        if self.got[: len(expected)] != expected:
            self.checker.errors += 1
        self.checking = False
        rest, self.got = bytes(self.got), bytearray()
        self.data_received(rest)


async def _drain(seconds: float) -> None:
    """Wait until every echo client has its last reply (at most ``seconds``)."""
    for _ in range(int(seconds * 100)):
        if EchoClient.in_flight <= 0:
            return
        await asyncio.sleep(0.01)


async def test_echo(args: argparse.Namespace, target: Target, meter: Meter) -> dict[str, Any]:
    """N connections, one message in flight on each: the server's cost per message.

    With ``--count``, the warm-up load stops and drains, then the measured window covers exactly
    ``--count`` messages (rounded up to a multiple of the connections), each connection sending
    its share one after the other, and ends when the last reply is in (plus the tail).
    """
    frame, expected = frames(args.size, target.raw)
    EchoClient.frame, EchoClient.expect = frame, len(expected)
    deadline = time.monotonic() + args.timeout
    clients = await connect_many(target, args.connections, args.concurrency, deadline, EchoClient)
    checker = Checker(expected)
    echo_clients = [c for c in clients if isinstance(c, EchoClient)]
    EchoClient.running = True
    EchoClient.in_flight = len(echo_clients)
    for client in echo_clients:
        client.start(checker)
    await asyncio.sleep(args.warmup)
    if args.count:
        EchoClient.running = False
        await _drain(args.timeout)
        if EchoClient.in_flight > 0:
            raise RuntimeError("the warm-up load did not drain")
        share = -(-args.count // len(echo_clients))
        for client in echo_clients:
            client.count, client.quota = 0, share
        meter.start()
        EchoClient.running = True
        EchoClient.in_flight = len(echo_clients)
        for client in echo_clients:
            client.transport.write(frame)
        await _drain(args.timeout)
        if EchoClient.in_flight > 0:
            raise RuntimeError(f"the measured {args.count} messages took over {args.timeout} s")
        await meter.tail()
        window = meter.stop()
        count = sum(c.count for c in echo_clients)
    else:
        start = sum(c.count for c in echo_clients)
        meter.start()
        await asyncio.sleep(args.duration)
        window = meter.stop()
        count = sum(c.count for c in echo_clients) - start
        EchoClient.running = False
        await _drain(2.0)  # let the last replies arrive
    await close_all(clients)
    if count == 0:
        raise RuntimeError("no message echoed")
    return {
        "echo": window.per(count),
        "units": count,
        "check_errors": checker.errors,
        "window": asdict(window),
    }


async def test_latency(args: argparse.Namespace, target: Target, meter: Meter) -> dict[str, Any]:
    """One connection, one message in flight: round-trip times (also used for 1 MiB echo)."""
    frame, expected = frames(args.size, target.raw)
    expect = len(expected)
    client = await connect(target)
    checker = Checker(expected)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    times: list[int] = []
    total = args.warmup_messages + args.messages
    end_by = time.perf_counter() + args.duration + args.warmup
    pending = 0
    sent_at = 0
    clock = time.perf_counter_ns
    write = client.transport.write

    def on_data(data: bytes) -> None:
        nonlocal pending, sent_at
        pending += len(data)
        if pending < expect:
            return
        pending -= expect
        now = clock()
        times.append(now - sent_at)
        if len(times) == args.warmup_messages:
            meter.start()
        if len(times) >= total or now > end_by * 1e9:
            if not done.done():
                done.set_result(None)
            return
        sent_at = clock()
        write(frame)

    checker.wrap(client, on_data)
    if args.warmup_messages == 0:
        meter.start()
    sent_at = clock()
    write(frame)
    await asyncio.wait_for(done, args.duration + args.warmup + args.timeout)
    window = meter.stop()
    await close_all([client])
    measured = times[args.warmup_messages :]
    if not measured:
        raise RuntimeError("no round trip measured")
    us = sorted(t / 1000 for t in measured)
    result = window.per(len(measured))
    result.update(
        p50_us=percentile(us, 50),
        p90_us=percentile(us, 90),
        p99_us=percentile(us, 99),
        max_us=us[-1],
        mean_us=statistics.fmean(us),
        mb_per_s=args.size * len(measured) / window.seconds / 1e6,
    )
    return {"latency": result, "units": len(measured), "check_errors": checker.errors}


async def test_memory(args: argparse.Namespace, target: Target, meter: Meter) -> dict[str, Any]:
    """RSS growth of the server per idle connection (after the handshake, nothing sent)."""
    pid = meter.pid
    deadline = time.monotonic() + args.timeout
    # Warm up: load the code paths (and lazy imports) a connection needs, then let them go.
    await close_all(await connect_many(target, 50, args.concurrency, deadline))
    await asyncio.sleep(0.5)
    before = rss_bytes(pid)
    clients = await connect_many(target, args.connections, args.concurrency, deadline)
    await asyncio.sleep(args.settle)
    after = rss_bytes(pid)
    await close_all(clients)
    return {
        "memory": {
            "connections": args.connections,
            "rss_before": before,
            "rss_after": after,
            "bytes_per_connection": (after - before) / args.connections,
        }
    }


async def test_broadcast(args: argparse.Namespace, target: Target, meter: Meter) -> dict[str, Any]:
    """One message from a control connection to N others: time to the last delivery, cost."""
    frame, expected = frames(args.size, target.raw)
    expect = len(expected)
    n = args.connections
    deadline = time.monotonic() + args.timeout
    receivers = await connect_many(target, n, args.concurrency, deadline)
    control = await connect(target)
    await asyncio.sleep(args.settle)
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {"delivered": 0, "first": 0.0, "last": 0.0, "done": None}
    checker = Checker(expected)

    def make() -> Callable[[bytes], None]:
        pending = 0

        def on_data(data: bytes) -> None:
            nonlocal pending
            pending += len(data)
            while pending >= expect:
                pending -= expect
                state["delivered"] += 1
                if state["delivered"] == 1:
                    state["first"] = time.perf_counter()
                if state["delivered"] == n:
                    state["last"] = time.perf_counter()
                    state["done"].set_result(None)

        return on_data

    for client in receivers:
        checker.wrap(client, make())
    rounds = []
    for i in range(-args.warmup_rounds, args.rounds):
        state.update(delivered=0, done=loop.create_future())
        if i < 0:  # a warm-up round: not measured
            control.transport.write(frame)
            await asyncio.wait_for(state["done"], args.timeout)
            await asyncio.sleep(0.1)
            continue
        meter.start()
        sent = time.perf_counter()
        control.transport.write(frame)
        await asyncio.wait_for(state["done"], args.timeout)
        await asyncio.sleep(0.05)  # let the server return to its loop: its CPU is measured
        await meter.tail()
        window = meter.stop()
        result = window.per(n)
        result.update(
            last_delivery_ms=1e3 * (state["last"] - sent),
            first_delivery_ms=1e3 * (state["first"] - sent),
        )
        rounds.append(result)
        await asyncio.sleep(0.1)
    await close_all([*receivers, control])
    return {
        "broadcast": rounds,
        "connections": n,
        "units": n * len(rounds),
        "check_errors": checker.errors,
    }


class Handshaker(Client):
    """Handshake, send a close frame at once, wait for the server to close."""

    def _open(self) -> None:
        super()._open()
        self.transport.write(CLOSE_FRAME)

    def eof_received(self) -> bool | None:
        return False  # close our side too


async def test_handshake(args: argparse.Namespace, target: Target, meter: Meter) -> dict[str, Any]:
    """Connect, handshake, close: ``connections`` times, ``concurrency`` at a time."""
    loop = asyncio.get_running_loop()
    request = target.request()
    sem = asyncio.Semaphore(args.concurrency)
    times: list[float] = []
    failures: list[BaseException] = []

    async def one() -> None:
        async with sem:
            started = time.perf_counter()
            try:
                _, client = await asyncio.wait_for(
                    loop.create_connection(lambda: Handshaker(request), target.host, target.port),
                    args.timeout,
                )
                await asyncio.wait_for(client.opened, args.timeout)
                times.append(time.perf_counter() - started)
                await asyncio.wait_for(client.lost, args.timeout)
            except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
                failures.append(exc)

    meter.start()
    await asyncio.gather(*(one() for _ in range(args.connections)))
    await meter.tail()
    window = meter.stop()
    ok = len(times)
    result = window.per(ok)
    ms = sorted(1e3 * t for t in times)
    result.update(
        failures=len(failures),
        first_failure=repr(failures[0]) if failures else None,
        open_p50_ms=percentile(ms, 50) if ms else None,
        open_p99_ms=percentile(ms, 99) if ms else None,
    )
    return {"handshake": result, "units": ok}


async def test_idle(args: argparse.Namespace, target: Target, meter: Meter) -> dict[str, Any]:
    """No connection at all for ``--duration`` seconds: what the server does on its own.

    Under callgrind this is the floor under every other window (timers, background threads).
    """
    meter.start()
    await asyncio.sleep(args.duration)
    window = meter.stop()
    result = window.per(1)
    if window.instructions is not None:
        result["instructions_per_s"] = window.instructions / window.seconds
    return {"idle": result, "units": 1}


TESTS = {
    "echo": test_echo,
    "latency": test_latency,
    "memory": test_memory,
    "broadcast": test_broadcast,
    "handshake": test_handshake,
    "idle": test_idle,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("test", choices=sorted(TESTS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/echo")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        help="one more 'Name: value' line in the upgrade request (repeatable)",
    )
    p.add_argument("--raw", action="store_true", help="raw TCP echo: no handshake")
    p.add_argument("--server-pid", type=int, help="measure this process's CPU time and RSS")
    p.add_argument("--perf-events", help="also count these perf events in the server")
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="the server runs under callgrind (--instr-atstart=no): count its instructions",
    )
    p.add_argument(
        "--callgrind-dump",
        action="store_true",
        help="--callgrind: also dump each window's profile, to read by function",
    )
    p.add_argument(
        "--tail",
        type=float,
        default=0.3,
        help="--callgrind: seconds each window stays open after the last reply",
    )
    p.add_argument(
        "--count",
        type=int,
        default=0,
        help="echo: measure exactly this many messages after the warm-up (not --duration)",
    )
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    p.add_argument("--size", type=int, default=32, help="message payload bytes")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured")
    p.add_argument("--messages", type=int, default=20_000, help="round trips measured")
    p.add_argument("--warmup-messages", type=int, default=1_000)
    p.add_argument("--rounds", type=int, default=3, help="broadcast rounds")
    p.add_argument("--warmup-rounds", type=int, default=0, help="broadcast rounds not measured")
    p.add_argument("--settle", type=float, default=1.0, help="seconds before reading RSS")
    p.add_argument("--timeout", type=float, default=60.0, help="bound on any one wait")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    return p.parse_args(argv)


def result_or_error(
    test: Callable[[], Awaitable[dict[str, Any]]], connections: int, loop: str
) -> dict[str, Any]:
    """Run ``test`` on a new ``loop`` with room for ``connections`` open files: its result, or
    ``{"error": ...}`` if it raised (bench/run.py and bench/hub_bench.py show it)."""

    async def main() -> dict[str, Any]:
        return await test()

    try:
        raise_file_limit(connections, spare=100)
        return run_loop(main(), loop)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    target = Target(args.host, args.port, args.path, args.raw, args.header)
    meter = Meter(args.server_pid, args.perf_events, args.callgrind, args.tail, args.callgrind_dump)
    try:
        result = result_or_error(
            lambda: TESTS[args.test](args, target, meter), args.connections, args.loop
        )
    finally:
        perf_totals = meter.close()
    if "error" in result:
        print(json.dumps(result))
        return 1
    if perf_totals:
        # perf counted only inside the measured windows: divide by the work done in them.
        units = result.get("units") or 0
        result["perf_totals"] = perf_totals
        result["perf_per_unit"] = {
            event: value / units if value is not None and units else None
            for event, value in perf_totals.items()
        }
    if meter.callgrind is not None:
        # Instructions counted only inside the measured windows, as perf above.
        units = result.get("units") or 0
        result["instructions_total"] = meter.instructions
        result["instructions_per_unit"] = meter.instructions / units if units else None
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
