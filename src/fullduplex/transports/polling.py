"""Short and long polling: ``GET /poll`` and ``GET /longpoll``, JSON in one response.

Both take ``?topic=T`` (one topic), ``since=N`` (the cursor: the seq of the last message seen;
0 for the whole history) and ``limit=L`` (at most this many items, 1 to ``max_batch``), and
answer::

    {"messages": [{"topic": "t", "seq": 42, "data": ..., "time": ...}, ...], "cursor": 43}

``messages`` holds the items in order, as the other transports send them: messages, and gap
markers ``{"topic": T, "gap": {"since": S, "first_available": F}}`` where history was trimmed or
messages were dropped. ``cursor`` is what to send as ``since`` next time: the seq of the last
message (or ``first_available - 1`` of a final gap), else ``since`` unchanged. Without
``since`` the answer starts from now: ``/poll`` returns no messages and the current cursor,
``/longpoll`` waits for the next message.

``/poll`` answers at once from the hub's history. ``/longpoll`` answers at once if history has
something after ``since``; otherwise it holds the request until a message arrives or
``longpoll_timeout`` passes (then ``messages`` is empty and ``cursor`` is unchanged). A waiting
client costs one callback-mode hub subscription and its HTTP handler's task, waiting on one
future with one timer: nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..asyncio.router import APP_AUTH, App
from ..hub import Gap, GapReason, Hub, HubUnavailable, Message, TooManyTopics
from ..protocol.http11 import Headers, Request, Response
from .backlog import Backlog, Mailbox
from .common import (
    EnvelopeCache,
    InvalidInput,
    OpenRequests,
    TopicRules,
    check_history,
    dumps,
    error_response,
    gap_envelope,
    query_epoch,
    query_one,
    query_since,
    query_topics,
)

__all__ = [
    "DEFAULT_LONGPOLL_TIMEOUT",
    "DEFAULT_MAX_BATCH",
    "mount_longpoll",
    "mount_poll",
]

#: Seconds a long poll is held before an empty answer. Under the 60 s idle timeouts of common
#: proxies and load balancers (nginx proxy_read_timeout, AWS ALB).
DEFAULT_LONGPOLL_TIMEOUT = 30.0
#: Most items in one answer (the client asks again with the new cursor for more).
DEFAULT_MAX_BATCH = 100

_NO_CACHE = (("Cache-Control", "no-store"),)


def batch_response(
    items: Sequence[Message | Gap], since: int, envelopes: EnvelopeCache, epoch: str | None = None
) -> Response:
    """The JSON answer for ``items`` after cursor ``since``; each message serialized once.

    ``epoch`` is the cursor's epoch when no item tells it (the last one does otherwise).
    """
    cursor = since
    parts = []
    for item in items:
        if isinstance(item, Gap):
            parts.append(dumps(gap_envelope(item)))
            cursor = item.first_available - 1
            if item.reason is GapReason.RESET:
                epoch = item.epoch
        else:
            parts.append(envelopes.text(item))
            cursor = item.seq
            epoch = item.epoch or epoch
    tail = f',"epoch":{dumps(epoch)}' if epoch else ""
    body = f'{{"messages":[{",".join(parts)}],"cursor":{cursor}{tail}}}'
    headers = Headers([("Content-Type", "application/json"), *_NO_CACHE])
    return Response(200, headers, body.encode())


def _query_limit(request: Request, max_batch: int) -> int:
    value = query_one(request.query, "limit")
    if value is None:
        return max_batch
    if not (value.isascii() and value.isdigit() and 1 <= int(value[:6]) <= max_batch):
        raise InvalidInput(f"invalid limit: an integer from 1 to {max_batch}")
    return int(value)


async def _history(
    hub: Hub, topic: str, since: int, limit: int, epoch: str | None
) -> list[Message | Gap]:
    gap, messages = await hub.history(topic, since=since, limit=limit, epoch=epoch)
    items: list[Message | Gap] = [gap] if gap is not None else []
    items.extend(messages)
    return items


def _poll_query(
    request: Request, rules: TopicRules, max_batch: int
) -> tuple[str, int | None, int, str | None]:
    """The topic, cursor, batch size and epoch of a polling request (both kinds share them)."""
    identity = request.identity
    topic = query_topics(request.query, rules, identity=identity)[0]
    since = query_since(request.query)
    if since is not None:
        check_history(rules, topic, identity)
    return topic, since, _query_limit(request, max_batch), query_epoch(request.query)


def mount_poll(
    app: App,
    hub: Hub,
    path: str = "/poll",
    *,
    rules: TopicRules | None = None,
    auth: Any = APP_AUTH,
    envelopes: EnvelopeCache | None = None,
    # Limits
    max_batch: int = DEFAULT_MAX_BATCH,
) -> None:
    """Serve short polling (see the module docstring) at ``path``.

    Args:
        app: the application.
        hub: the hub.
        path: the route.
        rules: which topics clients may read (and the history of); any valid topic if None.
        auth: the route's authenticator (:mod:`fullduplex.auth`): the app's when omitted,
            None for none.
        envelopes: a JSON cache shared with other mounts (one is made if None).
        max_batch: most items in one answer.
    """
    topic_rules = rules or TopicRules()
    cache = envelopes or EnvelopeCache()

    @app.get(path, auth=auth, access_log_level=logging.DEBUG)  # a live page polls all day
    async def poll(request: Request) -> Response:
        try:
            topic, since, limit, epoch = _poll_query(request, topic_rules, max_batch)
        except InvalidInput as exc:
            return error_response(exc)
        try:
            if since is None:
                last, epoch = await hub.position(topic)
                return batch_response([], last, cache, epoch)
            items = await _history(hub, topic, since, limit, epoch)
            return batch_response(items, since, cache, epoch)
        except HubUnavailable:
            return error_response(InvalidInput("hub unavailable", 503))


def mount_longpoll(
    app: App,
    hub: Hub,
    path: str = "/longpoll",
    *,
    rules: TopicRules | None = None,
    auth: Any = APP_AUTH,
    envelopes: EnvelopeCache | None = None,
    requests: OpenRequests | None = None,
    # Timeouts
    longpoll_timeout: float = DEFAULT_LONGPOLL_TIMEOUT,
    # Limits
    max_batch: int = DEFAULT_MAX_BATCH,
) -> OpenRequests:
    """Serve long polling (see the module docstring) at ``path``.

    Args:
        app: the application.
        hub: the hub.
        path: the route.
        rules: which topics clients may read (and the history of); any valid topic if None.
        auth: the route's authenticator (:mod:`fullduplex.auth`): the app's when omitted,
            None for none.
        envelopes: a JSON cache shared with other mounts (one is made if None).
        requests: where held requests are tracked (one is made if None).
        longpoll_timeout: seconds a request is held before an empty answer.
        max_batch: most items in one answer.

    Returns:
        The held requests (call its ``close`` before shutting the server down).
    """
    topic_rules = rules or TopicRules()
    cache = envelopes or EnvelopeCache()
    held = requests if requests is not None else OpenRequests()

    @app.get(path, auth=auth, access_log_level=logging.DEBUG)  # one per wait, all day
    async def longpoll(request: Request) -> Response:
        try:
            topic, since, limit, epoch = _poll_query(request, topic_rules, max_batch)
        except InvalidInput as exc:
            return error_response(exc)
        try:
            if since is None:
                since, epoch = await hub.position(topic)
            else:
                items = await _history(hub, topic, since, limit, epoch)
                if items:
                    return batch_response(items, since, cache, epoch)
        except HubUnavailable:
            return error_response(InvalidInput("hub unavailable", 503))
        # Nothing yet: subscribing from ``since`` replays whatever was published meanwhile.
        # Callback mode into a mailbox: waiting costs one future and one timer, where
        # Subscription.wait costs a task on Python 3.11 (asyncio.wait_for wraps coroutines).
        mailbox = Mailbox()
        backlog = Backlog(topic, hub.config(topic), since, from_history=True)
        try:
            subscription = hub.subscribe(
                topic, since=since, epoch=epoch, on_message=mailbox.add(backlog)
            )
        except TooManyTopics:
            return error_response(InvalidInput("too many topics", 503))
        held.add(mailbox.close)
        try:
            await mailbox.wait(longpoll_timeout)
        finally:
            held.discard(mailbox.close)
            subscription.close()
        if backlog.behind:
            # More arrived at once than the backlog holds (a burst, or a broker handing
            # over what it kept during an outage): the answer comes from history, where
            # they all are, rather than with a "dropped" gap.
            try:
                items = await _history(hub, topic, since, limit, epoch)
            except HubUnavailable:
                return error_response(InvalidInput("hub unavailable", 503))
            return batch_response(items, since, cache, epoch)
        items = mailbox.take()[:limit]
        return batch_response(items, since, cache, subscription.epoch or epoch)

    return held
