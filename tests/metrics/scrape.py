"""Helpers of the metrics tests: scrape with prometheus-client's own parser, wait, raw peers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Snapshot = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Snapshot:
    """Every sample of an exposition, by name and labels (prometheus-client's parser)."""
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            snapshot[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return snapshot


def value(snapshot: Snapshot, name: str, **labels: str) -> float:
    """A sample's value; 0 when absent (a counter not incremented yet)."""
    return snapshot.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient, base: str) -> Snapshot:
    response = await client.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def wait_for(
    client: httpx.AsyncClient,
    base: str,
    condition: Callable[[Snapshot], bool],
    timeout: float = 10.0,
    what: str = "condition",
) -> Snapshot:
    """Scrape until ``condition`` holds (bounded); the snapshot that satisfied it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        snapshot = await scrape(client, base)
        if condition(snapshot):
            return snapshot
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def masked_text_frame(text: str) -> bytes:
    """A client text frame (RFC 6455 5.2: FIN, opcode 1, masked), payload < 126 bytes."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


def slow_subscriber(port: int, topic: str) -> socket.socket:
    """A /pubsub client that subscribes to ``topic`` and then never reads.

    Its receive buffer is made tiny before connecting, so the TCP window stays small and
    the server's write buffer fills after a few large messages.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /pubsub HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)  # one byte at a time: nothing after the head is taken
        assert byte, "connection closed during the handshake"
        head += byte
    assert head.startswith(b"HTTP/1.1 101 "), head
    sock.sendall(masked_text_frame(json.dumps({"op": "subscribe", "topic": topic})))
    return sock


def delta(before: Snapshot, after: Snapshot, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def deltas(before: Snapshot, after: Snapshot, keys: dict[str, Any]) -> dict[str, float]:
    """The change of each sample named in ``keys`` (``"name{a=b,c=d}"`` -> labels)."""
    out = {}
    for key in keys:
        name, _, rest = key.partition("{")
        labels = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        out[key] = delta(before, after, name, **labels)
    return out
