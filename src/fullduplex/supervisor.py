"""Worker processes: one listening socket, a supervisor that restarts them, graceful signals.

``fullduplex serve main:app --workers 4`` runs a supervisor (this process) and four workers
(``python -m fullduplex serve ...`` child processes, each with its own event loop and a copy of
the application). The supervisor:

* binds the listening socket **once** and passes it to every worker, which accept from it;
* restarts a worker that dies, after a delay that doubles with each failure in a row
  (0.1 s, 0.2 s, ... at most 10 s; a worker that ran 10 s resets it);
* on SIGTERM or SIGINT, sends SIGTERM to every worker: each stops accepting, closes every
  WebSocket with 1001 and waits for the closing handshakes (``close_timeout``), then exits;
* on SIGHUP (and with ``--reload``, on a changed ``.py`` file), replaces the workers one by
  one: it starts the new worker, waits until it is serving, and only then stops the old one.

Why one inherited socket rather than SO_REUSEPORT: with SO_REUSEPORT every worker binds its
own listening socket, and the kernel hashes each new connection to one of them, into that
socket's own accept queue. When a worker closes its socket to restart, the connections waiting
in that queue are reset, and until it is closed new ones keep being hashed to it; even starting
the replacement first cannot save the connections queued on the old socket. With one socket
there is one accept queue, owned by the socket rather than by a worker, and the supervisor
keeps the socket open for its whole life: a worker that stops accepting leaves the queue to the
others or to its replacement, and a connection that arrives while no worker accepts waits in
the queue (up to ``backlog``) instead of being refused. So a rolling restart refuses nothing.
What it costs: the kernel no longer balances connections evenly (every idle worker is woken and
the first to call accept() takes the connection), which is what uvicorn and gunicorn do too.

A worker is told that the supervisor went away (killed, say) by the end-of-file of a socket
pair it shares with it, and shuts down gracefully rather than serving on as an orphan; the same
socket pair carries the worker's "ready" message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl as ssl_module
import stat
import subprocess
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import DEFAULT_BACKLOG

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "DRAIN_TIMEOUT",
    "READY_TIMEOUT",
    "STABLE_AFTER",
    "Supervisor",
    "bind_socket",
    "describe_address",
    "run_async",
    "run_worker",
]

logger = logging.getLogger("fullduplex.supervisor")

#: Seconds before the first restart of a worker that died; doubled for each further failure
#: in a row, up to :data:`BACKOFF_MAX` (a worker that cannot start is not restarted in a loop).
BACKOFF_FIRST = 0.1
#: Longest wait before restarting a worker, in seconds.
BACKOFF_MAX = 10.0
#: Seconds a worker must have served for its death to count as a first failure again.
STABLE_AFTER = 10.0
#: Seconds a new worker has to start serving before a restart gives up on it.
READY_TIMEOUT = 60.0
#: Seconds a stopping worker waits for connections it accepted to send their request.
DRAIN_TIMEOUT = 2.0

_READY = b"ready\n"


# -- the listening socket ---------------------------------------------------------------------


def bind_socket(
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    uds: str | None = None,
    fd: int | None = None,
    backlog: int = DEFAULT_BACKLOG,
) -> socket.socket:
    """Create the listening socket: a TCP address, a Unix socket path, or an inherited fd.

    Args:
        host: the address to bind (None: every interface).
        port: the port (0: a free one).
        uds: a Unix domain socket path instead of ``host``/``port``; a stale socket file there
            is replaced; the socket is made writable by everyone, like uvicorn's (0o666),
            since access is a matter for the folder's permissions.
        fd: an already bound socket's file descriptor (systemd socket activation, or the
            supervisor's socket in a worker); takes precedence.
        backlog: the listen(2) queue length.

    Raises:
        OSError: the address cannot be bound.
    """
    if fd is not None:
        sock = socket.socket(fileno=fd)
        sock.listen(backlog)
        return sock
    if uds is not None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(uds).st_mode):
                os.unlink(uds)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(uds)
            os.chmod(uds, 0o666)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def describe_address(sock: socket.socket, *, tls: bool = False) -> str:
    """The URL base a listening socket serves: ``http://127.0.0.1:8000`` or ``unix:/path``."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{port}"


