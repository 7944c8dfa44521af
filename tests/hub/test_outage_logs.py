"""During a Redis outage the demo's ticker warns once per interval, not at every tick."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from fullduplex.demo.ticker import Ticker
from fullduplex.hub import Hub

from .conftest import RedisServer, redis_backend


class CountingTicker(Ticker):
    """The demo's ticker, counting its ticks (each one a publish attempt)."""

    ticks = 0

    def step(self) -> dict[str, Any]:
        self.ticks += 1
        return super().step()


async def test_ticker_warns_once_during_a_redis_outage(
    own_redis: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fullduplex.demo")
    server = own_redis()
    hub = Hub(redis_backend(server.url, "outage-logs:"))
    await hub.start()
    ticker = CountingTicker(hub, interval=0.01)  # 100 ticks a second
    try:
        server.kill()
        ticker.start()
        async with asyncio.timeout(5):
            while ticker.ticks < 50:
                await asyncio.sleep(0.01)
    finally:
        await ticker.stop()
        await hub.close()
    warnings = [r for r in caplog.records if r.name == "fullduplex.demo"]
    assert ticker.ticks >= 50
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "hub unavailable" in warnings[0].getMessage()
