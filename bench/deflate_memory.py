"""Memory per connection of permessage-deflate, by setting (tracemalloc, zlib's state included).

    python bench/deflate_memory.py

Each row negotiates the extension through the real handshakes, then keeps 200 server-side
connections that have each compressed one message and decompressed one (zlib allocates its
state lazily), and divides the traced memory by 200. zlib allocates through CPython's raw
allocator, which tracemalloc traces. Compression is off by default in ``fullduplex.serve``.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from fullduplex.protocol import Connection, Side
from fullduplex.protocol.deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from fullduplex.protocol.handshake import ClientHandshake, ServerHandshake
from fullduplex.protocol.http11 import RequestParser

SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("server default (12-bit windows, memLevel 5)", {}),
    (
        "zlib defaults (15-bit windows, memLevel 8)",
        {"server_max_window_bits": 15, "client_max_window_bits": 15, "mem_level": 8},
    ),
    (
        "no context takeover, both directions",
        {"server_no_context_takeover": True, "client_no_context_takeover": True},
    ),
    (
        "9-bit windows, memLevel 1",
        {"server_max_window_bits": 9, "client_max_window_bits": 9, "mem_level": 1},
    ),
]


def measure(server_settings: dict[str, Any], n: int = 200) -> float:
    """Bytes per connection holding one compressor and one decompressor of these settings."""
    client = ClientHandshake("ws://h/", extensions=[ClientPerMessageDeflateFactory()])
    parser = RequestParser()
    parser.feed(client.request().serialize())
    request = parser.next_request()
    assert request is not None
    server = ServerHandshake(extensions=[ServerPerMessageDeflateFactory(**server_settings)])
    message = ("hello fullduplex " * 20).encode()
    kept = []
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(n):
        accepted = server.process_request(request)
        conn = Connection(Side.SERVER, extensions=accepted.extensions)
        conn.send_binary(message)  # the compressor now exists
        conn.data_to_send()
        kept.append(conn)
    peer_extensions = client.process_response(accepted.response).extensions
    peer = Connection(Side.CLIENT, extensions=peer_extensions)
    peer.send_binary(message)
    frame = peer.data_to_send()
    for conn in kept:
        conn.receive_data(frame)  # and the decompressor
        conn.events_received()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n


def main() -> None:
    for label, settings in SETTINGS:
        print(f"{label:45s} {measure(settings) / 1024:7.1f} KiB per connection")


if __name__ == "__main__":
    main()
