"""The clients learn why they were dropped (issue 15): the Python subscriber, its threaded twin
and fullduplex.js in Chromium stop reading under a publisher, are dropped as slow consumers,
reconnect and report "slow consumer"; a network cut reports nothing. Each still gets every
message once, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

import fullduplex
from fullduplex.hub import Gap, Hub, Policy, TopicConfig
from fullduplex.sync import subscribe as sync_subscribe
from fullduplex.transports import Transports

from ..browser import ARGS, CHROMIUM
from .faults import Proxy, check_stream, wait_for
from .serve_app import make_app
from .test_browser_library import open_page, wait_seq
from .test_subscriber import FAST, as_items

PAD = "x" * 4000
SLOW = TopicConfig(queue_size=8, policy=Policy.DISCONNECT)


class Server:
    def __init__(self) -> None:
        self.hub = Hub()
        self.hub.configure("flood", SLOW)

    async def start(self) -> Server:
        await self.hub.start()
        app, self.transports = make_app(self.hub, heartbeat_interval=1.0, longpoll_timeout=2.0)
        self.server = await fullduplex.serve(app, "127.0.0.1", 0, close_timeout=30.0)
        return self

    @property
    def drops(self) -> int:
        transports: Transports = self.transports
        assert transports.drops is not None
        return transports.drops.recorded

    async def flood_until_dropped(self, limit: int = 5000) -> int:
        """Publish numbered 4 KB messages until the server drops a consumer; the last seq."""
        before = self.drops
        for i in range(limit):
            message = await self.hub.publish("flood", {"n": i + 1, "pad": PAD})
            if self.drops > before:
                return message.seq
            await asyncio.sleep(0)
        raise AssertionError(f"nobody dropped after {limit} messages")

    async def close(self) -> None:
        self.transports.close()
        await self.server.shutdown()
        await self.hub.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = await Server().start()
    yield srv
    await srv.close()


def url(srv: Server, port: int | None = None) -> str:
    return f"ws://127.0.0.1:{port or srv.server.port}/pubsub"


async def test_subscriber_that_stops_reading_learns_why(server: Server) -> None:
    # max_pending=1, max_queue=1: an application that does not take its items stops reading.
    sub = fullduplex.subscribe(url(server), "flood", since=0, max_pending=1, max_queue=1, **FAST)
    async with sub:
        await wait_for(lambda: sub.connection_id is not None, 5, "the first hello")
        assert sub.last_drop is None
        last = await server.flood_until_dropped()
        received: list[Any] = []
        async with asyncio.timeout(20):
            async for item in sub:
                received.append(item)
                if not isinstance(item, Gap) and item.seq == last:
                    break
        assert sub.connections == 2
        drop = sub.last_drop
        assert drop is not None and sub.drops == 1
        assert (drop.reason, drop.code, drop.topic, drop.transport) == (
            "slow consumer",
            1013,
            "flood",
            "websocket",
        )
        # Dropped, then resumed by cursor: every message once, in order, no gap.
        assert check_stream(as_items(received), "flood", 1, last) == 0


async def test_threaded_subscriber_learns_why(server: Server) -> None:
    sub = await asyncio.to_thread(
        sync_subscribe, url(server), "flood", since=0, max_pending=1, max_queue=1, **FAST
    )
    try:
        await wait_for(lambda: sub.state == "open", 5, "connected")
        last = await server.flood_until_dropped()

        def read_all() -> list[Any]:
            items = []
            for item in sub:
                items.append(item)
                if not isinstance(item, Gap) and item.seq == last:
                    return items
            return items

        received = await asyncio.wait_for(asyncio.to_thread(read_all), 20)
        drop = sub.last_drop
        assert drop is not None and drop.reason == "slow consumer" and drop.topic == "flood"
        assert sub.drops == 1 and sub.connections == 2
        assert check_stream(as_items(received), "flood", 1, last) == 0
    finally:
        await asyncio.to_thread(sub.close)


async def test_network_cut_is_not_a_drop(server: Server) -> None:
    proxy = await Proxy(server.server.port).start()
    try:
        async with fullduplex.subscribe(url(server, proxy.port), "flood", since=0, **FAST) as sub:
            await wait_for(lambda: sub.connection_id is not None, 5, "the first hello")
            first = sub.connection_id
            await server.hub.publish("flood", {"n": 1})
            assert (await anext(sub)).seq == 1
            assert proxy.cut() == 1
            await wait_for(
                lambda: sub.connections == 2 and sub.connection_id != first, 10, "reconnected"
            )
            await server.hub.publish("flood", {"n": 2})
            assert (await anext(sub)).seq == 2
            assert sub.last_drop is None and sub.drops == 0
            assert server.drops == 0
    finally:
        await proxy.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        await chromium.close()


@pytest.mark.one_loop
@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_page_that_stops_reading_learns_why(
    server: Server, browser: Browser, transport: str
) -> None:
    # The proxy stops reading from the server (a page that cannot keep up, as the server sees
    # it), then lets the reset through: the page reconnects and its hello says why.
    proxy = await Proxy(server.server.port, receive_buffer=4096).start()
    try:
        page = await open_page(browser, proxy.port, topics=["flood"], transports=[transport])
        await wait_for(
            lambda: page.evaluate("client.state === 'open' && client.connectionId !== null"),
            10,
            "the page's first hello",
        )
        await server.hub.publish("flood", {"n": 1})
        await wait_seq(page, "flood", 1)
        assert await page.evaluate("client.lastDrop") is None
        proxy.stall()
        last = await server.flood_until_dropped()
        proxy.resume()
        await wait_for(lambda: page.evaluate("drops.length > 0"), 10, "the drop event")
        drops = await page.evaluate("drops")
        assert len(drops) == 1
        assert drops[0]["reason"] == "slow consumer" and drops[0]["topic"] == "flood"
        assert drops[0]["transport"] == transport
        assert drops[0].get("code") == (1013 if transport == "websocket" else None)
        assert await page.evaluate("client.lastDrop.reason") == "slow consumer"
        await wait_seq(page, "flood", last)
        assert check_stream(await page.evaluate("items"), "flood", 1, last) == 0
        assert not page.errors  # type: ignore[attr-defined]
    finally:
        with contextlib.suppress(Exception):
            await proxy.close()
