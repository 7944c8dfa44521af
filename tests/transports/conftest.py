from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import fullduplex
from fullduplex.hub import Hub, RedisBackend
from fullduplex.transports import FrameCache, TopicRules, Transports, mount_all

from ..hub.conftest import RedisServer, own_redis  # noqa: F401  (a fixture, re-exported)


@dataclass
class Setup:
    hub: Hub
    server: fullduplex.Server
    transports: Transports

    @property
    def frames(self) -> FrameCache:
        return self.transports.frames

    @property
    def port(self) -> int:
        return self.server.port

    def ws_url(self, path: str = "/pubsub") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


async def make_setup(
    hub: Hub | None = None,
    *,
    compression: bool = False,
    longpoll_timeout: float = 1.0,
    **serve_options: object,
) -> Setup:
    hub = hub or Hub()
    await hub.start()
    app = fullduplex.App()
    rules = TopicRules(subscribe=["*"], publish=["chat", "open.*"])
    transports = mount_all(
        app,
        hub,
        rules=rules,
        compression=compression,
        heartbeat_interval=0.2,
        longpoll_timeout=longpoll_timeout,
    )
    server = await fullduplex.serve(app, "127.0.0.1", 0, **serve_options)  # type: ignore[arg-type]
    return Setup(hub, server, transports)


async def teardown(setup: Setup) -> None:
    # Event streams and long polls are never idle: end them so the server shuts down at once.
    setup.transports.close()
    await setup.hub.close()
    await setup.server.shutdown()


@pytest.fixture
async def rt() -> AsyncIterator[Setup]:
    setup = await make_setup()
    yield setup
    await teardown(setup)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(params=["memory", "redis"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Run a test on the memory hub and on a real redis-server."""
    return str(request.param)


def make_hub(backend: str, request: pytest.FixtureRequest, **options: Any) -> Hub:
    """A hub on ``backend``; with Redis, keys of this test's own on the session's server."""
    if backend == "memory":
        return Hub(**options)
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    return Hub(RedisBackend(server.url, prefix=prefix, reconnect_delay=(0.02, 0.2)), **options)
