"""``POST /publish``: publish one message from an HTTP client.

The body is JSON, ``{"topic": T, "data": ...}``, with ``Content-Type: application/json`` (a
type that HTML forms cannot send, so a cross-site page cannot publish without a CORS
preflight). The answer is ``{"topic": T, "seq": N, "time": t}``, the message's place in the
topic. Errors answer ``{"error": "..."}``:

* 400: invalid JSON, not an object, an invalid topic name, no ``data`` field;
* 401: no credentials or invalid ones, when an authenticator guards the route
  (:mod:`fullduplex.auth`; answered before this handler runs);
* 403: the topic is not publishable by this client (:class:`~.common.TopicRules`: by default
  nothing is);
* 413: the body is over ``max_body_size``;
* 415: the content type is not ``application/json``.
"""

from __future__ import annotations

import json
from typing import Any

from ..asyncio.router import APP_AUTH, App, json_response
from ..hub import Hub, HubUnavailable
from ..protocol.http11 import Request, Response
from .common import InvalidInput, TopicRules, check_topic, error_response, warn_open_publish

__all__ = ["DEFAULT_MAX_PUBLISH_SIZE", "mount_publish"]

#: Largest publish body: 64 KiB (a chat line or a price tick is well under 1 KiB; the server's
#: own limit for every request body is 1 MiB).
DEFAULT_MAX_PUBLISH_SIZE = 64 * 1024


def parse_publish(
    request: Request, rules: TopicRules, max_body_size: int | None
) -> tuple[str, object]:
    """Validate a publish request; return its topic and data.

    Raises:
        InvalidInput: with the status to answer (400, 403, 413 or 415).
    """
    if max_body_size is not None and len(request.body) > max_body_size:
        raise InvalidInput(f"body too large: at most {max_body_size} bytes", 413)
    ctype = (request.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
    if ctype != "application/json":
        raise InvalidInput("Content-Type must be application/json", 415)
    try:
        payload = json.loads(request.body)
    except ValueError:
        raise InvalidInput("invalid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidInput("expected a JSON object with topic and data")
    topic = check_topic(payload.get("topic"))
    if "data" not in payload:
        raise InvalidInput("missing field: data")
    if not rules.can_publish(topic, request.identity):
        raise InvalidInput("topic not publishable", 403)
    return topic, payload["data"]


def mount_publish(
    app: App,
    hub: Hub,
    path: str = "/publish",
    *,
    rules: TopicRules | None = None,
    auth: Any = APP_AUTH,
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
        auth: the route's authenticator (:mod:`fullduplex.auth`): the app's when omitted,
            None for none.
        max_body_size: largest body accepted (413 above it), None for the server's limit.
    """
    topic_rules = rules or TopicRules()
    warn_open_publish(app, path, topic_rules)

    @app.post(path, auth=auth)
    async def publish(request: Request) -> Response:
        try:
            topic, data = parse_publish(request, topic_rules, max_body_size)
        except InvalidInput as exc:
            return error_response(exc)
        try:
            message = await hub.publish(topic, data)
        except HubUnavailable:
            return error_response(InvalidInput("hub unavailable", 503))
        return json_response({"topic": message.topic, "seq": message.seq, "time": message.time})
