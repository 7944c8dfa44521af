from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

import fullduplex
from fullduplex.hub import Hub
from fullduplex.transports import FrameCache, TopicRules, Transports, mount_all


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
    hub: Hub | None = None, *, compression: bool = False, **serve_options: object
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
        longpoll_timeout=1.0,
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
