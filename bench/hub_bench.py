"""Pub/sub benchmark: one published message to many subscribers, over every transport.

    python bench/hub_bench.py [--quick] [--repeat N] [--json out.json]

For the in-memory hub and the Redis hub (a real ``redis-server`` started on a free 127.0.0.1
port with ``--save '' --appendonly no``, killed afterwards), with ``mount_all``'s routes served
by bench/servers/hub_server.py:

* WebSocket fan-out over ``/pubsub`` to 1,000 and 10,000 subscribers: time from the
  ``POST /publish`` to the last subscriber's receipt, server CPU per delivered message;
* Server-Sent Events (``/sse``) and long polling (``/longpoll``, re-polls included), 1,000
  clients each: the same, and bytes on the wire per delivered message (HTTP framing included);
* the floor, in the same run: ``fullduplex.broadcast()`` to every connection of a plain
  WebSocket route, no hub (``POST /floor/publish``), 1,000 and 10,000 connections.

The server runs pinned to CPU 0; the load generator (bench/loadgen/hub_loadgen.py, uvloop, raw
sockets) and Redis to CPU 1 (Redis works before the fan-out, the load generator during it).
Each test is a fresh set of connections doing one warm-up publish (every payload checked) and
``rounds`` measured ones; tests are interleaved across backends and repeated ``--repeat`` times.
The table shows medians over every round, with the spread (half the min-max range, relative to
the median). Raw results go to bench/results/hub-<time>.json (and --json).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import run  # bench/run.py: Server, environment()

BENCH = Path(__file__).resolve().parent
LOADGEN = BENCH / "loadgen" / "hub_loadgen.py"
SERVER = BENCH / "servers" / "hub_server.py"
RESULTS = BENCH / "results"
PY = sys.executable
REDIS_SERVER = "/usr/bin/redis-server"
# A run while other processes kept the machine busy is repeated: run.retry_while_busy.


@dataclass
class Profile:
    """How much to measure; --quick measures less, never differently."""

    repeat: int
    rounds: int
    sizes: tuple[int, ...] = (1_000, 10_000)  # WebSocket fan-out
    http_clients: int = 1_000  # SSE and long polling


FULL = Profile(repeat=3, rounds=5)
QUICK = Profile(repeat=1, rounds=3)
BACKENDS = ("memory", "redis")
FLOOR = "broadcast()"


def tests(p: Profile) -> list[tuple[str, int]]:
    ws = [("ws", n) for n in p.sizes]
    return [*ws, ("sse", p.http_clients), ("longpoll", p.http_clients)]


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A throwaway redis-server: no persistence, a free port, pinned to one CPU."""

    def __init__(self, cpu: int | None, log: Path) -> None:
        self.port = free_port()
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=self.log, preexec_fn=run._pin(cpu)
        )
        self.pid = self.proc.pid
        # redis-py (8.x) caps a pool at 100 connections and the Redis backend makes one
        # request per subscribing stream or long poll at once: past 100 in flight, the hub
        # answers 503 (MaxConnectionsError is HubUnavailable). Raised here so the costs can be
        # measured; see bench/README.md.
        self.url = f"redis://127.0.0.1:{self.port}/0?max_connections=20000"
        deadline = time.monotonic() + 10
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start (see {log})")
            time.sleep(0.05)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def loadgen(
    test: str, server: run.Server, cpu: int | None, redis_pid: int | None, *args: str
) -> dict[str, Any]:
    """Run one hub load generator and return its JSON (or {"error": ...})."""
    command = [PY, str(LOADGEN), test, "--port", str(server.port), "--server-pid", str(server.pid)]
    command += ["--redis-pid", str(redis_pid)] if redis_pid else []
    return run.run_json([*command, *args], cpu, timeout=240)


