"""``POST /publish``: publish one message from an HTTP client.

The body is JSON, ``{"topic": T, "data": ...}``, with ``Content-Type: application/json`` (a
type that HTML forms cannot send, so a cross-site page cannot publish without a CORS
preflight). The answer is ``{"topic": T, "seq": N, "time": t}``, the message's place in the
topic. Errors answer ``{"error": "..."}``:

* 400: invalid JSON (``NaN`` and ``Infinity`` too, and nesting deeper than
  :data:`~.common.MAX_JSON_DEPTH`), not an object, an invalid topic name, no ``data`` field;
* 401: no credentials or invalid ones, when an authenticator guards the route
  (:mod:`fullduplex.auth`; answered before this handler runs);
* 403: the topic is not publishable by this client (:class:`~.common.TopicRules`: by default
  nothing is);
* 413: the body is over ``max_body_size``;
* 415: the content type is not ``application/json``.

Idempotency: a body with ``"key": K`` (or an ``Idempotency-Key: K`` header), K a string of 1 to
128 characters, is published at most once while K is remembered (the latest
``DEFAULT_MAX_PUBLISH_KEYS`` keys of the process, :class:`PublishKeys`): a retry with the same key
(after a timeout, a lost answer, a reconnection) gets the first publish's answer again. The
WebSocket route's ``publish`` op shares the same keys. With several processes on one Redis (or
Redis Cluster), the key also goes to Redis, which keeps it beside the topic for
``publish_key_ttl`` (5 minutes by default) and answers a retry that lands on another process
with the first publish's sequence number, in the same atomic step as the publish.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from ..asyncio.router import APP_AUTH, App, json_response
from ..hub import Hub, HubUnavailable, Message, TooManyTopics
from ..protocol.http11 import Request, Response
from .common import (
    InvalidInput,
    TopicRules,
    check_topic,
    error_response,
    parse_json,
    warn_open_publish,
)

__all__ = [
    "DEFAULT_MAX_PUBLISH_KEYS",
    "DEFAULT_MAX_PUBLISH_SIZE",
    "MAX_KEY_LENGTH",
    "PublishKeys",
    "check_key",
    "mount_publish",
]

#: Largest publish body: 64 KiB (a chat line or a price tick is well under 1 KiB; the server's
#: own limit for every request body is 1 MiB).
DEFAULT_MAX_PUBLISH_SIZE = 64 * 1024
#: Idempotency keys remembered per process: ~200 B each, so ~2 MiB. A client retries within
#: seconds to a minute; 10,000 keys cover 160 publishes a second for a minute.
DEFAULT_MAX_PUBLISH_KEYS = 10_000
#: Longest idempotency key (a UUID is 36 characters; the browser library sends 32).
MAX_KEY_LENGTH = 128


def check_key(value: object) -> str | None:
    """Return ``value`` as an idempotency key (None if absent).

    Raises:
        InvalidInput: it is not a string of 1 to ``MAX_KEY_LENGTH`` characters.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_LENGTH:
        raise InvalidInput(f"invalid key: a string of 1 to {MAX_KEY_LENGTH} characters")
    return value


class PublishKeys:
    """The idempotency keys of recent publishes: a retried publish is answered, not repeated.

    A key maps to the future of its publish: a retry arriving while the first attempt is still
    publishing waits for it. Oldest keys go first beyond ``max_keys``; a publish that failed
    forgets its key (the retry publishes).

    Args:
        max_keys: keys remembered; None remembers none (every publish goes through).
    """

    def __init__(self, max_keys: int | None = DEFAULT_MAX_PUBLISH_KEYS) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[str, asyncio.Future[Message]] = OrderedDict()
        #: Publishes answered from a key instead of published again (for tests and metrics).
        self.deduplicated = 0

    def __len__(self) -> int:
        return len(self._keys)

    async def publish(self, hub: Hub, topic: str, data: object, key: str | None) -> Message:
        """Publish ``data`` to ``topic`` once per ``key`` (always, if ``key`` is None).

        Raises:
            InvalidInput: ``key`` was used for another topic.
            HubUnavailable: the hub could not publish.
        """
        if key is None or not self.max_keys:
            return await hub.publish(topic, data)
        keys = self._keys
        earlier = keys.get(key)
        if earlier is not None:
            keys.move_to_end(key)
            message = await asyncio.shield(earlier)
            if message.topic != topic:
                raise InvalidInput("key already used for another topic", 409)
            self.deduplicated += 1
            return message
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        keys[key] = future
        while len(keys) > self.max_keys:
            keys.popitem(last=False)
        try:
            message = await hub.publish(topic, data, key=key)
        except BaseException as exc:
            if keys.get(key) is future:
                del keys[key]
            future.set_exception(exc if isinstance(exc, Exception) else HubUnavailable("cancelled"))
            future.exception()  # retrieved: waiters (if any) get it; no "never retrieved" log
            raise
        future.set_result(message)
        return message


def parse_publish(
    request: Request, rules: TopicRules, max_body_size: int | None
) -> tuple[str, object, str | None]:
    """Validate a publish request; return its topic, data and idempotency key (or None).

    Raises:
        InvalidInput: with the status to answer (400, 403, 413 or 415).
    """
    if max_body_size is not None and len(request.body) > max_body_size:
        raise InvalidInput(f"body too large: at most {max_body_size} bytes", 413)
    ctype = (request.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
    if ctype != "application/json":
        raise InvalidInput("Content-Type must be application/json", 415)
    try:
        payload = parse_json(request.body)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if not isinstance(payload, dict):
        raise InvalidInput("expected a JSON object with topic and data")
    topic = check_topic(payload.get("topic"))
    if "data" not in payload:
        raise InvalidInput("missing field: data")
    if not rules.can_publish(topic, request.identity):
        raise InvalidInput("topic not publishable", 403)
    key = check_key(payload.get("key", request.headers.get("Idempotency-Key")))
    return topic, payload["data"], key


def mount_publish(
    app: App,
    hub: Hub,
    path: str = "/publish",
    *,
    rules: TopicRules | None = None,
    auth: Any = APP_AUTH,
    keys: PublishKeys | None = None,
    # Limits
    max_body_size: int | None = DEFAULT_MAX_PUBLISH_SIZE,
) -> None:
    """Serve publishing over HTTP (see the module docstring) at ``path``.

    Args:
        app: the application.
        hub: the hub.
        path: the route (POST).
        rules: which topics clients may publish to; none if None (the default
            :class:`~.common.TopicRules`).
        keys: idempotency keys shared with other mounts (one is made if None).
        auth: the route's authenticator (:mod:`fullduplex.auth`): the app's when omitted,
            None for none.
        max_body_size: largest body accepted (413 above it), None for the server's limit.
    """
    topic_rules = rules or TopicRules()
    warn_open_publish(app, path, topic_rules)
    known = keys if keys is not None else PublishKeys()

    @app.post(path, auth=auth)
    async def publish(request: Request) -> Response:
        try:
            topic, data, key = parse_publish(request, topic_rules, max_body_size)
            message = await known.publish(hub, topic, data, key)
        except InvalidInput as exc:
            return error_response(exc)
        except TooManyTopics:
            return error_response(InvalidInput("too many topics", 503))
        except HubUnavailable:
            return error_response(InvalidInput("hub unavailable", 503))
        return json_response({"topic": message.topic, "seq": message.seq, "time": message.time})
