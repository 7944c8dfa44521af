"""TLS (wss://), the close timeout, and the log lines the server writes."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
import websockets.asyncio.client as wsclient

import fullduplex
import fullduplex.sync
from fullduplex.demo import create_app

from .conftest import start
from .test_limits import raw_upgrade, read_frame


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_wss_with_our_client_and_websockets(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    server = await start(create_app(), ssl=server_ctx)
    try:
        uri = f"wss://127.0.0.1:{server.port}/echo"
        async with fullduplex.connect(uri, ssl=client_ctx) as ws:
            await ws.send("over TLS")
            assert await ws.recv() == "over TLS"
        async with wsclient.connect(uri, ssl=client_ctx) as theirs:
            await theirs.send(b"\x00\x01")
            assert await theirs.recv() == b"\x00\x01"
        # A client that does not trust the certificate is refused by its own TLS checks.
        with pytest.raises(ssl.SSLCertVerificationError):
            await fullduplex.connect(uri)
    finally:
        await server.shutdown()


async def test_wss_with_sync_client(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    server = await start(create_app(), ssl=server_ctx)
    try:
        uri = f"wss://127.0.0.1:{server.port}/echo"

        def use() -> str | bytes:
            with fullduplex.sync.connect(uri, ssl=client_ctx) as ws:
                ws.send("sync over TLS")
                return ws.recv(timeout=5)

        assert await asyncio.to_thread(use) == "sync over TLS"
    finally:
        await server.shutdown()


@pytest.mark.one_loop
def test_cli_serves_tls(ca: trustme.CA, client_ctx: ssl.SSLContext, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "fullduplex", "serve", "--port", str(port)]
    cmd += ["--certfile", str(certfile), "--keyfile", str(keyfile)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert f"https://127.0.0.1:{port}/" in proc.stdout.readline()

        async def talk() -> str | bytes:
            for _ in range(50):
                try:
                    ws = await fullduplex.connect(f"wss://127.0.0.1:{port}/echo", ssl=client_ctx)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            await ws.send("cli tls")
            answer = await ws.recv()
            await ws.close()
            return answer

        assert asyncio.run(talk()) == "cli tls"
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    assert proc.returncode == 0


async def test_unanswered_close_is_dropped_after_close_timeout() -> None:
    app = fullduplex.App()
    closed = asyncio.Event()

    @app.websocket("/bye")
    async def bye(ws: fullduplex.WebSocket) -> None:
        await ws.close(1000, "bye")  # the raw peer never answers
        closed.set()

    server = await start(app, close_timeout=0.3)
    try:
        reader, writer = await raw_upgrade(server.port, "/bye")
        opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1000)
        await asyncio.wait_for(closed.wait(), 3)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # TCP dropped by the server
        writer.close()
    finally:
        await server.shutdown()


async def test_one_log_line_per_request_and_per_websocket(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fullduplex")
    server = await start(create_app())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /api/data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await reader.read()
        writer.close()
        async with fullduplex.connect(f"ws://127.0.0.1:{server.port}/echo") as ws:
            await ws.send("12345")
            await ws.recv()
        await asyncio.sleep(0.1)
    finally:
        await server.shutdown()
    access = [r.getMessage() for r in caplog.records if r.name == "fullduplex.access"]
    assert any('"GET /api/data HTTP/1.1" 200' in line for line in access)
    assert any('"GET /echo HTTP/1.1" 101' in line for line in access)
    closes = [r.getMessage() for r in caplog.records if "websocket /echo closed" in r.getMessage()]
    assert len(closes) == 1
    assert "closed 1000" in closes[0]
    assert "1 msgs / 5 B in, 1 msgs / 5 B out" in closes[0]
