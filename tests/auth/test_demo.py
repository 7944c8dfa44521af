"""``fullduplex serve`` with no options, as a subprocess: safe by default.

Anonymous publishing to ``chat``, ``ticker`` or any other topic is refused on ``POST
/publish`` and on ``/pubsub``; the chat binds one name per connection; the pages still work.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.async_api import async_playwright
from websockets.asyncio.client import connect

from ..browser import ARGS, CHROMIUM
from ..transports.client import request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cli_port() -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fullduplex", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert f"127.0.0.1:{port}" in proc.stdout.readline()
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
    yield port
    proc.terminate()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "lets anyone publish" not in err  # the demo opens no topic to everyone


async def recv_json(ws: Any, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


@pytest.mark.one_loop
async def test_anonymous_publish_refused(cli_port: int) -> None:
    for topic in ("chat", "ticker", "no-such-topic"):
        body = json.dumps({"topic": topic, "data": {"type": "message", "name": "ann"}}).encode()
        reply = await request(
            cli_port, "POST", "/publish", body=body, headers=[("Content-Type", "application/json")]
        )
        assert reply.status == 403, (topic, reply.status)
        assert reply.json() == {"error": "topic not publishable"}


@pytest.mark.one_loop
async def test_pubsub_publish_to_chat_refused_and_nothing_delivered(cli_port: int) -> None:
    base = f"ws://127.0.0.1:{cli_port}"
    async with connect(f"{base}/pubsub") as watcher, connect(f"{base}/pubsub") as intruder:
        await watcher.send(json.dumps({"op": "subscribe", "topic": "chat"}))
        # The subscription is in place once an op sent after it is answered.
        await watcher.send(json.dumps({"op": "unsubscribe", "topic": "never"}))
        assert (await recv_json(watcher))["error"] == "not subscribed"
        for data in ({"type": "message", "name": "ann", "text": "I am ann"}, None):
            await intruder.send(json.dumps({"op": "publish", "topic": "chat", "data": data}))
            reply = await recv_json(intruder)
            assert reply == {"error": "topic not publishable", "op": "publish", "topic": "chat"}
        # A real chat line through /chat/ws: the first thing the watcher gets is that one.
        async with connect(f"{base}/chat/ws") as chat:
            name = f"zed{time.monotonic_ns()}"[-20:]
            await chat.send(
                json.dumps(
                    {"op": "publish", "topic": "chat", "data": {"type": "join", "name": name}}
                )
            )
            assert await recv_json(chat) == {"joined": name}
            first = await recv_json(watcher)
            assert first["data"] == {"type": "join", "name": name}


@pytest.mark.one_loop
async def test_chat_names_are_bound_and_payloads_checked(cli_port: int) -> None:
    url = f"ws://127.0.0.1:{cli_port}/chat/ws"

    def publish(data: Any) -> str:
        return json.dumps({"op": "publish", "topic": "chat", "data": data})

    async with connect(url) as one, connect(url) as two:
        await one.send(publish({"type": "join", "name": "ann"}))
        assert await recv_json(one) == {"joined": "ann"}
        await two.send(publish({"type": "join", "name": "ANN "}))
        assert (await recv_json(two))["error"] == "name taken"
        await two.send(publish({"type": "message", "text": "as nobody"}))
        assert (await recv_json(two))["error"] == "join first"
        for bad in (None, [], {"type": "message"}, {"type": "join", "name": None}):
            await two.send(publish(bad))
            assert "error" in await recv_json(two)
        await two.send(publish({"type": "join", "name": "bob"}))
        assert await recv_json(two) == {"joined": "bob"}
    # Both left: the name is free again.
    async with connect(url) as three:
        await three.send(publish({"type": "join", "name": "ann"}))
        assert await recv_json(three) == {"joined": "ann"}


@pytest.mark.one_loop
async def test_pages_against_the_cli(cli_port: int) -> None:
    base = f"http://127.0.0.1:{cli_port}"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            live = await browser.new_page()
            await live.goto(f"{base}/live.html")
            await live.wait_for_function(
                "['ws','sse','longpoll','poll'].every(id => fdLive.seqs(id).length >= 3)",
                timeout=20000,
            )
            errors: list[str] = []
            first = await browser.new_page()
            second = await browser.new_page()
            for page in (first, second):
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{base}/chat.html")
                await page.locator("#chat-state").filter(has_text="open").wait_for(timeout=10000)
            await first.fill("#chat-name", "carol")
            await first.click("#chat-join")
            await first.locator("#chat-log", has_text="you are carol").wait_for(timeout=10000)
            # A second carol is refused: the page says so and offers the name field again.
            await second.fill("#chat-name", "carol")
            await second.click("#chat-join")
            await second.locator(".error", has_text='"carol" is taken').wait_for(timeout=10000)
            assert await second.is_enabled("#chat-name")
            assert not await second.is_enabled("#chat-send")
            await second.fill("#chat-name", "dave")
            await second.click("#chat-join")
            await second.locator("#chat-log", has_text="you are dave").wait_for(timeout=10000)
            await second.fill("#chat-text", "hello carol")
            await second.click("#chat-send")
            await first.locator(".message", has_text="dave: hello carol").wait_for(timeout=10000)
            assert errors == []
        finally:
            await browser.close()
