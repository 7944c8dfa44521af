"""What every transport shares: input validation, topic rules and the JSON envelope.

Every transport speaks of the same things in the same JSON:

* a message: ``{"topic": T, "seq": N, "data": ..., "time": t}`` (``time`` is the publish time,
  in seconds since the epoch, as the hub recorded it);
* a gap: ``{"topic": T, "gap": {"since": S, "first_available": F, "reason": R}}``: the
  messages of ``T`` numbered from ``S + 1`` to ``F - 1`` were trimmed from history (``R`` is
  ``"trimmed"``) or dropped for a slow consumer (``"dropped"``); the next message is ``F``.
  ``"reset"`` (``F <= S``) means the topic restarted from scratch (a broker lost its data). The
  cursor after a gap is ``F - 1``.

:class:`EnvelopeCache` serializes each message once for all the transports and subscribers
that send it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..asyncio.router import App, json_response
from ..auth.identity import Identity
from ..auth.permissions import PatternSet
from ..hub import MAX_SEQ, Drop, DropLog, Gap, GapReason, Message, check_since
from ..hub.drops import check_connection_id
from ..hub.stats import STATS
from ..protocol.http11 import Response

__all__ = [
    "EPOCH_RE",
    "MAX_JSON_DEPTH",
    "MAX_SEQ",
    "MAX_TOPIC_LENGTH",
    "TOPIC_RE",
    "EnvelopeCache",
    "InvalidInput",
    "OpenRequests",
    "TopicRules",
    "check_epoch",
    "check_history",
    "check_previous",
    "check_topic",
    "error_response",
    "gap_envelope",
    "hello",
    "message_envelope",
    "owner_of",
    "parse_json",
    "parse_since",
    "query_epoch",
    "query_one",
    "query_since",
    "query_topics",
    "same_message",
    "warn_open_publish",
]

logger = logging.getLogger("fullduplex.transports")

#: Longest topic name, in characters (Redis keys hold more, but a name is also an SSE id part
#: and a URL parameter: 128 keeps ``Last-Event-ID`` of 16 topics under 3 KiB).
MAX_TOPIC_LENGTH = 128
#: Topic names: ASCII letters, digits, ``_``, ``-`` and ``.``; never ``:`` or ``,``, which
#: separate topics and sequence numbers in SSE event ids.
TOPIC_RE = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_TOPIC_LENGTH}}}")
#: Epochs given back by clients: what the hub's backends make (digits, hex), with room.
EPOCH_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")

_JSON_SEPARATORS = (",", ":")

#: Deepest nesting of arrays and objects accepted in a client's JSON (serde_json's default
#: recursion limit is 128 too). Python's parser fails past ~1,000 levels with RecursionError,
#: and a value that parses just under that fails again when serialized deeper in the stack.
MAX_JSON_DEPTH = 128


class InvalidInput(ValueError):
    """A client sent a value that is not valid here; ``str(exc)`` is safe to send back.

    Attributes:
        status: the HTTP status to answer with (400 unless said otherwise).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        #: The HTTP status to answer with.
        self.status = status


class OpenRequests:
    """Requests held open (event streams, long polls), to end them all at shutdown.

    A server shutdown closes idle connections and waits for busy ones: an event stream is
    never idle, and a long poll is idle only after up to 30 s. :meth:`close` ends them now.
    """

    def __init__(self) -> None:
        self._closers: dict[Callable[[], None], None] = {}
        # The handler tasks of the requests: once one is done, its answer is written.
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._closers)

    def add(self, closer: Callable[[], None]) -> None:
        """Track an open request, ended by calling ``closer`` (from its handler's task)."""
        self._closers[closer] = None
        task = asyncio.current_task()
        if task is not None and task not in self._tasks:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def discard(self, closer: Callable[[], None]) -> None:
        """Forget a request that ended."""
        self._closers.pop(closer, None)

    def close(self) -> None:
        """End every open request (each answers or ends its stream at once)."""
        for closer in list(self._closers):
            closer()

    async def wait_closed(self, timeout: float | None = 5.0) -> None:
        """Wait until the handlers of the requests ended by :meth:`close` have answered.

        A server shutdown cancels the handlers still running and closes their connections:
        awaiting this between :meth:`close` and ``Server.shutdown()`` lets each held long
        poll write its answer (an empty batch with its cursor) and each event stream its
        last chunk first (issue 15: a held poll used to get a FIN and no answer).

        Args:
            timeout: seconds to wait at most; None waits as long as it takes.
        """
        current = asyncio.current_task()
        tasks = {task for task in self._tasks if task is not current}
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


