"""Chromium (Debian's) against a Starlette app served by fullduplex: page over HTTP, then a
WebSocket to Starlette's own endpoint, with a subprotocol and permessage-deflate."""

from __future__ import annotations

import pytest
from playwright.async_api import async_playwright

import fullduplex

from ..browser import ARGS, CHROMIUM
from . import apps


@pytest.mark.one_loop
async def test_chromium_talks_to_a_starlette_websocket() -> None:
    server = await fullduplex.serve(apps.starlette_app, "127.0.0.1", 0)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{server.port}/page")
                log = page.locator("#log")
                await log.filter(has_text="from chromium").wait_for(timeout=10000)
                assert await log.inner_text() == "chat from chromium"
                # Chromium offers permessage-deflate; the engine accepted it for this route.
                assert len(server.websockets) == 1
                (ws,) = server.websockets
                assert "permessage-deflate" in (
                    ws.response.headers.get("Sec-WebSocket-Extensions") or ""
                )
            finally:
                await browser.close()
    finally:
        await server.shutdown()
