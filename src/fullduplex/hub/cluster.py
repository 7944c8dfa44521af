"""The Redis Cluster backend: topics spread over the shards of a Redis Cluster.

Install with ``pip install fullduplex[redis]``. Needs Redis 7.0 or later (sharded pub/sub).
Pick it with a URL naming one or more nodes of the cluster (the others are discovered)::

    Hub("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")

Placement. Every key of a topic carries the topic in a hash tag, so one topic lives on one
shard and its scripts touch one slot: ``<prefix>{<topic>}:stream`` (the messages, exactly as
in :mod:`fullduplex.hub.redis`: the sequence number is the stream ID, one Lua script
publishes), ``<prefix>{<topic>}:epoch``, and the shard channel ``<prefix>{<topic>}:live``.
A topic containing ``{`` or ``}`` is placed by a hash of its name instead
(``<prefix>{<sha1>}<topic>:stream``), since a brace would end or empty the tag. Topics are
spread over the shards by Redis' slot hash (CRC16 of the tag, modulo 16384): one shard holds
a topic's order, history and epoch, so publishing, history and resuming keep every
guarantee of the single Redis backend.

The live feed. One ``XREAD`` cannot read streams of different slots (``CROSSSLOT``), so the
single-node reader does not carry over. The publish script ends with ``SPUBLISH`` of the
message (sequence number, time, epoch, data) on the topic's shard channel, and each hub
keeps one pub/sub connection per master that owns a topic it listens to, with one
``SSUBSCRIBE`` per topic. Sharded pub/sub stays within the shard (a classic ``PUBLISH`` is
broadcast to every node of the cluster), and the script's atomicity puts the notifications
of a topic in sequence order. Pub/sub delivers at most once, so the stream stays the source
of truth. The hub subscribes before it reads a topic's position
(:meth:`~fullduplex.hub.base.Backend.prepare_listen`), so a feed starts with no read; after
any later confirmed ``SSUBSCRIBE`` (reconnection, failover, slot moved) the topic is read
from its cursor with one script, and a notification that does not follow the cursor (a
hole, another epoch) makes the hub read again from history. Subscribers
get every message once and in order, gaps where history was trimmed, and a reset where the
topic's data was lost.

Failover. Redis replicates asynchronously: a master can acknowledge a publish and die before
its replica has it. The reader of each hub notices when the shard's connection drops,
re-reads the slot map until the promoted replica owns the slots, subscribes there and reads
on from each cursor. A topic whose last sequence number is now below the cursor, or whose
entry at the cursor is not the one the hub delivered (compared by its publish time: the
promoted replica numbered new messages over the lost ones), gets one ``reset`` gap, and the
hub's subscribers start over from the topic's oldest entry. ``wait_replicas=1`` makes a
publish wait for ``WAIT 1`` on the same connection: it is acknowledged only once a replica
has it, and raises :class:`~fullduplex.hub.base.HubUnavailable` when none confirms within
``wait_timeout`` (the message may then be kept or lost).

Commands go to the master of the key's slot (:mod:`fullduplex.hub.slots`): a command Redis
did not run is sent again, one whose connection failed is not (a publish could run twice),
it raises ``HubUnavailable``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import (
    DEFAULT_PUBLISH_KEY_TTL,
    Backend,
    Deliver,
    Gap,
    GapReason,
    HubUnavailable,
    Message,
    TopicConfig,
)
from .redis import (
    _HISTORY,
    _INFO,
    _LUA_COMMON,
    _PUBLISH_BODY,
    DEFAULT_BLOCK,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PREFIX,
    DEFAULT_RECONNECT_DELAY,
    DEFAULT_TIMEOUT,
    READ_COUNT,
    _message,
    key_ttl_ms,
)
from .slots import (
    CLUSTER_SCHEME,
    DEFAULT_WAIT_TIMEOUT,
    UNAVAILABLE,
    Address,
    ClusterURL,
    Router,
    Script,
    evalsha,
    hash_tagged,
    parse_cluster_url,
    redis_options,
)

__all__ = [
    "CLUSTER_SCHEME",
    "DEFAULT_WAIT_TIMEOUT",
    "ClusterURL",
    "RedisClusterBackend",
    "parse_cluster_url",
]

logger = logging.getLogger("fullduplex.hub")


# KEYS stream, epoch (and the idempotency key); ARGV as the single-node publish, then the
# topic's shard channel (not a key: a resharding would find it missing and answer TRYAGAIN).
# The notification is "seq,time,epoch,data" on that channel, in sequence order (scripts are
# atomic); a publish answered from its idempotency key sends none.
_PUBLISH = (
    _PUBLISH_BODY
    + """
