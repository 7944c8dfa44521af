"""One typed configuration: every limit and timeout of the servers and clients, with its default.

:func:`fullduplex.serve` builds one :class:`Config` from its keyword arguments and the server
reads its attributes (an attribute read on a slotted instance, no dict lookup with a default
written at each use); the clients build one from theirs, the ``fullduplex serve`` command line
makes one option per field (``--max-message-size``, ...), and the ASGI server reads the same
instance. Each default is written once, as a ``DEFAULT_*`` constant below (the two byte limits
of the sans-I/O core stay in :mod:`fullduplex.protocol`, which must not import this package).

Every limit and timeout accepts None to disable it, except ``max_queue`` and ``write_limit``,
which bound memory and have no "unlimited" setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .protocol.connection import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE
from .protocol.http11 import DEFAULT_MAX_BODY_SIZE, DEFAULT_MAX_HEAD_SIZE

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_FORWARDED_ALLOW_IPS",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_BYTES_PER_SECOND",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_IP",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_HEAD_SIZE",
    "DEFAULT_MAX_MESSAGES_PER_SECOND",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "DEFAULT_RATE_PER_IP",
    "DEFAULT_SEND_BUFFER_SIZE",
    "DEFAULT_WRITE_LIMIT",
    "DEFAULT_WRITE_TIMEOUT",
    "UNSET",
    "Config",
    "resolve_alias",
]

# Timeouts, in seconds.

#: Seconds a client has to send a complete request, head and body (server), or to connect and
#: complete the opening handshake (clients). websockets: 10 s.
DEFAULT_OPEN_TIMEOUT = 10.0
#: Seconds to wait for the closing handshake before dropping the TCP connection.
DEFAULT_CLOSE_TIMEOUT = 10.0
#: Seconds between keepalive pings (websockets and Node's ws examples use 20-30 s).
DEFAULT_PING_INTERVAL = 20.0
#: Seconds to wait for a keepalive pong before closing with 1011.
DEFAULT_PING_TIMEOUT = 20.0
#: Seconds an idle HTTP keep-alive connection is kept (nginx keepalive_timeout: 75 s).
DEFAULT_KEEPALIVE_TIMEOUT = 30.0
#: Seconds a streaming response may wait for a client that stopped reading before it is
#: dropped (nginx's send_timeout is 60 s).
DEFAULT_WRITE_TIMEOUT = 60.0

# Limits.

#: Open WebSocket connections accepted; further upgrades get 503. A 2-core machine with the
#: default limits holds this many idle connections in well under 1 GiB.
DEFAULT_MAX_CONNECTIONS = 10_000
#: Received messages held before reading pauses (websockets' max_queue is 16 too).
DEFAULT_MAX_QUEUE = 16
#: Write buffer high-water mark in bytes; send() waits above it (asyncio's default is 64 KiB).
DEFAULT_WRITE_LIMIT = 64 * 1024
#: Kernel send buffer of each accepted TCP connection (SO_SNDBUF; Linux doubles the value for
#: its bookkeeping, so 64 KiB reserve 128 KiB). Left to the kernel, the buffer of a client that
#: stops reading grows to ~1.5 MiB (tcp_wmem autotuning) before ``write_limit`` and the
#: slow-consumer policies even notice; capped, a stalled reader pins at most this (times two)
#: plus ``write_limit``. 128 KiB in flight still carries ~2.6 MB/s per connection at 50 ms RTT.
DEFAULT_SEND_BUFFER_SIZE = 64 * 1024
#: Connections the kernel queues for accept() (listen(2) backlog; uvicorn 2048, nginx 511).
DEFAULT_BACKLOG = 1024

# Abuse limits (fullduplex.asyncio.limits; docs/security.md).

#: Open WebSockets plus HTTP requests being handled (held long polls, event streams) per
#: client IP; over it, 429 with Retry-After. Generous for users behind one NAT.
DEFAULT_MAX_CONNECTIONS_PER_IP = 256
#: WebSocket handshakes plus HTTP route requests per client IP per second (token bucket of
#: one second's worth); over it, 429 with Retry-After.
DEFAULT_RATE_PER_IP = 50.0
#: Messages received per WebSocket per second; over it, close 1008.
DEFAULT_MAX_MESSAGES_PER_SECOND = 1_000
#: Payload bytes received per WebSocket per second; over it, close 1008.
DEFAULT_MAX_BYTES_PER_SECOND = 16 * 1024 * 1024

# Proxies.

#: Proxies trusted by default: this machine only (uvicorn's default, also read from the
#: ``FORWARDED_ALLOW_IPS`` environment variable by ``fullduplex serve``).
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1"

#: Default of an alias keyword: "not given".
UNSET: Any = object()

_TIMEOUTS = (
    "open_timeout",
    "close_timeout",
    "ping_interval",
    "ping_timeout",
    "keepalive_timeout",
    "write_timeout",
)
_OPTIONAL_LIMITS = (
    "max_connections",
    "max_message_size",
    "max_frame_size",
    "max_head_size",
    "max_body_size",
    "send_buffer_size",
    "max_connections_per_ip",
    "max_messages_per_second",
    "max_bytes_per_second",
)


def _setting(default: Any, doc: str) -> Any:
    # The one description of a setting: the command line prints it under --help.
    return field(default=default, metadata={"help": doc})


@dataclass(frozen=True, slots=True)
class Config:
    """The limits and timeouts of a server or client, validated once.

    Built by :func:`fullduplex.serve` from its keyword arguments (which have the same names),
    and by :func:`fullduplex.connect` from the settings a client uses. Frozen: a running
    server's settings do not change under it; :meth:`replace` makes a modified copy.

    Raises:
        ValueError: a timeout is not positive, or a limit is below its minimum.
        TypeError: a setting has the wrong type.
    """

    compression: bool = _setting(True, "accept permessage-deflate on routes that allow it")
    proxy_headers: bool = _setting(
        True,
        "take the client address and scheme from X-Forwarded-For and X-Forwarded-Proto when "
        "the TCP peer is a trusted proxy",
    )
    forwarded_allow_ips: str | Sequence[str] = _setting(
        DEFAULT_FORWARDED_ALLOW_IPS,
        "the trusted proxies: IPs, networks (10.0.0.0/8) or *, comma-separated",
    )
    root_path: str = _setting(
        "", "the path prefix the app is mounted under behind a proxy (ASGI root_path)"
    )
    # Timeouts
    open_timeout: float | None = _setting(
        DEFAULT_OPEN_TIMEOUT,
        "seconds for a client to send a complete request (head and body), from its first byte",
    )
    close_timeout: float | None = _setting(
        DEFAULT_CLOSE_TIMEOUT, "seconds to wait for a closing handshake"
    )
    ping_interval: float | None = _setting(
        DEFAULT_PING_INTERVAL, "seconds between keepalive pings; None disables them"
    )
    ping_timeout: float | None = _setting(
        DEFAULT_PING_TIMEOUT, "seconds to wait for a keepalive pong before closing with 1011"
    )
    keepalive_timeout: float | None = _setting(
        DEFAULT_KEEPALIVE_TIMEOUT, "seconds an idle HTTP keep-alive connection stays open"
    )
    write_timeout: float | None = _setting(
        DEFAULT_WRITE_TIMEOUT,
        "seconds a streaming response waits for a client that stopped reading",
    )
    # Limits
    max_connections: int | None = _setting(
        DEFAULT_MAX_CONNECTIONS, "open WebSockets before further upgrades get 503"
    )
    max_message_size: int | None = _setting(
        DEFAULT_MAX_MESSAGE_SIZE, "received message limit in bytes (1009 above it)"
    )
    max_frame_size: int | None = _setting(
        DEFAULT_MAX_FRAME_SIZE,
        "received frame limit in bytes (1009 above it); None: frames are bounded by the "
        "message limit",
    )
    max_queue: int = _setting(
        DEFAULT_MAX_QUEUE, "received messages buffered per connection before reading pauses"
    )
    write_limit: int = _setting(
        DEFAULT_WRITE_LIMIT, "write buffer size in bytes above which send() waits"
    )
    max_head_size: int | None = _setting(
        DEFAULT_MAX_HEAD_SIZE, "HTTP request head limit in bytes (431 above it)"
    )
    max_body_size: int | None = _setting(
        DEFAULT_MAX_BODY_SIZE, "HTTP request body limit in bytes (413 above it)"
    )
    send_buffer_size: int | None = _setting(
        DEFAULT_SEND_BUFFER_SIZE,
        "kernel send buffer (SO_SNDBUF) of each accepted connection in bytes; None leaves the "
        "kernel's autotuning",
    )
    backlog: int = _setting(DEFAULT_BACKLOG, "connections the kernel queues for accept()")
    # Abuse limits
    max_connections_per_ip: int | None = _setting(
        DEFAULT_MAX_CONNECTIONS_PER_IP,
        "open WebSockets and HTTP requests being handled per client IP (429 above it)",
    )
    rate_per_ip: float | None = _setting(
        DEFAULT_RATE_PER_IP,
        "WebSocket handshakes and HTTP route requests per client IP per second (429 above it)",
    )
    max_messages_per_second: int | None = _setting(
        DEFAULT_MAX_MESSAGES_PER_SECOND,
        "messages received per WebSocket per second (close 1008 above it)",
    )
    max_bytes_per_second: int | None = _setting(
        DEFAULT_MAX_BYTES_PER_SECOND,
        "payload bytes received per WebSocket per second (close 1008 above it)",
    )

    def __post_init__(self) -> None:
        for name in ("compression", "proxy_headers"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        root = self.root_path
        if not isinstance(root, str) or (root and (root[0] != "/" or root[-1] == "/")):
            raise ValueError(f"root_path must be '' or like '/api' (no trailing /), not {root!r}")
        for name in (*_TIMEOUTS, "rate_per_ip"):
            _check_number(name, getattr(self, name), allow_none=True)
        for name in _OPTIONAL_LIMITS:
            _check_count(name, getattr(self, name), minimum=1, allow_none=True)
        _check_count("max_queue", self.max_queue, minimum=1, allow_none=False)
        _check_count("write_limit", self.write_limit, minimum=0, allow_none=False)
        _check_count("backlog", self.backlog, minimum=1, allow_none=False)

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated like a new one)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def help(cls, name: str) -> str:
        """The one-line description of setting ``name`` (for ``--help`` and docs)."""
        for f in dataclasses.fields(cls):
            if f.name == name:
                return str(f.metadata["help"])
        raise KeyError(name)


def _check_number(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {value!r}")
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be positive (or None to disable it), not {value!r}")


def _check_count(name: str, value: object, *, minimum: int, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        none = " or None" if allow_none else ""
        raise TypeError(f"{name} must be an integer{none}, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")


def resolve_alias(name: str, value: Any, alias: str, alias_value: Any, default: Any) -> Any:
    """The value of a setting that has an older second name (``max_size`` for ``max_message_size``).

    Args:
        name: the setting's name.
        value: what was passed under ``name``, or ``default`` when nothing was.
        alias: the other name.
        alias_value: what was passed under ``alias``, or :data:`UNSET` when nothing was.
        default: the setting's default.

    Raises:
        TypeError: both names were given different values.
    """
    if alias_value is UNSET:
        return value
    if value is not default and value != alias_value:
        raise TypeError(f"{alias} is another name for {name}: pass one of them")
    return alias_value
