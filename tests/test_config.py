"""The one typed configuration: defaults written once, validation, and who reads it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import fullduplex
import fullduplex.sync
from fullduplex import config as config_module
from fullduplex.asyncio import connection as aio_connection
from fullduplex.asyncio import server as aio_server
from fullduplex.asyncio.client import connect as aio_connect
from fullduplex.config import Config
from fullduplex.protocol import ConnectionClosedError


def test_frozen_and_slotted() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_queue = 3  # type: ignore[misc]
    assert not hasattr(config, "__dict__")
    assert config.replace(max_queue=3).max_queue == 3
    assert config.max_queue == config_module.DEFAULT_MAX_QUEUE


def test_defaults_are_the_constants_and_every_field_has_help() -> None:
    for field in dataclasses.fields(Config):
        assert Config.help(field.name)
        constant = f"DEFAULT_{field.name.upper()}"
        if hasattr(config_module, constant):
            assert field.default == getattr(config_module, constant), field.name


def test_serve_keywords_are_the_config_fields_with_the_same_defaults() -> None:
    params = inspect.signature(aio_server.serve).parameters
    for field in dataclasses.fields(Config):
        assert params[field.name].default == field.default, field.name


def test_one_definition_of_each_constant() -> None:
    # Re-exported for compatibility, defined once: the same objects everywhere.
    assert aio_server.DEFAULT_OPEN_TIMEOUT is config_module.DEFAULT_OPEN_TIMEOUT
    assert fullduplex.asyncio.client.DEFAULT_OPEN_TIMEOUT is config_module.DEFAULT_OPEN_TIMEOUT
    assert aio_connection.DEFAULT_PING_INTERVAL is config_module.DEFAULT_PING_INTERVAL


def test_sync_client_defaults_are_the_constants() -> None:
    params = inspect.signature(fullduplex.sync.connect).parameters
    for name in ("open_timeout", "close_timeout", "ping_interval", "ping_timeout", "max_queue"):
        assert params[name].default == getattr(Config(), name), name
    assert params["max_message_size"].default == config_module.DEFAULT_MAX_MESSAGE_SIZE


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"open_timeout": 0}, ValueError),
        ({"ping_interval": -1.0}, ValueError),
        ({"close_timeout": float("nan")}, ValueError),
        ({"keepalive_timeout": "30"}, TypeError),
        ({"max_message_size": 0}, ValueError),
        ({"max_connections": True}, TypeError),
        ({"max_queue": None}, TypeError),
        ({"max_queue": 0}, ValueError),
        ({"write_limit": -1}, ValueError),
        ({"backlog": 0}, ValueError),
        ({"compression": 1}, TypeError),
        ({"root_path": "/api/"}, ValueError),
        ({"root_path": "api"}, ValueError),
    ],
)
def test_bad_settings_are_refused_with_their_name(
    changes: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error, match=next(iter(changes))):
        Config(**changes)  # type: ignore[arg-type]


def test_none_disables_limits_and_timeouts() -> None:
    config = Config(open_timeout=None, ping_interval=None, max_message_size=None, root_path="/a")
    assert config.open_timeout is None and config.max_message_size is None


async def test_serve_builds_one_config_that_the_server_reads() -> None:
    app = fullduplex.App()

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    server = await fullduplex.serve(
        app, "127.0.0.1", 0, max_message_size=8, ping_interval=None, root_path="/api"
    )
    try:
        assert server.config == Config(max_message_size=8, ping_interval=None, root_path="/api")
        async with aio_connect(f"ws://127.0.0.1:{server.port}/echo") as ws:
            await ws.send("12345678")
            assert await ws.recv() == "12345678"
            await ws.send("123456789")
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            assert ws.close_code == 1009
    finally:
        await server.shutdown()


async def test_serve_refuses_a_bad_setting_before_listening() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        await fullduplex.serve(fullduplex.App(), "127.0.0.1", 0, max_queue=0)


async def test_client_max_size_is_an_alias_of_max_message_size() -> None:
    uri = "ws://127.0.0.1:1/"
    assert aio_connect(uri, max_size=5).config.max_message_size == 5
    assert aio_connect(uri, max_message_size=5).config.max_message_size == 5
    assert aio_connect(uri, max_size=None).config.max_message_size is None
    with pytest.raises(TypeError, match="max_size"):
        aio_connect(uri, max_message_size=5, max_size=6)
    with pytest.raises(TypeError, match="max_size"):
        fullduplex.sync.connect(uri, max_message_size=5, max_size=6)
