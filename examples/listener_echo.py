"""The low-level callback API: an echo server with no task per connection.

Run: python examples/listener_echo.py, then `fullduplex bench ws://127.0.0.1:8002/echo`.
"""

from __future__ import annotations

import fullduplex


class Echo(fullduplex.WebSocketListener):
    def on_message(self, ws: fullduplex.WebSocket, message: fullduplex.Data) -> None:
        ws.send_nowait(message)


app = fullduplex.App()
app.websocket("/echo")(Echo)

if __name__ == "__main__":
    fullduplex.run(app, "127.0.0.1", 8002, ping_interval=None)
