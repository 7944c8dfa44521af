"""POST /publish: success, and every error status."""

from __future__ import annotations

import json

import pytest

from .client import publish, request
from .conftest import Setup

JSON = [("Content-Type", "application/json")]


async def test_publish_returns_seq_and_time(rt: Setup) -> None:
    first = await publish(rt.port, "chat", {"text": "hi"})
    second = await publish(rt.port, "chat", {"text": "again"})
    assert (first["topic"], first["seq"], second["seq"]) == ("chat", 1, 2)
    assert isinstance(first["time"], float)
    gap, messages = await rt.hub.history("chat")
    assert gap is None and [m.data for m in messages] == [{"text": "hi"}, {"text": "again"}]


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        (b"{", JSON, 400, "invalid JSON"),
        # Not JSON (RFC 8259 6), though Python reads and writes it: every subscriber's JSON
        # parser would fail on the message.
        (b'{"topic": "chat", "data": NaN}', JSON, 400, "invalid JSON: NaN"),
        (b'{"topic": "chat", "data": [-Infinity]}', JSON, 400, "invalid JSON: -Infinity"),
        (b'{"topic": "chat", "data": "\xff"}', JSON, 400, "invalid JSON"),
        # Past Python's recursion limit (RecursionError: 500 and a traceback, before), and
        # under it but too deep to serialize again when published.
        (b"[" * 5000 + b"]" * 5000, JSON, 400, "invalid JSON: nested deeper than 128"),
        (
            b'{"topic": "chat", "data": ' + b"[" * 990 + b"]" * 990 + b"}",
            JSON,
            400,
            "invalid JSON: nested deeper than 128",
        ),
        (b"[1]", JSON, 400, "expected a JSON object"),
        (b'{"topic": "chat"}', JSON, 400, "missing field: data"),
        (b'{"topic": "bad topic", "data": 1}', JSON, 400, "invalid topic"),
        (b'{"topic": 3, "data": 1}', JSON, 400, "invalid topic"),
        (b'{"topic": "ticker", "data": 1}', JSON, 403, "topic not publishable"),
        (b'{"topic": "chat", "data": 1}', [("Content-Type", "text/plain")], 415, "Content-Type"),
        (b'{"topic": "chat", "data": 1}', [], 415, "Content-Type"),
        (
            json.dumps({"topic": "chat", "data": "x" * 70_000}).encode(),
            JSON,
            413,
            "body too large",
        ),
    ],
)
async def test_publish_errors(
    rt: Setup, body: bytes, headers: list[tuple[str, str]], status: int, error: str
) -> None:
    reply = await request(rt.port, "POST", "/publish", body=body, headers=headers)
    assert reply.status == status, reply.body
    assert reply.json()["error"].startswith(error)
    assert await rt.hub.last_seq("chat") == 0


async def test_publish_nesting_at_the_limit(rt: Setup) -> None:
    data = json.loads("[" * 127 + "]" * 127)  # 128 levels with the envelope's object
    assert (await publish(rt.port, "chat", data))["seq"] == 1
    reply = await request(rt.port, "GET", "/poll?topic=chat&since=0")
    assert reply.json()["messages"][0]["data"] == data


async def test_get_is_405(rt: Setup) -> None:
    reply = await request(rt.port, "GET", "/publish")
    assert reply.status == 405
