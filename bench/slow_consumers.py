"""How long a slow consumer's socket is held once the server dropped it, and what it pins.

    python bench/slow_consumers.py [--clients 100] [--loop uvloop|asyncio] [--close-timeout 10]

Opens N ``/pubsub`` clients (raw sockets, default kernel settings) that subscribe to a topic
with the ``disconnect`` policy (queue of 8) and then stop reading; publishes 4 KB messages until
the server has sent every one of them its 1013. Reports, per client, the time from the close
frame being queued to the server's socket being gone (``connection_lost``), and the server's
write buffers still held when the last 1013 went out. A close frame queued behind a full
buffer used to wait for ``close_timeout``; a reset goes at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time

import fullduplex
from fullduplex.hub import Hub, Policy, TopicConfig
from fullduplex.transports import TopicRules, mount_all

PAD = "x" * 4000


async def stalled_client(port: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /pubsub HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade"
        f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    payload = json.dumps({"op": "subscribe", "topic": "flood"}).encode()
    mask = os.urandom(4)
    writer.write(
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )
    await writer.drain()
    writer.transport.pause_reading()  # reads nothing more, not even into the StreamReader
    return writer


async def run(clients: int, close_timeout: float) -> None:
    hub = Hub()
    hub.configure("flood", TopicConfig(queue_size=8, policy=Policy.DISCONNECT))
    await hub.start()
    app = fullduplex.App()
    transports = mount_all(app, hub, rules=TopicRules())
    server = await fullduplex.serve(
        app,
        "127.0.0.1",
        0,
        close_timeout=close_timeout,
        max_connections_per_ip=None,
        rate_per_ip=None,
    )
    writers = [await stalled_client(server.port) for _ in range(clients)]
    await asyncio.sleep(0.2)
    sockets = [ws for ws in server.websockets if ws.request.path == "/pubsub"]
    assert len(sockets) == clients, len(sockets)
    closed_at: dict[int, float] = {}
    lost_at: dict[int, float] = {}
    for i, ws in enumerate(sockets):
        asyncio.ensure_future(ws.wait_closed()).add_done_callback(
            lambda _, i=i: lost_at.setdefault(i, time.monotonic())
        )
    start = time.monotonic()
    published = 0
    while len(closed_at) < clients and time.monotonic() - start < 60:
        await hub.publish("flood", {"pad": PAD})
        published += 1
        for i, ws in enumerate(sockets):
            if i not in closed_at and ws.core.close_sent is not None:
                closed_at[i] = time.monotonic()
        await asyncio.sleep(0)
    held = sum(
        ws.transport.get_write_buffer_size() for j, ws in enumerate(sockets) if j not in lost_at
    )
    deadline = time.monotonic() + close_timeout + 5
    while len(lost_at) < clients and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    delays = [lost_at[i] - closed_at[i] for i in closed_at if i in lost_at]
    print(f"{clients} stalled /pubsub readers, {published} messages of 4 KB published")
    print(f"  closed with 1013: {len(closed_at)}; sockets gone: {len(lost_at)}")
    if delays:
        print(
            f"  1013 -> socket gone: median {statistics.median(delays) * 1000:.1f} ms, "
            f"max {max(delays) * 1000:.1f} ms (close_timeout {close_timeout} s)"
        )
    print(f"  server write buffers at the last 1013: {held / 1024:.0f} KiB")
    drops = getattr(transports, "drops", None)
    if drops is not None:
        print(f"  drop records: {len(drops)} (none asked: no client said hello)")
    for writer in writers:
        writer.transport.abort()
    transports.close()
    await server.shutdown()
    await hub.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--close-timeout", type=float, default=10.0)
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(run(args.clients, args.close_timeout))
    else:
        asyncio.run(run(args.clients, args.close_timeout))


if __name__ == "__main__":
    main()
