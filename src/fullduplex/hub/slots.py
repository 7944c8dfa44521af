"""Where a Redis Cluster keeps each key: the slot map, and commands sent to the right master.

Used by :mod:`fullduplex.hub.cluster`. The slot map is read with ``CLUSTER SLOTS`` from the
first node that answers (the nodes named in the URL, then every node the last map named) and
patched by ``MOVED`` replies; each node gets one bounded connection pool. A command that
Redis did not run is sent again: after ``MOVED`` to the node named, after ``ASK`` with
``ASKING`` first, after ``NOSCRIPT`` once the script is loaded, after ``TRYAGAIN`` (the keys
of a slot being moved are on neither side yet) for about a second. A command whose
connection failed is never sent again, since it may have run (a publish would run twice):
it raises and the map is read again in the background. redis-py's own retries are off.

Why not ``redis.asyncio.cluster.RedisCluster``: ``WAIT`` must follow a publish on the same
connection (``wait_replicas``), and the live feed needs each master's address to keep its
own pub/sub connections; both want the slot map in our hands, and it is a small one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import HubUnavailable

__all__ = [
    "CLUSTER_SCHEME",
    "DEFAULT_WAIT_TIMEOUT",
    "MAX_REDIRECTIONS",
    "SLOTS",
    "TRYAGAIN_DELAYS",
    "UNAVAILABLE",
    "Address",
    "ClusterURL",
    "Router",
    "Script",
    "evalsha",
    "hash_tagged",
    "parse_cluster_url",
    "redis_options",
]

T = TypeVar("T")

#: The URL scheme of the cluster backend: ``redis+cluster://host:port[,host:port...]``.
CLUSTER_SCHEME = "redis+cluster"
#: Seconds a publish waits for ``wait_replicas`` replicas to confirm it (``WAIT``).
DEFAULT_WAIT_TIMEOUT = 1.0
#: Redirections (``MOVED``, ``ASK``) followed per command before giving up.
MAX_REDIRECTIONS = 5
#: Seconds between the attempts of a command answered ``TRYAGAIN`` (keys of a slot being
#: moved, not run): about a second in all, then HubUnavailable.
TRYAGAIN_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.2, 0.2, 0.2)
#: Slots of a Redis Cluster.
SLOTS = 16384

#: What a node that cannot be reached (or a cluster that is down) raises.
UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
)

#: A node: host and port.
Address = tuple[str, int]


def hash_tagged(topic: str) -> str:
    """``{topic}``: the part of a key that places it by the topic's hash tag.

    Every key made with it for one topic lands in one slot. A topic containing a brace would
    end or empty the tag, so it is placed by its SHA1 instead, followed by the topic itself
    so that keys stay distinct: ``{<sha1>}<topic>``.
    """
    if "{" in topic or "}" in topic:
        return f"{{{hashlib.sha1(topic.encode()).hexdigest()}}}{topic}"
    return f"{{{topic}}}"


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL.

    Attributes:
        nodes: the ``(host, port)`` of the nodes named, in order.
        username: the ACL user, if any.
        password: the password, if any.
        wait_replicas: the ``wait_replicas`` query parameter (0 if absent).
        wait_timeout: the ``wait_timeout`` query parameter, seconds.
    """

    nodes: tuple[Address, ...]
    username: str | None = None
    password: str | None = None
    wait_replicas: int = 0
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://[user:password@]host:port[,host:port...][/0][?options]``.

    Options: ``wait_replicas=N`` and ``wait_timeout=SECONDS`` (see
    :class:`RedisClusterBackend`). IPv6 hosts go in brackets: ``[::1]:7000``.

    Raises:
        ValueError: anything else, with what is wrong.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != CLUSTER_SCHEME:
        raise ValueError(f"a Redis Cluster URL starts with {CLUSTER_SCHEME}://, got {url!r}")
    netloc, _, tail = rest.partition("/")
    netloc, _, query = netloc.partition("?")
    path, _, path_query = tail.partition("?")
    query = query or path_query
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has database 0 only, got /{path} in {url!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    nodes = tuple(_parse_node(part, url) for part in hosts.split(","))
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    unknown = set(options) - {"wait_replicas", "wait_timeout"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} in {url!r}")
    try:
        wait_replicas = int(options.get("wait_replicas", "0"))
        wait_timeout = float(options.get("wait_timeout", DEFAULT_WAIT_TIMEOUT))
    except ValueError:
        raise ValueError(
            f"wait_replicas must be an integer and wait_timeout seconds, in {url!r}"
        ) from None
    return ClusterURL(nodes, username, password, wait_replicas, wait_timeout)


def _parse_node(part: str, url: str) -> Address:
    host, colon, port = part.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"each node of a Redis Cluster URL is host:port, got {part!r} in {url!r} "
            f"(e.g. {CLUSTER_SCHEME}://127.0.0.1:7000,127.0.0.1:7001)"
        )
    return host, int(port)


