"""Every command-line mistake is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trustme

import fullduplex

SRC = str(Path(fullduplex.__file__).resolve().parents[1])

# Makes `import NAME` fail in the subprocess, as if the package were not installed.
BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def env_without(tmp_path: Path, *blocked: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    if blocked:
        (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(blocked)))
        env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{SRC}"
    return env


def fails_in_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fullduplex: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "serving" not in proc.stdout  # no banner for a server that never listened
    return lines[0]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fullduplex", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or {**os.environ, "PYTHONPATH": SRC},
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


pytestmark = pytest.mark.one_loop  # subprocesses: the test's own loop does not matter


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--port", "abc"], "fullduplex serve: argument --port: invalid int value"),
        (["serve", "--max-message-size", "10x"], "invalid int value: '10x'"),
        (["serve", "--log-level", "trace"], "invalid choice: 'trace'"),
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (["connect"], "fullduplex connect: the following arguments are required: url"),
        (["publish", "ws://127.0.0.1:1/pubsub"], "required: topic"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        (["bench", "ws://127.0.0.1:1/echo", "--rate", "abc"], "fullduplex bench: argument --rate"),
    ],
)
def test_a_usage_mistake_is_one_line_without_the_usage_block(args: list[str], needle: str) -> None:
    # argparse printed the whole usage (24 lines for serve) above the line that says why.
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "--help" in lines[0], proc.stderr


def test_missing_certificate_file() -> None:
    fails_in_one_line(
        cli("serve", "--port", "0", "--certfile", "/nope.pem"), "certificate", "/nope.pem"
    )


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    certfile = tmp_path / "cert.pem"
    trustme.CA().issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(certfile))
    args = ("serve", "--port", "0", "--certfile", str(certfile), "--keyfile", "/nope.key")
    fails_in_one_line(cli(*args), "--ssl-keyfile /nope.key: no such file")


def test_a_file_that_is_not_pem_names_the_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    line = fails_in_one_line(cli("serve", "--port", "0", "--certfile", str(junk)), str(junk))
    assert "not a PEM certificate" in line and "_ssl.c" not in line, line


def test_certificate_without_its_key(tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("127.0.0.1")
    certfile = tmp_path / "cert.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))  # the certificate alone, no key
    fails_in_one_line(cli("serve", "--port", "0", "--certfile", str(certfile)), "certificate")


def test_port_out_of_range() -> None:
    fails_in_one_line(cli("serve", "--port", "70000"), "--port", "70000")


def test_port_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fails_in_one_line(cli("serve", "--port", str(port)), str(port), "in use")


def test_broker_without_the_redis_package(tmp_path: Path) -> None:
    env = env_without(tmp_path, "redis")
    probe = subprocess.run(
        [sys.executable, "-c", "import redis"], capture_output=True, text=True, env=env
    )
    assert probe.returncode != 0 and "No module named 'redis'" in probe.stderr  # really gone
    proc = cli("serve", "--port", "0", "--broker", "redis://127.0.0.1:1/0", env=env)
    fails_in_one_line(proc, "redis", "pip install")  # and how to get it


def test_an_error_in_the_loop_is_not_chained_to_a_missing_uvloop(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        from fullduplex.supervisor import run_async

        async def main():
            raise RuntimeError("the server's own error")

        try:
            run_async(main(), "auto")
        except RuntimeError as exc:
            assert exc.__context__ is None, repr(exc.__context__)
            print("clean")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env_without(tmp_path, "uvloop"),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean"


# -- connect -------------------------------------------------------------------------------------


async def connect_cli(url: str, stdin: bytes, shell_suffix: str = "") -> tuple[int, str, str]:
    command = f"{sys.executable} -m fullduplex connect {url}{shell_suffix}"
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"set -o pipefail; {command}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_connect_into_head_ends_quietly() -> None:
    app = fullduplex.App()

    @app.websocket("/flood")
    async def flood(ws: fullduplex.WebSocket) -> None:
        for i in range(5000):  # bounded: more than a pipe holds
            await ws.send(f"message {i} " + "x" * 100)
        await ws.wait_closed()

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.port}/flood"
        status, out, err = await connect_cli(url, b"", " | head -1")
    finally:
        await server.shutdown()
    assert out.startswith("message 0 ")
    assert out.count("\n") == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert status == 0, err


async def test_connect_help_and_unknown_commands() -> None:
    app = fullduplex.App()

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.port}/echo"
        status, out, err = await connect_cli(url, b"/help\n/frobnicate now\n//slash\nhello\n")
    finally:
        await server.shutdown()
    assert out.splitlines() == ["/slash", "hello"]  # the unknown command was not sent
    assert "/ping" in err and "/close" in err and "/binary" in err  # the /help list
    hints = [line for line in err.splitlines() if "/frobnicate" in line]
    assert len(hints) == 1 and "/help" in hints[0]
    assert status == 0


async def test_connect_ctrl_c_closes_with_1000_and_no_traceback() -> None:
    app = fullduplex.App()
    codes: asyncio.Queue[int | None] = asyncio.Queue()

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)
        await codes.put(ws.close_code)

    server = await fullduplex.serve(app, "127.0.0.1", 0)
    try:
        # A token in the URL stays off the screen, as it stays out of the server's logs.
        url = f"ws://127.0.0.1:{server.port}/echo?token=s3cr3t"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fullduplex",
            "connect",
            url,
            stdin=asyncio.subprocess.PIPE,  # kept open: the user has not ended the input
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"connected to" in first and b"[redacted]" in first, first
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert await asyncio.wait_for(codes.get(), 10) == 1000
    finally:
        await server.shutdown()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err
    assert b"s3cr3t" not in first + err


async def test_connect_to_an_untrusted_certificate_suggests_insecure(tmp_path: Path) -> None:
    import ssl

    ca = trustme.CA()  # a private CA the client does not trust, as a development server's
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    app = fullduplex.App()

    @app.websocket("/echo")
    async def echo(ws: fullduplex.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    server = await fullduplex.serve(app, "127.0.0.1", 0, ssl=context)
    try:
        url = f"wss://127.0.0.1:{server.port}/echo"
        status, _, err = await connect_cli(url, b"")
        insecure = await connect_cli(f"--insecure {url}", b"hello\n")
    finally:
        await server.shutdown()
    assert status == 2
    assert err.strip().splitlines() == [
        f"fullduplex: cannot connect to {url}: unable to get local issuer certificate"
        " (--insecure skips the certificate check)"
    ]
    assert insecure[0] == 0 and insecure[1] == "hello\n", insecure


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis+cluster://127.0.0.1", "host:port"),
        ("redis+cluster://127.0.0.1:7000/2", "database 0 only"),
        ("redis+cluster://127.0.0.1:7000?wait_replica=1", "unknown option"),
        ("cluster://127.0.0.1:7000", "redis+cluster://host:port,host:port"),
    ],
)
def test_bad_broker_urls(url: str, needle: str) -> None:
    fails_in_one_line(cli("serve", "--port", "0", "--broker", url), "--broker", needle)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1"])
def test_unreachable_broker(url: str) -> None:
    proc = cli("serve", "--port", "0", "--broker", url)
    fails_in_one_line(proc, "broker cannot be reached", "127.0.0.1:1")
