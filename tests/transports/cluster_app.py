"""Every transport over a Redis Cluster hub, for tests/transports/test_cluster.py (a subprocess).

Usage: python -m tests.transports.cluster_app CLUSTER_URL PREFIX. It prints its port, then
serves until killed. Anyone may subscribe to and publish on any topic.
"""

from __future__ import annotations

import asyncio
import sys

import fullduplex
from fullduplex.hub import Hub, RedisClusterBackend
from fullduplex.transports import TopicRules, mount_all


async def main(url: str, prefix: str) -> None:
    hub = Hub(RedisClusterBackend(url, prefix=prefix, reconnect_delay=(0.02, 0.2)))
    await hub.start()
    app = fullduplex.App()
    mount_all(app, hub, rules=TopicRules(subscribe=["*"], publish=["*"]), longpoll_timeout=10)
    server = await fullduplex.serve(app, "127.0.0.1", 0, rate_per_ip=None)
    print(server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
