"""``fullduplex serve`` with metrics: the demo's workers summed, health routes, CLI mistakes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hub.conftest import RedisServer, free_port

from .scrape import Snapshot, parse, value

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


def serve(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("FULLDUPLEX_METRICS_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "fullduplex", "serve", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def scrape_until(base: str, processes: int, timeout: float = 30.0) -> Snapshot:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(f"{base}/metrics", timeout=5)
            snapshot = parse(response.text)
            if (
                value(snapshot, "fullduplex_metrics_processes") == processes
                and value(snapshot, "fullduplex_hub_publishes_total") > 0
            ):
                return snapshot
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"no scrape summing {processes} workers"
        time.sleep(0.1)


def test_demo_with_two_workers_sums_both(redis: RedisServer) -> None:
    port = free_port()
    process = serve("--port", str(port), "--broker", redis.url, "--workers", "2", "--metrics")
    base = f"http://127.0.0.1:{port}"
    try:
        snapshot = scrape_until(base, 2)
        # Worker 0 publishes the ticker (five a second) and worker 1 none; the sum has them
        # whichever worker answered. Both workers' Redis feeds are up.
        assert value(snapshot, "fullduplex_redis_up") == 2  # each worker's live feed
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").text == "ready\n"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert process.stderr is not None
        process.stderr.close()


def test_no_metrics() -> None:
    port = free_port()
    process = serve("--port", str(port), "--no-metrics")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = httpx.get(f"{base}/metrics", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert reply.status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert process.stderr is not None
        process.stderr.close()


def test_bad_forwarded_allow_ips_is_one_line_and_status_2() -> None:
    process = serve("--port", str(free_port()), "--forwarded-allow-ips", "127.0.0.1,,")
    assert process.wait(30) == 2
    assert process.stderr is not None
    err = process.stderr.read().decode()
    process.stderr.close()
    assert err.count("\n") == 1, err
    assert err.startswith("fullduplex: --forwarded-allow-ips: empty entry"), err
