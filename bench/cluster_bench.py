"""Redis Cluster against one Redis: publish throughput, Redis CPU per publish, delivery latency.

    python bench/cluster_bench.py [--seconds 3] [--repeat 2] [--publishers 2] [--json out.json]

Starts a ``redis-server`` (no persistence) and a Redis Cluster of three masters with one replica
each (the tests' harness, tests/redis_cluster.py), all on 127.0.0.1, then measures each backend,
interleaved, ``--repeat`` times:

* throughput: ``--publishers`` processes, each with a Hub of its own and 16 publishing tasks over
  30 topics (about ten per shard on the cluster), for ``--seconds``: publishes acknowledged per
  second, and the CPU the ``redis-server`` processes used per publish (user + system time from
  /proc): all of them (masters and replicas), and the masters alone;
* latency: a Hub publishing 500 messages a second over the same topics for ``--seconds``, and
  another Hub of the same process subscribed to all of them: from the publish call to the
  delivery to the subscriber, p50 and p99.

It prints medians and the ratio cluster / single; raw results go to
bench/results/cluster-<time>.json (and --json). Bounded: about 15 s a repeat plus ~3 s to start.

On a small shared machine the publishers' own CPU bounds the throughput, not Redis: the ratio
then says what the cluster's path costs a publisher (routing, one more script line), and Redis
CPU per publish what it costs the servers (SPUBLISH, replication); see docs/hub.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from fullduplex.hub import Hub, Message, RedisBackend, RedisClusterBackend  # noqa: E402
from tests.redis_cluster import RedisCluster  # noqa: E402  (one harness for tests and bench)

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TOPICS = [f"bench-{n}" for n in range(30)]
CONCURRENCY = 16
RATE = 500  # messages a second, for the latency


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes so far, in seconds (/proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def make_backend(url: str, prefix: str) -> Any:
    if url.startswith("redis+cluster://"):
        return RedisClusterBackend(url, prefix=prefix)
    return RedisBackend(url, prefix=prefix)


# -- one publisher process ------------------------------------------------------------------


async def publisher(url: str, prefix: str, start_at: float, seconds: float) -> dict[str, int]:
    async with Hub(make_backend(url, prefix)) as hub:
        for topic in TOPICS:  # warm: connections, scripts loaded, slot map read
            await hub.publish(topic, 0)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = time.monotonic() + seconds
        counts = {"count": 0, "errors": 0}

        async def work(k: int) -> None:
            n = k
            while time.monotonic() < end:
                try:
                    await hub.publish(TOPICS[n % len(TOPICS)], {"n": n})
                    counts["count"] += 1
                except Exception:
                    counts["errors"] += 1
                n += CONCURRENCY

        await asyncio.gather(*(work(k) for k in range(CONCURRENCY)))
        return counts


def run_publisher(argv: list[str]) -> int:
    url, prefix, start_at, seconds = argv[0], argv[1], float(argv[2]), float(argv[3])
    print(json.dumps(run_loop(publisher(url, prefix, start_at, seconds))))
    return 0


def run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# -- measurements ---------------------------------------------------------------------------


def throughput(
    url: str, pids: list[int], masters: list[int], publishers: int, seconds: float
) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    start_at = time.time() + 2.0  # every process started and warm by then
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--publisher", url, prefix, str(start_at), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(publishers)
    ]
    time.sleep(max(0.0, start_at - time.time()))
    before, before_masters = cpu_seconds(pids), cpu_seconds(masters)
    outputs = [json.loads(proc.communicate(timeout=seconds + 60)[0]) for proc in procs]
    # The publishers stop at start_at + seconds; Redis works a little after for the last ones.
    used, used_masters = cpu_seconds(pids) - before, cpu_seconds(masters) - before_masters
    count = sum(o["count"] for o in outputs)
    return {
        "publishes_per_s": count / seconds,
        "redis_cpu_us_per_publish": used / max(count, 1) * 1e6,
        "master_cpu_us_per_publish": used_masters / max(count, 1) * 1e6,
        "errors": sum(o["errors"] for o in outputs),
    }


async def latency(url: str, seconds: float) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    delays: list[float] = []

    def received(item: Any) -> None:
        if isinstance(item, Message) and isinstance(item.data, dict):
            delays.append(time.perf_counter() - item.data["t"])

    async with (
        Hub(make_backend(url, prefix)) as pub,
        Hub(make_backend(url, prefix)) as sub,
    ):
        subs = [sub.subscribe(topic, on_message=received) for topic in TOPICS]
        for s in subs:
            await s.wait_started()
        for topic in TOPICS:
            await pub.publish(topic, 0)
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        while loop.time() < start + seconds:
            await pub.publish(TOPICS[sent % len(TOPICS)], {"t": time.perf_counter()})
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / RATE - loop.time()))
        deadline = loop.time() + 5
        while len(delays) < sent and loop.time() < deadline:
            await asyncio.sleep(0.01)
    delays.sort()
    return {
        "sent": sent,
        "received": len(delays),
        "p50_ms": delays[len(delays) // 2] * 1e3,
        "p99_ms": delays[int(len(delays) * 0.99)] * 1e3,
    }


class Single:
    """One redis-server, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), *options],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--publisher"]:
        return run_publisher(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (3)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of both backends (2)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (2)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    single = Single()
    cluster = RedisCluster(Path(tempfile.mkdtemp(prefix="cluster-bench-")))
    cluster.start()
    try:
        shards = run_loop(topics_per_shard(cluster.url))
        masters = [n.process.pid for n in cluster.masters() if n.process]
        targets = {
            "single": (single.url, [single.proc.pid], [single.proc.pid]),
            "cluster": (cluster.url, [n.process.pid for n in cluster.nodes if n.process], masters),
        }
        raw: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for _ in range(args.repeat):
            for name, (url, pids, master_pids) in targets.items():
                result = throughput(url, pids, master_pids, args.publishers, args.seconds)
                result.update(run_loop(latency(url, args.seconds)))
                raw[name].append(result)
                print(name, json.dumps(result), file=sys.stderr)
    finally:
        cluster.stop()
        single.stop()
    report = {
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "args": vars(args),
        "topics_per_shard": shards,
        "raw": raw,
    }
    print(table(raw, args))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"cluster-{stamp}.json").write_text(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


async def topics_per_shard(url: str) -> dict[str, int]:
    backend = RedisClusterBackend(url)
    await backend.start(lambda item: None)
    try:
        nodes = [backend.node(topic) for topic in TOPICS]
        return {node: nodes.count(node) for node in sorted(set(nodes))}
    finally:
        await backend.close()


def table(raw: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    rows = [
        ("publishes/s", "publishes_per_s", f"{args.publishers} processes x {CONCURRENCY}"),
        ("Redis CPU us/publish", "redis_cpu_us_per_publish", "every redis-server"),
        ("master CPU us/publish", "master_cpu_us_per_publish", "the masters alone"),
        ("delivery p50 ms", "p50_ms", f"{RATE}/s, one hub to another"),
        ("delivery p99 ms", "p99_ms", ""),
    ]
    lines = [f"{'':22} {'single':>10} {'cluster':>10} {'ratio':>7}  notes"]
    for label, key, note in rows:
        one = statistics.median(r[key] for r in raw["single"])
        many = statistics.median(r[key] for r in raw["cluster"])
        lines.append(f"{label:22} {one:10.1f} {many:10.1f} {many / one:7.2f}  {note}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
