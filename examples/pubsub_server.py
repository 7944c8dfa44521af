"""One hub, four transports: WebSocket, SSE, long polling and short polling.

Run: python examples/pubsub_server.py, then
  curl -N 'http://127.0.0.1:8003/sse?topic=news'            (in one terminal)
  curl -H 'Content-Type: application/json' -d '{"topic":"news","data":"hi"}' \\
       http://127.0.0.1:8003/publish                          (in another)
"""

from __future__ import annotations

import fullduplex
from fullduplex.hub import Hub
from fullduplex.transports import mount_all

app = fullduplex.App()
hub = Hub()  # in memory; Hub("redis://127.0.0.1:6379/0") to share topics across processes
mount_all(app, hub)  # /pubsub (WebSocket), /sse, /longpoll, /poll, POST /publish
app.on_startup(hub.start)
app.on_shutdown(hub.close)

if __name__ == "__main__":
    fullduplex.run(app, "127.0.0.1", 8003)
