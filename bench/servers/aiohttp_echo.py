"""aiohttp (``aiohttp.web`` with ``WebSocketResponse``): echo, or relay with ``--broadcast``."""

from __future__ import annotations

import argparse

import _common
from aiohttp import WSMsgType, web


async def main(args: argparse.Namespace) -> None:
    clients: set[web.WebSocketResponse] = set()

    async def echo(ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)

    async def relay(ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            binary = msg.type is WSMsgType.BINARY
            if not binary and msg.type is not WSMsgType.TEXT:
                continue
            for other in list(clients):
                if other is not ws:
                    try:  # cheaper than contextlib.suppress in this loop
                        if binary:
                            await other.send_bytes(msg.data)
                        else:
                            await other.send_str(msg.data)
                    except ConnectionError:
                        pass

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=_common.MAX_SIZE)
        await ws.prepare(request)
        clients.add(ws)
        try:
            await (relay(ws) if args.broadcast else echo(ws))
        finally:
            clients.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/echo", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=_common.BACKLOG)
    await site.start()
    _common.announce(runner.addresses[0][1])
    await _common.forever()


if __name__ == "__main__":
    _common.run(main, _common.parse_args(__doc__ or ""))
