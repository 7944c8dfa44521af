"""Headless Chromium (Debian's, never a downloaded one) opens the demo page and uses it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import async_playwright

import fullduplex
from fullduplex.demo import create_app

from ..browser import ARGS, CHROMIUM


@pytest.fixture
async def server() -> AsyncIterator[fullduplex.Server]:
    srv = await fullduplex.serve(create_app(), "127.0.0.1", 0)
    yield srv
    await srv.shutdown()


@pytest.mark.one_loop
async def test_echo_page_round_trip(server: fullduplex.Server) -> None:
    async with async_playwright() as pw:
        # Playwright gives the browser a new empty profile of its own.
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{server.port}/")
            state = page.locator("#state")
            await state.filter(has_text="open").wait_for(timeout=10000)
            assert "subprotocol: echo" in await page.locator("#log").inner_text()
            await page.fill("#message", "hello from chromium")
            await page.click("#send")
            echo = page.locator("#log .in")
            await echo.first.wait_for(timeout=10000)
            text = await echo.first.inner_text()
            assert re.fullmatch(r"< \d\d:\d\d:\d\d: hello from chromium", text), text
            # The server closing is reported on the page.
            port = server.port
            await server.shutdown()
            await state.filter(has_text="reconnecting").wait_for(timeout=10000)
            assert "closed: code 1001" in await page.locator("#log").inner_text()
            # ... and comes back by itself when the server is back on its port.
            again = await fullduplex.serve(server.app, "127.0.0.1", port)
            try:
                await state.filter(has_text="open").wait_for(timeout=30000)
            finally:
                await again.shutdown()
        finally:
            await browser.close()