# -- a worker ---------------------------------------------------------------------------------


def run_async(main: Coroutine[Any, Any, Any], loop: str = "auto") -> Any:
    """Run a coroutine to completion on a new event loop.

    Args:
        main: the coroutine.
        loop: ``"uvloop"``, ``"asyncio"``, or ``"auto"``: uvloop when it is installed (uvicorn's
            ``--loop`` choices).

    Raises:
        ImportError: ``loop="uvloop"`` without uvloop installed.
    """
    if loop == "asyncio":
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            main.close()
            raise
        uvloop = None  # type: ignore[assignment]
    if uvloop is None:
        # Outside the except block: an error of the server must not be chained to
        # "ModuleNotFoundError: No module named 'uvloop'" in its traceback.
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_worker(
    app: Any,
    sock: socket.socket,
    *,
    ssl: ssl_module.SSLContext | None = None,
    options: Mapping[str, Any] | None = None,
    channel: socket.socket | None = None,
    on_ready: Callable[[], None] | None = None,
    loop: str = "auto",
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM (or SIGINT when not supervised), then shut down.

    Shutting down: stop accepting (connections already accepted still get their request
    answered, see :meth:`~fullduplex.Server.stop_accepting`), close every WebSocket with 1001,
    wait for the closing handshakes, run the shutdown hooks.

    Args:
        app: a :class:`fullduplex.App` or an ASGI application.
        sock: the listening socket.
        ssl: the TLS context, if any.
        options: keyword arguments of :func:`fullduplex.serve` (limits and timeouts).
        channel: the socket pair end shared with a supervisor: "ready" is written to it once
            serving, and its end-of-file (the supervisor is gone) stops the worker. Under a
            supervisor, SIGINT and SIGHUP are the supervisor's: the worker ignores them.
        on_ready: called once serving.
        loop: the event loop, as :func:`run_async` takes it.
    """
    if channel is not None:
        # Ctrl-C reaches the whole process group: the supervisor decides, and stops the
        # workers with SIGTERM (a worker that stopped on its own would be restarted).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    serving = _serve_until_stopped(app, sock, ssl, dict(options or {}), channel, on_ready)
    run_async(serving, loop)


async def _serve_until_stopped(
    app: Any,
    sock: socket.socket,
    ssl: ssl_module.SSLContext | None,
    options: dict[str, Any],
    channel: socket.socket | None,
    on_ready: Callable[[], None] | None,
) -> None:
    from .asyncio.server import serve

    server = await serve(app, sock=sock, ssl=ssl, **options)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if channel is None:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    else:
        channel.sendall(_READY)
        channel.setblocking(False)
        loop.add_reader(channel.fileno(), _read_channel, channel, stop)
    if on_ready is not None:
        on_ready()
    await stop.wait()
    if channel is not None:
        loop.remove_reader(channel.fileno())
    logger.info(
        "pid %d shutting down: %d WebSocket connections", os.getpid(), len(server.websockets)
    )
    await server.stop_accepting(DRAIN_TIMEOUT)
    # Held long polls and event streams answer before shutdown cancels their handlers (the
    # demo's and any app keeping mount_all's Transports as ``app.transports``; issue 15).
    transports = getattr(app, "transports", None)
    if transports is not None and hasattr(transports, "wait_closed"):
        transports.close()
        await transports.wait_closed()
    await server.shutdown()


def _read_channel(channel: socket.socket, stop: asyncio.Event) -> None:
    try:
        data = channel.recv(64)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        logger.warning("pid %d: the supervisor is gone, shutting down", os.getpid())
        stop.set()


# -- the supervisor ---------------------------------------------------------------------------

#: Builds a worker's command line from its index, the listening socket's fd and its channel's.
WorkerCommand = Callable[[int, int, int], Sequence[str]]


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    channel: socket.socket
    ready: asyncio.Future[bool]
    exited: asyncio.Future[int]
    replaced: asyncio.Future[None]
    ready_at: float | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Runs N worker processes on one listening socket, restarts them, relays signals.

    Args:
        command: builds a worker's command line from its index, the listening socket's file
            descriptor and its channel's (both are passed to the child).
        sock: the listening socket, bound by the caller; the supervisor keeps it open.
        workers: how many worker processes.
        reload_dirs: folders watched for changed ``.py`` files (``--reload``); None: no
            reloading. A change restarts the workers one by one; a worker that cannot start
            is not restarted until the next change.
        stop_timeout: seconds a worker has to exit after SIGTERM before it is killed.
        on_ready: called once every worker serves.
    """

    def __init__(
        self,
        command: WorkerCommand,
        sock: socket.socket,
        *,
        workers: int = 1,
        reload_dirs: Sequence[str] | None = None,
        stop_timeout: float = 30.0,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.command = command
        self.sock = sock
        self.workers = workers
        self.reload_dirs = list(reload_dirs) if reload_dirs is not None else None
        self.stop_timeout = stop_timeout
        self.on_ready = on_ready
        self._announced = False
        #: The current worker of each slot.
        self.slots: list[_Worker] = []
        #: Every worker process still running (current, starting or retiring).
        self.live: set[_Worker] = set()
        self._locks: list[asyncio.Lock] = []
        self._stopping: asyncio.Event | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._restart_again = False
        self._started = False
        self._tasks: list[asyncio.Task[Any]] = []

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status (0, or a worker's start failure)."""
        return int(asyncio.run(self._main()))

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._locks = [asyncio.Lock() for _ in range(self.workers)]
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.restart)
        if self.reload_dirs is not None:
            # Watching from before the first worker imports the code: no change is missed.
            self._tasks.append(asyncio.create_task(self._watch_files(self.reload_dirs)))
        try:
            status = await self._start()
            if status is not None or self._stopping.is_set():
                return status or 0
            self._tasks += [asyncio.create_task(self._keep(i)) for i in range(self.workers)]
            self._started = True
            if self._restart_again:  # asked for while the workers started
                self.restart()
            if self.slots[0].ready_at is not None:
                self._announce()
            else:  # --reload, and the code cannot start: no banner saying it serves
                logger.warning(
                    "supervisor %d: no worker serves yet: waiting for a file change", os.getpid()
                )
            await self._stopping.wait()
            logger.info("supervisor %d: stopping %d workers", os.getpid(), len(self.live))
            return 0
        finally:
            await self._stop_all()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _start(self) -> int | None:
        # The first worker alone: an application that cannot start fails once, with its own
        # message and exit status, instead of N times over.
        assert self._stopping is not None
        first = await self._spawn(0)
        self.slots.append(first)
        ready = await self._wait_ready(first)
        if self._stopping.is_set():
            return None
        if not ready and self.reload_dirs is None:
            status = await first.exited
            if status != 2:  # 2: the worker said why in one line (a bad MODULE:ATTR, say)
                logger.error("worker 0 (pid %d) could not start: %s", first.pid, _status(status))
            return status if status > 0 else 1
        for index in range(1, self.workers):
            self.slots.append(await self._spawn(index))
        await asyncio.gather(*(self._wait_ready(w) for w in self.slots[1:]))
        return None

    def _announce(self) -> None:
        """Say once that every worker serves (the log line, then ``on_ready``: the banner)."""
        if self._announced:
            return
        self._announced = True
        workers = "1 worker" if self.workers == 1 else f"{self.workers} workers"
        logger.info("supervisor %d: %s serving", os.getpid(), workers)
        if self.on_ready is not None:
            self.on_ready()

    def restart(self) -> None:
        """Replace every worker, one by one, without refusing a connection (SIGHUP)."""
        if self._stopping is None or self._stopping.is_set():
            return
        if not self._started:
            self._restart_again = True
            return
        if self._restart_task is not None and not self._restart_task.done():
            self._restart_again = True  # once the current round ends, with the newest code
            return
        self._restart_task = asyncio.get_running_loop().create_task(self._restart_rounds())

    async def _restart_rounds(self) -> None:
        while True:
            self._restart_again = False
            logger.info("supervisor %d: restarting the workers one by one", os.getpid())
            await self._restart_all()
            if not self._restart_again:
                return

    async def _restart_all(self) -> None:
        for index in range(self.workers):
            async with self._locks[index]:
                new = await self._spawn(index)
                if not await self._wait_ready(new):
                    status = await new.exited
                    logger.error(
                        "worker %d (pid %d) could not start (%s): the running workers stay",
                        index,
                        new.pid,
                        _status(status),
                    )
                    return
                old = self._replace(index, new)
            await self._retire(old)
        self._announce()  # with --reload, the first time the code could start

    def _replace(self, index: int, new: _Worker) -> _Worker:
        old = self.slots[index]
        self.slots[index] = new
        if not old.replaced.done():
            old.replaced.set_result(None)
        return old

    async def _keep(self, index: int) -> None:
        """Restart slot ``index``'s worker whenever it dies, with a growing delay."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            worker = self.slots[index]
            watched: set[asyncio.Future[Any]] = {worker.exited, worker.replaced}
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if worker.replaced.done():
                continue  # retired by a restart: its exit was asked for
            status = worker.exited.result()
            if worker.ready_at is None and self.reload_dirs is not None:
                logger.error("worker %d could not start: waiting for a file change", index)
                await worker.replaced
                continue
            if worker.ready_at is not None and loop.time() - worker.ready_at >= STABLE_AFTER:
                failures = 0
            delay = min(BACKOFF_FIRST * 2**failures, BACKOFF_MAX)
            failures += 1
            logger.warning(
                "worker %d (pid %d) %s: restarting it in %.1fs",
                index,
                worker.pid,
                _status(status),
                delay,
            )
            await asyncio.sleep(delay)  # a backoff, not a synchronisation
            async with self._locks[index]:
                if self.slots[index] is worker:
                    self._replace(index, await self._spawn(index))

    async def _spawn(self, index: int) -> _Worker:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        listen_fd = self.sock.fileno()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(index, listen_fd, child.fileno()),
                pass_fds=(listen_fd, child.fileno()),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        worker = _Worker(
            index,
            process,
            parent,
            ready=loop.create_future(),
            exited=loop.create_future(),
            replaced=loop.create_future(),
        )
        self.live.add(worker)
        worker.tasks.append(loop.create_task(self._follow(worker)))
        logger.debug("worker %d started (pid %d)", index, process.pid)
        return worker

    async def _follow(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        try:
            message = await loop.sock_recv(worker.channel, 64)
        except OSError:
            message = b""
        if message.startswith(_READY):
            worker.ready_at = loop.time()
            worker.ready.set_result(True)
        status = await worker.process.wait()
        if not worker.ready.done():
            worker.ready.set_result(False)
        worker.exited.set_result(status)
        worker.channel.close()
        self.live.discard(worker)

    async def _wait_ready(self, worker: _Worker) -> bool:
        assert self._stopping is not None
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        watched: set[asyncio.Future[Any]] = {worker.ready, stopping}
        try:
            done, _ = await asyncio.wait(
                watched, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
        if worker.ready in done:
            return worker.ready.result()
        if not stopping.done():
            logger.error(
                "worker %d (pid %d) not ready in %ss", worker.index, worker.pid, READY_TIMEOUT
            )
            _signal(worker, signal.SIGKILL)
            await worker.exited
        return False

    async def _retire(self, worker: _Worker) -> None:
        """Stop a worker gracefully: SIGTERM, then SIGKILL after ``stop_timeout``."""
        if worker.exited.done():
            return
        _signal(worker, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), self.stop_timeout)
        except asyncio.TimeoutError:
            logger.warning("worker %d (pid %d) did not stop: killing it", worker.index, worker.pid)
            _signal(worker, signal.SIGKILL)
            await worker.exited
        logger.info("worker %d (pid %d) stopped", worker.index, worker.pid)

    async def _stop_all(self) -> None:
        tasks = list(self._tasks)
        if self._restart_task is not None:
            tasks.append(self._restart_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(self._retire(w) for w in list(self.live)))
        followers = [task for w in self.slots for task in w.tasks]
        await asyncio.gather(*followers, return_exceptions=True)

    async def _watch_files(self, folders: Sequence[str]) -> None:
        from watchfiles import PythonFilter, awatch

        async for changes in awatch(*folders, watch_filter=PythonFilter()):
            names = sorted({os.path.relpath(path) for _, path in changes})
            logger.warning("%s changed: reloading", ", ".join(names[:3]))
            self.restart()


def _signal(worker: _Worker, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        worker.process.send_signal(sig)


def _status(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"
