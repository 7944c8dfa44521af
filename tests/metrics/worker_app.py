"""A worker process for the metrics tests: echo, the hub transports, metrics; until SIGTERM.

    python -m tests.metrics.worker_app PORT BROKER LOOP

BROKER is ``memory`` or a Redis URL; LOOP is ``asyncio`` or ``uvloop``. Several processes
started with the same PORT share it (SO_REUSEPORT) and, with ``FULLDUPLEX_METRICS_DIR`` set,
their metrics (fullduplex.metrics.workers).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

import fullduplex
from fullduplex.hub import Hub, Policy, TopicConfig
from fullduplex.transports import TopicRules, mount_all

SLOW_TOPIC = "slow"
SLOW_CONFIG = TopicConfig(policy=Policy.DISCONNECT, queue_size=2)


def build(broker: str) -> tuple[fullduplex.App, Hub]:
    app = fullduplex.App()
    hub = Hub(broker)
    hub.configure(SLOW_TOPIC, SLOW_CONFIG)
    transports = mount_all(app, hub, rules=TopicRules(subscribe=["*"], publish=["*"]))

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    app.on_startup(hub.start)
    app.on_shutdown(hub.close)
    app.on_shutdown(transports.close)
    app.enable_metrics(hub=hub, transports=transports)
    return app, hub


async def main(port: int, broker: str) -> None:
    app, _ = build(broker)
    server = await fullduplex.serve(
        app,
        "127.0.0.1",
        port,
        reuse_port=True,
        write_limit=1024,  # a slow consumer shows up after a few messages
        ping_interval=0.2,  # pings, hence round-trip times, within the test
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.shutdown()


if __name__ == "__main__":
    port, broker, loop_name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(port, broker))
