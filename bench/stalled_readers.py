"""Kernel memory pinned by clients that stopped reading, with and without ``send_buffer_size``.

    python bench/stalled_readers.py [--clients 200] [--loop uvloop|asyncio]

Opens N WebSocket clients (raw sockets, default kernel settings) that never read; the server
sends each 16 KiB messages until its own write buffer reaches ``write_limit`` (64 KiB), so the
kernel holds everything it accepted. Then it reads, for the server's sockets only,
``ss -tmn``'s ``skmem`` (``w``: bytes queued for sending, ``tb``: the send buffer size) and,
machine-wide, the TCP page count of /proc/net/sockstat. Runs once with the default cap
(SO_SNDBUF 64 KiB) and once with ``send_buffer_size=None`` (the kernel's autotuning).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import resource
import socket
import subprocess
import time
from typing import Any

import fullduplex

CHUNK = b"z" * 16384


def app_flooding(ready: list[int], total: int, done: asyncio.Event) -> fullduplex.App:
    app = fullduplex.App()

    @app.websocket("/flood")
    async def flood(ws: fullduplex.WebSocket) -> None:
        limit = ws.transport.get_write_buffer_limits()[1]
        sent = 0
        while ws.transport.get_write_buffer_size() + len(CHUNK) + 4 <= limit:
            await ws.send(CHUNK)
            sent += len(CHUNK)
            if sent > 64 * 2**20:
                break
        ready.append(sent)
        if len(ready) == total:
            done.set()
        await ws.wait_closed()

    return app


async def open_stalled(port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            "GET /flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    return sock  # never read again


def server_skmem(port: int) -> tuple[int, int, int]:
    """Sum of w (queued) and tb (send buffer) over the server's sockets, and their count."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    queued = sndbuf = count = 0
    for m in re.finditer(r"skmem:\(([^)]*)\)", out):
        fields = dict(re.findall(r"([a-z]+)(\d+)", m.group(1)))
        queued += int(fields["w"])
        sndbuf += int(fields["tb"])
        count += 1
    return queued, sndbuf, count


def tcp_pages() -> int:
    with open("/proc/net/sockstat") as f:
        text = f.read()
    return int(re.search(r"TCP:.* mem (\d+)", text).group(1))  # type: ignore[union-attr]


async def run_once(clients: int, send_buffer_size: int | None) -> dict[str, Any]:
    ready: list[int] = []
    done = asyncio.Event()
    before = tcp_pages()
    server = await fullduplex.serve(
        app_flooding(ready, clients, done),
        "127.0.0.1",
        0,
        send_buffer_size=send_buffer_size,
        max_connections=clients + 10,
        ping_interval=None,
    )
    socks = []
    try:
        for _ in range(clients):
            socks.append(await open_stalled(server.port))
        await asyncio.wait_for(done.wait(), 60)
        time.sleep(0.2)  # let the kernel settle its counters (a measurement, not a sync)
        queued, sndbuf, count = server_skmem(server.port)
        pages = tcp_pages() - before
    finally:
        for s in socks:
            s.close()
        await server.shutdown()
    return {
        "send_buffer_size": send_buffer_size,
        "sockets": count,
        "kernel_queued_per_reader_KiB": queued / count / 1024,
        "sndbuf_per_reader_KiB": sndbuf / count / 1024,
        "tcp_mem_per_connection_KiB": pages * 4096 / clients / 1024,  # both ends on loopback
        "accepted_by_kernel_per_reader_KiB": sum(ready) / clients / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients + 100)), hard))

    async def both() -> None:
        for size in (fullduplex.config.DEFAULT_SEND_BUFFER_SIZE, None):
            result = await run_once(args.clients, size)
            print(
                ", ".join(
                    f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in result.items()
                )
            )

    if args.loop == "uvloop":
        import uvloop

        uvloop.run(both())
    else:
        asyncio.run(both())


if __name__ == "__main__":
    main()
