"""A reconnect storm: 2,000 subscribers, a server restart, every one back with nothing lost.

The server (a process of its own, Redis hub) closes its /pubsub connections with 1012 when it
stops; the subscribers come back spread over ``restart_jitter`` and resume from their cursors.
The time from the new server listening until the last subscriber has every message is printed
(run with ``-s`` to see it) and written to ``storm.json`` in the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import fullduplex
from fullduplex.hub import Hub

from ..hub.conftest import free_port
from ..transports.conftest import RedisServer, redis_server  # noqa: F401
from .faults import ServerProcess, wait_for

SUBSCRIBERS = 2000
RESTART_JITTER = 2.0


async def test_2000_subscribers_resume_after_restart(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    server = ServerProcess(free_port(), redis_server.url)
    await asyncio.to_thread(server.start)
    hub = Hub(redis_server.url)
    await hub.start()
    topic = f"storm{free_port()}"
    subs: list[fullduplex.Subscriber] = []
    seen: list[list[int]] = [[] for _ in range(SUBSCRIBERS)]
    tasks: list[asyncio.Task[None]] = []

    async def consume(sub: fullduplex.Subscriber, into: list[int]) -> None:
        async for item in sub:
            into.append(getattr(item, "seq", -1))  # a gap would show as -1

    try:
        for i in range(5):
            await hub.publish(topic, i)
        uri = f"ws://127.0.0.1:{server.port}/pubsub"
        for i in range(SUBSCRIBERS):
            sub = fullduplex.subscribe(
                uri, topic, since=0, restart_jitter=RESTART_JITTER, max_delay=2.0
            )
            subs.append(sub)
            tasks.append(asyncio.ensure_future(consume(sub, seen[i])))
            if i % 200 == 199:
                await asyncio.sleep(0.05)  # the initial connections, not the test's subject
        await wait_for(lambda: all(len(s) == 5 for s in seen), 60, "every subscriber at seq 5")

        await asyncio.to_thread(server.stop)  # 1012 to all 2,000
        for i in range(5, 10):
            await hub.publish(topic, i)  # while the server is down
        await asyncio.to_thread(server.start)
        started = time.monotonic()
        for i in range(10, 15):
            await hub.publish(topic, i)
        await wait_for(lambda: all(len(s) >= 15 for s in seen), 45, "every subscriber back")
        elapsed = time.monotonic() - started
        reconnected = sum(s.connections == 2 for s in subs)
        result: dict[str, Any] = {
            "subscribers": SUBSCRIBERS,
            "restart_jitter": RESTART_JITTER,
            "all_back_seconds": round(elapsed, 2),
            "reconnected_once": reconnected,
        }
        print("reconnect storm:", json.dumps(result))
        (tmp_path / "storm.json").write_text(json.dumps(result))
        for s in seen:
            assert s == list(range(1, 16))  # every message, once, in order; no gap
        assert reconnected == SUBSCRIBERS  # one reconnection each: no retry storm
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(s.close() for s in subs))
        await hub.close()
        server.kill()
