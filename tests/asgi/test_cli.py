"""``python -m fullduplex serve tests.asgi.apps:starlette_app``: Starlette's own endpoints served
by the command line, exercised by httpx and websockets; SIGTERM closes WebSockets with 1001."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest
import websockets.asyncio.client as wsclient
from websockets.exceptions import ConnectionClosed as WSClosed
from websockets.exceptions import InvalidStatus as WSInvalidStatus

ROOT = Path(__file__).parent.parent.parent


@pytest.mark.one_loop
async def test_cli_serves_a_starlette_app(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fullduplex",
            "serve",
            "tests.asgi.apps:starlette_app",
            "--port",
            "0",
            "--log-level",
            "warning",
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
        )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = re.search(r" on http://(\S+)/ \(", line)
        assert match, f"no banner: {line!r}; stderr: {log.read_text()}"
        address = match.group(1)
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            assert (await client.get("/")).text == "hello from lifespan"
            streamed = await client.get("/stream", params={"n": 2})
            assert streamed.text == "0\n1\n"
        with pytest.raises(WSInvalidStatus) as refused:
            await wsclient.connect(f"ws://{address}/deny")
        assert refused.value.response.status_code == 401
        ws = await wsclient.connect(f"ws://{address}/ws", subprotocols=["chat"])
        await ws.send("over the command line")
        assert await ws.recv() == "over the command line"
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(WSClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1001
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
