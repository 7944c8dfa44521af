"""The hub's transports mounted in a FastAPI application, under any ASGI server (docs/asgi.md).

``uvicorn examples.asgi_mount_hub:app`` or ``python examples/asgi_mount_hub.py`` (fullduplex):
``/rt/pubsub`` (WebSocket), ``/rt/sse``, ``/rt/longpoll``, ``/rt/poll``, ``POST /rt/publish``,
beside the application's own routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import fullduplex
from fullduplex.asgi import HubApp
from fullduplex.hub import Hub

hub = Hub()  # Hub("redis://127.0.0.1:6379/0") to share topics across processes
realtime = HubApp(hub)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Starlette does not run a mounted app's lifespan: start the hub (and what the transports
    # run beside it) here; at shutdown, held event streams and long polls end first.
    async with realtime:
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/rt", realtime)


@app.post("/orders")
async def create_order(order: dict[str, object]) -> dict[str, int]:
    message = await hub.publish("orders", order)  # every transport's subscribers get it
    return {"seq": message.seq}


if __name__ == "__main__":
    fullduplex.run(app, "127.0.0.1", 8000)