#: A permission callable: ``(identity, action, topic) -> bool``, ``action`` being
#: ``"subscribe"``, ``"publish"`` or ``"history"``; ``identity`` is None on routes without an
#: authenticator. It is asked when no pattern grants the action.
PermissionCheck = Callable[[Identity | None, str, str], bool]


@dataclass(frozen=True)
class TopicRules:
    """Which topics a client may subscribe to, publish to and read the history of.

    The same rules apply on all four transports. Each is a list of shell-style patterns
    (:func:`fnmatch.fnmatchcase` syntax: ``*``, ``?``, ``[seq]``) that may name the client's
    identity (:mod:`fullduplex.auth.permissions`): ``{id}`` is its id, ``{NAME}`` its claim
    ``NAME``, so ``"user.{id}"`` is the topic of that user alone. A pattern with a placeholder
    never matches an anonymous client or a route without authentication. When no pattern
    grants an action, ``check`` (if given) decides.

    Topic names keep to ``A-Z a-z 0-9 _ - .`` (``:`` and ``,`` separate cursors in SSE event
    ids): write ``user.{id}``, not ``user:{id}``; an id with other characters matches no topic.

    The defaults: anyone may subscribe to (and read the history of) any topic; nobody may
    publish (server code publishing through the hub is never restricted). Grant publishing
    with patterns naming the identity, a ``check``, or a WebSocket route's ``on_publish``
    hook; a pattern granting everyone on a route without authentication logs a warning at
    startup.

    Attributes:
        subscribe: topics clients may subscribe to (WebSocket, SSE, long and short polling).
        publish: topics clients may publish to (``POST /publish``, the WebSocket ``publish``
            op); none by default.
        history: topics whose past messages clients may ask for (a ``since`` cursor,
            ``Last-Event-ID``); None: the same as ``subscribe``.
        check: a callable granting what the patterns do not (see :data:`PermissionCheck`).
    """

    subscribe: Sequence[str] = ("*",)
    publish: Sequence[str] = ()
    history: Sequence[str] | None = None
    check: PermissionCheck | None = None
    _sets: dict[str, PatternSet] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        history = self.subscribe if self.history is None else self.history
        sets = {
            "subscribe": PatternSet(self.subscribe),
            "publish": PatternSet(self.publish),
            "history": PatternSet(history),
        }
        object.__setattr__(self, "_sets", sets)

    def allows(self, action: str, topic: str, identity: Identity | None = None) -> bool:
        """Whether ``identity`` may do ``action`` (subscribe, publish, history) on ``topic``."""
        if self._sets[action].match(topic, identity):
            return True
        check = self.check
        return check is not None and bool(check(identity, action, topic))

    def can_subscribe(self, topic: str, identity: Identity | None = None) -> bool:
        """Whether ``identity`` may subscribe to ``topic`` (assumed valid)."""
        return self.allows("subscribe", topic, identity)

    def can_publish(self, topic: str, identity: Identity | None = None) -> bool:
        """Whether ``identity`` may publish to ``topic`` (assumed valid)."""
        return self.allows("publish", topic, identity)

    def can_read_history(self, topic: str, identity: Identity | None = None) -> bool:
        """Whether ``identity`` may read the past messages of ``topic`` (assumed valid)."""
        return self.allows("history", topic, identity)

    @property
    def open_publish(self) -> tuple[str, ...]:
        """The publish patterns that grant everyone (no identity placeholder)."""
        return self._sets["publish"].unconditional


def warn_open_publish(app: App, path: str, rules: TopicRules) -> None:
    """At startup, warn if ``path`` lets anyone publish: patterns and no authentication.

    "Anyone": the route has no authenticator, or one that lets anonymous clients in (an
    ``anonymous`` attribute that is true, as :class:`~fullduplex.auth.JWTAuth` has).
    """

    def check() -> None:
        patterns = rules.open_publish
        route = app.http_routes.get(path) or app.websocket_routes.get(path)
        if not patterns or route is None:
            return
        auth = app.auth_for(route)
        if auth is None or getattr(auth, "anonymous", False):
            logger.warning(
                "%s lets anyone publish to %s: set an authenticator (App(auth=...)) or "
                "grant publishing by identity (TopicRules(publish=['user.{id}']))",
                path,
                ", ".join(patterns),
            )

    app.on_startup(check)


