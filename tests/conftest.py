from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import pytest
import uvloop

import fullduplex

from .redis_cluster import RedisCluster

BOTH_LOOPS: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    """Run the I/O tests on both the asyncio and the uvloop event loop."""
    if item.get_closest_marker("one_loop") is None:
        return BOTH_LOOPS
    return {"asyncio": asyncio.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "one_loop: run on the default asyncio loop only")


@pytest.fixture(params=["native", "asgi"])
async def echo_server(request: pytest.FixtureRequest) -> AsyncIterator[fullduplex.Server]:
    """An echo at ``/echo``: the demo's native route, or a bare ASGI echo application.

    Protocol tests that take it run against both, so the ASGI path is held to the same
    conformance as native routes (its WebSocket side is the same engine).
    """
    if request.param == "native":
        from fullduplex.demo import create_app

        app: object = create_app()
    else:
        from .asgi.apps import echo_app

        app = echo_app
    server = await fullduplex.serve(app, "127.0.0.1", 0)  # type: ignore[arg-type]
    yield server
    await server.shutdown()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real Redis Cluster (three masters, one replica each), started once per session."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
