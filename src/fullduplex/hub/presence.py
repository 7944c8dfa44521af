"""Presence: who is subscribed to a topic, and join and leave events.

A :class:`Presence` counts subscriptions per topic and per identity (``identity.id``; an
anonymous connection counts as :data:`ANONYMOUS_ID`). :meth:`Presence.who` answers
``{"identities": {id: connections}, "connections": n}``; :meth:`Presence.watch` calls a
function with every ``("join" | "leave", id)`` of a topic, one per subscription.

:class:`MemoryPresence` keeps the counts of one process in a dict. :class:`RedisPresence`
shares them between processes on one Redis:

* each process writes its counts of a topic as one hash, ``<prefix>p:<topic>:<process>``
  (field: identity, value: its subscriptions), with a TTL of ``expiry`` seconds, and adds
  its process id to the topic's set ``<prefix>ps:<topic>``;
* a heartbeat task rewrites every hash of the process each ``expiry / 3`` seconds (which also
  repairs what an outage lost), so the entries of a process that died (SIGKILL, lost machine)
  vanish on their own within ``expiry`` seconds; :meth:`~Presence.who` drops the processes
  whose hash expired from the set;
* join and leave events go through Redis pub/sub (``PUBLISH <prefix>pe:<topic>``); each
  process reads them with one ``PSUBSCRIBE <prefix>pe:*`` connection and calls its watchers.

Not done: a process that dies sends no leave events for its subscribers; watchers learn of
them only by asking :meth:`~Presence.who` again.

Limits: at most ``max_identities`` distinct identities are listed per topic and per process
(default :data:`DEFAULT_MAX_IDENTITIES`); subscriptions of identities beyond it are counted
together under :data:`OVERFLOW_ID` ("*"), so counts stay exact and memory bounded.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = [
    "ANONYMOUS_ID",
    "DEFAULT_MAX_IDENTITIES",
    "DEFAULT_PRESENCE_EXPIRY",
    "OVERFLOW_ID",
    "MemoryPresence",
    "Presence",
    "PresenceWatcher",
    "RedisPresence",
]

logger = logging.getLogger("fullduplex.hub")

#: The id an anonymous connection is counted under.
ANONYMOUS_ID = "anonymous"
#: The id the identities beyond ``max_identities`` are counted under together.
OVERFLOW_ID = "*"
#: Distinct identities listed per topic and per process.
DEFAULT_MAX_IDENTITIES = 10_000
#: Seconds the entries of a process outlive its last heartbeat (Redis).
DEFAULT_PRESENCE_EXPIRY = 30.0

#: Called with ``(kind, identity_id)``, kind ``"join"`` or ``"leave"``; must not block.
PresenceWatcher = Callable[[str, str], None]


class Presence(abc.ABC):
    """Subscriptions per topic and identity, and watchers of their joins and leaves.

    Args:
        max_identities: distinct identities listed per topic (per process); those beyond are
            counted under :data:`OVERFLOW_ID`. None for no limit.
    """

    def __init__(self, *, max_identities: int | None = DEFAULT_MAX_IDENTITIES) -> None:
        self.max_identities = max_identities
        #: This process' counts: topic -> identity id -> subscriptions.
        self.local: dict[str, Counter[str]] = {}
        self._watchers: dict[str, set[PresenceWatcher]] = {}

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the background work (nothing for the memory presence)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the background work and withdraw this process' entries."""

    def join(self, topic: str, identity_id: str) -> str:
        """Count one subscription of ``identity_id`` to ``topic``.

        Returns:
            The id it was counted under (:data:`OVERFLOW_ID` beyond ``max_identities``): give
            it back to :meth:`leave`.
        """
        counts = self.local.setdefault(topic, Counter())
        if (
            identity_id not in counts
            and self.max_identities is not None
            and len(counts) >= self.max_identities
        ):
            identity_id = OVERFLOW_ID
        counts[identity_id] += 1
        self.changed(topic, "join", identity_id)
        return identity_id

    def leave(self, topic: str, identity_id: str) -> None:
        """Uncount one subscription that :meth:`join` counted under ``identity_id``."""
        counts = self.local.get(topic)
        if counts is None or counts[identity_id] <= 0:
            return
        counts[identity_id] -= 1
        if counts[identity_id] == 0:
            del counts[identity_id]
        if not counts:
            del self.local[topic]
        self.changed(topic, "leave", identity_id)

    @abc.abstractmethod
    def changed(self, topic: str, kind: str, identity_id: str) -> None:
        """Share a change of this process' counts and announce it to the watchers."""

    @abc.abstractmethod
    async def who(self, topic: str) -> dict[str, Any]:
        """Who is subscribed to ``topic``: ``{"identities": {id: n}, "connections": total}``.

        Raises:
            HubUnavailable: the backend cannot be reached.
        """

    def watch(self, topic: str, watcher: PresenceWatcher) -> None:
        """Call ``watcher(kind, id)`` for every join and leave of ``topic`` from now on."""
        self._watchers.setdefault(topic, set()).add(watcher)

    def unwatch(self, topic: str, watcher: PresenceWatcher) -> None:
        """Stop calling ``watcher``."""
        watchers = self._watchers.get(topic)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[topic]

    def notify(self, topic: str, kind: str, identity_id: str) -> None:
        """Call the watchers of ``topic`` (an exception of one is logged, not raised)."""
        for watcher in list(self._watchers.get(topic, ())):
            try:
                watcher(kind, identity_id)
            except Exception:
                logger.exception("presence watcher failed")


