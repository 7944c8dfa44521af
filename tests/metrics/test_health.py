from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

import fullduplex
from fullduplex.hub import Hub, RedisBackend
from fullduplex.metrics import OTHER, merge
from tests.hub.conftest import RedisServer

from .scrape import parse, scrape, value, wait_for

OPEN = "fullduplex_connections"


async def test_healthz_and_readyz_with_a_memory_hub() -> None:
    app = fullduplex.App()
    hub = Hub()
    await hub.start()
    app.enable_metrics(hub=hub)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base}/healthz")).status_code == 200
            ready = await client.get(f"{base}/readyz")
            assert (ready.status_code, ready.text) == (200, "ready\n")
            await hub.close()
            ready = await client.get(f"{base}/readyz")
            assert (ready.status_code, ready.text) == (503, "hub not running\n")
    finally:
        await server.shutdown()


async def test_readyz_follows_redis(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    app = fullduplex.App()
    hub = Hub(RedisBackend(redis.url, timeout=0.5, connect_timeout=0.5, block=0.2))
    await hub.start()
    app.enable_metrics(hub=hub, ready_timeout=1.0)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{base}/readyz")).status_code == 200
            sub = hub.subscribe("t")  # the live feed reads while Redis is down
            await sub.wait_started()
            before = await scrape(client, base)
            assert value(before, "fullduplex_redis_up") == 1
            redis.kill()
            ready = await client.get(f"{base}/readyz")
            assert (ready.status_code, ready.text) == (503, "hub backend unavailable\n")
            await wait_for(
                client, base, lambda s: value(s, "fullduplex_redis_up") == 0, what="redis down"
            )
            redis.start()  # the same port
            after = await wait_for(
                client,
                base,
                lambda s: value(s, "fullduplex_redis_up") == 1,
                what="redis back",
                timeout=15,
            )
            reconnects = "fullduplex_redis_reconnects_total"
            assert value(after, reconnects) == value(before, reconnects) + 1
            assert (await client.get(f"{base}/readyz")).status_code == 200
            sub.close()
    finally:
        await server.shutdown()
        await hub.close()
        redis.kill()


async def test_readyz_says_503_while_the_app_drains() -> None:
    # Health on an internal port (a second server of the same app), the public one draining.
    app = fullduplex.App()
    app.enable_metrics()
    public = await fullduplex.serve(app, "127.0.0.1", 0)
    internal = await fullduplex.serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{internal.port}"
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base}/readyz")).status_code == 200
            public.close()
            ready = await client.get(f"{base}/readyz")
            assert (ready.status_code, ready.text) == (503, "draining\n")
            assert (await client.get(f"{base}/healthz")).status_code == 200
    finally:
        await public.shutdown()
        await internal.shutdown()


async def test_topic_labels_are_bounded() -> None:
    app = fullduplex.App()
    hub = Hub()
    await hub.start()
    app.enable_metrics(hub=hub, max_topics=3)
    subs = [hub.subscribe(f"t{i}") for i in range(10) for _ in range(i + 1)]
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as client:
            snap = await scrape(client, f"http://127.0.0.1:{server.port}")
        topics = {
            dict(labels)["topic"]: v
            for (name, labels), v in snap.items()
            if name == "fullduplex_topic_subscribers"
        }
        # The three largest apart; the other seven summed: 1 + 2 + ... + 7.
        assert topics == {"t9": 10, "t8": 9, "t7": 8, OTHER: 28}
    finally:
        for sub in subs:
            sub.close()
        await server.shutdown()
        await hub.close()


async def test_close_codes_are_bounded() -> None:
    app = fullduplex.App()

    @app.websocket("/close")
    async def close(ws: fullduplex.WebSocket) -> None:
        code = int(await ws.recv())
        await ws.close(code)

    metrics = app.enable_metrics(max_close_codes=2)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        for code in (4001, 4002, 4003, 4004):
            async with fullduplex.connect(f"ws://127.0.0.1:{server.port}/close") as ws:
                await ws.send(str(code))
                with pytest.raises(fullduplex.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
        async with httpx.AsyncClient() as client:
            snap = await wait_for(
                client,
                base,
                lambda s: value(s, "fullduplex_connections_closed_total", route="/close") == 4,
            )
        codes = {
            dict(labels)["code"]: v
            for (name, labels), v in snap.items()
            if name == "fullduplex_closes_total"
        }
        assert codes == {"4001": 1, "4002": 1, OTHER: 2}
        assert metrics is app.metrics
    finally:
        await server.shutdown()


def test_merge_sums_workers_and_keeps_the_largest_lag() -> None:
    one = (
        "# TYPE fullduplex_messages counter\n"
        'fullduplex_messages_total{route="/a",direction="in"} 3\n'
        "# TYPE fullduplex_redis_lag_seconds gauge\n"
        "fullduplex_redis_lag_seconds 0.5\n"
        "# TYPE fullduplex_ping_rtt_seconds histogram\n"
        'fullduplex_ping_rtt_seconds_bucket{le="0.1"} 1\n'
        'fullduplex_ping_rtt_seconds_bucket{le="+Inf"} 2\n'
        "fullduplex_ping_rtt_seconds_count 2\n"
        "fullduplex_ping_rtt_seconds_sum 0.3\n"
    )
    two = one.replace("} 3", "} 4").replace("0.5", "0.25").replace('+Inf"} 2', '+Inf"} 5')
    from prometheus_client import generate_latest

    from fullduplex.metrics.workers import Merged

    text = generate_latest(Merged(merge([one, two]))).decode()  # type: ignore[arg-type]
    snap = parse(text)
    assert value(snap, "fullduplex_messages_total", route="/a", direction="in") == 7
    assert value(snap, "fullduplex_redis_lag_seconds") == 0.5
    assert value(snap, "fullduplex_ping_rtt_seconds_bucket", le="0.1") == 2
    assert value(snap, "fullduplex_ping_rtt_seconds_bucket", le="+Inf") == 7
    assert text.index('le="0.1"') < text.index('le="+Inf"')


async def test_routes_with_parameters_are_labelled_by_their_template() -> None:
    app = fullduplex.App()

    @app.websocket("/rooms/{room}")
    async def room(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    app.enable_metrics()
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        for name in ("a", "b", "c"):
            async with fullduplex.connect(f"ws://127.0.0.1:{server.port}/rooms/{name}") as ws:
                await ws.send(name)
                assert await ws.recv() == name
        async with httpx.AsyncClient() as client:
            snap = await wait_for(
                client,
                f"http://127.0.0.1:{server.port}",
                lambda s: (
                    value(s, "fullduplex_connections_closed_total", route="/rooms/{room}") == 3
                ),
            )
        assert value(snap, "fullduplex_handshakes_total", route="/rooms/{room}", status="101") == 3
        labels = {dict(k[1]).get("route") for k in snap if k[0] == "fullduplex_messages_total"}
        assert labels == {"/rooms/{room}"}
    finally:
        await server.shutdown()


async def asgi_echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"from the app"})
        return
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": event["text"]})


