"""Logs an operator wants (issue 13): startup line, quiet polls, rate-limited warnings, JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import fullduplex
from fullduplex import logs
from fullduplex.hub import Hub
from fullduplex.transports import mount_all

SRC = str(Path(fullduplex.__file__).resolve().parents[1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the rate-limited logger -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(logs.time, "monotonic", fake)
    yield fake


def test_rate_limited_logger_keeps_one_record_per_interval(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.rate")
    log = logs.RateLimitedLogger(logging.getLogger("test.rate"), interval=10.0)
    emitted = []
    for i in range(50):  # 5 a second for 10 s, like a ticker during an outage
        emitted.append(log.warning("hub unavailable (%s)", f"error {i}"))
        clock.now += 0.2
    assert emitted.count(True) == 1 and emitted[0] is True
    log.info("another message")  # told apart by its format string: not held back
    clock.now += 0.5
    assert log.warning("hub unavailable (%s)", "error 50") is True  # 10.5 s after the first
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "hub unavailable (error 0)",
        "another message",
        "hub unavailable (error 50) (49 similar messages suppressed)",
    ]
    assert caplog.records[0].levelno == logging.WARNING


def test_rate_limited_logger_none_logs_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.rate")
    log = logs.RateLimitedLogger(logging.getLogger("test.rate"), interval=None)
    for _ in range(3):
        log.error("again")
    assert [r.getMessage() for r in caplog.records] == ["again"] * 3
    with pytest.raises(ValueError):
        logs.RateLimitedLogger(logging.getLogger("test.rate"), interval=0)


# -- JSON lines ----------------------------------------------------------------------------------


def test_json_formatter_one_object_per_line_with_extra_fields() -> None:
    formatter = logs.JSONFormatter()
    record = logging.makeLogRecord(
        {
            "name": "fullduplex.access",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "%s websocket closed %d",
            "args": ("127.0.0.1", 1000),
            "connection": {"peer": "127.0.0.1", "close_code": 1000, "duration": 1.5},
        }
    )
    line = formatter.format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "127.0.0.1 websocket closed 1000"
    assert data["level"] == "INFO" and data["logger"] == "fullduplex.access"
    assert data["connection"] == {"peer": "127.0.0.1", "close_code": 1000, "duration": 1.5}
    assert data["time"].endswith("Z")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info()})
    line = formatter.format(record)
    assert "\n" not in line  # the traceback is escaped inside the JSON string
    assert "RuntimeError: boom" in json.loads(line)["exception"]


# -- access log levels ---------------------------------------------------------------------------


async def test_polls_log_at_debug_other_routes_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fullduplex.access")
    app = fullduplex.App()
    hub = Hub()
    await hub.start()
    mount_all(app, hub, longpoll_timeout=0.05)

    @app.get("/api")
    def api(request: object) -> dict[str, int]:
        return {"n": 1}

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        await hub.publish("news", "hello")
        for target in ("/poll?topic=news&since=0", "/longpoll?topic=news&since=1", "/api"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            writer.close()
    finally:
        await server.shutdown()
        await hub.close()
    levels = {
        r.getMessage().split('"')[1].split()[1].partition("?")[0]: r.levelno
        for r in caplog.records
        if r.name == "fullduplex.access" and '"GET ' in r.getMessage()
    }
    assert levels == {"/poll": logging.DEBUG, "/longpoll": logging.DEBUG, "/api": logging.INFO}


# -- fullduplex.run() ----------------------------------------------------------------------------

RUN_APP = textwrap.dedent(
    """
    import sys
    import fullduplex

    app = fullduplex.App()

    @app.get("/")
    def index(request):
        return "hi"

    fullduplex.run(app, "127.0.0.1", int(sys.argv[1]))
    """
)


@pytest.mark.one_loop
def test_run_logs_where_it_listens_after_the_bind() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_APP, str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "INFO" in line and f"serving on http://127.0.0.1:{port}/" in line, line
        # Listening when it says so: the port answers.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "stopped in" in err


@pytest.mark.one_loop
def test_run_says_nothing_about_serving_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": SRC}
        proc = subprocess.run(
            [sys.executable, "-c", RUN_APP, str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
    assert proc.returncode != 0
    assert "serving on" not in proc.stderr
    assert "address already in use" in proc.stderr.lower()


@pytest.mark.one_loop
def test_serve_log_format_json_and_startup_line_after_the_bind() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fullduplex", "serve", "--port", str(port), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        record = json.loads(proc.stderr.readline())  # the first log line is a JSON object
        assert record["level"] == "INFO" and record["logger"] == "fullduplex"
        assert f"127.0.0.1:{port}/" in record["message"]
        assert f"http://127.0.0.1:{port}/" in proc.stdout.readline()  # the banner
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"GET /api/data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")
        access = json.loads(proc.stderr.readline())
        assert access["logger"] == "fullduplex.access" and "/api/data" in access["message"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    for line in err.splitlines():
        json.loads(line)  # every line, to the end
