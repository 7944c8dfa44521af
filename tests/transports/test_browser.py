"""Headless Chromium (Debian's) opens the live page and the chat page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import ConsoleMessage, Page, Response, async_playwright

import fullduplex
from fullduplex.demo import create_app
from fullduplex.demo.app import DemoApp

from ..browser import ARGS, CHROMIUM

#: The live page's cards and the library transport each is pinned to.
CARDS = {"ws": "websocket", "sse": "sse", "longpoll": "longpoll", "poll": "poll"}


@pytest.fixture
async def demo() -> AsyncIterator[tuple[DemoApp, fullduplex.Server]]:
    app = create_app()
    assert app.ticker is not None
    app.ticker.interval = 0.05  # 20 prices a second: the test needs a few quickly
    await app.start()
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    yield app, server
    app.transports.close()
    await server.shutdown()
    await app.stop()


@pytest.mark.one_loop
async def test_live_page_four_transports_same_sequence(
    demo: tuple[DemoApp, fullduplex.Server],
) -> None:
    _, server = demo
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{server.port}/live.html")
            await page.wait_for_function(
                "['ws','sse','longpoll','poll'].every(id => fdLive.seqs(id).length >= 12)",
                timeout=15000,
            )
            seqs: dict[str, list[Any]] = await page.evaluate(
                "Object.fromEntries(['ws','sse','longpoll','poll']"
                ".map(id => [id, fdLive.seqs(id)]))"
            )
            start = int(await page.inner_text("#start-cursor"))
            for name, got in seqs.items():
                assert got[:12] == list(range(start + 1, start + 13)), (name, got[:12])
            stats = await page.evaluate("fdLive.stats()")
            for name, s in stats.items():
                assert s["messages"] >= 12 and s["bytesPerMessage"] > 0, (name, s)
            assert await page.inner_text("#ws-state") == "open"
            # Each card is a fullduplex.js client pinned to its transport: the library reports
            # that transport, open, and the card shows it.
            await page.wait_for_function(
                "Object.values(fdLive.reported()).every(r => r.shown === r.transport)",
                timeout=5000,
            )
            reported = await page.evaluate("fdLive.reported()")
            assert reported == {
                card: {"state": "open", "transport": lib, "shown": lib}
                for card, lib in CARDS.items()
            }
            for card, lib in CARDS.items():
                assert await page.inner_text(f"#{card}-state") == "open"
                assert await page.inner_text(f"#{card}-transport") == lib
            # Traffic through the library's onWire hook: one request each for the WebSocket
            # and the event stream (no reconnection here), a request per answer for polls.
            stats = await page.evaluate("fdLive.stats()")
            assert stats["ws"]["requestsPerMinute"] == 1, stats
            assert stats["sse"]["requestsPerMinute"] == 1, stats
            assert stats["longpoll"]["requestsPerMinute"] >= 2, stats
            assert stats["poll"]["requestsPerMinute"] >= 2, stats
        finally:
            await browser.close()


@pytest.mark.one_loop
async def test_demo_pages_leave_nothing_in_the_console(
    demo: tuple[DemoApp, fullduplex.Server],
) -> None:
    # What a visitor's developer tools show: no error, no warning, no failed request, once
    # each page works (the echo answered, four cards with data, the chat open).
    _, server = demo
    base = f"http://127.0.0.1:{server.port}"
    ready = {
        "/": "document.querySelector('#state').textContent === 'open'",
        "/live.html": "['ws','sse','longpoll','poll'].every(id => fdLive.seqs(id).length >= 3)",
        "/chat.html": "document.querySelector('#chat-state').textContent === 'open'",
    }
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for path, condition in ready.items():
                page = await browser.new_page()
                noise = _watch(page)
                await page.goto(base + path)
                await page.wait_for_function(condition, timeout=15000)
                assert noise == [], (path, noise)
                await page.close()
        finally:
            await browser.close()


def _watch(page: Page) -> list[str]:
    """What the page's console and network report as wrong, as it happens."""
    noise: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            noise.append(f"{message.type}: {message.text}")

    def response(answer: Response) -> None:
        if answer.status >= 400:
            noise.append(f"{answer.status}: {answer.url}")

    page.on("console", console)
    page.on("pageerror", lambda error: noise.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: noise.append(f"failed: {request.url}"))
    page.on("response", response)
    return noise


async def _join(page: Page, name: str) -> None:
    await page.locator("#chat-state").filter(has_text="open").wait_for(timeout=10000)
    await page.fill("#chat-name", name)
    await page.click("#chat-join")
    await page.locator("#chat-log .notice", has_text=f"{name} joined").first.wait_for(timeout=10000)


@pytest.mark.one_loop
async def test_chat_between_two_pages(demo: tuple[DemoApp, fullduplex.Server]) -> None:
    _, server = demo
    url = f"http://127.0.0.1:{server.port}/chat.html"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            ann = await browser.new_page()
            await ann.goto(url)
            await _join(ann, "ann")
            await ann.fill("#chat-text", "hello before bob came")
            await ann.click("#chat-send")
            bob = await browser.new_page()
            await bob.goto(url)
            # History for newcomers.
            await bob.locator("#chat-log", has_text="ann: hello before bob came").wait_for(
                timeout=10000
            )
            await _join(bob, "bob")
            await ann.locator("#chat-log .notice", has_text="bob joined").wait_for(timeout=10000)
            await bob.fill("#chat-text", "hi ann")
            await bob.click("#chat-send")
            await ann.locator("#chat-log .message", has_text="bob: hi ann").wait_for(timeout=10000)
            await bob.close()
            await ann.locator("#chat-log .notice", has_text="bob left").wait_for(timeout=10000)
        finally:
            await browser.close()
    await asyncio.sleep(0)
