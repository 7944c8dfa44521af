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


async def test_get_is_405(rt: Setup) -> None:
    reply = await request(rt.port, "GET", "/publish")
    assert reply.status == 405
