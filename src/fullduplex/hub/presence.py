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

On a Redis Cluster (a ``redis+cluster://`` URL) the keys carry the topic as a hash tag,
``<prefix>p:{<topic>}:<process>`` and ``<prefix>ps:{<topic>}``, so a topic's hashes and set
live on one shard: each topic is written in a transaction of its own and read with one
round trip or two on its shard. Events stay classic pub/sub, which a cluster broadcasts to
every node, so the pattern subscription sits on any one master (another after a failover).

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
import random
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
    """Presence shared by every process on one Redis or one Redis Cluster (module docstring).

    Args:
        url: the Redis URL, or a Redis Cluster's (``redis+cluster://host:port,...``): each
            topic's keys are then placed by hash tag, ``<prefix>p:{<topic>}:<process>`` and
            ``<prefix>ps:{<topic>}``, so they live on one shard.
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
        self._router: Any = None
        self._redis: Any = None
        if url.lower().startswith("redis+cluster://"):
            from .slots import Router, parse_cluster_url, redis_options

            if "{" in prefix or "}" in prefix:
                raise ValueError("prefix must not contain braces (the hash tag is the topic's)")
            parsed = parse_cluster_url(url)
            options = redis_options(parsed.username, parsed.password, timeout)
            self._router = Router(parsed.nodes, options, timeout=timeout, max_connections=8)
        else:
            self._redis = aioredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        self._pubsub: Any = None
        self._dirty: set[str] = set()
        self._events: list[tuple[str, str, str]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _tag(self, topic: str) -> str:
        if self._router is None:
            return topic
        from .slots import hash_tagged

        return hash_tagged(topic)

    def _hash(self, topic: str, process: str) -> str:
        return f"{self.prefix}p:{self._tag(topic)}:{process}"

    def _set(self, topic: str) -> str:
        return f"{self.prefix}ps:{self._tag(topic)}"

    def _client(self, topic: str) -> Any:
        """The client of the node holding ``topic``'s keys (the one Redis, or its shard)."""
        if self._router is None:
            return self._redis
        return self._router.client(self._router.master(self._set(topic)))

    def _groups(self, topics: set[str] | list[str]) -> list[tuple[Any, list[str]]]:
        """Topics by the client whose transaction writes them.

        All at once on one Redis; one topic per transaction on a cluster, where a
        transaction must stay within one slot.
        """
        if not topics:
            return []
        if self._router is None:
            return [(self._redis, list(topics))]
        return [(self._client(topic), [topic]) for topic in topics]

    async def _subscribe_events(self) -> None:
        """Pattern-subscribe to every topic's events.

        On a cluster, on any master: a classic PUBLISH reaches every node.
        """
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._router is None:
            client = self._redis
        else:
            await self._router.refresh()
            client = self._router.client(random.choice(self._router.masters()))
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.psubscribe(f"{self.prefix}pe:*")

    async def start(self) -> None:
        """Start the writer, the heartbeat and the event reader."""
        await self._subscribe_events()
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
            for client, topics in self._groups(list(self.local)):
                pipe = client.pipeline(transaction=False)
                for topic in topics:
                    pipe.delete(self._hash(topic, self.process))
                    pipe.srem(self._set(topic), self.process)
                await pipe.execute()
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        if self._router is not None:
            await self._router.close()
        else:
            await self._redis.aclose()

    def changed(self, topic: str, kind: str, identity_id: str) -> None:
        """Queue the topic's hash for writing and the event for publishing (no I/O here)."""
        self._dirty.add(topic)
        self._events.append((topic, kind, identity_id))
        self._wake.set()

    async def _write(self, topics: set[str], events: list[tuple[str, str, str]]) -> None:
        ttl = max(1, int(self.expiry * 1000))
        pipes = []
        for client, group in self._groups(topics):
            pipe = client.pipeline(transaction=True)
            for topic in group:
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
            pipes.append((set(group), pipe))
        for topic, kind, identity_id in events:
            # In the transaction of the event's topic (every event's topic is written).
            pipe = next((pipe for group, pipe in pipes if topic in group), None)
            if pipe is None:
                pipe = self._client(topic).pipeline(transaction=False)
                pipes.append(({topic}, pipe))
            pipe.publish(f"{self.prefix}pe:{topic}", json.dumps([kind, identity_id]))
        try:
            await asyncio.gather(*(pipe.execute() for _, pipe in pipes))
        except Exception:
            if self._router is not None:
                self._router.refresh_soon()  # a failover or a moved slot: find the shards
            raise

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
                    if self._router is None:
                        await self._pubsub.psubscribe(f"{self.prefix}pe:*")
                    else:  # the node may be gone (failover): subscribe on another
                        await self._subscribe_events()

    async def who(self, topic: str) -> dict[str, Any]:
        """Who is subscribed to ``topic`` in every live process."""
        from redis.exceptions import RedisError

        from .base import HubUnavailable

        try:
            client = self._client(topic)
            processes = [
                p.decode() if isinstance(p, bytes) else p
                for p in await client.smembers(self._set(topic))
            ]
            pipe = client.pipeline(transaction=False)
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
                await client.srem(self._set(topic), *dead)
        except (RedisError, OSError) as exc:
            if self._router is not None:
                self._router.refresh_soon()
            raise HubUnavailable(f"presence: {exc}") from exc
        return _answer(total)
