"""A chat room in a dozen lines: every message goes to everyone, framed once.

Run: python examples/chat_server.py, then `fullduplex connect ws://127.0.0.1:8001/chat` twice.
"""

from __future__ import annotations

import fullduplex

app = fullduplex.App()
room: set[fullduplex.WebSocket] = set()


@app.websocket("/chat")
async def chat(ws: fullduplex.WebSocket) -> None:
    room.add(ws)
    try:
        async for message in ws:
            fullduplex.broadcast(room, message)
    finally:
        room.discard(ws)


@app.get("/api/online")
async def online(request: object) -> dict[str, int]:
    return {"online": len(room)}


if __name__ == "__main__":
    fullduplex.run(app, "127.0.0.1", 8001)
