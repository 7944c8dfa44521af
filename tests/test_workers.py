"""`fullduplex serve MODULE:ATTR` with worker processes: real processes, real sockets.

Each test starts `python -m fullduplex serve` on port 0 (the supervisor binds once and prints
the address), with the serving processes on the same event loop as the test's client
(`--loop`), and talks to it with the websockets client and httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect, unix_connect
from websockets.exceptions import ConnectionClosed

APP = '''
import os

import fullduplex

VERSION = "one"
app = fullduplex.App()


@app.websocket("/ws")
async def pid_ws(ws):
    await ws.send(str(os.getpid()))
    async for message in ws:
        await ws.send(message)


@app.get("/pid")
async def pid(request):
    return {"pid": os.getpid(), "version": VERSION}


def create_app():
    return app


async def asgi(scope, receive, send):
    """A raw ASGI 3 application: lifespan, /pid over HTTP and WebSocket."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].replace("lifespan.", "")
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    elif scope["type"] == "http":
        body = f'{{"pid": {os.getpid()}, "root_path": "{scope["root_path"]}"}}'.encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    else:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": str(os.getpid())})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text")})
'''

FASTAPI_APP = """
import os

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


@app.get("/pid")
async def pid():
    return {"pid": os.getpid()}


@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_text(str(os.getpid()))
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass
"""

ATTRS = {"app": "workers_app:app", "asgi": "workers_app:asgi", "fastapi": "workers_fastapi:app"}


class Served:
    """A running `fullduplex serve` process and where it listens."""

    def __init__(self, proc: asyncio.subprocess.Process, base: str, log: Path) -> None:
        self.proc = proc
        self.base = base  # http://127.0.0.1:PORT or unix:/path
        self.log = log

    @property
    def ws(self) -> str:
        return self.base.replace("http", "ws", 1)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 40.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def stderr(self) -> str:
        return self.log.read_text()


def loop_name() -> str:
    loop = type(asyncio.get_running_loop())
    return "uvloop" if loop.__module__.startswith("uvloop") else "asyncio"


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, *args: str, cwd: Path | None = None) -> AsyncIterator[Served]:
    app_file = tmp_path / "workers_app.py"
    if not app_file.exists():
        app_file.write_text(APP)
        (tmp_path / "workers_fastapi.py").write_text(FASTAPI_APP)
    log = tmp_path / f"stderr-{time.monotonic_ns()}.log"
    with log.open("w") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fullduplex",
            "serve",
            *args,
            "--app-dir",
            str(tmp_path),
            "--loop",
            loop_name(),
            "--log-level",
            "warning",
            # These tests poll from one IP as fast as they can across restarts: no per-IP
            # rate limit (tests/asyncio/test_abuse_limits.py tests that one).
            "--rate-per-ip",
            "none",
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=cwd or tmp_path,
        )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = re.search(r" on (\S+)/ \(", line)
        assert match, f"no banner: {line!r}; stderr: {log.read_text()}"
        yield Served(proc, match.group(1), log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 40)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def ws_pid(served: Served) -> str:
    async with connect(f"{served.ws}/ws", open_timeout=10) as ws:
        pid = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(pid, str)
        return pid


async def pids_of_workers(served: Served, count: int, tries: int = 400) -> set[str]:
    """Connect until ``count`` different processes have answered (bounded)."""
    seen: set[str] = set()
    for _ in range(tries):
        seen.add(await ws_pid(served))
        if len(seen) == count:
            return seen
    raise AssertionError(f"only {seen} answered in {tries} connections")


@pytest.mark.parametrize("kind", ["app", "asgi", "fastapi"])
async def test_two_workers_share_one_port(tmp_path: Path, kind: str) -> None:
    async with serve(tmp_path, ATTRS[kind], "--port", "0", "--workers", "2") as served:
        pids = await pids_of_workers(served, 2)
        assert str(served.proc.pid) not in pids  # the supervisor does not serve
        async with httpx.AsyncClient() as http:
            answer = (await http.get(f"{served.base}/pid", timeout=10)).json()
        assert str(answer["pid"]) in pids
        async with connect(f"{served.ws}/ws") as ws:
            await ws.recv()
            await ws.send("hello")
            assert await ws.recv() == "hello"
        served.signal(signal.SIGTERM)
        assert await served.wait() == 0


async def test_a_killed_worker_comes_back_and_the_port_keeps_answering(tmp_path: Path) -> None:
    async with serve(tmp_path, ATTRS["app"], "--port", "0", "--workers", "2") as served:
        before = await pids_of_workers(served, 2)
        victim = sorted(before)[0]
        os.kill(int(victim), signal.SIGKILL)
        answered = 0
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while time.monotonic() < deadline:
            pid = await ws_pid(served)  # every connection is answered, by someone
            answered += 1
            assert pid != victim
            seen.add(pid)
            if seen - before:
                break
        new = seen - before
        assert len(new) == 1, f"no new worker after {answered} connections"
        assert await pids_of_workers(served, 2) == (before - {victim}) | new
        assert "killed by SIGKILL" in served.stderr()


@pytest.mark.parametrize("kind", ["app", "asgi", "fastapi"])
async def test_sigterm_closes_every_websocket_of_every_worker_with_1001(
    tmp_path: Path, kind: str
) -> None:
    async with serve(tmp_path, ATTRS[kind], "--port", "0", "--workers", "2") as served:
        clients = []
        pids: set[str] = set()
        for _ in range(400):  # bounded: until both workers hold some connections
            ws = await connect(f"{served.ws}/ws")
            pids.add(str(await ws.recv()))
            clients.append(ws)
            if len(pids) == 2 and len(clients) >= 6:
                break
        assert len(pids) == 2
        served.signal(signal.SIGTERM)
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 20)
            assert ws.close_code == 1001, ws.close_code
        assert await served.wait() == 0


@pytest.mark.parametrize("kind", ["app", "asgi", "fastapi"])
async def test_sighup_restarts_every_worker_without_refusing_a_connection(
    tmp_path: Path, kind: str
) -> None:
    async with serve(tmp_path, ATTRS[kind], "--port", "0", "--workers", "2") as served:
        before = await pids_of_workers(served, 2)
        served.signal(signal.SIGHUP)
        refused: list[str] = []
        going_away = 0
        opened = 0
        new: set[str] = set()
        streak = 0  # connections in a row answered by new workers
        deadline = time.monotonic() + 60
        for _ in range(5000):  # bounded in count and in time
            if time.monotonic() > deadline or (len(new) == 2 and streak >= 20):
                break
            try:
                ws = await connect(f"{served.ws}/ws", open_timeout=10)
            except Exception as exc:  # refused, reset, 503: what must not happen
                refused.append(repr(exc))
                continue
            opened += 1
            try:
                pid = str(await asyncio.wait_for(ws.recv(), 10))
            except ConnectionClosed:
                # Accepted by an old worker as it stopped: it got 1001, it was not refused.
                assert ws.close_code == 1001
                going_away += 1
                streak = 0
                continue
            await ws.close()
            if pid in before:
                streak = 0
            else:
                new.add(pid)
                streak += 1
        print(f"SIGHUP: {opened} opened, {going_away} got 1001 at once, {len(refused)} refused")
        assert refused == [], refused
        assert len(new) == 2, f"restarted: {new}; {opened} connections"
        assert not new & before
        assert going_away <= opened // 2
        served.signal(signal.SIGTERM)
        assert await served.wait() == 0


async def test_reload_restarts_on_a_file_change(tmp_path: Path) -> None:
    args = (ATTRS["app"], "--port", "0", "--reload", "--reload-dir", str(tmp_path))
    # A new connection per request: an idle keep-alive connection to the old worker is closed
    # when it stops, and a request sent on it at that moment fails (HTTP/1.1's own race,
    # RFC 7230 6.3.1); new connections are what a restart must never refuse.
    headers = {"Connection": "close"}
    async with serve(tmp_path, *args) as served, httpx.AsyncClient(headers=headers) as http:
        first = (await http.get(f"{served.base}/pid", timeout=10)).json()
        assert first["version"] == "one"
        app_file = tmp_path / "workers_app.py"
        app_file.write_text(APP.replace('VERSION = "one"', 'VERSION = "second"'))
        deadline = time.monotonic() + 30
        answer = first
        while answer["version"] == "one" and time.monotonic() < deadline:
            answer = (await http.get(f"{served.base}/pid", timeout=10)).json()
        assert answer["version"] == "second"
        assert answer["pid"] != first["pid"]
        # A change that breaks the app: the running worker stays, and says why.
        app_file.write_text(APP + "\ndef broken(:\n")
        deadline = time.monotonic() + 30
        while "could not start" not in served.stderr() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling a log file for a line, bounded
        assert "SyntaxError" in served.stderr(), served.stderr()[-3000:]
        assert (await http.get(f"{served.base}/pid", timeout=10)).json() == answer
        app_file.write_text(APP.replace('VERSION = "one"', 'VERSION = "the third"'))
        deadline = time.monotonic() + 30
        while answer["version"] == "second" and time.monotonic() < deadline:
            answer = (await http.get(f"{served.base}/pid", timeout=10)).json()
        assert answer["version"] == "the third"


async def test_reload_of_code_that_cannot_start_says_so_and_no_banner(tmp_path: Path) -> None:
    # Started with --reload on a broken module, the supervisor printed "serving ... on URL"
    # and "1 workers serving" while nothing served. The banner now waits for a worker.
    app_file = tmp_path / "workers_app.py"
    app_file.write_text(APP + "\ndef broken(:\n")
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "fullduplex", "serve", ATTRS["app"], "--port", "0"),
            *("--reload", "--reload-dir", str(tmp_path), "--app-dir", str(tmp_path)),
            *("--log-level", "warning"),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=tmp_path,
        )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 30
        while "no worker serves yet" not in log.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling a log file for a line, bounded
        assert "SyntaxError" in log.read_text()
        assert "no worker serves yet: waiting for a file change" in log.read_text()
        app_file.write_text(APP)
        banner = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = re.search(r" on (\S+)/ \(pid \d+, 1 worker, reloading on changes\)", banner)
        assert match, (banner, log.read_text()[-2000:])
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{match.group(1)}/pid", timeout=10)
        assert answer.json()["version"] == "one"
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 40)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
@pytest.mark.parametrize("kind", ["app", "asgi"])
async def test_unix_domain_socket(tmp_path: Path, kind: str, workers: list[str]) -> None:
    path = tmp_path / "app.sock"
    async with serve(tmp_path, ATTRS[kind], "--uds", str(path), *workers) as served:
        assert served.base == f"unix:{path}"
        assert path.is_socket()
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport) as http:
            answer = (await http.get("http://localhost/pid", timeout=10)).json()
        async with unix_connect(str(path), "ws://localhost/ws") as ws:
            pid = await ws.recv()
            assert isinstance(pid, str) and pid.isdigit() and answer["pid"] > 0
            await ws.send("over a unix socket")
            assert await ws.recv() == "over a unix socket"
        served.signal(signal.SIGTERM)
        assert await served.wait() == 0
    assert not path.exists()


async def test_factory_root_path_and_limits_reach_the_app(tmp_path: Path) -> None:
    args = ("workers_app:create_app", "--factory", "--port", "0", "--ws-max-size", "64")
    async with serve(tmp_path, *args) as served, connect(f"{served.ws}/ws") as ws:
        await ws.recv()
        await ws.send("x" * 64)
        assert await ws.recv() == "x" * 64
        await ws.send("x" * 65)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1009
    async with (
        serve(tmp_path, ATTRS["asgi"], "--port", "0", "--root-path", "/api") as served,
        httpx.AsyncClient() as http,
    ):
        assert (await http.get(f"{served.base}/pid", timeout=10)).json()["root_path"] == "/api"


def run_cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    import subprocess

    (tmp_path / "workers_app.py").write_text(APP)
    result = subprocess.run(
        [sys.executable, "-m", "fullduplex", "serve", *args, "--app-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("workers_app", "must be MODULE:ATTR"),
        ("no_such_module:app", "cannot import module 'no_such_module'"),
        ("workers_app:nothing", "has no attribute 'nothing'"),
        ("workers_app:VERSION", "is a str, not a fullduplex.App or an ASGI application"),
        ("workers_app:create_app", "add --factory"),
    ],
)
def test_a_bad_app_is_one_line_and_status_2(
    tmp_path: Path, spec: str, message: str, workers: list[str]
) -> None:
    status, stderr = run_cli(tmp_path, spec, "--port", "0", *workers)
    assert status == 2
    assert stderr.count("\n") == 1 and message in stderr, stderr


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_a_module_that_runs_itself_when_imported_is_one_line(
    tmp_path: Path, workers: list[str]
) -> None:
    # README's first example ended with a bare fullduplex.run(...): imported by the command
    # line, it served on its own address, and SIGTERM stopped it only for the command line's
    # server to start, which then served on.
    (tmp_path / "runs_itself.py").write_text(APP + "\nfullduplex.run(app, '127.0.0.1', 0)\n")
    status, stderr = run_cli(tmp_path, "runs_itself:app", "--port", "0", *workers)
    assert status == 2
    assert stderr.count("\n") == 1 and 'under `if __name__ == "__main__":`' in stderr, stderr


def test_fullduplex_run_is_itself_again_after_the_import(tmp_path: Path) -> None:
    import fullduplex
    import fullduplex.asyncio.server
    from fullduplex.importer import ImportFromStringError, load_app

    (tmp_path / "runs_itself_too.py").write_text("import fullduplex\nfullduplex.run(None)\n")
    originals = (fullduplex.run, fullduplex.asyncio.run, fullduplex.asyncio.server.run)
    with pytest.raises(ImportFromStringError, match=r"runs_itself_too calls fullduplex\.run"):
        load_app("runs_itself_too:app", app_dir=str(tmp_path))
    assert (fullduplex.run, fullduplex.asyncio.run, fullduplex.asyncio.server.run) == originals


@pytest.mark.parametrize("spec", [ATTRS["app"], ATTRS["asgi"], "workers_app:VERSION"])
def test_factory_naming_the_app_itself_is_one_line_and_status_2(tmp_path: Path, spec: str) -> None:
    # An App or an ASGI application named with --factory: calling it raised a TypeError (an
    # ASGI app wants scope, receive, send) that escaped as a traceback.
    status, stderr = run_cli(tmp_path, spec, "--factory", "--port", "0")
    assert status == 2
    assert stderr.count("\n") == 1 and "drop --factory" in stderr, stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--ws-ping-interval", "-1"], "ping_interval must be positive"),
        (["--max-queue", "0"], "max_queue must be at least 1"),
        (["--root-path", "api/"], "root_path must be"),
        (["--ssl-keyfile", "key.pem"], "--ssl-keyfile needs --ssl-certfile"),
    ],
)
def test_bad_options_are_one_line_and_status_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    status, stderr = run_cli(tmp_path, ATTRS["app"], "--port", "0", *args)
    assert status == 2
    assert stderr.count("\n") == 1 and message in stderr, stderr


def test_serve_help_lists_uvicorn_names(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "fullduplex", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    for flag in (
        "--app-dir",
        "--factory",
        "--workers",
        "--reload",
        "--reload-dir",
        "--uds",
        "--fd",
        "--root-path",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--ws-max-size",
        "--ws-ping-interval",
        "--timeout-keep-alive",
        "--proxy-headers",
        "--forwarded-allow-ips",
        "--max-message-size",
        "--open-timeout",
        "--backlog",
        "--loop",
    ):
        assert flag in result.stdout, flag


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # exited, not yet reaped by its new parent


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    async with serve(tmp_path, ATTRS["app"], "--port", "0", "--workers", "2") as served:
        pids = [int(pid) for pid in await pids_of_workers(served, 2)]
        served.signal(signal.SIGKILL)
        await served.wait()
        deadline = time.monotonic() + 20
        while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # another process's exit: nothing to wait on but /proc
        assert all(gone(pid) for pid in pids), "orphaned workers still serving"
