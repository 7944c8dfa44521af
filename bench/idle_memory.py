"""What an idle connection holds in the server: a tracemalloc snapshot diff, line by line.

    python bench/idle_memory.py [--api async|listener] [--connections 1000] [--top 30]

The echo server of ``bench/run.py`` (``servers/fullduplex_echo.py``'s app, same settings) runs
in this process on uvloop; the load generator (``loadgen/loadgen.py memory``) runs in a child
process, so that only the server's allocations are traced. After 50 connections opened and
closed (lazy imports, caches), a snapshot; then N connections handshake and stay idle, and a
second snapshot once the server holds them all. The report divides the difference by N and
lists it by the line that allocated (the first frame of each traceback), with the count of
objects per connection.

What it cannot see: memory allocated outside Python's allocators (libuv's handles through
malloc, the kernel's socket buffers). ``bench/run.py --tests memory`` measures RSS, which
includes the former; the two agree within ~0.1 KiB per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import sys
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "servers"))

import fullduplex_echo  # noqa: E402 - the benchmark's own app, from its folder

import fullduplex  # noqa: E402

LOADGEN = HERE / "loadgen" / "loadgen.py"


async def _clients(port: int, n: int, hold: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(LOADGEN),
        "memory",
        "--port",
        str(port),
        "--connections",
        str(n),
        "--settle",
        str(hold),
        stdout=asyncio.subprocess.DEVNULL,
    )


async def main(args: argparse.Namespace) -> None:
    if args.api == "async":
        app = fullduplex_echo.echo_app()
    else:
        app = fullduplex_echo.listener_app(fullduplex_echo.Echo)
    server = await fullduplex.serve(
        app,
        "127.0.0.1",
        0,
        compression=False,
        ping_interval=None,
        max_connections=None,
        max_connections_per_ip=10**9,
        rate_per_ip=1e9,
        max_messages_per_second=10**12,
        max_bytes_per_second=10**15,
    )
    n = args.connections
    try:
        warm = await _clients(server.port, 50, 0.2)
        await warm.wait()
        while server.connections:
            await asyncio.sleep(0.05)
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        clients = await _clients(server.port, n, 5.0)
        while len(server.websockets) < n:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stats = after.compare_to(before, "lineno")
        total = sum(s.size_diff for s in stats)
        print(f"{total / n:.0f} bytes per idle connection ({args.api} API, {n} connections)")
        for stat in stats[: args.top]:
            frame = stat.traceback[0]
            line = linecache.getline(frame.filename, frame.lineno).strip()
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            size, count = stat.size_diff / n, stat.count_diff / n
            print(f"{size:7.1f} B {count:5.2f}  {where:<28} {line[:70]}")
        await clients.wait()
    finally:
        await server.shutdown()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--api", choices=["async", "listener"], default="async")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--top", type=int, default=30, help="lines to show")
    return parser.parse_args()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(parse_args()))