redis.call('SPUBLISH', ARGV[5], seq .. ',' .. now .. ',' .. epoch .. ',' .. ARGV[1])
return {seq, now, epoch}
"""
)

# KEYS stream, epoch; ARGV since, count, max age in microseconds or '', the reader's epoch
# or '', the publish time of the entry the reader delivered last ('' if unknown). Returns
# {last, first, entries from the start, epoch or '', 1 if the reader's numbering is gone}.
_SYNC = (
    _LUA_COMMON
    + """
local key = KEYS[1]
local since = tonumber(ARGV[1])
if ARGV[3] ~= '' and redis.call('EXISTS', key) == 1 then
  trim_age(key, tonumber(now_us()) - tonumber(ARGV[3]))
end
local last, first = stream_info(key)
local epoch = redis.call('GET', KEYS[2]) or ''
local reset = 0
if since > last then
  reset = 1
elseif since > 0 and ARGV[4] ~= '' and epoch ~= '' and ARGV[4] ~= epoch then
  reset = 1
elseif since > 0 and ARGV[5] ~= '' and since >= first then
  -- The entry the reader delivered last must still be the one at its number.
  local at = redis.call('XRANGE', key, since .. '-0', since .. '-0')
  if #at == 1 and at[1][2][2] ~= ARGV[5] then reset = 1 end
