"""picows (Cython, frame callbacks): echo each frame, or relay with ``--broadcast``."""

from __future__ import annotations

import argparse

import _common
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server


async def main(args: argparse.Namespace) -> None:
    transports: set[WSTransport] = set()

    class Handler(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: WSTransport) -> None:
            transports.add(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            transports.discard(transport)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            msg_type = frame.msg_type
            if msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            elif msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
                payload = frame.get_payload_as_memoryview()  # send() copies it
                if args.broadcast:
                    for other in transports:
                        if other is not transport:
                            other.send(msg_type, payload, frame.fin)
                else:
                    transport.send(msg_type, payload, frame.fin)

    server = await ws_create_server(
        lambda request: Handler(),
        args.host,
        args.port,
        max_frame_size=_common.MAX_SIZE,
        enable_auto_ping=False,
        backlog=_common.BACKLOG,
    )
    _common.announce(server.sockets[0].getsockname()[1])
    await server.serve_forever()


if __name__ == "__main__":
    _common.run(main, _common.parse_args(__doc__ or ""))
