"""What authentication and topic permissions cost: per handshake and per message.

    python bench/auth_bench.py [--quick] [--handshakes N] [--messages N] [--repeat N]

Two measurements, each with and without the feature, reported as ratios:

* **per handshake**: N WebSocket handshakes in a row (raw-socket client: one write of the
  upgrade request, read the 101, close), against a route without an authenticator, then the
  same route behind ``JWTAuth`` (HS256, token in ``Authorization: Bearer``). CPU time of the
  whole process (server and the small client share one loop) per handshake; and the
  authenticator's own time per call (``JWTAuth(request)`` in a loop), as a share of a
  handshake without it.
* **per message**: one ``/pubsub`` connection publishes N messages to a topic it subscribes
  to, pipelined, and reads them all back; rules ``publish=["bench"]`` and no authenticator,
  then ``JWTAuth`` and ``publish=["user.{id}"]`` (a pattern naming the identity: the dearer
  kind). CPU per message; and the permission check's own time per call
  (``rules.can_publish``), as a share of a message without it.

Everything runs in one process on 127.0.0.1 (uvloop when installed), the median of
``--repeat`` runs. The lead runs the full version on a quiet machine; ``--quick`` checks the
script works.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import fullduplex
from fullduplex.auth import Identity, JWTAuth
from fullduplex.hub import Hub
from fullduplex.protocol.http11 import Headers, Request
from fullduplex.transports import TopicRules, mount_all

SECRET = "bench secret, long enough for HS256 (32 bytes or more)"
UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


async def _hold(ws: fullduplex.WebSocket) -> None:
    async for _ in ws:
        pass


async def handshakes(n: int, auth: JWTAuth | None, token: str) -> float:
    """CPU seconds per handshake."""
    app = fullduplex.App(auth=auth)
    app.websocket("/ws")(_hold)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    extra = f"Authorization: Bearer {token}\r\n" if auth is not None else ""
    request = UPGRADE.format(extra=extra).encode()
    try:
        start = time.process_time()
        for _ in range(n):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head[:40]
            writer.write(b"\x88\x82abcd" + bytes([0x03 ^ 0x61, 0xE8 ^ 0x62]))  # close 1000
            await reader.read()  # until the server closes
            writer.close()
        return (time.process_time() - start) / n
    finally:
        await server.shutdown()


async def messages(n: int, auth: JWTAuth | None, token: str, rules: TopicRules) -> float:
    """CPU seconds per published-and-delivered message on /pubsub."""
    app = fullduplex.App(auth=auth)
    hub = Hub()
    await hub.start()
    topic = "user.ann" if auth is not None else "bench"
    transports = mount_all(app, hub, rules=TopicRules(subscribe=["*"], publish=rules.publish))
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.port}/pubsub" + (f"?token={token}" if auth else "")
    try:
        async with fullduplex.connect(url, max_queue=n + 16) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topic": topic}))
            await ws.send(json.dumps({"op": "unsubscribe", "topic": "sync"}))
            await ws.recv()  # the error reply: the subscription is in place
            op = json.dumps({"op": "publish", "topic": topic, "data": {"price": 1.25}})
            start = time.process_time()
            for _ in range(n):
                await ws.send(op)
            for _ in range(n):
                item = json.loads(await ws.recv())
                assert "seq" in item, item
            return (time.process_time() - start) / n
    finally:
        transports.close()
        await hub.close()
        await server.shutdown()


def per_call(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def median_of(repeat: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run, to check the script")
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    # The no-auth runs open publishing to everyone on purpose: no startup warning for that.
    logging.getLogger("fullduplex.transports").setLevel(logging.ERROR)
    if args.quick:
        args.handshakes, args.messages, args.repeat = 200, 2000, 1
    auth = JWTAuth(SECRET)
    token = auth.issue("ann", expires_in=3600)
    open_rules = TopicRules(publish=["bench"])
    identity_rules = TopicRules(publish=["user.{id}"])
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run

    def run(coro_fn: Callable[[], Any]) -> float:
        return float(runner(coro_fn()))

    hs_plain = median_of(args.repeat, lambda: run(lambda: handshakes(args.handshakes, None, "")))
    hs_auth = median_of(args.repeat, lambda: run(lambda: handshakes(args.handshakes, auth, token)))
    msg_plain = median_of(
        args.repeat, lambda: run(lambda: messages(args.messages, None, "", open_rules))
    )
    msg_auth = median_of(
        args.repeat, lambda: run(lambda: messages(args.messages, auth, token, identity_rules))
    )
    request = Request("GET", "/ws", Headers([("Authorization", f"Bearer {token}")]))
    t_auth = per_call(lambda: auth(request), args.handshakes * 5)
    ann = Identity("ann", {"sub": "ann"})
    t_static = per_call(lambda: open_rules.can_publish("bench", None), args.messages * 5)
    t_ident = per_call(lambda: identity_rules.can_publish("user.ann", ann), args.messages * 5)

    us = 1e6
    print(f"per handshake (CPU, server + client, {args.handshakes} handshakes):")
    print(f"  without auth            {hs_plain * us:8.1f} us")
    print(f"  JWTAuth HS256           {hs_auth * us:8.1f} us   ratio {hs_auth / hs_plain:.2f}")
    print(
        f"  JWTAuth(request) alone  {t_auth * us:8.1f} us   "
        f"= {t_auth / hs_plain:.2f} of a handshake without auth"
    )
    print(f"per message (CPU, /pubsub publish + delivery, {args.messages} messages):")
    print(f"  publish=['bench'], no auth      {msg_plain * us:7.2f} us")
    print(
        f"  publish=['user.{{id}}'], JWTAuth  {msg_auth * us:7.2f} us   "
        f"ratio {msg_auth / msg_plain:.2f}"
    )
    print(
        f"  can_publish alone: static {t_static * us:.2f} us, identity pattern "
        f"{t_ident * us:.2f} us = {t_ident / msg_plain:.3f} of a message"
    )


if __name__ == "__main__":
    main()
