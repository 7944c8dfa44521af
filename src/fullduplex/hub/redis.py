"""The Redis backend: topics shared by every process and machine using one Redis.

Install with ``pip install fullduplex[redis]`` (the ``redis`` package's asyncio API). Needs
Redis 6.2 or later (``XTRIM MINID``).

Layout. Each topic is one Redis stream, ``<prefix>t:<topic>``; a message is the entry
``<seq>-0`` with the fields ``t`` (publish time, microseconds since the epoch, Redis' clock)
and ``d`` (the data as JSON). The sequence number *is* the stream ID's first part, so:

* publishing runs one Lua script that reads the stream's last generated ID (kept by Redis even
  when every entry has been trimmed), adds ``<last + 1>-0`` and trims. Scripts run atomically,
  so sequence numbers are dense and shared by every publisher, with no second key that could
  drift from the stream;
* history is ``XRANGE <since + 1>-0 +``: what's there is contiguous, and the first entry tells
  what was trimmed (:class:`~fullduplex.hub.base.Gap`);
* the live feed is ``XREAD BLOCK`` from each topic's cursor ``<last delivered>-0``, by one task
  and one connection per backend, whatever the number of topics and subscribers;
* count limits are ``XTRIM MAXLEN`` (exact, so gaps are exact); age limits trim the head
  while its ``t`` is too old (``XTRIM MINID``), at each publish and history read, against
  Redis' clock, so machines with skewed clocks agree.

Outages. The reader reconnects by itself with exponential backoff (logged as a warning when
Redis goes away and at info level when it is back), then reads on from each topic's cursor:
subscribers get every message published meanwhile that is still in history, in order and once;
trimmed ones are announced by a gap. If Redis lost its data (no persistence), a topic whose
epoch changed (``<prefix>e:<topic>``, made by the topic's first publish and copied into each
entry as field ``e``), or whose last sequence number is now below the cursor, is announced by
a ``reset`` gap carrying the new epoch: even when the new numbering passed the cursor before
the reader was back.

Notes (:meth:`RedisBackend.set_notes`): short records shared by every process, with a TTL,
``<prefix>n:<name>`` (``SET ... PX``, read once with ``GETDEL``): why a subscriber was dropped
(:class:`~fullduplex.hub.drops.DropLog`), for its reconnection to another process.

:meth:`RedisBackend.publish`, ``history`` and ``last_seq`` do not retry: they raise
:class:`~fullduplex.hub.base.HubUnavailable` at once while Redis is away (a publish retried
after a dropped reply could be published twice). redis-py's own retries are turned off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
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

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_PREFIX",
    "DEFAULT_RECONNECT_DELAY",
    "DEFAULT_TIMEOUT",
    "RedisBackend",
]

logger = logging.getLogger("fullduplex.hub")

#: Prefix of every key the backend uses.
DEFAULT_PREFIX = "fullduplex:"
#: Seconds one XREAD waits for messages before asking again (an idle round trip each).
DEFAULT_BLOCK = 5.0
#: Seconds to wait for a TCP connection to Redis.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds to wait for a reply to a command (XREAD: on top of its BLOCK time).
DEFAULT_TIMEOUT = 5.0
#: Connections to Redis for commands (publish, history), shared by every request; when all are
#: busy a command waits for one (up to ``timeout``) instead of failing. redis-py's default pool
#: fails past 100 at once, which 1,000 long polls re-polling together hit (bench/hub_bench.py).
DEFAULT_MAX_CONNECTIONS = 32
#: Seconds between reconnection attempts of the live feed: first and most, doubling with
#: jitter in between (redis-py's own backoff caps at 1 s too; 5 s is kinder to a Redis that is
#: restarting under thousands of clients).
DEFAULT_RECONNECT_DELAY = (0.1, 5.0)
#: Entries read per topic per XREAD.
READ_COUNT = 1000
#: Milliseconds the wake-up stream outlives its last use (it is deleted on close).
WAKE_TTL = 60_000

_LUA_COMMON = """
if redis.replicate_commands then redis.replicate_commands() end

local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- The last sequence number ever given, and the first still in the stream (last + 1 if empty).
local function stream_info(key)
  if redis.call('EXISTS', key) == 0 then return 0, 1 end
  local info = redis.call('XINFO', 'STREAM', key)
  local last, first = 0, nil
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = seq_of(info[i + 1])
    elseif info[i] == 'first-entry' and info[i + 1] then
      first = seq_of(info[i + 1][1])
    end
  end
  return last, first or last + 1
