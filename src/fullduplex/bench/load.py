"""What every load generator does before and around its load, whatever it sends.

Opening many connections a bounded number at a time (:func:`open_many`), making room for them
in the open-file limit (:func:`raise_file_limit`) and running on uvloop (:func:`run_loop`):
``fullduplex bench`` and the benchmark harness's raw-socket load generators
(``bench/loadgen/``) share these.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_CONNECT_CONCURRENCY",
    "BenchError",
    "OpenError",
    "open_many",
    "raise_file_limit",
    "run_loop",
]

T = TypeVar("T")

#: Handshakes in flight while connecting (a burst beyond a server's listen backlog, often
#: 100-1024, would only trigger SYN retransmits after 1 s).
DEFAULT_CONNECT_CONCURRENCY = 64


class BenchError(Exception):
    """The benchmark cannot run or produced no result; the message is for the user."""


class OpenError(BenchError):
    """Some connections could not be opened; :func:`open_many` closed the others."""

    def __init__(self, failed: int, wanted: int, first: BaseException) -> None:
        super().__init__(f"{failed} of {wanted} connections failed: {first!r}")
        #: Connections that could not be opened.
        self.failed = failed
        #: Connections asked for.
        self.wanted = wanted
        #: Why the first of them failed.
        self.first = first


async def open_many(
    open_one: Callable[[float | None], Awaitable[T]],
    count: int,
    *,
    close: Callable[[list[T]], Awaitable[object]],
    concurrency: int = DEFAULT_CONNECT_CONCURRENCY,
    deadline: float | None = None,
    ended: Callable[[], None] | None = None,
) -> list[T]:
    """Open ``count`` connections, at most ``concurrency`` at a time; all or none.

    Args:
        open_one: opens one connection within the seconds it is given (None: no bound).
        count: connections to open.
        close: closes the opened connections when another one failed.
        concurrency: connections opening at once.
        deadline: ``time.monotonic()`` by which every connection must be open; each
            ``open_one`` gets the time left. None: no deadline.
        ended: called each time an attempt ends, opened or not (for a progress display).

    Returns:
        The connections, in the order they opened.

    Raises:
        OpenError: at least one could not be opened (or the deadline passed); every attempt
            ended first and the opened connections were closed.
    """
    sem = asyncio.Semaphore(concurrency)
    opened: list[T] = []

    async def one() -> None:
        async with sem:
            try:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("connecting took too long")
                opened.append(await open_one(left))
            finally:
                if ended is not None:
                    ended()

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        await close(opened)
        raise OpenError(len(failed), count, failed[0])
    return opened


def raise_file_limit(connections: int, spare: int = 64) -> None:
    """Raise the soft open-file limit to ``connections + spare`` if it is lower.

    Raises:
        BenchError: the hard limit is lower than that.
    """
    needed = connections + spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(
            f"{connections:,} connections need {needed:,} open files; the limit is {hard:,} "
            "(raise it with ulimit -n)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def run_loop(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run ``main`` to the end on a new event loop and return its result.

    Args:
        main: the coroutine.
        loop: ``"uvloop"`` (which must be installed), ``"asyncio"``, or ``"auto"``: uvloop
            when it is installed, else asyncio's.

    Raises:
        ValueError: an unknown ``loop`` (``main`` is closed, never run).
    """
    if loop not in ("auto", "uvloop", "asyncio"):
        main.close()
        raise ValueError(f"unknown event loop {loop!r}")
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                main.close()
                raise
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