def measure(
    test: str,
    n: int,
    server: run.Server,
    cpu: int | None,
    redis_pid: int | None,
    topic: str,
    rounds: int,
) -> dict[str, Any]:
    """One load generator run, repeated when other processes kept the machine busy."""
    args = ["--clients", str(n), "--rounds", str(rounds)]

    def attempt(k: int) -> dict[str, Any]:
        # A fresh topic per attempt: a retry must not see the first attempt's messages.
        return loadgen(
            test, server, cpu, redis_pid, *args, "--topic", topic + (f".r{k}" if k else "")
        )

    return run.retry_while_busy(
        attempt,
        f"{test} {n}",
        "warm-up messages were not as published",
        lambda result: result.get("other_cpu_percent"),
    )


# -- the table ------------------------------------------------------------------------------


@dataclass
class Row:
    test: str  # key in the results: "ws_1000", ...
    label: str
    unit: str
    field: str
    scale: float = 1.0
    vs_floor: bool = False
    columns: tuple[str, ...] = (*BACKENDS, FLOOR)


def rows(p: Profile) -> list[Row]:
    out = []
    k = f"{p.http_clients // 1000}k"
    for n in p.sizes:
        name = f"WS /pubsub {n // 1000}k"
        t = f"ws_{n}"
        out.append(Row(t, f"{name}: last delivery", "ms", "last_delivery_ms", vs_floor=True))
        out.append(Row(t, f"{name}: CPU/delivery", "us", "server_cpu_us", vs_floor=True))
    t = f"ws_{p.sizes[0]}"
    out.append(Row(t, "WS: bytes/delivery", "B", "bytes_in_per_delivery", vs_floor=True))
    t = f"sse_{p.http_clients}"
    out.append(Row(t, f"SSE {k}: last delivery", "ms", "last_delivery_ms", columns=BACKENDS))
    out.append(Row(t, f"SSE {k}: CPU/delivery", "us", "server_cpu_us", columns=BACKENDS))
    out.append(Row(t, "SSE: bytes/delivery", "B", "bytes_in_per_delivery", columns=BACKENDS))
    t = f"longpoll_{p.http_clients}"
    lp = f"long-poll {k}"
    out.append(Row(t, f"{lp}: last delivery", "ms", "last_delivery_ms", columns=BACKENDS))
    out.append(Row(t, f"{lp}: CPU/deliv.+re-poll", "us", "server_cpu_us", columns=BACKENDS))
    out.append(Row(t, "long-poll: bytes down", "B", "bytes_in_per_delivery", columns=BACKENDS))
    out.append(Row(t, "long-poll: bytes up", "B", "bytes_out_per_delivery", columns=BACKENDS))
    for test, n in tests(p):
        label = {"ws": "WS", "sse": "SSE", "longpoll": "long-poll"}[test]
        out.append(
            Row(
                f"{test}_{n}",
                f"Redis CPU/delivery, {label} {n // 1000}k",
                "us",
                "redis_cpu_per_delivery_us",
                columns=("redis",),
            )
        )
    return out


def values(raw: dict[str, Any], column: str, test: str, field: str) -> list[float]:
    if column == FLOOR:
        column, test = "floor", test.replace("ws_", "floor_")
    out = []
    for attempt in raw.get(column, {}).get(test, []):
        if "error" in attempt:
            continue
        for r in attempt.get("rounds", []):
            if field == "redis_cpu_per_delivery_us":
                out.append(1e6 * r["redis_cpu_s"] / r["deliveries"])
            elif r.get(field) is not None:
                out.append(float(r[field]))
    return out


def summarize(v: list[float]) -> dict[str, float] | None:
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


COLUMNS = {"memory": "memory hub", "redis": "redis hub", FLOOR: FLOOR + " floor"}