async def test_metrics_of_an_asgi_application() -> None:
    from fullduplex.asgi import ASGIAdapter

    adapter = ASGIAdapter(asgi_echo, lifespan="off")
    adapter.enable_metrics()
    server = await fullduplex.serve(adapter, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with fullduplex.connect(f"ws://127.0.0.1:{server.port}/anything") as ws:
            for text in ("one", "two"):
                await ws.send(text)
                assert await ws.recv() == text
            async with httpx.AsyncClient() as client:
                during = await scrape(client, base)
                assert value(during, "fullduplex_connections", transport="websocket", route=OTHER)
                assert (await client.get(f"{base}/healthz")).text == "ok\n"
                assert (await client.get(f"{base}/other")).text == "from the app"
        async with httpx.AsyncClient() as client:
            after = await wait_for(
                client,
                base,
                lambda s: value(s, "fullduplex_connections_closed_total", route=OTHER) == 1,
            )
        assert value(after, "fullduplex_messages_total", route=OTHER, direction="in") == 2
        assert value(after, "fullduplex_message_bytes_total", route=OTHER, direction="out") == 6
        assert value(after, "fullduplex_handshakes_total", route=OTHER, status="101") == 1
        assert value(after, "fullduplex_closes_total", route=OTHER, code="1000") == 1
        assert value(after, "fullduplex_connections", transport="websocket", route=OTHER) == 0
    finally:
        await server.shutdown()


async def test_open_event_streams_and_long_polls_by_transport() -> None:
    from fullduplex.transports import TopicRules, mount_all
    from tests.transports.client import EventStream, request

    app = fullduplex.App()
    hub = Hub()
    await hub.start()
    transports = mount_all(app, hub, rules=TopicRules(subscribe=["*"]), longpoll_timeout=10)
    app.enable_metrics(hub=hub, transports=transports)
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    stream = await EventStream.open(server.port, "/sse?topic=a")
    poll = asyncio.ensure_future(request(server.port, "GET", "/longpoll?topic=b", timeout=15))
    try:
        async with httpx.AsyncClient() as client:
            snap = await wait_for(
                client,
                base,
                lambda s: value(s, OPEN, transport="longpoll", route="/longpoll") == 1,
            )
        assert value(snap, OPEN, transport="sse", route="/sse") == 1
        assert value(snap, "fullduplex_topic_subscribers", topic="a") == 1
        assert value(snap, "fullduplex_topic_subscribers", topic="b") == 1
        await hub.publish("b", "wake")
        assert (await asyncio.wait_for(poll, 5)).status == 200
    finally:
        await stream.close()
        transports.close()
        await server.shutdown()
        await hub.close()


async def test_health_stays_open_and_metrics_can_ask_the_apps_credentials() -> None:
    from fullduplex.asyncio.router import APP_AUTH
    from fullduplex.auth import Identity, Unauthorized

    app = fullduplex.App()

    @app.authenticate
    async def who(request: Any) -> Identity:
        if request.headers.get("Authorization") != "Bearer ops":
            raise Unauthorized("log in first")
        return Identity("ops", {}, False)

    app.enable_metrics(auth=APP_AUTH)
    with pytest.raises(RuntimeError, match="already enabled"):
        app.enable_metrics()
    server = await fullduplex.serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base}/metrics")).status_code == 401
            ok = await client.get(f"{base}/metrics", headers={"Authorization": "Bearer ops"})
            assert ok.status_code == 200
            assert (await client.get(f"{base}/healthz")).status_code == 200
            assert (await client.get(f"{base}/readyz")).status_code == 200
    finally:
        await server.shutdown()
