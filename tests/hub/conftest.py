from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fullduplex.hub import Hub, RedisBackend, TopicConfig
from fullduplex.hub.cluster import RedisClusterBackend

from ..redis_cluster import RedisCluster

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real redis-server on 127.0.0.1, started and killed by the tests.

    Without persistence by default (``--save '' --appendonly no``); ``persistent=True`` turns
    on the AOF with ``appendfsync always``, so that a SIGKILL loses no acknowledged write.
    """

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # Never skipped: CI installs Debian's redis-server, and a missing one must fail.
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                *(REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *persistence,
                *("--dir", str(self.directory), "--loglevel", "warning"),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            assert self.process.poll() is None, "redis-server exited"
            time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """A redis-server of the test's own, to kill and restart."""
    servers: list[RedisServer] = []

    def make(*, persistent: bool = False) -> RedisServer:
        server = RedisServer(tmp_path, persistent=persistent)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


def redis_backend(url: str, prefix: str, **options: Any) -> RedisBackend:
    options.setdefault("reconnect_delay", (0.02, 0.2))
    return RedisBackend(url, prefix=prefix, **options)


def cluster_backend(url: str, prefix: str, **options: Any) -> RedisClusterBackend:
    options.setdefault("reconnect_delay", (0.02, 0.2))
    return RedisClusterBackend(url, prefix=prefix, **options)


MakeHub = Callable[..., Awaitable[Hub]]


@pytest.fixture(params=["memory", "redis", "cluster"])
async def make_hub(
    request: pytest.FixtureRequest,
) -> AsyncIterator[MakeHub]:
    """Start hubs on the memory backend, or on Redis or a Redis Cluster with a prefix of
    this test's own.

    With Redis, hubs made by one test share the same keys, like processes sharing a Redis.
    """
    hubs: list[Hub] = []
    prefix = f"test-{uuid.uuid4().hex[:8]}:"

    async def make(default: TopicConfig | None = None) -> Hub:
        backend: Any = None
        if request.param == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            backend = redis_backend(server.url, prefix)
        elif request.param == "cluster":
            cluster: RedisCluster = request.getfixturevalue("redis_cluster")
            backend = cluster_backend(cluster.url, prefix)
        hub = Hub(backend, default=default)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.close()


async def eventually(
    condition: Callable[[], bool], timeout: float = 5.0, message: str = ""
) -> None:
    """Wait until ``condition()`` holds, polling; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, message or "condition not met in time"
        await asyncio.sleep(0.005)
