"""`fullduplex connect` through a pipe against `fullduplex serve`, as real processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fullduplex",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert f"127.0.0.1:{port}" in first
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err


def connect(port: int, path: str, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fullduplex", "connect", f"ws://127.0.0.1:{port}{path}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_piped_lines_are_echoed(served: int) -> None:
    result = connect(served, "/echo", "one\ntwo\nthree\n")
    assert result.stdout.splitlines() == ["one", "two", "three"]
    assert result.returncode == 0


def test_timestamped_echo_with_subprotocol(served: int) -> None:
    result = connect(served, "/ws", "hello\n", "--subprotocol", "echo")
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].endswith(": hello")
    assert result.returncode == 0


def test_binary_command_and_unclean_close_status(served: int) -> None:
    result = connect(served, "/ws", "/binary 00ff\n", "--subprotocol", "echo")
    assert result.returncode == 1  # closed with 1003, not cleanly
    assert "1003" in result.stderr


def test_close_command(served: int) -> None:
    result = connect(served, "/echo", "/close 1000 bye\nnever sent\n")
    assert result.returncode == 0
    assert "never sent" not in result.stdout


def test_answers_to_lines_before_close_are_printed(served: int) -> None:
    # The echoes of "one" and "two" arrive after /close is read: they are waited for (as at
    # the end of the input) instead of being lost behind our close frame.
    result = connect(served, "/echo", "one\ntwo\n/close\n")
    assert result.stdout.splitlines() == ["one", "two"], result.stderr
    assert result.returncode == 0


def test_close_with_a_word_for_a_code_is_a_hint(served: int) -> None:
    result = connect(served, "/echo", "/close soon\nstill open\n")
    assert result.stdout.splitlines() == ["still open"]
    assert "/close wants a close code" in result.stderr
    assert "invalid literal" not in result.stderr
    assert result.returncode == 0


def test_binary_echo_printed_as_hex(served: int) -> None:
    result = connect(served, "/echo", "/binary 00ff10\n")
    assert "00ff10" in result.stdout


def test_refused_connection_exit_status() -> None:
    result = connect(free_port(), "/echo", "")
    assert result.returncode == 2
    assert "cannot connect" in result.stderr


def test_http_error_reported(served: int) -> None:
    result = connect(served, "/missing", "")
    assert result.returncode == 2
    assert "404" in result.stderr


def test_bench_subcommand_through_the_cli(served: int) -> None:
    options = ["--connections", "2", "--duration", "1", "--ping-pong"]
    result = subprocess.run(
        [sys.executable, "-m", "fullduplex", "bench", f"ws://127.0.0.1:{served}/echo", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "p99" in result.stdout
