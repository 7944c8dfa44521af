"""Faults for the client tests: a TCP proxy that cuts or refuses, server processes to restart,
and the check of a numbered stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent.parent


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (a port), for faults.

    Attributes:
        target: where new connections go (change it to move clients to another server).
        refuse_upgrades: answer WebSocket upgrades with 403, as a proxy that blocks them does.
        connections: connections accepted so far.

    With ``receive_buffer`` (e.g. 4096), its connections to ``target`` have that small a
    receive buffer: while :meth:`stall` holds, the server sees clients that stopped reading
    (slow consumers), whatever they do.
    """

    def __init__(self, target: int, *, receive_buffer: int | None = None) -> None:
        self.target = target
        self.receive_buffer = receive_buffer
        self.refuse_upgrades = False
        self.connections = 0
        self.refused = 0
        self.port = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self._cutter: asyncio.Task[None] | None = None
        self.cuts = 0
        self.stalled = False

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            first = await reader.read(65536)
            if not first:
                writer.close()
                return
            if self.refuse_upgrades and b"upgrade: websocket" in first.lower():
                self.refused += 1
                body = b"WebSocket blocked by proxy"
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
                writer.close()
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if self.receive_buffer is not None:
                # Before connecting: the window scale is fixed at the handshake.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.target))
            except OSError:
                sock.close()
                raise
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
            if self.stalled:
                up_writer.transport.pause_reading()
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        up_writer.write(first)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    def stall(self) -> None:
        """Stop reading from the server (every connection, and new ones): clients look slow."""
        self.stalled = True
        for _, up_writer in self._pairs:
            up_writer.transport.pause_reading()

    def resume(self) -> None:
        """Read from the server again (a reset it sent meanwhile then reaches the client)."""
        self.stalled = False
        for _, up_writer in self._pairs:
            up_writer.transport.resume_reading()

    def cut(self) -> int:
        """Abort every connection now (both sides see a reset); return how many."""
        pairs = list(self._pairs)
        for a, b in pairs:
            a.transport.abort()
            b.transport.abort()
        self.cuts += len(pairs)
        return len(pairs)

    def cut_randomly(self, low: float, high: float) -> None:
        """Cut every connection at random intervals between ``low`` and ``high`` seconds."""

        async def cutter() -> None:
            while True:
                await asyncio.sleep(random.uniform(low, high))
                self.cut()

        self._cutter = asyncio.ensure_future(cutter())

    def stop_cutting(self) -> None:
        if self._cutter is not None:
            self._cutter.cancel()
            self._cutter = None

    async def close(self) -> None:
        self.stop_cutting()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class ServerProcess:
    """``tests/clients/serve_app.py`` in a process of its own, on a fixed port."""

    def __init__(self, port: int, broker: str | None) -> None:
        self.port = port
        self.broker = broker
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "tests.clients.serve_app", str(self.port)]
        if self.broker:
            args.append(self.broker)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # bounded: the process prints or exits
        assert line.strip() == b"ready", line

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: a graceful shutdown (1012 to /pubsub clients)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self._release()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self._release()

    def _release(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


def check_stream(items: Sequence[Any], topic: str, first: int, last: int) -> int:
    """Check ``topic``'s items: every seq from ``first`` to ``last`` exactly once, in order,
    except where a gap item says they are gone. Items are ``(topic, seq, ...)`` or
    ``(topic, "gap", since, first_available, ...)``. Return the number of gaps."""
    expected = first
    gaps = 0
    for item in items:
        if item[0] != topic:
            continue
        if item[1] == "gap":
            since, first_available = item[2], item[3]
            assert since == expected - 1, (item, expected)
            assert first_available > expected, (item, expected)
            expected = first_available
            gaps += 1
            continue
        assert item[1] == expected, f"{topic}: expected seq {expected}, got {item[1]}"
        expected += 1
    assert expected == last + 1, f"{topic}: stream ends at {expected - 1}, expected {last}"
    return gaps


async def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    """Wait until ``predicate()`` (sync or async) is true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


class Publisher:
    """Publishes 1, 2, 3... to a topic at a steady rate, in the background."""

    def __init__(self, hub: Any, topic: str, interval: float = 0.01) -> None:
        self.hub = hub
        self.topic = topic
        self.interval = interval
        self.count = 0
        self.last_seq = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.count += 1
            message = await self.hub.publish(self.topic, self.count)
            self.last_seq = message.seq
            await asyncio.sleep(self.interval)

    async def stop(self) -> int:
        task = self._task
        if task is not None:
            # Cancel until done: redis-py's commands (asyncio.wait_for on Python < 3.12) can
            # swallow a cancellation that lands as a reply arrives, and the loop goes on.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._task = None
            # A publish cancelled midway may have happened: ask the hub.
            self.last_seq = int(await self.hub.last_seq(self.topic))
        return self.last_seq
