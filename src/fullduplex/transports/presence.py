"""``GET /presence?topic=T``: who is subscribed to a topic, over HTTP.

Answers ``{"topic": T, "identities": {id: subscriptions}, "connections": n}`` (200), from the
:class:`~fullduplex.hub.presence.Presence` given to the WebSocket route, across every process
when it is a :class:`~fullduplex.hub.presence.RedisPresence`. The topic's subscribe permission
applies, as on every transport: 403 ``unknown topic`` otherwise; 400 for a missing or invalid
topic; 503 when Redis cannot be reached.
"""

from __future__ import annotations

import logging
from typing import Any

from ..asyncio.router import APP_AUTH, App, json_response
from ..hub import HubUnavailable
from ..hub.presence import Presence
from ..protocol.http11 import Request, Response
from .common import InvalidInput, TopicRules, error_response, query_topics

__all__ = ["mount_presence"]


def mount_presence(
    app: App,
    presence: Presence,
    path: str = "/presence",
    *,
    rules: TopicRules | None = None,
    auth: Any = APP_AUTH,
) -> None:
    """Serve ``GET path?topic=T`` (see the module docstring).

    Args:
        app: the application.
        presence: the presence the WebSocket route counts in.
        path: the route.
        rules: which topics a client may see (the subscribe permission); the default
            :class:`~.common.TopicRules` if None.
        auth: the route's authenticator (:mod:`fullduplex.auth`): the app's when omitted,
            None for none.
    """
    topic_rules = rules or TopicRules()

    @app.get(path, auth=auth, access_log_level=logging.DEBUG)
    async def who(request: Request) -> Response:
        try:
            topic = query_topics(request.query, topic_rules, identity=request.identity)[0]
        except InvalidInput as exc:
            return error_response(exc)
        try:
            answer = await presence.who(topic)
        except HubUnavailable:
            return error_response(InvalidInput("hub unavailable", 503))
        return json_response({"topic": topic, **answer})
