"""A simulated price feed: a background task publishing prices to the ``ticker`` topic.

Several times a second one symbol's price takes a small random step (a random walk), published
as ``{"symbol": "ACME", "price": 101.25, "change": 0.12}``. Clients cannot publish to the
topic (see :data:`~fullduplex.demo.app.RULES`); its slow consumers are conflated by symbol:
a client that falls behind gets the latest price of each symbol, not a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Hashable, Sequence
from typing import Any

from ..hub import Hub, HubUnavailable, Policy, TopicConfig
from ..logs import RateLimitedLogger

__all__ = ["DEFAULT_INTERVAL", "SYMBOLS", "TICKER_CONFIG", "TICKER_TOPIC", "Ticker"]

logger = logging.getLogger("fullduplex.demo")

#: The topic of the feed.
TICKER_TOPIC = "ticker"
#: Symbols and their starting prices.
SYMBOLS: dict[str, float] = {"ACME": 101.0, "GLOBEX": 54.5, "INITECH": 23.8, "UMBRELLA": 240.0}
#: Seconds between two prices: 5 a second.
DEFAULT_INTERVAL = 0.2


def _symbol(data: Any) -> Hashable:
    return data.get("symbol") if isinstance(data, dict) else None


#: The ticker's topic settings: 10 minutes of history at 5 a second, conflated by symbol.
TICKER_CONFIG = TopicConfig(
    history_size=3000, history_age=600.0, policy=Policy.CONFLATE, conflate_key=_symbol
)


class Ticker:
    """Publishes random-walk prices to a topic until stopped.

    Args:
        hub: the hub to publish to.
        topic: the topic.
        interval: seconds between two prices.
        symbols: the symbols to move (their starting prices from :data:`SYMBOLS`).
    """

    def __init__(
        self,
        hub: Hub,
        topic: str = TICKER_TOPIC,
        *,
        interval: float = DEFAULT_INTERVAL,
        symbols: Sequence[str] = tuple(SYMBOLS),
    ) -> None:
        #: The hub.
        self.hub = hub
        #: The topic.
        self.topic = topic
        #: Seconds between two prices.
        self.interval = interval
        #: The current price of each symbol.
        self.prices = {s: SYMBOLS.get(s, 100.0) for s in symbols}
        self._random = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._outage_log = RateLimitedLogger(logger)

    @property
    def running(self) -> bool:
        """Whether the task runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start publishing (does nothing if running)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop publishing and wait for the task to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def step(self) -> dict[str, Any]:
        """Move one symbol's price and return the message data."""
        symbol = self._random.choice(list(self.prices))
        old = self.prices[symbol]
        new = round(max(0.01, old * (1 + self._random.gauss(0, 0.002))), 2)
        self.prices[symbol] = new
        return {"symbol": symbol, "price": new, "change": round(new - old, 2)}

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:  # bounded by stop(): the task is cancelled
            try:
                await self.hub.publish(self.topic, self.step())
            except HubUnavailable:
                # Once per interval, not at every tick (5 a second) for an outage's length.
                self._outage_log.warning("ticker: hub unavailable, skipping prices")
            next_at = max(next_at + self.interval, loop.time())
            await asyncio.sleep(next_at - loop.time())
