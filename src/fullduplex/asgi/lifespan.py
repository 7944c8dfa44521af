"""The ASGI lifespan protocol: the application's startup and shutdown, around the server's life.

:class:`Lifespan` runs the application once with a ``lifespan`` scope for the server's life.
Its :meth:`Lifespan.startup` is a startup hook of the server (it completes before the server
listens) and :meth:`Lifespan.shutdown` a shutdown hook (it runs once every connection has
closed). ``scope["state"]`` is the dict each request's scope gets a shallow copy of.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .types import ASGIApplication, Message

__all__ = ["Lifespan", "LifespanFailed"]

logger = logging.getLogger("fullduplex.asgi")


class LifespanFailed(RuntimeError):
    """The application reported ``lifespan.startup.failed`` (or raised during startup).

    The server does not start listening.
    """


class Lifespan:
    """Runs an ASGI application's lifespan protocol.

    Args:
        app: the ASGI application.
        state: the lifespan state dict (``scope["state"]``), filled by the application.
        mode: ``"auto"`` (an application that raises before answering startup has no lifespan
            support: logged, not an error), ``"on"`` (that is an error too) or ``"off"``
            (never run). uvicorn's ``--lifespan`` values.
    """

    def __init__(self, app: ASGIApplication, state: dict[str, Any], mode: str = "auto") -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be 'auto', 'on' or 'off', not {mode!r}")
        self.app = app
        self.state = state
        self.mode = mode
        #: True once the application answered ``lifespan.startup.complete``.
        self.started = False
        self._events: asyncio.Queue[Message] | None = None
        self._answer: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait for the application's answer.

        Raises:
            LifespanFailed: the application reported a failure, or raised (in ``"on"`` mode,
                or after it answered anything).
        """
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        self._answer = loop.create_future()
        self._task = loop.create_task(self._main())
        await self._events.put({"type": "lifespan.startup"})
        answer = await self._answer
        if answer["type"] == "lifespan.startup.complete":
            self.started = True
        elif answer["type"] == "lifespan.startup.failed":
            raise LifespanFailed(f"ASGI startup failed: {answer.get('message', '')}")
        elif self.mode == "on":
            raise LifespanFailed("the ASGI application does not support lifespan")

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the answer (a failure is logged)."""
        if not self.started or self._task is None or self._events is None:
            return
        self.started = False  # once: a second server shutdown does not ask again
        self._answer = asyncio.get_running_loop().create_future()
        await self._events.put({"type": "lifespan.shutdown"})
        answer = await self._answer
        if answer["type"] == "lifespan.shutdown.failed":
            logger.error("ASGI shutdown failed: %s", answer.get("message", ""))
        await asyncio.wait([self._task])

    async def _main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            if not self.started and self.mode == "auto":
                logger.info("ASGI lifespan not supported by the application (%r)", exc)
                self._reply({"type": "lifespan.unsupported"})
            else:
                logger.exception("ASGI lifespan raised")
                self._reply({"type": "lifespan.startup.failed", "message": repr(exc)})
        else:
            # Returned without answering: no lifespan support (ASGI: "the server should
            # continue without it").
            self._reply({"type": "lifespan.unsupported"})

    async def _receive(self) -> Message:
        assert self._events is not None
        return await self._events.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind not in (
            "lifespan.startup.complete",
            "lifespan.startup.failed",
            "lifespan.shutdown.complete",
            "lifespan.shutdown.failed",
        ):
            raise RuntimeError(f"unexpected lifespan message {kind!r}")
        self._reply(message)

    def _reply(self, message: Message) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(message)
