"""One hub, four transports: WebSocket, SSE, long polling and short polling.

Run: python examples/pubsub_server.py, then
  curl -N 'http://127.0.0.1:8003/sse?topic=news'            (in one terminal)
  curl -H 'Content-Type: application/json' -d '{"topic":"news","data":"hi"}' \\
       http://127.0.0.1:8003/publish                          (in another)
"""

from __future__ import annotations

import fullduplex
from fullduplex.hub import Hub
from fullduplex.transports import TopicRules, mount_all

app = fullduplex.App()
hub = Hub()  # in memory; Hub("redis://127.0.0.1:6379/0") to share topics across processes
# /pubsub (WebSocket), /sse, /longpoll, /poll, POST /publish. Clients publish nothing unless
# the rules grant it: here anyone may publish to "news" (the server warns at startup; see
# docs/security.md to grant it by identity instead).
mount_all(app, hub, rules=TopicRules(publish=["news"]))
app.on_startup(hub.start)
app.on_shutdown(hub.close)

if __name__ == "__main__":
    fullduplex.run(app, "127.0.0.1", 8003)
