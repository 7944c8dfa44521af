"""Peak server memory under a flood of empty continuation frames (issue 15, defect 4).

Starts an echo server in a child process (default limits: a 1 MiB message limit), opens one
raw WebSocket connection and sends ``02 81 <mask> 78`` (a 1-byte binary fragment), then N empty
continuation frames (``00 80 <mask>``, 6 bytes each), then ``80 81 <mask> 79`` (the last
fragment). The 2-byte message comes back. The server's peak RSS (``VmHWM``) and current RSS
(``VmRSS``) are read from /proc before the flood, after the continuation frames, and after
the echo::

    python bench/fragment_flood.py --frames 2000000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

SERVER = """
import asyncio, sys
import fullduplex

app = fullduplex.App()

@app.websocket("/echo")
async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    server = await fullduplex.serve(app, "127.0.0.1", 0, ping_interval=None)
    print(server.port, flush=True)
    await server.serve_forever()

asyncio.run(main())
"""

HANDSHAKE = (
    b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MASK = b"\x00\x00\x00\x00"  # an all-zero key: the payload bytes go on the wire as they are


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {data!r}")
        data += chunk
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2_000_000)
    args = parser.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(HANDSHAKE)
        recv_until(sock, b"\r\n\r\n")
        before = memory(proc.pid)
        sock.sendall(b"\x02\x81" + MASK + b"x")
        empty = (b"\x00\x80" + MASK) * 10_000
        left = args.frames
        while left > 0:
            n = min(left, 10_000)
            sock.sendall(empty if n == 10_000 else empty[: 6 * n])
            left -= n
        # A ping after the flood: its pong proves the server parsed every frame before it.
        sock.sendall(b"\x89\x80" + MASK)
        recv_until(sock, b"\x8a\x00")
        during = memory(proc.pid)
        started = time.perf_counter()
        sock.sendall(b"\x80\x81" + MASK + b"y")
        reply = recv_until(sock, b"xy")
        elapsed = time.perf_counter() - started
        after = memory(proc.pid)
        sock.close()
    finally:
        proc.terminate()
        proc.wait()
    print(f"{args.frames:,} empty continuation frames ({6 * args.frames / 2**20:.1f} MiB)")
    print(f"  echo of the 2-byte message: {reply[-4:]!r} after {elapsed * 1000:.0f} ms")
    for label, (rss, peak) in [
        ("before the flood", before),
        ("with the message open", during),
        ("after the message", after),
    ]:
        print(f"  RSS {label + ':':22} {rss / 1024:8.1f} MiB (peak {peak / 1024:.1f})")
    print(f"  peak growth:               {(after[1] - before[1]) / 1024:8.1f} MiB")


if __name__ == "__main__":
    main()