def redis_options(
    username: str | None, password: str | None, connect_timeout: float | None
) -> dict[str, Any]:
    """The connection options every client of the cluster backend uses."""
    return {
        "username": username,
        "password": password,
        "socket_connect_timeout": connect_timeout,
        # Never retry on our behalf: a publish retried after a lost reply publishes twice.
        "retry": Retry(NoBackoff(), 0),
    }


class Router:
    """The slot map of the cluster and one connection pool per node.

    Args:
        seeds: the nodes named in the URL.
        options: keyword arguments of every connection (credentials, connect timeout).
        timeout: seconds to wait for a reply, and for a free connection of a pool.
        max_connections: connections per node.
    """

    def __init__(
        self,
        seeds: tuple[Address, ...],
        options: dict[str, Any],
        *,
        timeout: float | None,
        max_connections: int,
    ) -> None:
        self.seeds = seeds
        self.options = options
        self.timeout = timeout
        self.max_connections = max_connections
        #: The master of each slot, None where no node serves it.
        self.slots: list[Address | None] = [None] * SLOTS
        #: Every node the last map named, masters first.
        self.known: list[Address] = []
        self.clients: dict[Address, aioredis.Redis] = {}
        self._failed: set[Address] = set()
        self._refresh: asyncio.Task[None] | None = None

    def master(self, key: str) -> Address:
        """The master serving ``key``'s slot.

        Raises:
            HubUnavailable: no node serves it (the cluster is down or still forming).
        """
        address = self.slots[key_slot(key.encode())]
        if address is None:
            self.refresh_soon()
            raise HubUnavailable(f"no node of the cluster serves {key!r}")
        return address

    def client(self, address: Address) -> aioredis.Redis:
        """The pooled client of one node (made on first use)."""
        client = self.clients.get(address)
        if client is None:
            pool = aioredis.BlockingConnectionPool(
                host=address[0],
                port=address[1],
                max_connections=self.max_connections,
                timeout=self.timeout,
                socket_timeout=self.timeout,
                **self.options,
            )
            client = self.clients[address] = aioredis.Redis.from_pool(pool)
        return client

    async def refresh(self) -> None:
        """Read the slot map from the first node that answers.

        Raises:
            HubUnavailable: no node answers.
        """
        candidates = list(dict.fromkeys([*self.known, *self.seeds]))
        # Nodes that failed last time are asked last (a dead one costs a connect timeout).
        candidates.sort(key=lambda address: address in self._failed)
        error: BaseException | None = None
        for address in candidates:
            try:
                client: Any = self.client(address)
                reply = await client.execute_command("CLUSTER", "SLOTS")
            except (RedisError, OSError) as exc:
                self._failed.add(address)
                error = exc
                continue
            self._failed.discard(address)
            self._apply(reply, address)
            return
        raise HubUnavailable(f"no node of the Redis Cluster answers: {error}")

    def refresh_soon(self) -> None:
        """Read the slot map again in the background (once at a time)."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(HubUnavailable):
            await self.refresh()

    def _apply(self, reply: Any, asked: Address) -> None:
        slots: list[Address | None] = [None] * SLOTS
        masters: list[Address] = []
        replicas: list[Address] = []
        for start, end, master, *others in reply:
            address = _address(master, asked)
            slots[int(start) : int(end) + 1] = [address] * (int(end) - int(start) + 1)
            masters.append(address)
            replicas.extend(_address(other, asked) for other in others)
        self.slots = slots
        self.known = list(dict.fromkeys([*masters, *replicas]))

    def masters(self) -> list[Address]:
        """The masters of the current map, in slot order."""
        return list(dict.fromkeys(address for address in self.slots if address is not None))

    def moved(self, exc: MovedError) -> None:
        """Patch the slot a ``MOVED`` names, and read the whole map again soon."""
        self.slots[exc.slot_id] = (exc.host, int(exc.port))
        self.refresh_soon()

    async def call(self, key: str, run: Callable[[aioredis.Redis, bool], Awaitable[T]]) -> T:
        """Run ``run(client, asking)`` on the master of ``key``, following redirections.

        Raises:
            HubUnavailable: the node cannot be reached, or redirections never end.
        """
        address, asking = self.master(key), False
        redirections, delays = 0, iter(TRYAGAIN_DELAYS)
        while True:
            try:
                return await run(self.client(address), asking)
            except MovedError as exc:
                self.moved(exc)
                address, asking = (exc.host, int(exc.port)), False
            except AskError as exc:
                address, asking = (exc.host, int(exc.port)), True
            except TryAgainError:
                # Not run: the slot is being moved and the keys are on neither side yet.
                delay = next(delays, None)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                address, asking, redirections = self.master(key), False, 0
                continue
            except UNAVAILABLE:
                self.refresh_soon()
                raise
            except ReadOnlyError as exc:  # a replica now: the map is stale
                self.refresh_soon()
                raise HubUnavailable(f"{address[0]}:{address[1]} is a replica now") from exc
            except ResponseError as exc:
                if str(exc).startswith("NOREPLICAS"):  # min-replicas-to-write: not run
                    raise HubUnavailable(str(exc)) from exc
                raise
            redirections += 1
            if redirections > MAX_REDIRECTIONS:
                raise HubUnavailable(f"too many redirections for {key!r}")

    async def close(self) -> None:
        """Stop a refresh in progress and close every pool."""
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        for client in self.clients.values():
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        self.clients.clear()


def _address(node: Any, asked: Address) -> Address:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    # An empty or "?" host means "the address you reached me at" (cluster-announce-ip unset).
    return (host if host and host != "?" else asked[0]), int(node[1])


@dataclass(eq=False)
class Script:
    """A Lua script and its SHA1, run with EVALSHA on any node."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


async def evalsha(
    client: aioredis.Redis,
    script: Script,
    keys: list[str],
    args: list[Any],
    *,
    asking: bool = False,
    wait: tuple[int, int] | None = None,
) -> tuple[Any, int | None]:
    """Run a script (loading it on ``NOSCRIPT``: it did not run), then ``WAIT`` if asked.

    Returns:
        The script's reply, and WAIT's (replicas that confirmed) or None.
    """
    for _ in range(2):
        try:
            if not asking and wait is None:
                return await client.evalsha(script.sha, len(keys), *keys, *args), None
            pipe = client.pipeline(transaction=False)
            if asking:
                pipe.execute_command("ASKING")
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            if wait is not None:
                pipe.execute_command("WAIT", *wait)
            replies = await pipe.execute(raise_on_error=False)
            if asking:
                replies = replies[1:]
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies[0], (int(replies[1]) if wait is not None else None)
        except NoScriptError:
            # A node that never ran it (a replica promoted since, a node restarted).
            await client.script_load(script.source)
    raise HubUnavailable("script could not be loaded")
