"""A server with JWT authentication and per-identity topic rules on every transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

import fullduplex
from fullduplex.auth import JWTAuth
from fullduplex.hub import Hub
from fullduplex.transports import TopicRules, Transports, mount_all

SECRET = "test secret: long enough for HS256, never used outside the tests"
AUDIENCE = "fullduplex-tests"
#: Who may do what: "public.*" anyone logged in reads (history too); "user.{id}" is the
#: user's own topic (read, history, publish); "live.*" is readable but its history is not.
RULES = TopicRules(
    subscribe=["public.*", "user.{id}", "live.*"],
    history=["public.*", "user.{id}"],
    publish=["user.{id}"],
)


@dataclass
class AuthSetup:
    hub: Hub
    server: fullduplex.Server
    transports: Transports
    auth: JWTAuth

    @property
    def port(self) -> int:
        return self.server.port

    def token(self, sub: str = "ann", **claims: object) -> str:
        return self.auth.issue(sub, **claims)  # type: ignore[arg-type]


async def make_auth_setup(app: fullduplex.App | None = None) -> AuthSetup:
    auth = JWTAuth(SECRET, audience=AUDIENCE)
    app = app or fullduplex.App(auth=auth)
    hub = Hub()
    await hub.start()
    transports = mount_all(app, hub, rules=RULES, heartbeat_interval=0.2, longpoll_timeout=1.0)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    return AuthSetup(hub, server, transports, auth)


async def close_auth_setup(setup: AuthSetup) -> None:
    setup.transports.close()
    await setup.hub.close()
    await setup.server.shutdown()


@pytest.fixture
async def secured() -> AsyncIterator[AuthSetup]:
    setup = await make_auth_setup()
    yield setup
    await close_auth_setup(setup)
