from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import fullduplex
from fullduplex.demo import create_app


@pytest.fixture
async def demo_server() -> AsyncIterator[fullduplex.Server]:
    server = await fullduplex.serve(create_app(), "127.0.0.1", 0)
    yield server
    await server.shutdown()


def url(server: fullduplex.Server, path: str, scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.port}{path}"


async def start(app: fullduplex.App, **options: Any) -> fullduplex.Server:
    return await fullduplex.serve(app, "127.0.0.1", 0, **options)