def table(raw: dict[str, Any], p: Profile) -> tuple[str, dict[str, Any]]:
    summary: dict[str, Any] = {}
    lines = []
    cells_by_row = []
    for row in rows(p):
        stats = {c: summarize(values(raw, c, row.test, row.field)) for c in row.columns}
        summary[f"{row.label} ({row.unit})"] = stats
        floor = stats.get(FLOOR)
        cells = []
        for column in COLUMNS:
            s = stats.get(column)
            if s is None:
                cells.append("-")
                continue
            med = s["median"]
            spread = 100 * (s["max"] - s["min"]) / 2 / med if med else 0.0
            cell = f"{_fmt(med)} ±{spread:.0f}%"
            if row.vs_floor and floor and floor["median"] and column != FLOOR:
                cell += f" {med / floor['median']:.2f}x"
            cells.append(cell)
        cells_by_row.append((f"{row.label} ({row.unit})", cells))
    width = 2 + max(len(c) for c in [*COLUMNS.values(), *(c for _, r in cells_by_row for c in r)])
    label_w = max(len(label) for label, _ in cells_by_row) + 1
    lines.append(f"{'':<{label_w}}" + "".join(f"{h:>{width}}" for h in COLUMNS.values()))
    for label, cells in cells_by_row:
        lines.append(f"{label:<{label_w}}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines), summary


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 repeat of 3 rounds (~2 min)")
    parser.add_argument("--repeat", type=int, help="runs of each test (3; 1 with --quick)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        profile.repeat = args.repeat
    if not os.access(REDIS_SERVER, os.X_OK) and shutil.which("redis-server") is None:
        parser.error(f"{REDIS_SERVER} not found: apt-get install redis-server")

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    if hard < max(profile.sizes) + 200:
        parser.error(f"open-file limit {hard} is below {max(profile.sizes)} subscribers")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, loadgen_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    if server_cpu is None:
        print("warning: fewer than 2 CPUs: nothing is pinned", file=sys.stderr)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / "logs" / f"hub-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    raw: dict[str, Any] = {b: {} for b in (*BACKENDS, "floor")}
    print(
        f"server on CPU {server_cpu}, load generator and Redis on CPU {loadgen_cpu}; "
        f"{profile.repeat} x {profile.rounds} rounds per test",
        file=sys.stderr,
    )
    with contextlib.ExitStack() as stack:
        redis = Redis(loadgen_cpu, log_dir / "redis.log")
        stack.callback(redis.stop)
        servers: dict[str, run.Server] = {}
        for backend in BACKENDS:
            url = "memory" if backend == "memory" else redis.url
            spec = run.ServerSpec(f"hub-{backend}", [PY, str(SERVER), "--backend", url], "")
            servers[backend] = stack.enter_context(
                run.Server(spec, False, server_cpu, log_dir / f"{backend}.log")
            )
        plan = [(t, n, b) for t, n in tests(profile) for b in BACKENDS]
        plan += [("floor", n, "floor") for n in profile.sizes]
        for rep in range(profile.repeat):
            for test, n, backend in plan:
                print(f"  {rep + 1}/{profile.repeat} {backend:<6} {test} {n}", file=sys.stderr)
                server = servers["memory" if backend == "floor" else backend]
                redis_pid = redis.pid if backend == "redis" else None
                topic = f"bench.{test}.{n}.{rep}"
                result = measure(test, n, server, loadgen_cpu, redis_pid, topic, profile.rounds)
                raw[backend].setdefault(f"{test}_{n}", []).append(result)
    text, summary = table(raw, profile)
    report = {
        "environment": run.environment(False),
        "profile": vars(profile),
        "seconds": time.monotonic() - started,
        "summary": summary,
        "raw": raw,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"hub-{stamp}{'-quick' if args.quick else ''}.json"
    encoded = json.dumps(report, indent=1, default=str)
    out.write_text(encoded)
    if args.json:
        args.json.write_text(encoded)
    errors = [
        f"{b} {t}: {r['error']}"
        for b, tests_ in raw.items()
        for t, rs in tests_.items()
        for r in rs
        if "error" in r
    ]
    print()
    print(text)
    print()
    print(
        f"Medians of {profile.repeat} x {profile.rounds} publishes (±: half the min-max range); "
        "ratios to the broadcast() floor."
    )
    print(
        "CPU: server process CPU clock (user + system) from the publish until the server is "
        "idle again, per delivered message (long poll: with the re-poll it triggers)."
    )
    print(
        "Bytes: received (down) and sent (up) by the subscribers' sockets per message, HTTP "
        "framing included, TCP/IP headers not."
    )
    for line in errors:
        print(f"error: {line}")
    print(f"raw results: {out.relative_to(BENCH.parent)}  ({report['seconds']:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
