"""fullduplex's echo with one change to its per-message path, to measure what a change saves.

Profiling experiments, not servers to compare: each ``--variant`` patches fullduplex *in this
process only* (the library is untouched) and serves ``/echo`` like fullduplex_echo.py, so the
same load generator measures the saving::

    python bench/servers/fullduplex_variants.py --variant recv-loop

Variants:

* ``baseline``: the demo's ``async for message in ws: await ws.send(message)``;
* ``recv-loop``: ``while True: await ws.recv()`` instead of ``async for`` (what a plain
  ``__anext__`` instead of the ``_iterate`` async generator would save);
* ``lazy-flush``: ``WebSocket._flush`` returns at once when the core has nothing to send and no
  close pending (the flush after every received message finds nothing to write);
* ``callback``: the message is echoed from ``data_received`` itself: no recv future, no task
  switch, no ``send`` coroutine; the ceiling of an ``on_message`` callback API.
"""

from __future__ import annotations

import argparse
from typing import Any

import _common

import fullduplex
from fullduplex.asyncio import connection as ws_module
from fullduplex.protocol import State

VARIANTS = ("baseline", "recv-loop", "lazy-flush", "callback")


def patch_lazy_flush() -> None:
    original = ws_module.WebSocket._flush

    def _flush(self: Any) -> None:
        core = self.core
        if core.pending_output or core.transport_should_close or core.close_timer_wanted:
            original(self)

    ws_module.WebSocket._flush = _flush  # type: ignore[method-assign]


def patch_callback() -> None:
    def _deliver(self: Any, message: Any) -> None:
        core = self.core
        if core.state is State.OPEN:
            if isinstance(message, str):
                core.send_text(message)
            else:
                core.send_binary(message)
        # _process_events flushes once after the events: the echo goes out there.

    ws_module.WebSocket._deliver = _deliver  # type: ignore[method-assign]


def build_app(variant: str) -> fullduplex.App:
    app = fullduplex.App()
    limits = {"max_message_size": _common.MAX_SIZE, "max_frame_size": _common.MAX_SIZE}

    if variant == "recv-loop":

        @app.websocket("/echo", **limits)
        async def echo_recv(ws: fullduplex.WebSocket) -> None:
            try:
                while True:
                    await ws.send(await ws.recv())
            except fullduplex.ConnectionClosedOK:
                pass

    elif variant == "callback":

        @app.websocket("/echo", **limits)
        async def echo_callback(ws: fullduplex.WebSocket) -> None:
            await ws.wait_closed()

    else:

        @app.websocket("/echo", **limits)
        async def echo(ws: fullduplex.WebSocket) -> None:
            async for message in ws:
                await ws.send(message)

    return app


async def main(args: argparse.Namespace) -> None:
    if args.variant == "lazy-flush":
        patch_lazy_flush()
    elif args.variant == "callback":
        patch_callback()
    server = await fullduplex.serve(
        build_app(args.variant),
        args.host,
        args.port,
        compression=False,
        ping_interval=None,
        max_connections=None,
        # Limits on but never reached, as in fullduplex_echo.py (one client IP, floods).
        max_connections_per_ip=10**9,
        rate_per_ip=1e9,
        max_messages_per_second=10**12,
        max_bytes_per_second=10**15,
    )
    _common.announce(server.port)
    await _common.forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--variant", choices=VARIANTS, default="baseline")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    _common.run(main, parser.parse_args())