def _answer(counts: Counter[str]) -> dict[str, Any]:
    identities = {key: n for key, n in counts.items() if n > 0}
    return {"identities": identities, "connections": sum(identities.values())}


class MemoryPresence(Presence):
    """Presence within one process (a dict of counters)."""

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to stop."""

    def changed(self, topic: str, kind: str, identity_id: str) -> None:
        """Announce the change to this process' watchers."""
        self.notify(topic, kind, identity_id)

    async def who(self, topic: str) -> dict[str, Any]:
        """Who is subscribed to ``topic`` in this process."""
        return _answer(self.local.get(topic, Counter()))


class RedisPresence(Presence):
    """Presence shared by every process on one Redis (see the module docstring).

    Args:
        url: the Redis URL.
        prefix: prefix of every key (the hub's default is ``fullduplex:``).
        expiry: seconds the entries of a process outlive its last heartbeat; the heartbeat
            runs every ``expiry / 3`` seconds.
        max_identities: see :class:`Presence`.
        timeout: seconds to wait for a Redis reply.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "fullduplex:",
        expiry: float = DEFAULT_PRESENCE_EXPIRY,
        max_identities: int | None = DEFAULT_MAX_IDENTITIES,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(max_identities=max_identities)
        if not expiry > 0:
            raise ValueError("expiry must be a positive number of seconds")
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.expiry = expiry
        #: This process' id in Redis keys.
        self.process = uuid.uuid4().hex
        self._redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._dirty: set[str] = set()
        self._events: list[tuple[str, str, str]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _hash(self, topic: str, process: str) -> str:
        return f"{self.prefix}p:{topic}:{process}"

    def _set(self, topic: str) -> str:
        return f"{self.prefix}ps:{topic}"

    async def start(self) -> None:
        """Start the writer, the heartbeat and the event reader."""
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.psubscribe(f"{self.prefix}pe:*")
        self._tasks = [
            asyncio.create_task(self._write_forever()),
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._read_events()),
        ]

    async def close(self) -> None:
        """Stop the tasks, delete this process' hashes and close the connections."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            pipe = self._redis.pipeline(transaction=False)
            for topic in self.local:
                pipe.delete(self._hash(topic, self.process))
                pipe.srem(self._set(topic), self.process)
            await pipe.execute()
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        await self._redis.aclose()

    def changed(self, topic: str, kind: str, identity_id: str) -> None:
        """Queue the topic's hash for writing and the event for publishing (no I/O here)."""
        self._dirty.add(topic)
        self._events.append((topic, kind, identity_id))
        self._wake.set()

    async def _write(self, topics: set[str], events: list[tuple[str, str, str]]) -> None:
        ttl = max(1, int(self.expiry * 1000))
        pipe = self._redis.pipeline(transaction=True)
        for topic in topics:
            key = self._hash(topic, self.process)
            pipe.delete(key)
            counts = self.local.get(topic)
            if counts:
                pipe.hset(key, mapping=dict(counts))
                pipe.pexpire(key, ttl)
                pipe.sadd(self._set(topic), self.process)
                pipe.pexpire(self._set(topic), ttl)
            else:
                pipe.srem(self._set(topic), self.process)
        for topic, kind, identity_id in events:
            pipe.publish(f"{self.prefix}pe:{topic}", json.dumps([kind, identity_id]))
        await pipe.execute()

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            topics, self._dirty = self._dirty, set()
            events, self._events = self._events, []
            try:
                await self._write(topics, events)
            except Exception as exc:  # Redis away: the heartbeat rewrites the hashes
                logger.warning("presence: cannot write to Redis: %s", exc)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.expiry / 3)
            try:
                await self._write(set(self.local), [])
            except Exception as exc:
                logger.warning("presence: heartbeat failed: %s", exc)

    async def _read_events(self) -> None:
        start = len(f"{self.prefix}pe:")
        while True:
            try:
                async for item in self._pubsub.listen():
                    if item.get("type") != "pmessage":
                        continue
                    channel = item["channel"]
                    topic = (channel.decode() if isinstance(channel, bytes) else channel)[start:]
                    kind, identity_id = json.loads(item["data"])
                    self.notify(topic, kind, identity_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("presence: event feed lost: %s", exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await self._pubsub.psubscribe(f"{self.prefix}pe:*")

    async def who(self, topic: str) -> dict[str, Any]:
        """Who is subscribed to ``topic`` in every live process."""
        from redis.exceptions import RedisError

        from .base import HubUnavailable

        try:
            processes = [
                p.decode() if isinstance(p, bytes) else p
                for p in await self._redis.smembers(self._set(topic))
            ]
            pipe = self._redis.pipeline(transaction=False)
            for process in processes:
                pipe.hgetall(self._hash(topic, process))
            hashes = await pipe.execute()
            total: Counter[str] = Counter()
            dead = []
            for process, fields in zip(processes, hashes, strict=True):
                if not fields:
                    dead.append(process)
                for key, value in fields.items():
                    name = key.decode() if isinstance(key, bytes) else key
                    total[name] += int(value)
            if dead:
                await self._redis.srem(self._set(topic), *dead)
        except (RedisError, OSError) as exc:
            raise HubUnavailable(f"presence: {exc}") from exc
        return _answer(total)