def check_topic(value: object) -> str:
    """Return ``value`` if it is a valid topic name.

    Raises:
        InvalidInput: it is not a string of 1 to 128 characters among ``A-Z a-z 0-9 _ - .``.
    """
    if not isinstance(value, str) or TOPIC_RE.fullmatch(value) is None:
        raise InvalidInput(
            f"invalid topic: 1 to {MAX_TOPIC_LENGTH} characters among A-Z a-z 0-9 _ - ."
        )
    return value


def _reject_constant(name: str) -> Any:
    # RFC 8259 6: "Numeric values that cannot be represented ... (such as Infinity and NaN)
    # are not permitted". Python writes them back out as is, which no browser parses.
    raise ValueError(f"invalid JSON: {name} is not a JSON number")


# One decoder for every call: json.loads with any keyword builds a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counted no further than ``limit + 1``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            break
        stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON a client sent: strict RFC 8259 and at most ``max_depth`` levels deep.

    Raises:
        ValueError: not JSON (NaN and Infinity included: browsers cannot read them back),
            or nested deeper than ``max_depth``; ``str(exc)`` is short and safe to send back.
    """
    too_deep = f"invalid JSON: nested deeper than {max_depth} levels"
    try:
        # RFC 8259 8.1: "JSON text exchanged between systems ... MUST be encoded using UTF-8".
        value = _DECODER.decode(text if isinstance(text, str) else text.decode())
    except RecursionError:
        raise ValueError(too_deep) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        if str(exc).startswith("invalid JSON:"):
            raise
        raise ValueError("invalid JSON") from None
    # Bracket counts are cheap and bound the depth; walk the value only when they could
    # exceed the limit.
    if isinstance(value, (dict, list)):
        if isinstance(text, str):
            brackets = text.count("[") + text.count("{")
        else:
            brackets = text.count(b"[") + text.count(b"{")
        if brackets > max_depth and _depth(value, max_depth) > max_depth:
            raise ValueError(too_deep)
    return value


def parse_since(value: object) -> int:
    """Return a client's ``since`` as a cursor: an int, or a string of decimal digits.

    The range is the hub's rule (:func:`fullduplex.hub.check_since`: 0 to ``MAX_SEQ``).

    Raises:
        InvalidInput: anything else (negative, fractional, boolean, too large).
    """
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    try:
        return check_since(value)
    except ValueError:
        raise InvalidInput("invalid since: a non-negative integer") from None


def check_epoch(value: object) -> str | None:
    """Return ``value`` as an epoch (see :class:`~fullduplex.hub.Gap`); None if absent.

    Raises:
        InvalidInput: not a string of 1 to 64 characters among ``A-Z a-z 0-9 _ -``.
    """
    if value is None:
        return None
    if not isinstance(value, str) or EPOCH_RE.fullmatch(value) is None:
        raise InvalidInput("invalid epoch: 1 to 64 characters among A-Z a-z 0-9 _ -")
    return value


def query_epoch(query: Mapping[str, list[str]]) -> str | None:
    """The ``epoch`` parameter, or None if absent.

    Raises:
        InvalidInput: it is invalid or repeated.
    """
    return check_epoch(query_one(query, "epoch"))


def query_one(query: Mapping[str, list[str]], name: str) -> str | None:
    """The single value of query parameter ``name``, or None if absent.

    Raises:
        InvalidInput: the parameter is given more than once.
    """
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput(f"parameter {name} given more than once")
    return values[0]


def query_since(query: Mapping[str, list[str]]) -> int | None:
    """The ``since`` parameter as a cursor, or None if absent.

    Raises:
        InvalidInput: it is invalid or repeated.
    """
    value = query_one(query, "since")
    return None if value is None else parse_since(value)


def query_topics(
    query: Mapping[str, list[str]],
    rules: TopicRules,
    *,
    max_topics: int = 1,
    identity: Identity | None = None,
) -> list[str]:
    """The ``topic`` parameters, validated, deduplicated, in order.

    Raises:
        InvalidInput: none given, too many, invalid (400) or not allowed to ``identity`` (403).
    """
    values = query.get("topic") or []
    if not values:
        raise InvalidInput("missing parameter: topic")
    topics = list(dict.fromkeys(check_topic(v) for v in values))
    if len(topics) > max_topics:
        raise InvalidInput(f"too many topics: at most {max_topics}")
    for topic in topics:
        if not rules.can_subscribe(topic, identity):
            raise InvalidInput(f"unknown topic: {topic}", 403)
    return topics


def check_history(rules: TopicRules, topic: str, identity: Identity | None) -> None:
    """Refuse (403) a cursor on ``topic`` if ``identity`` may not read its history.

    Raises:
        InvalidInput: with status 403.
    """
    if not rules.can_read_history(topic, identity):
        raise InvalidInput(f"history not readable: {topic}", 403)


def check_previous(value: object) -> str | None:
    """A client's previous connection id (``hello``), or None if absent.

    Raises:
        InvalidInput: it is not a connection id.
    """
    if value is None:
        return None
    try:
        return check_connection_id(value)
    except ValueError as exc:
        raise InvalidInput(f"invalid previous: {exc}") from None


def owner_of(identity: Identity | None) -> str | None:
    """Who a drop record is kept for: the identity's id, None for anonymous clients."""
    return identity.id if identity is not None and not identity.anonymous else None