end

local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

-- Trim the entries published before cutoff (microseconds); times are fields[2].
local function trim_age(key, cutoff)
  local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) >= cutoff then return end
  while true do
    local batch = redis.call('XRANGE', key, '-', '+', 'COUNT', 100)
    if #batch == 0 then return end
    for i = 1, #batch do
      if tonumber(batch[i][2][2]) >= cutoff then
        redis.call('XTRIM', key, 'MINID', batch[i][1])
        return
      end
    end
    redis.call('XTRIM', key, 'MINID', (seq_of(batch[#batch][1]) + 1) .. '-0')
  end
end
"""

# KEYS[1] stream, KEYS[2] epoch, KEYS[3] (optional) the publish's idempotency key; ARGV data,
# max length or '', max age in microseconds or '', milliseconds the idempotency key is kept.
# A key already there answers as its first publish did ("seq,time,epoch"), publishing nothing.
# A topic's epoch is made by its first publish (the time, microseconds), kept beside the
# stream, and copied into every entry (field e), so that a reader knows each entry's.
# Ends with seq, now and epoch set (the cluster backend adds its notification after it).
_PUBLISH_BODY = (
    _LUA_COMMON
    + """
local key = KEYS[1]
if KEYS[3] then
  local known = redis.call('GET', KEYS[3])
  if known then
    local s, n, e = string.match(known, '^(%d+),(%d+),(.*)$')
    return {tonumber(s), n, e}
  end
end
-- The newest entry's id is the last sequence number given (a trim keeps the newest entry):
-- XREVRANGE, a quarter cheaper than XINFO. XINFO, which also knows the last id of an emptied
-- stream or of a deleted newest entry, when the stream is empty or the XADD is refused.
local tail = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
local last
if #tail > 0 then last = seq_of(tail[1][1]) else last = stream_info(key) end
local seq = last + 1
local now = now_us()
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = now
  redis.call('SET', KEYS[2], epoch)
end
local added = redis.pcall('XADD', key, seq .. '-0', 't', now, 'd', ARGV[1], 'e', epoch)
if type(added) == 'table' and added.err then
  seq = stream_info(key) + 1
  redis.call('XADD', key, seq .. '-0', 't', now, 'd', ARGV[1], 'e', epoch)
end
if ARGV[2] ~= '' then redis.call('XTRIM', key, 'MAXLEN', ARGV[2]) end
if ARGV[3] ~= '' then trim_age(key, tonumber(now) - tonumber(ARGV[3])) end
if KEYS[3] then redis.call('SET', KEYS[3], seq .. ',' .. now .. ',' .. epoch, 'PX', ARGV[4]) end
"""
)
_PUBLISH = _PUBLISH_BODY + "return {seq, now, epoch}\n"

# KEYS[1] stream, KEYS[2] epoch; ARGV since, limit or '', max age in microseconds or '',
# the client's epoch or ''. Returns {last, first, entries after since (or from first, after
# a gap), epoch or ''}.
_HISTORY = (
    _LUA_COMMON
    + """
local key = KEYS[1]
local since = tonumber(ARGV[1])
if ARGV[3] ~= '' and redis.call('EXISTS', key) == 1 then
  trim_age(key, tonumber(now_us()) - tonumber(ARGV[3]))
end
local last, first = stream_info(key)
local epoch = redis.call('GET', KEYS[2]) or ''
local start = since + 1
if since > last or since < first - 1 then start = first end
if since > 0 and ARGV[4] ~= '' and ARGV[4] ~= epoch then start = first end
if start > last or ARGV[2] == '0' then return {last, first, {}, epoch} end
if ARGV[2] == '' then
  return {last, first, redis.call('XRANGE', key, start .. '-0', '+'), epoch}
end
return {last, first, redis.call('XRANGE', key, start .. '-0', '+', 'COUNT', ARGV[2]), epoch}
"""
)

# KEYS[1] stream, KEYS[2] epoch. Returns {last, first, epoch or ''}.
_INFO = (
    _LUA_COMMON
    + """
local last, first = stream_info(KEYS[1])
return {last, first, redis.call('GET', KEYS[2]) or ''}
"""
)

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def key_ttl_ms(ttl: float | None) -> str:
    """``publish_key_ttl`` checked, in milliseconds for the publish script ("0" for none)."""
    if ttl is not None and not ttl >= 0:
        raise ValueError("publish_key_ttl must be None or a number of seconds >= 0")
    return str(max(1, int(ttl * 1000))) if ttl else "0"


class RedisBackend(Backend):
    """Topics in Redis streams, shared by every hub on the same Redis.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS) or
            ``unix:///path/to/socket``.
        prefix: prefix of every key.
        block: seconds one XREAD waits before asking again.
        connect_timeout: seconds to wait for a connection; None waits forever.
        timeout: seconds to wait for a reply; None waits forever.
        reconnect_delay: seconds between reconnection attempts of the live feed, first and
            most.
        max_connections: connections used for commands; more concurrent commands wait for
            a free one (up to ``timeout``, then :class:`HubUnavailable`).
        publish_key_ttl: seconds a publish's idempotency key is kept in Redis (a retry with
            it, from any process, is answered and not published again); None or 0 keeps none.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        block: float = DEFAULT_BLOCK,
        # Timeouts
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
        reconnect_delay: tuple[float, float] = DEFAULT_RECONNECT_DELAY,
        # Limits
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        publish_key_ttl: float | None = DEFAULT_PUBLISH_KEY_TTL,
    ) -> None:
        if block <= 0:
            raise ValueError("block must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        #: The Redis URL.
        self.url = url
        #: Prefix of every key.
        self.prefix = prefix
        #: Seconds an idempotency key is kept (None or 0: none is).
        self.publish_key_ttl = publish_key_ttl
        self._key_ttl_ms = key_ttl_ms(publish_key_ttl)
        self.block = block
        self.reconnect_delay = reconnect_delay
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            # Never retry on our behalf: a publish retried after a lost reply publishes twice.
            "retry": Retry(NoBackoff(), 0),
        }
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            **options,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # the client closes the pool with itself
        read_timeout = None if timeout is None else timeout + block
        self._reader = aioredis.from_url(
            url, socket_timeout=read_timeout, single_connection_client=True, **options
        )
        self._publish = self._redis.register_script(_PUBLISH)
        self._history = self._redis.register_script(_HISTORY)
        self._info = self._redis.register_script(_INFO)
        self._deliver: Deliver | None = None
        self._cursors: dict[str, int] = {}
        self._epochs: dict[str, bytes] = {}  # the epoch of each cursor, b"" if unknown
        self._changed = asyncio.Event()
        self._reading = False
        self._closing = False
        self._wake_key = f"{prefix}w:{uuid.uuid4().hex}"
        self._task: asyncio.Task[None] | None = None
        self._kick_task: asyncio.Task[None] | None = None
        #: Whether the live feed is connected (False during an outage), for health checks.
        self.available = True
        #: Times the live feed came back after an outage.
        self.reconnects = 0
        #: Seconds between the publish of the last message read by the live feed (Redis'
        #: clock) and its arrival here (this machine's clock): the feed's lag, for metrics.
        self.lag = 0.0

    def key(self, topic: str) -> str:
        """The Redis key of a topic's stream."""
        return f"{self.prefix}t:{topic}"

    def publish_key(self, topic: str, key: str) -> str:
        """The Redis key remembering a publish's idempotency ``key`` on ``topic``."""
        return f"{self.prefix}k:{len(topic)}:{topic}:{key}"

    def epoch_key(self, topic: str) -> str:
        """The Redis key of a topic's epoch (see :class:`~fullduplex.hub.base.Gap`)."""
        return f"{self.prefix}e:{topic}"

    async def start(self, deliver: Deliver) -> None:
        """Check that Redis answers, then start the live feed.

        Raises:
            HubUnavailable: Redis does not answer (a wrong URL fails early).
        """
        try:
            await self._redis.ping()
        except _UNAVAILABLE as exc:
            raise HubUnavailable(f"redis unavailable at start: {exc}") from exc
        self._deliver = deliver
        self._task = asyncio.ensure_future(self._read_forever())

    async def close(self) -> None:
        """Stop the live feed and close the connections."""
        self._deliver = None
        self._closing = True
        for task in (self._task, self._kick_task):
            # Python < 3.12's asyncio.wait_for, which redis-py uses, can swallow a
            # cancellation that lands as the command completes: cancel until done.
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(asyncio.TimeoutError, RedisError, OSError):
            # Else it expires by itself.
            await asyncio.wait_for(self._redis.delete(self._wake_key), 1.0)
        await self._reader.aclose()
        await self._redis.aclose()

    async def publish(
        self, topic: str, data: Any, config: TopicConfig, key: str | None = None
    ) -> Message:
        """See :meth:`Backend.publish`; never retried (see the module's docstring).

        A ``key`` is kept in Redis beside the topic for ``publish_key_ttl`` seconds: a publish
        with the same key, from any process, returns the first one's message.
        """
        payload = json.dumps(data, separators=(",", ":"))
        size = "" if config.history_size is None else str(config.history_size)
        age = "" if config.history_age is None else str(int(config.history_age * 1e6))
        keys = [self.key(topic), self.epoch_key(topic)]
        if key is not None and self.publish_key_ttl:
            keys.append(self.publish_key(topic, key))
        try:
            seq, now, epoch = await self._publish(
                keys=keys, args=[payload, size, age, self._key_ttl_ms]
            )
        except _UNAVAILABLE as exc:
            raise HubUnavailable(f"redis unavailable, {topic!r} not published: {exc}") from exc
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
        try:
            last, first, entries, current = await self._history(
                keys=[self.key(topic), self.epoch_key(topic)],
                args=[since, count, age, epoch or ""],
            )
        except _UNAVAILABLE as exc:
            raise HubUnavailable(f"redis unavailable: {exc}") from exc
        current = current.decode()
        gap: Gap | None = None
        if since > last or (since and epoch and epoch != current):
            gap = Gap(topic, since, first, GapReason.RESET, current)
        elif since < first - 1:
            gap = Gap(topic, since, first)
        return gap, [_message(topic, entry_id, fields) for entry_id, fields in entries]

    async def last_seq(self, topic: str) -> int:
        """See :meth:`Backend.last_seq`."""
        return (await self._stream_info(topic))[0]

    async def position(self, topic: str) -> tuple[int, str]:
        """See :meth:`Backend.position`."""
        last, _, epoch = await self._stream_info(topic)
        return last, epoch

    async def _stream_info(self, topic: str) -> tuple[int, int, str]:
        try:
            last, first, epoch = await self._info(keys=[self.key(topic), self.epoch_key(topic)])
        except _UNAVAILABLE as exc:
            raise HubUnavailable(f"redis unavailable: {exc}") from exc
        return int(last), int(first), epoch.decode()

    shares_notes = True

    def note_key(self, name: str) -> str:
        """The Redis key of a note (see :meth:`Backend.set_notes`)."""
        return f"{self.prefix}n:{name}"

    async def set_notes(self, notes: Mapping[str, str], ttl: float) -> None:
        """One ``SET key value PX ttl`` per note, one round trip (:meth:`Backend.set_notes`)."""
        milliseconds = max(1, int(ttl * 1000))
        pipe = self._redis.pipeline(transaction=False)
        for name, value in notes.items():
            pipe.set(self.note_key(name), value, px=milliseconds)
        try:
            await pipe.execute()
        except _UNAVAILABLE as exc:
            raise HubUnavailable(f"redis unavailable, notes not stored: {exc}") from exc

    async def pop_note(self, name: str) -> str | None:
        """``GETDEL`` (Redis 6.2): read once (see :meth:`Backend.pop_note`)."""
        try:
            value = await self._redis.getdel(self.note_key(name))
        except _UNAVAILABLE as exc:
            raise HubUnavailable(f"redis unavailable: {exc}") from exc
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def listen(self, topic: str, after: int, epoch: str = "") -> None:
        """Add the topic to the live feed's XREAD, from ``after`` (of ``epoch``)."""
        self._cursors[topic] = after
        self._epochs[topic] = epoch.encode()
        self._changed.set()
        if self._reading and (self._kick_task is None or self._kick_task.done()):
            # Interrupt the XREAD in progress, so that the new topic is read at once.
            self._kick_task = asyncio.ensure_future(self._kick())

    def unlisten(self, topic: str) -> None:
        """Drop the topic from the live feed's next XREAD."""
        self._cursors.pop(topic, None)
        self._epochs.pop(topic, None)

    async def _kick(self) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"k": "1"}, maxlen=1)
                pipe.pexpire(self._wake_key, WAKE_TTL)
                await pipe.execute()
        except (RedisError, OSError):
            pass  # the reader sees the new topic after its current XREAD anyway

    async def _read_forever(self) -> None:
        min_delay, max_delay = self.reconnect_delay
        delay = min_delay
        loop = asyncio.get_running_loop()
        down_since: float | None = None
        while not self._closing:
            try:
                if down_since is not None:
                    await self._check_resets()
                    logger.info(
                        "redis at %s is back after %.1f s", self._where(), loop.time() - down_since
                    )
                    down_since, delay = None, min_delay
                    self.available = True
                    self.reconnects += 1
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, _UNAVAILABLE):
                    logger.exception("redis live feed failed")
                if down_since is None:
                    down_since = loop.time()
                    self.available = False
                    logger.warning("redis at %s unavailable (%s); reconnecting", self._where(), exc)
                else:
                    logger.info("redis still unavailable; retrying in %.2f s", delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, max_delay)

    async def _read_once(self) -> None:
        if not self._cursors:
            self._changed.clear()
            await self._changed.wait()
            return
        streams: dict[Any, Any] = {self._wake_key: "$"}
        for topic, cursor in self._cursors.items():
            streams[self.key(topic)] = f"{cursor}-0"
        self._changed.clear()
        self._reading = True
        try:
            response: Any = await self._reader.xread(
                streams, count=READ_COUNT, block=int(self.block * 1000)
            )
        finally:
            self._reading = False
        start = len(self.prefix) + 2
        for key, entries in response or ():
            topic = key[start:].decode()
            for entry_id, fields in entries:
                if not self._advance(topic, int(entry_id.split(b"-", 1)[0]), fields):
                    break
            if entries and b"t" in entries[-1][1]:
                # One clock read per topic and XREAD, not per message.
                self.lag = max(0.0, time.time() - int(entries[-1][1][b"t"]) / 1e6)

    def _advance(self, topic: str, seq: int, fields: dict[bytes, bytes]) -> bool:
        """Deliver one entry; False if it starts a new epoch (read again from its start)."""
        cursor = self._cursors.get(topic)
        if cursor is None or seq <= cursor or self._deliver is None:
            return True  # unlistened meanwhile, or already delivered
        epoch = fields.get(b"e", b"")
        known = self._epochs.get(topic, b"")
        if epoch != known:
            if known and epoch:
                # Redis lost the topic and numbered past the cursor before this reader
                # noticed: the entries before this one are new too. Read from the start.
                self._reset(topic, cursor, 1, epoch)
                return False
            self._epochs[topic] = epoch
        self._cursors[topic] = seq
        message = Message(
            topic, seq, json.loads(fields[b"d"]), int(fields[b"t"]) / 1e6, epoch.decode()
        )
        self._deliver(message)
        return True

    def _reset(self, topic: str, cursor: int, first: int, epoch: bytes) -> None:
        logger.warning("topic %r restarted (was at %d)", topic, cursor)
        self._cursors[topic] = first - 1
        self._epochs[topic] = epoch
        if self._deliver is not None:
            self._deliver(Gap(topic, cursor, first, GapReason.RESET, epoch.decode()))

    async def _check_resets(self) -> None:
        """After an outage: announce topics whose data Redis lost (epoch or numbers)."""
        for topic, cursor in list(self._cursors.items()):
            last, first, epoch = await self._stream_info(topic)
            if self._cursors.get(topic) != cursor:
                continue
            known = self._epochs.get(topic, b"").decode()
            if known and epoch and epoch != known:
                self._reset(topic, cursor, first, epoch.encode())
            elif last < cursor:
                # Numbers went back within one epoch (a snapshot older than the last
                # writes): a reset all the same, with no new epoch to name.
                self._reset(topic, cursor, first, b"")

    def _where(self) -> str:
        kwargs = self._redis.connection_pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"


def _message(topic: str, entry_id: bytes, fields: list[bytes]) -> Message:
    # Lua returns an entry's fields as a flat list: t, time, d, data, e, epoch.
    epoch = fields[5].decode() if len(fields) > 5 else ""
    return Message(
        topic, int(entry_id.split(b"-", 1)[0]), json.loads(fields[3]), int(fields[1]) / 1e6, epoch
    )
