"""Server benchmarks: fullduplex against other WebSocket servers, one table with ratios.

    python bench/run.py [--quick] [--repeat N] [--json results.json] [--servers a,b] [--tests x,y]
    python bench/run.py --callgrind [--repeat N] [--servers a,b]

Each server under test (bench/servers/) runs pinned to CPU 0; the load generator
(bench/loadgen/loadgen.py, one uvloop process) runs pinned to CPU 1. Tests, each repeated:

* echo: 32-byte binary messages over 100 connections, one in flight on each; server CPU time
  per message (process CPU clock; /proc/<pid>/stat utime+stime kept in the JSON), and hardware
  instructions per message where ``perf stat -e instructions`` works;
* latency: one connection, 32-byte ping-pong, p50/p99 round trip;
* throughput: one connection, 1 MiB binary echo, MB/s of payload;
* memory: RSS growth per idle connection with 5,000 connections;
* broadcast: one message from a control connection to 2,000 and 10,000 others: time until the
  last delivery, server CPU (and instructions) per delivery;
* handshake: connect, handshake, close, 2,000 times with 64 in flight: handshakes per second.

The table shows medians, the spread (half the min-max range, relative to the median) and the
ratio to fullduplex on uvloop. Raw results go to bench/results/<time>.json (and --json).

``--callgrind`` runs instead only instruction counts, for machines without hardware counters:
each server runs under ``valgrind --tool=callgrind --instr-atstart=no`` and the load generator
switches counting on for its windows only (see ``Callgrind`` in loadgen.py). It reports the
user-space instructions (callgrind's ``Ir``: the server's own code, the interpreter, C
extensions, libc; not the kernel's work in syscalls) per echoed message, per broadcast delivery,
per handshake, and what each server does when idle. Under valgrind a server runs 20-50x slower,
so the echo window is a fixed number of messages rather than seconds.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
SERVERS_DIR = BENCH / "servers"
sys.path.insert(0, str(SERVERS_DIR))
from _common import GUARD_HEADERS  # noqa: E402 - the servers' own module, after its folder

LOADGEN = BENCH / "loadgen" / "loadgen.py"
RESULTS = BENCH / "results"
PY = sys.executable
SERVER_CPU, LOADGEN_CPU = 0, 1


@dataclass
class ServerSpec:
    name: str
    command: list[str]
    needs: str  # a Python module, or "node"
    raw: bool = False
    notes: str = ""
    #: The WebSocket route the load generator connects to.
    path: str = "/echo"
    #: More ``Name: value`` lines in every upgrade request (the guarded servers want them).
    headers: tuple[str, ...] = ()
    #: The tests this server can take (None: all); a route that answers no echo takes fewer.
    only: tuple[str, ...] | None = None

    def takes(self, test: str) -> bool:
        """Whether this server can take ``test``."""
        return self.only is None or test in self.only

    def available(self) -> str | None:
        """None if it can run here, else why not."""
        if self.needs == "node":
            if shutil.which("node") is None or shutil.which("npm") is None:
                return "node/npm not installed"
            return None
        try:
            importlib.metadata.version(self.needs)
        except importlib.metadata.PackageNotFoundError:
            return f"{self.needs} not installed: pip install -e '.[bench]'"
        return None


def _py(script: str, *extra: str) -> list[str]:
    return [PY, str(SERVERS_DIR / script), *extra]


SERVERS = [
    ServerSpec("fullduplex", _py("fullduplex_echo.py", "--loop", "uvloop"), "fullduplex"),
    ServerSpec("fd-asyncio", _py("fullduplex_echo.py", "--loop", "asyncio"), "fullduplex"),
    ServerSpec("fd-listener", _py("fullduplex_echo.py", "--api", "listener"), "fullduplex"),
    # The first column with app.enable_metrics() (issue 13: metrics cost under 5% a message).
    ServerSpec("fd-metrics", _py("fullduplex_echo.py", "--metrics"), "fullduplex"),
    # Issue 12: the handshake with an Origin allow-list and an authenticator on (and the per-IP
    # limits, on in every fullduplex column), on the echo route and on the hub's /pubsub.
    ServerSpec(
        "fd-guarded",
        _py("fullduplex_echo.py", "--guarded"),
        "fullduplex",
        headers=GUARD_HEADERS,
    ),
    ServerSpec(
        "fd-pubsub",
        _py("fullduplex_pubsub.py"),
        "fullduplex",
        path="/pubsub",
        headers=GUARD_HEADERS,
        only=("idle", "memory", "handshake"),
    ),
    ServerSpec("websockets", _py("websockets_echo.py"), "websockets"),
    ServerSpec("aiohttp", _py("aiohttp_echo.py"), "aiohttp"),
    ServerSpec("picows", _py("picows_echo.py"), "picows"),
    ServerSpec("wsproto", _py("wsproto_echo.py"), "wsproto"),
    ServerSpec("node-ws", ["node", str(SERVERS_DIR / "ws_echo.mjs")], "node"),
    ServerSpec("raw-tcp", _py("raw_tcp_echo.py"), "uvloop", raw=True),
    # One bare ASGI echo application (bench/servers/asgi_echo.py) on three ASGI servers.
    ServerSpec("asgi-fd", _py("asgi_echo.py", "--server", "fullduplex"), "fullduplex"),
    ServerSpec("asgi-uvicorn", _py("asgi_echo.py", "--server", "uvicorn"), "uvicorn"),
    ServerSpec("asgi-granian", _py("asgi_echo.py", "--server", "granian"), "granian"),
]
BASELINE = "fullduplex"
TESTS = ["echo", "latency", "throughput", "memory", "broadcast", "handshake"]


@dataclass
class Profile:
    """How long each test runs; --quick shortens windows and counts, never changes the test."""

    repeat: int
    echo_warmup: float = 1.0
    echo_duration: float = 3.0
    latency_messages: int = 20_000
    throughput_seconds: float = 2.0
    memory_connections: int = 5_000
    broadcast_sizes: tuple[int, ...] = (2_000, 10_000)
    handshake_connections: int = 2_000


@dataclass
class CallgrindProfile:
    """The --callgrind run: counts are nearly deterministic, so few and small windows do."""

    repeat: int = 3
    idle_seconds: float = 1.0
    #: One echo run with counting off before anything is counted, so that JIT compilers
    #: (Node's) and caches are warm: counting off, a server runs at ~5x its native cost.
    warmup_seconds: float = 3.0
    echo_warmup: float = 1.0  # then each echo window follows this much load, counting off
    echo_messages: int = 5_000
    broadcast_size: int = 2_000
    broadcast_warmup_rounds: int = 3
    broadcast_rounds: int = 5
    handshake_connections: int = 500


#: How a server is started for --callgrind: counting off until the load generator's windows.
#: The %p keeps the (tiny) dumps written at exit apart; they go to a temporary folder.
VALGRIND = ["valgrind", "-q", "--tool=callgrind", "--instr-atstart=no"]

FULL = Profile(repeat=5)
QUICK = Profile(
    repeat=2,
    echo_warmup=0.5,
    echo_duration=1.5,
    latency_messages=5_000,
    throughput_seconds=1.0,
)


# -- processes ------------------------------------------------------------------------------


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class Server:
    """A server under test, pinned to one CPU, its port read from its first line.

    ``wrapper`` goes before the server's command (valgrind for --callgrind); the server then
    gets ``ready_timeout`` seconds to print its port and as long to exit when stopped.
    """

    def __init__(
        self,
        spec: ServerSpec,
        broadcast: bool,
        cpu: int | None,
        log: Path,
        wrapper: list[str] | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        self.spec = spec
        command = (wrapper or []) + spec.command + (["--broadcast"] if broadcast else [])
        self.stop_timeout = max(5.0, ready_timeout)
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=SERVERS_DIR,
            preexec_fn=_pin(cpu),
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], ready_timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{spec.name} did not print its port (see {log})")
        self.port = int(line)
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def loadgen(
    test: str, server: Server, raw: bool, cpu: int | None, *args: str, timeout: float = 180
) -> dict[str, Any]:
    """Run one load generator process and return its JSON (or {"error": ...})."""
    command = [PY, str(LOADGEN), test, "--port", str(server.port), "--server-pid", str(server.pid)]
    command += ["--raw"] if raw else []
    command += ["--path", server.spec.path]
    for line in server.spec.headers:
        command += ["--header", line]
    return run_json([*command, *args], cpu, timeout=timeout)


def retry_while_busy(
    attempt: Callable[[int], dict[str, Any]],
    label: str,
    mismatch: str,
    other_cpu: Callable[[dict[str, Any]], float | None],
) -> dict[str, Any]:
    """Run ``attempt(0)``, and again (``attempt(1)``, ...) while the machine was busy.

    Busy: other processes used more than OTHER_CPU_LIMIT% of a CPU (``other_cpu(result)``);
    at most MAX_RETRIES more attempts, each earlier one kept in ``retried_after``. Errors and
    check errors (``mismatch`` describes them) are printed and left in the result.
    """
    result = attempt(0)
    for n in range(1, MAX_RETRIES + 1):
        busy = other_cpu(result)
        if busy is None or busy <= OTHER_CPU_LIMIT:
            break
        print(
            f"    {label}: other processes used {busy:.0f}% CPU, again", file=sys.stderr, flush=True
        )
        retry = attempt(n)
        retry["retried_after"] = [*result.get("retried_after", []), result]
        result = retry
    if "error" in result:
        print(f"    ! {label}: {result['error']}", file=sys.stderr, flush=True)
    elif result.get("check_errors"):
        result["error"] = f"{result['check_errors']} {mismatch}"
        print(f"    ! {label}: {result['error']}", file=sys.stderr, flush=True)
    return result


def run_json(command: list[str], cpu: int | None, timeout: float) -> dict[str, Any]:
    """Run a load generator pinned to ``cpu``; return the JSON of its last line or an error."""
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            timeout=timeout,
            preexec_fn=_pin(cpu),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"load generator timed out after {timeout:g} s"}
    lines = proc.stdout.decode().strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = proc.stderr.decode().strip().splitlines()[-3:]
        return {"error": f"load generator exit {proc.returncode}: {' | '.join(tail)}"}
    return result


# -- the tests ------------------------------------------------------------------------------


@dataclass
class Runner:
    profile: Profile
    tests: list[str]
    perf_events: str | None
    cpus: tuple[int | None, int | None]
    log_dir: Path
    raw: dict[str, Any] = field(default_factory=dict)

    def _perf(self) -> list[str]:
        return ["--perf-events", self.perf_events] if self.perf_events else []

    def _run(self, spec: ServerSpec, server: Server, test: str, *args: str) -> dict[str, Any]:
        return retry_while_busy(
            lambda _: loadgen(test, server, spec.raw, self.cpus[1], *args),
            f"{spec.name} {test}",
            "replies differed from the expected echo",
            _other_cpu,
        )

    def server(self, spec: ServerSpec, broadcast: bool = False) -> Server:
        return Server(spec, broadcast, self.cpus[0], self.log_dir / f"{spec.name}.log")

    def bench(self, spec: ServerSpec) -> dict[str, Any]:
        p = self.profile
        out: dict[str, list[Any]] = {}
        echo_tests = [
            t
            for t in ("echo", "latency", "throughput", "handshake")
            if t in self.tests and spec.takes(t)
        ]
        if spec.raw and "handshake" in echo_tests:
            echo_tests.remove("handshake")  # no WebSocket handshake to measure
        if echo_tests:
            with self.server(spec) as server:
                for i in range(p.repeat):
                    for test in echo_tests:
                        _progress(spec.name, test, i, p.repeat)
                        out.setdefault(test, []).append(self._one(spec, server, test))
        if "memory" in self.tests and spec.takes("memory"):
            for i in range(p.repeat):
                _progress(spec.name, "memory", i, p.repeat)
                with self.server(spec) as server:
                    out.setdefault("memory", []).append(
                        self._run(
                            spec, server, "memory", "--connections", str(p.memory_connections)
                        )
                    )
        if "broadcast" in self.tests and spec.takes("broadcast"):
            for n in p.broadcast_sizes:
                _progress(spec.name, f"broadcast {n}", 0, 1)
                with self.server(spec, broadcast=True) as server:
                    rounds = str(max(3, p.repeat))
                    args = ["--connections", str(n), "--rounds", rounds, *self._perf()]
                    out[f"broadcast_{n}"] = [self._run(spec, server, "broadcast", *args)]
        return out

    def _one(self, spec: ServerSpec, server: Server, test: str) -> dict[str, Any]:
        p = self.profile
        if test == "echo":
            args = ["--connections", "100", "--size", "32"]
            args += ["--warmup", str(p.echo_warmup), "--duration", str(p.echo_duration)]
            return self._run(spec, server, "echo", *args, *self._perf())
        if test == "latency":
            args = ["--size", "32", "--messages", str(p.latency_messages)]
            args += ["--warmup-messages", "1000", "--duration", "10"]
            return self._run(spec, server, "latency", *args)
        if test == "throughput":
            args = ["--size", str(2**20), "--messages", "100000", "--warmup-messages", "5"]
            args += ["--warmup", "0", "--duration", str(p.throughput_seconds)]
            return self._run(spec, server, "latency", *args)
        if test == "handshake":
            args = ["--connections", str(p.handshake_connections), "--concurrency", "64"]
            return self._run(spec, server, "handshake", *args, *self._perf())
        raise ValueError(test)


@dataclass
class CallgrindRunner:
    """Instruction counts: each server under callgrind, counting only in the measured windows.

    Per server: one server process for idle, a warm-up echo run (not counted), echo and
    handshakes (in that order: the echo runs do the first few hundred handshakes, so the
    handshake windows do not count first-time work), and one in broadcast mode (warm-up rounds
    first). No retries when the machine is busy: neighbours change how long a window lasts,
    not what the server executes in it.
    """

    profile: CallgrindProfile
    tests: list[str]
    cpus: tuple[int | None, int | None]
    log_dir: Path
    out_dir: Path  # callgrind's dumps at exit (nearly empty: counting is off by then)

    def server(self, spec: ServerSpec, broadcast: bool = False) -> Server:
        wrapper = [*VALGRIND, f"--callgrind-out-file={self.out_dir / (spec.name + '.%p')}"]
        log = self.log_dir / f"{spec.name}.log"
        return Server(spec, broadcast, self.cpus[0], log, wrapper, ready_timeout=120)

    def _run(self, spec: ServerSpec, server: Server, test: str, *args: str) -> dict[str, Any]:
        args = (*args, "--callgrind", "--timeout", "120")
        result = loadgen(test, server, spec.raw, self.cpus[1], *args, timeout=600)
        if "error" not in result and result.get("check_errors"):
            result["error"] = f"{result['check_errors']} replies differed from the expected echo"
        if "error" in result:
            print(f"    ! {spec.name} {test}: {result['error']}", file=sys.stderr, flush=True)
        return result

    def bench(self, spec: ServerSpec) -> dict[str, Any]:
        p = self.profile
        out: dict[str, list[Any]] = {}
        tests = [t for t in self.tests if spec.takes(t)]
        handshake = "handshake" in tests and not spec.raw
        if {"idle", "echo"} & set(tests) or handshake:
            with self.server(spec) as server:
                if "idle" in tests:
                    _progress(spec.name, "idle", 0, 1)
                    args = ["--duration", str(p.idle_seconds)]
                    out["idle"] = [self._run(spec, server, "idle", *args)]
                _progress(spec.name, "warm-up", 0, 1)
                if spec.takes("echo"):
                    args = ["--connections", "100", "--size", "32", "--warmup", "0"]
                    args += ["--duration", str(p.warmup_seconds), "--timeout", "120"]
                    warmup = loadgen("echo", server, spec.raw, self.cpus[1], *args, timeout=600)
                else:  # a route without an echo warms up with handshakes (not counted)
                    args = ["--connections", str(p.handshake_connections), "--timeout", "120"]
                    warmup = loadgen("handshake", server, False, self.cpus[1], *args, timeout=600)
                if "error" in warmup:
                    raise RuntimeError(f"warm-up failed: {warmup['error']}")
                for i in range(p.repeat if "echo" in tests else 0):
                    _progress(spec.name, "echo", i, p.repeat)
                    args = ["--connections", "100", "--size", "32", "--warmup", str(p.echo_warmup)]
                    args += ["--count", str(p.echo_messages)]
                    out.setdefault("echo", []).append(self._run(spec, server, "echo", *args))
                for i in range(p.repeat if handshake else 0):
                    _progress(spec.name, "handshake", i, p.repeat)
                    args = ["--connections", str(p.handshake_connections), "--concurrency", "64"]
                    out.setdefault("handshake", []).append(
                        self._run(spec, server, "handshake", *args)
                    )
        if "broadcast" in tests:
            n = p.broadcast_size
            _progress(spec.name, f"broadcast {n}", 0, 1)
            with self.server(spec, broadcast=True) as server:
                args = ["--connections", str(n), "--rounds", str(p.broadcast_rounds)]
                args += ["--warmup-rounds", str(p.broadcast_warmup_rounds)]
                out[f"broadcast_{n}"] = [self._run(spec, server, "broadcast", *args)]
        return out


CALLGRIND_TESTS = ["idle", "echo", "broadcast", "handshake"]


#: A measurement during which other processes used more than this much CPU (percent of one
#: CPU) is repeated, at most MAX_RETRIES times; every attempt is kept in the JSON.
OTHER_CPU_LIMIT = 25.0
MAX_RETRIES = 2


def _other_cpu(result: dict[str, Any]) -> float | None:
    for key in ("echo", "latency", "handshake"):
        if isinstance(result.get(key), dict):
            value = result[key].get("other_cpu_percent")
            return float(value) if value is not None else None
    return None


def _progress(name: str, test: str, i: int, n: int) -> None:
    print(f"  {name:<11} {test:<16} {i + 1}/{n}", file=sys.stderr, flush=True)


# -- the table ------------------------------------------------------------------------------


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    extract: Callable[[dict[str, list[Any]]], list[float]]
    lower_is_better: bool = True
    ratio: bool = True  # show the ratio to fullduplex


def _values(test: str, *path: str) -> Callable[[dict[str, list[Any]]], list[float]]:
    def extract(results: dict[str, list[Any]]) -> list[float]:
        values = []
        for run in results.get(test, []):
            if "error" in run:
                continue
            node: Any = run
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, list):  # broadcast rounds
                values.extend(float(v) for v in node if v is not None)
            elif node is not None:
                values.append(float(node))
        return values

    return extract


def _rounds(test: str, key: str) -> Callable[[dict[str, list[Any]]], list[float]]:
    def extract(results: dict[str, list[Any]]) -> list[float]:
        return [
            float(r[key])
            for run in results.get(test, [])
            if "error" not in run
            for r in run.get("broadcast", [])
            if r.get(key) is not None
        ]

    return extract


def _scaled(f: Callable[[dict[str, list[Any]]], list[float]], k: float) -> Any:
    return lambda results: [k * v for v in f(results)]


def metrics(perf: bool, sizes: tuple[int, ...]) -> list[Metric]:
    m = [
        Metric(
            "echo_cpu", "echo 32B x100: CPU/msg", "us", _values("echo", "echo", "server_cpu_us")
        ),
    ]
    if perf:
        m.append(
            Metric(
                "echo_instr",
                "echo 32B x100: instr/msg",
                "k",
                _scaled(_values("echo", "perf_per_unit", "instructions"), 1e-3),
            )
        )
    m += [
        Metric(
            "echo_rate",
            "echo 32B x100: msg/s",
            "k/s",
            _scaled(_values("echo", "echo", "rate_per_s"), 1e-3),
            False,
        ),
        Metric("lat_p50", "ping-pong 32B: p50", "us", _values("latency", "latency", "p50_us")),
        Metric("lat_p99", "ping-pong 32B: p99", "us", _values("latency", "latency", "p99_us")),
        Metric(
            "tput",
            "echo 1 MiB: throughput",
            "MB/s",
            _values("throughput", "latency", "mb_per_s"),
            False,
        ),
        Metric(
            "mem",
            "idle conn (5,000): RSS",
            "KiB",
            _scaled(_values("memory", "memory", "bytes_per_connection"), 1 / 1024),
        ),
    ]
    for n in sizes:
        k = f"{n // 1000}k"
        m.append(
            Metric(
                f"bcast{k}_ms",
                f"broadcast {k}: last delivery",
                "ms",
                _rounds(f"broadcast_{n}", "last_delivery_ms"),
            )
        )
        m.append(
            Metric(
                f"bcast{k}_cpu",
                f"broadcast {k}: CPU/delivery",
                "us",
                _rounds(f"broadcast_{n}", "server_cpu_us"),
            )
        )
        if perf:
            m.append(
                Metric(
                    f"bcast{k}_instr",
                    f"broadcast {k}: instr/deliv.",
                    "k",
                    _scaled(_values(f"broadcast_{n}", "perf_per_unit", "instructions"), 1e-3),
                )
            )
    m += [
        Metric(
            "hs_rate",
            "handshakes/s (2,000, 64 at once)",
            "k/s",
            _scaled(_values("handshake", "handshake", "rate_per_s"), 1e-3),
            False,
        ),
        Metric(
            "hs_cpu",
            "handshake: CPU each",
            "us",
            _values("handshake", "handshake", "server_cpu_us"),
        ),
    ]
    return m


def callgrind_metrics(broadcast_size: int) -> list[Metric]:
    """The rows of a --callgrind run: user-space instructions (thousands) per unit of work."""
    k = f"{broadcast_size // 1000}k"

    def per_unit(test: str, key: str) -> Any:
        return _scaled(_values(test, key, "instructions_per_unit"), 1e-3)

    return [
        Metric(
            "echo_uinstr", "echo 32B x100: user instructions/msg", "k", per_unit("echo", "echo")
        ),
        Metric(
            f"bcast{k}_uinstr",
            f"broadcast {k}: user instructions/delivery",
            "k",
            _scaled(_rounds(f"broadcast_{broadcast_size}", "instructions_per_unit"), 1e-3),
        ),
        Metric(
            "hs_uinstr",
            "handshake: user instructions each",
            "k",
            per_unit("handshake", "handshake"),
        ),
        Metric(
            "idle_uinstr",
            "idle: user instructions/s",
            "k",
            _scaled(_values("idle", "idle", "instructions_per_s"), 1e-3),
            ratio=False,
        ),
    ]


def summarize(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(
    summary: dict[str, dict[str, dict[str, float] | None]], ms: list[Metric], fine: bool = False
) -> str:
    """Medians, spreads and ratios; ``fine`` shows spreads under 10% to a tenth of a percent."""
    names = list(summary)
    rows = []
    for m in ms:
        base = summary.get(BASELINE, {}).get(m.key)
        cells = []
        for n in names:
            s = summary[n].get(m.key)
            if s is None:
                cells.append("-")
                continue
            med = s["median"]
            spread = 100 * (s["max"] - s["min"]) / 2 / med if med else 0.0
            ratio = f" {med / base['median']:.2f}x" if m.ratio and base and base["median"] else ""
            digits = 1 if fine and spread < 10 else 0
            cells.append(f"{_fmt(med)} ±{spread:.{digits}f}%{ratio}")
        rows.append((f"{m.label} ({m.unit})", cells))
    width = 2 + max(len(c) for c in [*names, *(c for _, cells in rows for c in cells)])
    label_w = max(len(label) for label, _ in rows) + 1
    lines = [f"{'':<{label_w}}" + "".join(f"{n:>{width}}" for n in names)]
    lines += [
        f"{label:<{label_w}}" + "".join(f"{c:>{width}}" for c in cells) for label, cells in rows
    ]
    return "\n".join(lines)


def targets(
    summary: dict[str, dict[str, dict[str, float] | None]], callgrind: bool = False
) -> list[str]:
    """The issue's targets for fullduplex, checked on medians.

    With ``callgrind``, the cost targets are checked on user-space instructions (the issue's
    figures count the kernel's instructions too) and handshakes/s >= 1.5x websockets becomes
    instructions per handshake <= 1/1.5 of websockets'.
    """

    def med(server: str, key: str) -> float | None:
        s = summary.get(server, {}).get(key)
        return s["median"] if s else None

    cost = "echo_instr" if med(BASELINE, "echo_instr") is not None else "echo_cpu"
    bcast = "bcast2k_instr" if med(BASELINE, "bcast2k_instr") is not None else "bcast2k_cpu"
    checks = [
        (f"per-message cost ({cost}) <= 0.75x aiohttp", cost, "aiohttp", 0.75, True),
        (f"per-message cost ({cost}) <= 1.2x picows", cost, "picows", 1.2, True),
        ("memory per idle connection <= 0.5x websockets", "mem", "websockets", 0.5, True),
        ("1 MiB echo throughput >= websockets", "tput", "websockets", 1.0, False),
        (f"broadcast 2k ({bcast}) <= 1.2x raw TCP", bcast, "raw-tcp", 1.2, True),
        ("handshakes/s >= 1.5x websockets", "hs_rate", "websockets", 1.5, False),
    ]
    if callgrind:
        checks = [
            ("user instructions/msg <= 0.75x aiohttp", "echo_uinstr", "aiohttp", 0.75, True),
            ("user instructions/msg <= 1.2x picows", "echo_uinstr", "picows", 1.2, True),
            ("broadcast 2k instructions <= 1.2x raw TCP", "bcast2k_uinstr", "raw-tcp", 1.2, True),
            (
                "handshake instructions <= 0.67x websockets",
                "hs_uinstr",
                "websockets",
                1 / 1.5,
                True,
            ),
        ]
    out = asgi_targets(med, callgrind) + metrics_targets(med, callgrind)
    out += handshake_targets(med, callgrind)
    # The async API (BASELINE) and the WebSocketListener callback API are checked apart.
    for ours_name in (BASELINE, "fd-listener"):
        if ours_name not in summary:
            continue
        out.append(f"  {ours_name}:")
        for label, key, other, factor, at_most in checks:
            ours, theirs = med(ours_name, key), med(other, key)
            if ours is None or theirs is None:
                out.append(f"    ?    {label}: not measured")
                continue
            ratio = ours / theirs
            ok = ratio <= factor if at_most else ratio >= factor
            out.append(f"    {'PASS' if ok else 'FAIL'} {label}: {ratio:.2f}x")
        mem = med(ours_name, "mem")
        if mem is not None:
            verdict = "PASS" if mem < 6 else "FAIL"
            out.append(f"    {verdict} memory per idle connection < 6 KiB: {mem:.1f}")
    return out


def handshake_targets(med: Callable[[str, str], float | None], callgrind: bool) -> list[str]:
    """Issue 12's targets against picows: handshakes, the async API per message, idle memory.

    Handshake cost (user instructions, or CPU time without --callgrind) <= picows' for the
    echo route of both APIs, for the echo route with an Origin allow-list and an
    authenticator (fd-guarded) and for the hub's /pubsub with both (fd-pubsub); the ``async
    for`` API's per-message cost <= picows'; an idle ``async for`` connection <= 4 KiB.
    """
    hs, msg = ("hs_uinstr", "echo_uinstr") if callgrind else ("hs_cpu", "echo_cpu")
    if med("picows", hs) is None and med("picows", msg) is None:
        return []
    out = ["  issue 12 (against picows):"]
    checks = [(name, hs, "handshake") for name in ("fullduplex", "fd-listener", "fd-guarded")]
    checks += [("fd-pubsub", hs, "handshake"), (BASELINE, msg, "per message")]
    for name, key, what in checks:
        ours, theirs = med(name, key), med("picows", key)
        if ours is None or theirs is None:
            continue
        ratio = ours / theirs
        out.append(
            f"    {'PASS' if ratio <= 1.0 else 'FAIL'} {name} {what} <= picows: {ratio:.2f}x"
        )
    mem = med(BASELINE, "mem")
    if mem is not None:
        out.append(
            f"    {'PASS' if mem <= 4 else 'FAIL'} {BASELINE} idle connection <= 4 KiB: {mem:.2f}"
        )
    return out


def metrics_targets(med: Callable[[str, str], float | None], callgrind: bool) -> list[str]:
    """Issue 13's target: metrics on cost under 5% per message (fd-metrics / fullduplex)."""
    key = "echo_uinstr" if callgrind else "echo_cpu"
    ours, base = med("fd-metrics", key), med(BASELINE, key)
    if ours is None or base is None:
        return []
    ratio = ours / base
    verdict = "PASS" if ratio < 1.05 else "FAIL"
    return [
        "  fd-metrics (fullduplex with app.enable_metrics()):",
        f"    {verdict} per-message cost ({key}) < 1.05x fullduplex: {ratio:.3f}x",
    ]


def asgi_targets(med: Callable[[str, str], float | None], callgrind: bool) -> list[str]:
    """Issue 10's targets: the same ASGI echo app on fullduplex against uvicorn and granian."""
    if med("asgi-fd", "echo_cpu" if not callgrind else "echo_uinstr") is None:
        return []
    if callgrind:
        checks = [
            ("user instructions/msg <= 0.5x uvicorn", "echo_uinstr", "asgi-uvicorn", 0.5, True),
            ("user instructions/msg <= 0.75x granian", "echo_uinstr", "asgi-granian", 0.75, True),
            ("handshake instructions <= uvicorn's", "hs_uinstr", "asgi-uvicorn", 1.0, True),
        ]
    else:
        checks = [
            ("per-message CPU <= 0.5x uvicorn", "echo_cpu", "asgi-uvicorn", 0.5, True),
            ("per-message CPU <= 0.75x granian", "echo_cpu", "asgi-granian", 0.75, True),
            ("handshakes/s >= uvicorn", "hs_rate", "asgi-uvicorn", 1.0, False),
        ]
    out = ["  asgi-fd (ASGI echo on fullduplex):"]
    for label, key, other, factor, at_most in checks:
        ours, theirs = med("asgi-fd", key), med(other, key)
        if ours is None or theirs is None:
            out.append(f"    ?    {label}: not measured")
            continue
        ratio = ours / theirs
        ok = ratio <= factor if at_most else ratio >= factor
        out.append(f"    {'PASS' if ok else 'FAIL'} {label}: {ratio:.2f}x")
    native = med(BASELINE, "echo_cpu" if not callgrind else "echo_uinstr")
    ours = med("asgi-fd", "echo_cpu" if not callgrind else "echo_uinstr")
    if native is not None and ours is not None:
        out.append(f"    info ASGI echo / native async for echo: {ours / native:.2f}x")
    return out


# -- environment ----------------------------------------------------------------------------


def perf_instructions_supported() -> bool:
    if shutil.which("perf") is None:
        return False
    proc = subprocess.run(
        ["perf", "stat", "-x,", "-e", "instructions", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stderr.splitlines():
        if ",instructions" in line:
            return line.split(",")[0].replace(".", "", 1).isdigit()
    return False


def npm_ci() -> str | None:
    """Install Node's ws from bench/servers/package-lock.json when it is missing or stale."""
    lock = SERVERS_DIR / "package-lock.json"
    installed = SERVERS_DIR / "node_modules" / ".package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return None
    proc = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--silent"],
        cwd=SERVERS_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    return None if proc.returncode == 0 else f"npm ci failed: {proc.stderr.strip()[-200:]}"


def environment(perf: bool) -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=BENCH,
        check=False,
    )
    where = subprocess.run(  # which fullduplex the servers import (PYTHONPATH may change it)
        [PY, "-c", "import fullduplex; print(fullduplex.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fullduplex_imported_from": where.stdout.strip() or None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": commit.stdout.strip(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": sorted(os.sched_getaffinity(0)),
        "node": node.stdout.strip() if node.returncode == 0 else None,
        "perf_instructions": perf,
        "versions": {
            p: version(p)
            for p in ("fullduplex", "websockets", "aiohttp", "picows", "wsproto", "uvloop")
        },
    }


def run_servers(
    bench: Callable[[ServerSpec], dict[str, Any]], wanted: list[str], skipped: dict[str, str]
) -> dict[str, Any]:
    """``bench(spec)`` for every wanted server that can run here; the others go to skipped."""
    results: dict[str, Any] = {}
    for spec in SERVERS:
        if spec.name not in wanted:
            continue
        why = skipped.get(spec.name) or spec.available()
        if why:
            skipped[spec.name] = why
            print(f"  {spec.name}: skipped ({why})", file=sys.stderr)
            continue
        try:
            results[spec.name] = bench(spec)
        except RuntimeError as exc:
            skipped[spec.name] = str(exc)
            print(f"  {spec.name}: failed ({exc})", file=sys.stderr)
    return results


def build_report(
    env: dict[str, Any],
    profile: Any,
    started: float,
    skipped: dict[str, str],
    summary: dict[str, Any],
    ms: list[Any],
    results: dict[str, Any],
) -> dict[str, Any]:
    """The raw-results document both modes write: settings, summary, metrics, every run."""
    return {
        "environment": env,
        "profile": vars(profile),
        "seconds": time.monotonic() - started,
        "skipped": skipped,
        "summary": summary,
        "metrics": {
            m.key: {"label": m.label, "unit": m.unit, "lower_is_better": m.lower_is_better}
            for m in ms
        },
        "raw": results,
    }


def write_report(report: dict[str, Any], name: str, also: Path | None) -> Path:
    """Write the raw results to bench/results/<name>.json (and ``also``); return the path."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    text = json.dumps(report, indent=1, default=str)
    out.write_text(text)
    if also:
        also.write_text(text)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter windows (about 5 min)")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="only user-space instruction counts, each server under callgrind (about 10 min)",
    )
    parser.add_argument(
        "--repeat", type=int, help="repetitions of each test (5; 2 with --quick; 3 --callgrind)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--servers", help="comma-separated subset: " + ",".join(s.name for s in SERVERS)
    )
    parser.add_argument(
        "--tests",
        help=f"comma-separated subset: {','.join(TESTS)} "
        f"(--callgrind: {','.join(CALLGRIND_TESTS)})",
    )
    args = parser.parse_args(argv)
    if args.quick and args.callgrind:
        parser.error("--quick and --callgrind do not go together")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    known_tests = CALLGRIND_TESTS if args.callgrind else TESTS
    wanted = args.servers.split(",") if args.servers else [s.name for s in SERVERS]
    unknown = set(wanted) - {s.name for s in SERVERS}
    tests = args.tests.split(",") if args.tests else known_tests
    if unknown or set(tests) - set(known_tests):
        parser.error(f"unknown server or test: {sorted(unknown | (set(tests) - set(known_tests)))}")

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by Node
    cpus = sorted(os.sched_getaffinity(0))
    pinned: tuple[int | None, int | None] = (None, None)
    if len(cpus) >= 2:
        pinned = (cpus[0], cpus[1])
    else:
        print(
            "warning: fewer than 2 CPUs: server and load generator are not pinned", file=sys.stderr
        )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    if "node-ws" in wanted and shutil.which("npm"):
        problem = npm_ci()
        if problem:
            skipped["node-ws"] = problem
    if args.callgrind:
        return main_callgrind(args, tests, wanted, skipped, pinned, stamp, log_dir)

    profile = QUICK if args.quick else FULL
    if args.repeat is not None:
        profile.repeat = args.repeat
    perf = perf_instructions_supported()
    runner = Runner(profile, tests, "instructions" if perf else None, pinned, log_dir)
    started = time.monotonic()
    print(
        f"server on CPU {pinned[0]}, load generator on CPU {pinned[1]}; "
        f"perf instructions: {'yes' if perf else 'not supported here: CPU time only'}",
        file=sys.stderr,
    )
    results = run_servers(runner.bench, wanted, skipped)
    ms = metrics(perf, profile.broadcast_sizes)
    summary = {name: {m.key: summarize(m.extract(r)) for m in ms} for name, r in results.items()}
    report = build_report(environment(perf), profile, started, skipped, summary, ms, results)
    out = write_report(report, f"{stamp}{'-quick' if args.quick else ''}", args.json)
    print()
    print(table(summary, ms))
    print()
    if not perf:
        print("Hardware counters: `perf stat -e instructions` is not supported on this machine,")
        print("so costs are server CPU time (process CPU clock: user + system, every thread).")
    print(
        f"Medians of {profile.repeat} runs (broadcast: of {max(3, profile.repeat)} rounds); "
        "±: half the min-max range; ratios to fullduplex (uvloop). Lower is better except "
        "msg/s, MB/s, handshakes/s."
    )
    print(
        "Python servers on uvloop except fd-asyncio; all without compression and keepalive pings."
    )
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print("Targets (fullduplex on uvloop):")
    print("\n".join(targets(summary)))
    print(f"raw results: {out.relative_to(BENCH.parent)}  ({report['seconds']:.0f} s)")
    return 0


def main_callgrind(
    args: argparse.Namespace,
    tests: list[str],
    wanted: list[str],
    skipped: dict[str, str],
    pinned: tuple[int | None, int | None],
    stamp: str,
    log_dir: Path,
) -> int:
    """``--callgrind``: user-space instruction counts for every server, one table."""
    for tool in ("valgrind", "vgdb"):
        if shutil.which(tool) is None:
            print(f"--callgrind needs {tool} (apt-get install valgrind)", file=sys.stderr)
            return 2
    profile = CallgrindProfile()
    if args.repeat is not None:
        profile.repeat = args.repeat
    print(
        f"server under callgrind on CPU {pinned[0]}, load generator on CPU {pinned[1]}",
        file=sys.stderr,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fdbench-callgrind-") as out_dir:
        runner = CallgrindRunner(profile, tests, pinned, log_dir, Path(out_dir))
        results = run_servers(runner.bench, wanted, skipped)
    ms = callgrind_metrics(profile.broadcast_size)
    summary = {name: {m.key: summarize(m.extract(r)) for m in ms} for name, r in results.items()}
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    env = {
        **environment(False),
        "valgrind": valgrind.stdout.strip(),
        "pythonpath": os.environ.get("PYTHONPATH"),  # e.g. a clean checkout's src/
    }
    report = build_report(env, profile, started, skipped, summary, ms, results)
    report["valgrind_command"] = VALGRIND
    out = write_report(report, f"{stamp}-callgrind", args.json)
    print()
    print(table(summary, ms, fine=True))
    print()
    print(
        "User-space instructions of the server process (callgrind's Ir, every thread: its code, "
        "the interpreter,\nC extensions, libc), counted only inside the measured windows; the "
        "kernel's work in syscalls\n(TCP on loopback: most of a raw TCP echo's cost) is not "
        "counted."
    )
    print(
        f"Medians of {profile.repeat} runs ({profile.echo_messages:,} echoes, "
        f"{profile.handshake_connections} handshakes; broadcast: {profile.broadcast_rounds} "
        "rounds); ±: half the min-max range; ratios to fullduplex (uvloop)."
    )
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print("Targets on user-space instructions (fullduplex on uvloop):")
    print("\n".join(targets(summary, callgrind=True)))
    print(f"raw results: {out.relative_to(BENCH.parent)}  ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
