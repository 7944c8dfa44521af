"""One ASGI echo application (no framework), served by fullduplex, uvicorn or granian.

``--server fullduplex``: :func:`fullduplex.serve` (its ASGI adapter over fullduplex's own
WebSocket engine). ``--server uvicorn``: uvicorn with its default WebSocket implementation
(``ws="auto"``: websockets' sans-I/O core) and httptools. ``--server granian``: granian's
embedded server (``granian.server.embed``, one process: its usual mode runs the application in
a child process, which run.py cannot measure by pid), ``asginl`` interface, one runtime thread.

All three serve the same application object, on uvloop, without compression and without
keepalive pings, with 16 MiB message limits. ``--broadcast`` relays each message to every other
connection, one ``send`` each (ASGI has no broadcast primitive).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import _common

BROADCAST = False
CLIENTS: set[Any] = set()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The application: echo (or relay) WebSocket messages; lifespan answered; HTTP 404."""
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if kind == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if BROADCAST:
        await relay(receive, send)
        return
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send(
            {"type": "websocket.send", "bytes": message.get("bytes"), "text": message.get("text")}
        )


async def relay(receive: Any, send: Any) -> None:
    CLIENTS.add(send)
    try:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            out = {
                "type": "websocket.send",
                "bytes": message.get("bytes"),
                "text": message.get("text"),
            }
            for other in list(CLIENTS):
                if other is not send:
                    try:
                        await other(out)
                    except Exception:
                        CLIENTS.discard(other)
    finally:
        CLIENTS.discard(send)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_listening(host: str, port: int) -> None:
    for _ in range(1000):  # bounded: 10 s
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on {host}:{port}")


async def serve_fullduplex(args: argparse.Namespace) -> None:
    import fullduplex

    server = await fullduplex.serve(
        app,
        args.host,
        args.port,
        compression=False,
        ping_interval=None,
        max_connections=None,
        max_message_size=_common.MAX_SIZE,
        max_frame_size=_common.MAX_SIZE,
        # Limits on but never reached, as in fullduplex_echo.py (one client IP, floods).
        max_connections_per_ip=10**9,
        rate_per_ip=1e9,
        max_messages_per_second=10**12,
        max_bytes_per_second=10**15,
    )
    _common.announce(server.port)
    await _common.forever()


async def serve_uvicorn(args: argparse.Namespace) -> None:
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        ws_max_size=_common.MAX_SIZE,
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        backlog=_common.BACKLOG,
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    _common.announce(sock.getsockname()[1])
    await task


async def serve_granian(args: argparse.Namespace) -> None:
    from granian.server.embed import Server

    port = args.port or free_port(args.host)
    server = Server(
        app,
        address=args.host,
        port=port,
        interface="asginl",  # type: ignore[arg-type]
        websockets=True,
        backlog=_common.BACKLOG,
        runtime_threads=1,
        log_enabled=False,  # its "experimental" warning would go to stdout, before the port
    )
    task = asyncio.ensure_future(server.serve())
    await wait_listening(args.host, port)
    _common.announce(port)
    await task


async def main(args: argparse.Namespace) -> None:
    global BROADCAST
    BROADCAST = args.broadcast
    await {"fullduplex": serve_fullduplex, "uvicorn": serve_uvicorn, "granian": serve_granian}[
        args.server
    ](args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", choices=["fullduplex", "uvicorn", "granian"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--broadcast", action="store_true", help="relay to every other connection")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    return parser.parse_args()


if __name__ == "__main__":
    _common.run(main, parse_args())