async def hello(
    drops: DropLog, previous: str | None, identity: Identity | None
) -> tuple[str, dict[str, Any]]:
    """Name a connection and tell it whether its previous one was dropped.

    Returns:
        The new connection id, and the reply: ``{"hello": {"id": ...}}``, with
        ``"dropped": {...}`` (:meth:`Drop.to_json <fullduplex.hub.Drop.to_json>`) when
        ``previous`` was dropped by the server (here, or in another process on the same
        Redis).
    """
    connection_id = drops.new_id()
    reply: dict[str, Any] = {"hello": {"id": connection_id}}
    if previous is not None:
        drop: Drop | None = await drops.take(previous, owner_of(identity))
        if drop is not None:
            reply["dropped"] = drop.to_json()
    return connection_id, reply


def error_response(exc: InvalidInput) -> Response:
    """A JSON error response: ``{"error": "..."}`` with the exception's status."""
    return json_response({"error": str(exc)}, exc.status)


def message_envelope(message: Message) -> dict[str, Any]:
    """The JSON-ready form of a message."""
    return {"topic": message.topic, "seq": message.seq, "data": message.data, "time": message.time}


def gap_envelope(gap: Gap) -> dict[str, Any]:
    """The JSON-ready form of a gap (counted, by reason, as a gap sent to a client).

    A ``reset`` also names the topic's new ``epoch``.
    """
    STATS.gap(gap.reason)
    body: dict[str, Any] = {
        "since": gap.since,
        "first_available": gap.first_available,
        "reason": str(gap.reason),
    }
    if gap.epoch and gap.reason is GapReason.RESET:
        body["epoch"] = gap.epoch
    return {"topic": gap.topic, "gap": body}


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 characters kept as they are (the wire is UTF-8 everywhere)."""
    return json.dumps(value, separators=_JSON_SEPARATORS, ensure_ascii=False)


class EnvelopeCache:
    """Serializes each message once, however many subscribers and transports send it.

    Keeps the JSON of the latest message of each topic: the hub hands one message to all of a
    topic's subscribers in a row, so one entry per topic is enough. At most ``max_topics``
    topics are remembered (the oldest entry goes first).

    An entry is checked against the message itself, not its sequence number alone: a topic
    reset by a broker that lost its data numbers its messages from 1 again.

    Args:
        max_topics: topics remembered.
    """

    def __init__(self, max_topics: int = 1024) -> None:
        self.max_topics = max_topics
        self._last: dict[str, tuple[Message, str]] = {}
        #: Messages serialized (for tests and metrics: one per message, not per subscriber).
        self.encoded = 0

    def text(self, message: Message) -> str:
        """The JSON envelope of ``message``, serialized at most once per message."""
        entry = self._last.get(message.topic)
        if entry is not None and same_message(entry[0], message):
            return entry[1]
        text = dumps(message_envelope(message))
        self.encoded += 1
        last = self._last
        last.pop(message.topic, None)
        if len(last) >= self.max_topics:
            del last[next(iter(last))]
        last[message.topic] = (message, text)
        return text


def same_message(cached: Message, message: Message) -> bool:
    """Whether ``cached`` is ``message``: the same object (live fan-out), else equal fields."""
    return cached is message or (cached.seq == message.seq and cached == message)
