"""A FastAPI application served by fullduplex instead of uvicorn (docs/asgi.md).

Run it with ``python examples/asgi_fastapi.py``, or ``fullduplex serve examples.asgi_fastapi:app``
from the repository's root. The code is plain FastAPI: only the last line
names the server.
"""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

import fullduplex

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@app.websocket("/ws/{room}")
async def room(websocket: WebSocket, room: str) -> None:
    await websocket.accept()
    try:
        async for text in websocket.iter_text():
            await websocket.send_text(f"{room}: {text}")
    except WebSocketDisconnect:
        pass


if __name__ == "__main__":
    fullduplex.run(app, "127.0.0.1", 8000)  # Ctrl-C: every WebSocket gets 1001
