from __future__ import annotations

import asyncio
import logging

import pytest

import fullduplex
from fullduplex.asyncio.proxies import TrustedProxies, apply_proxy_headers
from fullduplex.protocol.http11 import Headers, Request

from .conftest import start


def request(peer: str | None, *headers: tuple[str, str]) -> Request:
    r = Request("GET", "/", Headers(list(headers)))
    r.client = (peer, 5555) if peer is not None else None
    return r


def test_literals_networks_and_star() -> None:
    trusted = TrustedProxies("127.0.0.1, 10.0.0.0/8,::1")
    assert "127.0.0.1" in trusted
    assert "10.1.2.3" in trusted
    assert "::1" in trusted
    assert "::ffff:127.0.0.1" in trusted  # an IPv4 peer on a dual-stack socket
    assert "11.0.0.1" not in trusted
    assert "not an address" not in trusted
    assert "1.2.3.4" in TrustedProxies("*")
    assert "1.2.3.4" in TrustedProxies(["1.2.3.4"])
    with pytest.raises(ValueError, match="empty entry"):
        TrustedProxies("127.0.0.1,,10.0.0.1")


def test_client_is_the_rightmost_untrusted_hop() -> None:
    trusted = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    # The client wrote 6.6.6.6 itself; 203.0.113.7 is what our first proxy saw.
    assert trusted.client_host("6.6.6.6, 203.0.113.7, 10.0.0.2") == "203.0.113.7"
    assert trusted.client_host("10.0.0.3, 10.0.0.2") == "10.0.0.3"  # all trusted: left-most
    assert trusted.client_host(" , ") is None


def test_headers_believed_only_from_a_trusted_peer() -> None:
    trusted = TrustedProxies("127.0.0.1")
    forwarded = (("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"))
    r = request("127.0.0.1", *forwarded)
    apply_proxy_headers(r, trusted)
    assert (r.client, r.scheme) == (("203.0.113.7", 0), "https")
    r = request("192.0.2.1", *forwarded)
    apply_proxy_headers(r, trusted)
    assert (r.client, r.scheme) == (("192.0.2.1", 5555), "http")


def test_several_header_lines_and_wss() -> None:
    trusted = TrustedProxies("127.0.0.1")
    r = request(
        "127.0.0.1",
        ("X-Forwarded-For", "198.51.100.1"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "wss"),
    )
    apply_proxy_headers(r, trusted)
    assert (r.client, r.scheme) == (("203.0.113.7", 0), "https")
    r = request("127.0.0.1", ("X-Forwarded-Proto", "gopher"))
    apply_proxy_headers(r, trusted)
    assert (r.client, r.scheme) == (("127.0.0.1", 5555), "http")  # unknown scheme: ignored


async def _seen_by_server(caplog: pytest.LogCaptureFixture, **options: object) -> list[str]:
    app = fullduplex.App()
    seen: list[tuple[object, str]] = []

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        seen.append((ws.request.client, ws.request.scheme))
        async for message in ws:
            await ws.send(message)

    @app.get("/who")
    async def who(req: Request) -> dict[str, object]:
        return {"client": req.client[0] if req.client else None, "scheme": req.scheme}

    caplog.set_level(logging.INFO, logger="fullduplex.access")
    server = await start(app, **options)
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    try:
        async with fullduplex.connect(f"ws://127.0.0.1:{server.port}/echo", headers=headers) as ws:
            await ws.send("x")
            await ws.recv()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /who HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n"
            b"Connection: close\r\n\r\n"
        )
        body = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        deadline = asyncio.get_running_loop().time() + 5
        while not any("closed" in r.getMessage() for r in caplog.records):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
    finally:
        await server.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.name == "fullduplex.access"]
    return [repr(seen[0]), body.decode().rsplit("\r\n", 1)[-1], *lines]


async def test_default_trusts_localhost(caplog: pytest.LogCaptureFixture) -> None:
    seen, body, *lines = await _seen_by_server(caplog)
    assert seen == repr((("203.0.113.7", 0), "https"))
    assert '"client":"203.0.113.7"' in body
    close = [line for line in lines if "websocket /echo closed" in line]
    assert close and close[0].startswith("203.0.113.7 ")
    assert any(line.startswith('203.0.113.7 "GET /who') for line in lines)


async def test_untrusted_peer_keeps_its_address(caplog: pytest.LogCaptureFixture) -> None:
    seen, body, *lines = await _seen_by_server(caplog, forwarded_allow_ips="10.0.0.1")
    assert seen.startswith("(('127.0.0.1', ")
    assert seen.endswith("'http')")
    assert '"client":"127.0.0.1"' in body
    close = [line for line in lines if "websocket /echo closed" in line]
    assert close and close[0].startswith("127.0.0.1 ")


async def test_proxy_headers_off(caplog: pytest.LogCaptureFixture) -> None:
    seen, body, *_ = await _seen_by_server(caplog, proxy_headers=False)
    assert seen.startswith("(('127.0.0.1', ")
    assert '"client":"127.0.0.1"' in body
