"""Behind a real nginx (Debian's), started by the tests with docs/deploy/nginx.conf.

The test clients connect from 127.0.0.2 and nginx connects to the app from 127.0.0.3
(``proxy_bind``): three loopback addresses, so the log can tell the client from the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

import fullduplex
from fullduplex.hub import Hub
from fullduplex.transports import TopicRules, Transports, mount_all
from tests.transports.client import EventStream, request

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "docs" / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLIENT_ADDRESS = "127.0.0.2"
PROXY_ADDRESS = "127.0.0.3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    """nginx in the foreground (``daemon off``), its files and logs in a temporary folder."""

    def __init__(self, directory: Path, upstream_port: int) -> None:
        self.directory = directory
        self.port = free_port()
        site = SITE.read_text()
        for old, new in (
            ("listen 80;", f"listen 127.0.0.1:{self.port};"),
            ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ):
            assert site.count(old) == 1, old
            site = site.replace(old, new)
        (directory / "site.conf").write_text(site)
        d = directory
        # Only what a test run needs around the shipped file: files in the temporary folder,
        # one process (no user switch when run as root), the proxy's own source address.
        (directory / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\npid {d}/nginx.pid;\n"
            f"error_log {d}/error.log info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {d}/access.log;\n"
            f"    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n"
            f"    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n"
            f"    scgi_temp_path {d}/scgi;\n"
            f"    proxy_bind {PROXY_ADDRESS};\n"
            f"    include {d}/site.conf;\n"
            "}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.directory / "nginx.conf"
        error_log = self.directory / "error.log"
        # Never skipped: nginx is a test prerequisite (apt-get install nginx).
        self.process = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(self.directory), "-e", str(error_log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                raise AssertionError(f"nginx exited: {self.process.stderr.read().decode()}")
            time.sleep(0.02)
        raise AssertionError("nginx did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            assert self.process.stderr is not None
            self.process.stderr.close()
            self.process = None


@dataclass
class Deployment:
    hub: Hub
    server: fullduplex.Server
    transports: Transports
    nginx: Nginx

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.nginx.port}{path}"


@contextlib.asynccontextmanager
async def deployed(tmp_path: Path, **options: Any) -> AsyncIterator[Deployment]:
    hub = Hub()
    await hub.start()
    app = fullduplex.App()
    transports = mount_all(app, hub, rules=TopicRules(subscribe=["*"], publish=["*"]))

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    app.enable_metrics(hub=hub, transports=transports)
    server = await fullduplex.serve(app, "127.0.0.1", 0, **options)
    nginx = Nginx(tmp_path, server.port)
    try:
        await asyncio.to_thread(nginx.start)
        yield Deployment(hub, server, transports, nginx)
    finally:
        nginx.stop()
        transports.close()
        await server.shutdown()
        await hub.close()


@pytest.fixture
async def behind_nginx(tmp_path: Path) -> AsyncIterator[Deployment]:
    async with deployed(tmp_path) as deployment:
        yield deployment


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="fullduplex.access")
    yield caplog


async def test_websocket_echo(behind_nginx: Deployment) -> None:
    async with ws_connect(behind_nginx.ws_url("/echo"), compression=None) as ws:
        for message in ("hello", b"\x00\x01binary", "x" * 100_000):
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), 5) == message


async def test_pubsub(behind_nginx: Deployment) -> None:
    async with ws_connect(behind_nginx.ws_url("/pubsub")) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": "news"}))
        # Published from the app side once the subscription is live (the reply to a second,
        # refused subscribe is the sign: requests are handled in order).
        await ws.send(json.dumps({"op": "subscribe", "topic": "news"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["error"] == "already subscribed"
        for i in range(3):
            sent = await behind_nginx.hub.publish("news", {"n": i})
            got = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (got["topic"], got["seq"], got["data"]) == ("news", sent.seq, {"n": i})


async def test_sse_events_arrive_one_by_one(behind_nginx: Deployment) -> None:
    stream = await EventStream.open(behind_nginx.nginx.port, "/sse?topic=ticks")
    try:
        assert stream.status == 200
        assert stream.headers["server"].startswith("nginx")
        await behind_nginx.hub.last_seq("ticks")  # the stream subscribes from now
        loop = asyncio.get_running_loop()
        # Each event is published only once the previous one has come through, so anything
        # that holds events back to fill a buffer (response buffering in the proxy or in the
        # app, gzip on text/event-stream) makes the wait for the first ~100-byte event time
        # out; the time of each is checked too.
        for i in range(5):
            started = loop.time()
            await behind_nginx.hub.publish("ticks", i)
            event = await stream.next_event(timeout=5)
            assert event is not None
            assert event.json()["data"] == i
            assert loop.time() - started < 1.0, f"event {i} was held back"
    finally:
        await stream.close()


@pytest.mark.one_loop  # 30 s: once
async def test_long_poll_held_its_full_30_seconds(behind_nginx: Deployment) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await request(behind_nginx.nginx.port, "GET", "/longpoll?topic=quiet", timeout=45)
    elapsed = loop.time() - started
    assert reply.status == 200, reply.body  # not nginx's 504
    assert reply.headers["server"].startswith("nginx")
    assert reply.json()["messages"] == []
    assert 29.5 <= elapsed < 35, elapsed


async def _close_line(deployment: Deployment, caplog: pytest.LogCaptureFixture) -> str:
    headers = {"X-Forwarded-For": "6.6.6.6"}  # a client lying about itself
    async with ws_connect(
        deployment.ws_url("/echo"), additional_headers=headers, local_addr=(CLIENT_ADDRESS, 0)
    ) as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), 5) == "hi"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == "fullduplex.access" and "websocket /echo closed" in r.getMessage()
        ]
        if lines:
            assert len(lines) == 1
            return lines[0]
        assert loop.time() < deadline, "no close line"
        await asyncio.sleep(0.01)


async def test_client_ip_from_x_forwarded_for_when_nginx_is_trusted(
    tmp_path: Path, access_log: pytest.LogCaptureFixture
) -> None:
    async with deployed(tmp_path, forwarded_allow_ips=PROXY_ADDRESS) as deployment:
        line = await _close_line(deployment, access_log)
    # X-Forwarded-For was "6.6.6.6, 127.0.0.2": the right-most address nginx did not vouch
    # for is the one nginx saw; what the client wrote itself is ignored.
    assert line.startswith(f"{CLIENT_ADDRESS} websocket /echo closed 1000 "), line
    assert "1 msgs / 2 B in, 1 msgs / 2 B out" in line


async def test_client_ip_is_the_proxy_when_nginx_is_not_trusted(
    tmp_path: Path, access_log: pytest.LogCaptureFixture
) -> None:
    async with deployed(tmp_path) as deployment:  # trusts 127.0.0.1 only: not nginx here
        line = await _close_line(deployment, access_log)
    assert line.startswith(f"{PROXY_ADDRESS} websocket /echo closed 1000 "), line


async def test_metrics_only_for_the_operator(behind_nginx: Deployment) -> None:
    port = behind_nginx.nginx.port
    local = await request(port, "GET", "/metrics")
    assert local.status == 200 and b"fullduplex_connections" in local.body
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(CLIENT_ADDRESS, 0)
    )
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 403 "), head[:100]
    health = await request(port, "GET", "/healthz")
    assert health.status == 200