end
local start = since + 1
if reset == 1 or since < first - 1 then start = first end
if start > last then return {last, first, {}, epoch, reset} end
return {last, first, redis.call('XRANGE', key, start .. '-0', '+', 'COUNT', ARGV[2]), epoch, reset}
"""
)

_PUBLISH_SCRIPT = Script(_PUBLISH)
_HISTORY_SCRIPT = Script(_HISTORY)
_INFO_SCRIPT = Script(_INFO)
_SYNC_SCRIPT = Script(_SYNC)


class _Topic:
    """What the live feed knows of one listened topic."""

    __slots__ = (
        "again",
        "confirmed",
        "cursor",
        "epoch",
        "live",
        "mark",
        "pending",
        "shard",
        "subscribed",
        "syncing",
    )

    def __init__(self, cursor: int, epoch: bytes, *, live: bool = True) -> None:
        #: Whether the cursor is known; until then (:meth:`RedisClusterBackend.prepare_listen`)
        #: notifications wait in ``pending``.
        self.live = live
        #: The last sequence number delivered.
        self.cursor = cursor
        #: Its epoch (b"" if unknown).
        self.epoch = epoch
        #: Its publish time as Redis wrote it (b"" if unknown): tells it from a message a
        #: promoted replica numbered the same after losing it.
        self.mark = b""
        #: The shard whose pub/sub connection carries it, None while unplaced.
        self.shard: _Shard | None = None
        #: Whether a read from history is running; notifications wait in ``pending``.
        self.syncing = False
        self.again = False
        self.pending: list[bytes] = []
        #: Set by the first confirmed SSUBSCRIBE; ``confirmed`` counts them.
        self.subscribed = asyncio.Event()
        self.confirmed = 0


class _Shard:
    """One pub/sub connection to a master: the live feed of its listened topics."""

    def __init__(self, backend: RedisClusterBackend, address: Address) -> None:
        self.backend = backend
        self.address = address
        #: Topics whose channels should be subscribed here.
        self.topics: set[str] = set()
        self.connected = False
        self._pubsub: Any = None
        self._ops: collections.deque[tuple[str, str]] = collections.deque()
        # SUNSUBSCRIBEs sent and not yet confirmed, by channel: any other is the node's.
        self._unsubscribing: dict[bytes, int] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] = asyncio.ensure_future(self._run())

    def __repr__(self) -> str:
        return f"<_Shard {self.name}>"

    @property
    def name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def add(self, topic: str) -> None:
        self.topics.add(topic)
        self._request("SSUBSCRIBE", topic)

    def remove(self, topic: str) -> None:
        self.topics.discard(topic)
        self._request("SUNSUBSCRIBE", topic)

    def _request(self, command: str, topic: str) -> None:
        if not self.connected:
            return  # the connection subscribes to every topic wanted when it is made
        channel = self.backend.channel(topic)
        self._ops.append((command, channel))
        if command == "SUNSUBSCRIBE":
            key = channel.encode()
            self._unsubscribing[key] = self._unsubscribing.get(key, 0) + 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        pubsub = self._pubsub
        try:
            while self._ops and self._pubsub is pubsub:
                # One channel a command: the channels of one SSUBSCRIBE must share a slot
                # (CROSSSLOT otherwise), and topics of one slot are rare. Writes only, so
                # thousands of topics go out back to back.
                command, channel = self._ops.popleft()
                await pubsub.execute_command(command, channel)
        except (RedisError, OSError) as exc:
            logger.debug("redis cluster: cannot subscribe at %s: %s", self.name, exc)
            # The reader notices the connection's loss and subscribes again on return.

    async def _run(self) -> None:
        backend = self.backend
        min_delay, max_delay = backend.reconnect_delay
        delay = min_delay
        down_since: float | None = None
        loop = asyncio.get_running_loop()
        while self.topics and not backend.closing:
            try:
                await self._read(down_since)
                down_since = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, (*UNAVAILABLE, RedisError)):
                    logger.exception("redis cluster live feed at %s failed", self.name)
                if down_since is None:
                    down_since = loop.time()
                    logger.warning(
                        "redis cluster node %s unavailable (%s); reconnecting", self.name, exc
                    )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, max_delay)
                # The node may be gone for good (failover): ask the cluster where the
                # topics live now, and move those that live elsewhere to their shard.
                with contextlib.suppress(HubUnavailable):
                    await backend.router.refresh()
                backend.relocate(self)
                if down_since is not None and not self.topics:
                    backend.reconnects += 1
                    logger.info(
                        "redis cluster: topics of %s moved elsewhere after %.1f s",
                        self.name,
                        loop.time() - down_since,
                    )
            else:
                delay = min_delay
        backend.shard_ended(self)

    async def _read(self, down_since: float | None) -> None:
        backend = self.backend
        client = aioredis.Redis(
            host=self.address[0],
            port=self.address[1],
            socket_timeout=backend.timeout,
            **backend.options,
        )
        pubsub: Any = client.pubsub()
        try:
            await pubsub.connect()
            self._unsubscribing.clear()
            # Every topic wanted now, then what listen and unlisten ask meanwhile, in order.
            self._ops = collections.deque(
                ("SSUBSCRIBE", backend.channel(topic)) for topic in self.topics
            )
            self._pubsub = pubsub
            self.connected = True
            self._flusher = asyncio.ensure_future(self._flush())
            if down_since is not None:
                logger.info(
                    "redis cluster node %s is back after %.1f s",
                    self.name,
                    asyncio.get_running_loop().time() - down_since,
                )
                backend.reconnects += 1
            await self._listen(pubsub)
        finally:
            self.connected = False
            self._pubsub = None
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def _listen(self, pubsub: Any) -> None:
        backend = self.backend
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged: float | None = None
        while self.topics and not backend.closing:
            message = await pubsub.get_message(timeout=backend.block)
            now = loop.time()
            if message is None:
                if pinged is None and now - heard >= backend.block:
                    # Silence: make sure the node is still there.
                    await pubsub.execute_command("PING")
                    pinged = now
                elif pinged is not None and now - pinged > (backend.timeout or backend.block):
                    raise RedisTimeoutError(f"no answer to PING from {self.name}")
                continue
            heard, pinged = now, None
            kind = message["type"]
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "pong":
                continue
            channel = message["channel"]
            topic = backend.topic_of(channel)
            if kind == "sunsubscribe":
                count = self._unsubscribing.pop(channel, 0)
                if count > 1:
                    self._unsubscribing[channel] = count - 1
                elif not count and topic in self.topics:
                    # Not asked for: the slot moved to another node (resharding, failover
                    # of a node that is alive). Find where it lives now.
                    self.topics.discard(topic)
                    backend.relocate_soon(topic)
            elif topic is None or topic not in self.topics:
                continue
            elif kind == "smessage":
                backend.notified(topic, message["data"])
            elif kind == "ssubscribe":
                backend.subscribed(topic)

    async def close(self) -> None:
        for task in (self.task, self._flusher):
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)


class RedisClusterBackend(Backend):
    """Topics in the streams of a Redis Cluster, shared by every hub on the cluster.

    Args:
        url: ``redis+cluster://[user:password@]host:port[,host:port...]`` naming one or more
            nodes (the others are discovered); options ``?wait_replicas=N&wait_timeout=S``.
        prefix: prefix of every key (no braces: the hash tag is the topic's).
        block: seconds of silence on a pub/sub connection before a PING checks it.
        connect_timeout: seconds to wait for a connection; None waits forever.
        timeout: seconds to wait for a reply; None waits forever.
        reconnect_delay: seconds between reconnection attempts of the live feed, first and
            most.
        max_connections: connections per node for commands; more concurrent commands wait
            for a free one (up to ``timeout``, then :class:`HubUnavailable`).
        wait_replicas: after each publish, wait until this many replicas have it (``WAIT``
            on the same connection); 0 (the default) does not wait. Overrides the URL's.
        wait_timeout: seconds to wait for them; past it the publish raises
            :class:`HubUnavailable` (the message is on the master and may be lost by a
            failover, or kept). Overrides the URL's.
        publish_key_ttl: seconds a publish's idempotency key is kept on its topic's shard (a
            retry with it, from any process, is answered and not published again); None or
            0 keeps none.
    """

    def __init__(
        self,
        url: str = f"{CLUSTER_SCHEME}://127.0.0.1:7000",
        *,
        prefix: str = DEFAULT_PREFIX,
        block: float = DEFAULT_BLOCK,
        # Timeouts
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
        reconnect_delay: tuple[float, float] = DEFAULT_RECONNECT_DELAY,
        wait_timeout: float | None = None,
        # Limits
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        wait_replicas: int | None = None,
        publish_key_ttl: float | None = DEFAULT_PUBLISH_KEY_TTL,
    ) -> None:
        parsed = parse_cluster_url(url)
        if block <= 0:
            raise ValueError("block must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain braces (the hash tag is the topic's)")
        wait_replicas = parsed.wait_replicas if wait_replicas is None else wait_replicas
        wait_timeout = parsed.wait_timeout if wait_timeout is None else wait_timeout
        if wait_replicas < 0:
            raise ValueError("wait_replicas must be at least 0")
        if not wait_timeout > 0:
            raise ValueError("wait_timeout must be a positive number of seconds")
        #: The cluster URL.
        self.url = url
        #: Seconds an idempotency key is kept (None or 0: none is).
        self.publish_key_ttl = publish_key_ttl
        self._key_ttl_ms = key_ttl_ms(publish_key_ttl)
        #: Prefix of every key.
        self.prefix = prefix
        self.block = block
        self.timeout = timeout
        self.reconnect_delay = reconnect_delay
        #: Replicas each publish waits for (0: none).
        self.wait_replicas = wait_replicas
        #: Seconds a publish waits for them.
        self.wait_timeout = wait_timeout
        self.options = redis_options(parsed.username, parsed.password, connect_timeout)
        self.router = Router(
            parsed.nodes, self.options, timeout=timeout, max_connections=max_connections
        )
        self.closing = False
        self._deliver: Deliver | None = None
        self._topics: dict[str, _Topic] = {}
        self._channels: dict[bytes, str] = {}
        self._shards: dict[Address, _Shard] = {}
        self._homeless: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Times a node of the live feed came back after an outage.
        self.reconnects = 0
        #: Seconds between the publish of the last message the live feed received (Redis'
        #: clock) and its arrival here (this machine's clock): the feed's lag, for metrics.
        self.lag = 0.0

    @property
    def available(self) -> bool:
        """Whether every node of the live feed is connected (False during an outage)."""
        return not self._homeless and all(
            shard.connected for shard in self._shards.values() if shard.topics
        )

    # Keys

    def _key(self, topic: str, kind: str) -> str:
        return f"{self.prefix}{hash_tagged(topic)}:{kind}"

    def key(self, topic: str) -> str:
        """The Redis key of a topic's stream."""
        return self._key(topic, "stream")

    def publish_key(self, topic: str, key: str) -> str:
        """The Redis key remembering a publish's idempotency ``key`` (on the topic's slot)."""
        return self._key(topic, f"k:{key}")

    def epoch_key(self, topic: str) -> str:
        """The Redis key of a topic's epoch (see :class:`~fullduplex.hub.base.Gap`)."""
        return self._key(topic, "epoch")

    def channel(self, topic: str) -> str:
        """The shard channel that carries a topic's live messages."""
        return self._key(topic, "live")

    def node(self, topic: str) -> str:
        """``host:port`` of the master that holds ``topic`` (from the current slot map)."""
        host, port = self.router.master(self.key(topic))
        return f"{host}:{port}"

    def topic_of(self, channel: bytes | str) -> str | None:
        """The listened topic of a shard channel, None if none."""
        if isinstance(channel, str):
            channel = channel.encode()
        return self._channels.get(channel)

    # Backend

    async def start(self, deliver: Deliver) -> None:
        """Read the slot map from the nodes named in the URL.

        Raises:
            HubUnavailable: no node answers (a wrong URL fails early).
        """
        await self.router.refresh()
        self._deliver = deliver

    async def close(self) -> None:
        """Stop the live feed and close the connections."""
        self._deliver = None
        self.closing = True
        for shard in list(self._shards.values()):
            await shard.close()
        for task in list(self._tasks):
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
        await self.router.close()

    async def publish(
        self, topic: str, data: Any, config: TopicConfig, key: str | None = None
    ) -> Message:
        """See :meth:`Backend.publish`; never retried once sent (see the module's docstring).

        A ``key`` is kept on the topic's shard (same hash tag) for ``publish_key_ttl``
        seconds: a publish with the same key, from any process, returns the first one's message.

        Raises:
            HubUnavailable: as :meth:`Backend.publish`; also when ``wait_replicas`` replicas
                did not confirm it within ``wait_timeout`` (it may then be kept or lost).
        """
        payload = json.dumps(data, separators=(",", ":"))
        size = "" if config.history_size is None else str(config.history_size)
        age = "" if config.history_age is None else str(int(config.history_age * 1e6))
        keys = [self.key(topic), self.epoch_key(topic)]
        if key is not None and self.publish_key_ttl:
            keys.append(self.publish_key(topic, key))
        args = [payload, size, age, self._key_ttl_ms, self.channel(topic)]
        wait = (self.wait_replicas, int(self.wait_timeout * 1000)) if self.wait_replicas else None
        try:
            (seq, now, epoch), confirmed = await self.router.call(
                keys[0],
                lambda client, asking: evalsha(
                    client, _PUBLISH_SCRIPT, keys, args, asking=asking, wait=wait
                ),
            )
        except UNAVAILABLE as exc:
            raise HubUnavailable(f"redis unavailable, {topic!r} not published: {exc}") from exc
        if confirmed is not None and confirmed < self.wait_replicas:
            raise HubUnavailable(
                f"{topic!r} {int(seq)} reached {confirmed} of {self.wait_replicas} replicas "
                f"in {self.wait_timeout} s: a failover may lose it"
            )
        return Message(topic, int(seq), data, int(now) / 1e6, epoch.decode())

    async def history(
        self,
        topic: str,
        since: int,
        limit: int | None,
        config: TopicConfig,
        epoch: str | None = None,
    ) -> tuple[Gap | None, list[Message]]:
        """See :meth:`Backend.history`."""
        count = "" if limit is None else str(limit)
        age = "" if config.history_age is None else str(int(config.history_age * 1e6))
        last, first, entries, current = await self._script(
            topic, _HISTORY_SCRIPT, [since, count, age, epoch or ""]
        )
        current = current.decode()
        gap: Gap | None = None
        if since > last or (since and epoch and epoch != current):
            gap = Gap(topic, since, first, GapReason.RESET, current)
        elif since < first - 1:
            gap = Gap(topic, since, first)
        return gap, [_message(topic, entry_id, fields) for entry_id, fields in entries]

    async def last_seq(self, topic: str) -> int:
        """See :meth:`Backend.last_seq`."""
        last, _, _ = await self._script(topic, _INFO_SCRIPT, [])
        return int(last)

    async def position(self, topic: str) -> tuple[int, str]:
        """See :meth:`Backend.position`."""
        last, _, epoch = await self._script(topic, _INFO_SCRIPT, [])
        return int(last), epoch.decode()

    async def _script(self, topic: str, script: Script, args: list[Any]) -> Any:
        keys = [self.key(topic), self.epoch_key(topic)]
        try:
            reply, _ = await self.router.call(
                keys[0],
                lambda client, asking: evalsha(client, script, keys, args, asking=asking),
            )
        except UNAVAILABLE as exc:
            raise HubUnavailable(f"redis unavailable: {exc}") from exc
        return reply

    async def prepare_listen(self, topic: str) -> None:
        """Subscribe to the topic's shard channel and wait for Redis to confirm it.

        The hub reads the topic's position after this, so every message published after
        that position comes as a notification: the live feed starts without a read from
        history, and without a burst of the messages published while subscribing.

        Raises:
            HubUnavailable: no confirmation within ``timeout``.
        """
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic(0, b"", live=False)
            self._channels[self.channel(topic).encode()] = topic
            self._place(topic)
        if not state.subscribed.is_set():
            try:
                await asyncio.wait_for(state.subscribed.wait(), self.timeout)
            except asyncio.TimeoutError:
                raise HubUnavailable(f"redis cluster: no subscription to {topic!r}") from None

    def listen(self, topic: str, after: int, epoch: str = "") -> None:
        """Deliver the topic's messages after ``after`` (of ``epoch``).

        From the topic's shard channel, subscribed now unless :meth:`prepare_listen` did.
        """
        state = self._topics.get(topic)
        if state is not None and not state.live:
            state.live, state.cursor, state.epoch = True, after, epoch.encode()
            pending, state.pending = state.pending, []
            again, state.again = state.again, False
            # Read from history if the subscription was ever lost, notifications were
            # dropped, or they do not follow the position the hub read.
            follows = all(self._follow(topic, state, data) for data in pending)
            if state.confirmed != 1 or again or not follows:
                self.sync(topic)
            return
        if state is not None and state.shard is not None:
            state.shard.remove(topic)
        self._topics[topic] = _Topic(after, epoch.encode())
        self._channels[self.channel(topic).encode()] = topic
        self._place(topic)

    def unlisten(self, topic: str) -> None:
        """Unsubscribe from the topic's shard channel."""
        state = self._topics.pop(topic, None)
        self._channels.pop(self.channel(topic).encode(), None)
        self._homeless.discard(topic)
        if state is not None and state.shard is not None:
            state.shard.remove(topic)

    # The live feed

    def _place(self, topic: str) -> None:
        state = self._topics.get(topic)
        if state is None or self.closing:
            return
        try:
            address = self.router.master(self.key(topic))
        except HubUnavailable:
            self._homeless.add(topic)
            self.relocate_soon(topic)
            return
        self._homeless.discard(topic)
        shard = self._shards.get(address)
        if shard is None or shard.task.done():
            shard = self._shards[address] = _Shard(self, address)
        state.shard = shard
        shard.add(topic)

    def relocate(self, shard: _Shard) -> None:
        """Move the topics of ``shard`` whose slots another master serves now."""
        for topic in list(shard.topics):
            address = self.router.slots[key_slot(self.key(topic).encode())]
            if address != shard.address:
                shard.topics.discard(topic)
                self._place(topic)

    def relocate_soon(self, topic: str) -> None:
        """Read the slot map again, then subscribe to ``topic`` where it lives now."""
        self._spawn(self._relocate(topic))

    async def _relocate(self, topic: str) -> None:
        min_delay, max_delay = self.reconnect_delay
        delay = min_delay
        while not self.closing:
            with contextlib.suppress(HubUnavailable):
                await self.router.refresh()
                state = self._topics.get(topic)
                if state is not None and (state.shard is None or topic not in state.shard.topics):
                    self._place(topic)
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, max_delay)

    def shard_ended(self, shard: _Shard) -> None:
        """Forget a shard whose task ended; place any topic it still had."""
        if self._shards.get(shard.address) is shard:
            del self._shards[shard.address]
        for topic in list(shard.topics):  # the backend closes, or topics moved meanwhile
            self._place(topic)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def notified(self, topic: str, data: bytes) -> None:
        """A notification from the topic's shard channel: deliver it if it follows."""
        state = self._topics.get(topic)
        if state is None:
            return
        if state.syncing or not state.live:
            if len(state.pending) >= READ_COUNT:
                # More than one read's worth: they are in history, read them from there.
                state.pending.clear()
                state.again = True
            state.pending.append(data)
            return
        if not self._follow(topic, state, data):
            self.sync(topic)

    def _follow(self, topic: str, state: _Topic, data: bytes) -> bool:
        """Deliver a notification that follows the cursor; False if history must tell."""
        seq_, time_, epoch, payload = data.split(b",", 3)
        seq = int(seq_)
        if seq <= state.cursor:
            return True  # delivered already (read from history meanwhile)
        if seq != state.cursor + 1 or (state.epoch and epoch != state.epoch):
            return False
        self._emit(topic, state, seq, time_, epoch, payload)
        self.lag = max(0.0, time.time() - int(time_) / 1e6)
        return True

    def _emit(
        self, topic: str, state: _Topic, seq: int, time_: bytes, epoch: bytes, payload: bytes
    ) -> None:
        state.cursor, state.mark, state.epoch = seq, time_, epoch
        if self._deliver is not None:
            self._deliver(
                Message(topic, seq, json.loads(payload), int(time_) / 1e6, epoch.decode())
            )

    def subscribed(self, topic: str) -> None:
        """Redis confirmed the topic's SSUBSCRIBE: read on from the cursor in history."""
        state = self._topics.get(topic)
        if state is None:
            return
        state.confirmed += 1
        state.subscribed.set()
        if state.live:
            self.sync(topic)

    def sync(self, topic: str) -> None:
        """Read ``topic`` from its cursor in history (after a (re)subscription or a hole)."""
        state = self._topics.get(topic)
        if state is None or not state.live:
            return
        if state.syncing:
            state.again = True
            return
        state.syncing = True
        self._spawn(self._sync(topic, state))

    async def _sync(self, topic: str, state: _Topic) -> None:
        min_delay, max_delay = self.reconnect_delay
        delay = min_delay
        try:
            while self._topics.get(topic) is state and not self.closing:
                state.again = False
                try:
                    full = await self._read_history(topic, state)
                except HubUnavailable as exc:
                    logger.debug("redis cluster: cannot read %r yet: %s", topic, exc)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, max_delay)
                    continue
                if full or state.again:
                    continue
                pending, state.pending = state.pending, []
                if all(self._follow(topic, state, data) for data in pending):
                    return
        finally:
            state.syncing = False
            state.pending = []

    async def _read_history(self, topic: str, state: _Topic) -> bool:
        """One read from the cursor; True if there may be more."""
        cursor = state.cursor
        # No age trimming here (publishes and history reads do it), as the single-node XREAD.
        _, first, entries, epoch, reset = await self._script(
            topic,
            _SYNC_SCRIPT,
            [cursor, READ_COUNT, "", state.epoch.decode(), state.mark.decode()],
        )
        if self._topics.get(topic) is not state or state.cursor != cursor:
            return True  # unlistened, or moved on meanwhile: read again if still wanted
        if reset:
            renamed = epoch if epoch and epoch != state.epoch else b""
            logger.warning("topic %r restarted (was at %d)", topic, cursor)
            state.cursor, state.epoch, state.mark = int(first) - 1, renamed, b""
            if self._deliver is not None:
                self._deliver(Gap(topic, cursor, int(first), GapReason.RESET, renamed.decode()))
        elif cursor < int(first) - 1:
            state.cursor, state.mark = int(first) - 1, b""
            if self._deliver is not None:
                self._deliver(Gap(topic, cursor, int(first)))
        for entry_id, fields in entries:
            seq = int(entry_id.split(b"-", 1)[0])
            # Lua returns an entry's fields as a flat list: t, time, d, data, e, epoch.
            entry_epoch = fields[5] if len(fields) > 5 else b""
            if seq <= state.cursor:
                continue
            if state.epoch and entry_epoch and entry_epoch != state.epoch:
                return True  # another numbering under our feet: the next read resets
            self._emit(topic, state, seq, fields[1], entry_epoch, fields[3])
        if entries:
            self.lag = max(0.0, time.time() - int(entries[-1][1][1]) / 1e6)
        return len(entries) >= READ_COUNT
