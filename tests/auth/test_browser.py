"""Chromium logs in with a cookie and with a query token, and subscribes on WebSocket and SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import async_playwright

import fullduplex
from fullduplex.demo import create_app
from fullduplex.protocol.http11 import Headers, Request, Response

from ..browser import ARGS, CHROMIUM
from .conftest import AuthSetup, close_auth_setup, make_auth_setup

PAGE = "<!DOCTYPE html><title>t</title><p>test page</p>"

# Subscribes to a topic over /pubsub and /sse (URLs given, tokens in them or not) and collects
# what arrives; says whether each connection opened or failed.
SUBSCRIBE = """
([wsUrl, sseUrl, topic]) => new Promise((resolve) => {
  window.got = { ws: [], sse: [], wsState: "connecting", sseState: "connecting" };
  const ws = new WebSocket(wsUrl);
  ws.onopen = () => { got.wsState = "open"; ws.send(JSON.stringify({op: "subscribe", topic})); };
  ws.onmessage = (ev) => got.ws.push(JSON.parse(ev.data));
  ws.onerror = () => { got.wsState = "failed"; };
  const es = new EventSource(sseUrl);
  es.onopen = () => { got.sseState = "open"; };
  es.onmessage = (ev) => got.sse.push(JSON.parse(ev.data));
  es.onerror = () => { if (got.sseState !== "open") { got.sseState = "failed"; es.close(); } };
  resolve(true);
})
"""


@pytest.fixture
async def site() -> AsyncIterator[AuthSetup]:
    app = fullduplex.App()
    setup_holder: list[AuthSetup] = []

    @app.get("/page", auth=None)
    async def page(request: Request) -> Response:
        return Response(200, Headers([("Content-Type", "text/html")]), PAGE.encode())

    @app.post("/login", auth=None)
    async def login(request: Request) -> Response:
        # A real site checks a password here; the token goes into an HttpOnly cookie that
        # scripts cannot read and that the browser sends with WebSocket and EventSource.
        token = setup_holder[0].token(request.body.decode())
        cookie = f"token={token}; Path=/; HttpOnly; SameSite=Strict"
        return Response(204, Headers([("Set-Cookie", cookie)]))

    setup = await make_auth_setup(app)
    app.auth = setup.auth
    setup_holder.append(setup)
    yield setup
    await close_auth_setup(setup)


async def _wait_for(page: Any, condition: str) -> None:
    await page.wait_for_function(condition, timeout=10000)


@pytest.mark.one_loop
async def test_cookie_and_query_token_logins(site: AuthSetup) -> None:
    base = f"127.0.0.1:{site.port}"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            # Not logged in: both refused (401 before any 101 / any event).
            page = await browser.new_page()
            await page.goto(f"http://{base}/page")
            urls = [f"ws://{base}/pubsub", f"http://{base}/sse?topic=user.ann", "user.ann"]
            await page.evaluate(SUBSCRIBE, urls)
            await _wait_for(page, "got.wsState === 'failed' && got.sseState === 'failed'")
            # Logged in with a cookie: the same URLs work.
            status = await page.evaluate(
                "fetch('/login', {method: 'POST', body: 'ann'}).then(r => r.status)"
            )
            assert status == 204
            assert await page.evaluate("document.cookie") == ""  # HttpOnly
            await page.evaluate(SUBSCRIBE, urls)
            await _wait_for(page, "got.wsState === 'open' && got.sseState === 'open'")
            await site.hub.publish("user.ann", "for ann")
            await _wait_for(page, "got.ws.length === 1 && got.sse.length === 1")
            assert await page.evaluate("[got.ws[0].data, got.sse[0].data]") == ["for ann"] * 2
            # Another browser context (no cookie), with a query token: browsers cannot set
            # headers on WebSocket or EventSource.
            other = await (await browser.new_context()).new_page()
            await other.goto(f"http://{base}/page")
            token = site.token("bob")
            await other.evaluate(
                SUBSCRIBE,
                [
                    f"ws://{base}/pubsub?token={token}",
                    f"http://{base}/sse?topic=user.bob&token={token}",
                    "user.bob",
                ],
            )
            await _wait_for(other, "got.wsState === 'open' && got.sseState === 'open'")
            await site.hub.publish("user.bob", "for bob")
            await _wait_for(other, "got.ws.length === 1 && got.sse.length === 1")
            # bob's token does not open ann's topic.
            reply = await other.evaluate(
                f"fetch('/poll?topic=user.ann&token={token}').then(r => r.status)"
            )
            assert reply == 403
        finally:
            await browser.close()


@pytest.mark.one_loop
async def test_chat_page_survives_malformed_items() -> None:
    # The server never lets these through (tests/auth/test_demo.py); the page must not break
    # if something did: it skips them and goes on.
    app = create_app(ticker=False)
    await app.start()
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    errors: list[str] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"http://127.0.0.1:{server.port}/chat.html")
                await page.locator("#chat-state").filter(has_text="open").wait_for(timeout=10000)
                for bad in (None, 5, "x", [], {"type": "message"}, {"name": 1, "text": 2}):
                    await app.hub.publish("chat", bad)
                await app.hub.publish("chat", {"type": "join", "name": "after"})
                await page.locator(".notice", has_text="after joined").wait_for(timeout=10000)
            finally:
                await browser.close()
    finally:
        app.transports.close()
        await server.shutdown()
        await app.stop()
    await asyncio.sleep(0)
    assert errors == []
