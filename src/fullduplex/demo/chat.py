"""The chat room: the WebSocket topic protocol on topic ``chat``, with names and presence.

The page connects to ``/chat/ws``, which speaks the protocol of
:mod:`fullduplex.transports.websocket` restricted to the topic ``chat``, subscribes with
``since: 0`` (history for newcomers: the last :data:`HISTORY` messages) and publishes:

* ``{"type": "join", "name": "ann"}`` once, to take a name: the server answers this
  connection alone with ``{"joined": "ann"}``, or with the error ``"name taken"`` if another
  connection holds that name (compared case-insensitively): the page then asks for another;
* ``{"type": "message", "text": "hello"}`` for each line.

The name is bound to the connection on the server: the server checks each publish and stamps
the sender's name on it, so nobody writes under another's name; when the connection ends it
publishes ``{"type": "leave", "name": "ann"}`` and the name is free again. This route is the
only way into the topic: the generic transports refuse to publish to it
(:data:`~fullduplex.demo.app.RULES`), so what the pages receive is always one of the three
shapes above, checked here.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from ..asyncio import App, WebSocket
from ..hub import Hub, HubUnavailable, TopicConfig
from ..transports import FrameCache, InvalidInput, TopicRules, mount_websocket
from ..transports.common import dumps

__all__ = ["CHAT_CONFIG", "CHAT_TOPIC", "HISTORY", "MAX_TEXT", "Chat"]

#: The topic of the room.
CHAT_TOPIC = "chat"
#: Messages a newcomer sees.
HISTORY = 100
#: Longest line, in characters.
MAX_TEXT = 500
#: The room's topic settings.
CHAT_CONFIG = TopicConfig(history_size=HISTORY, history_age=24 * 3600.0)

_NAME = re.compile(r"[\w .\-]{1,32}")


class Chat:
    """Names and presence of the chat room's connections.

    Args:
        hub: the hub.
    """

    def __init__(self, hub: Hub) -> None:
        #: The hub.
        self.hub = hub
        #: The name of each connection that joined.
        self.names: dict[WebSocket, str] = {}
        # The names in use, case-folded: one "ann" at a time.
        self._taken: set[str] = set()

    def mount(self, app: App, path: str = "/chat/ws", frames: FrameCache | None = None) -> None:
        """Serve the room at ``path``."""
        self.hub.configure(CHAT_TOPIC, CHAT_CONFIG)
        mount_websocket(
            app,
            self.hub,
            path,
            rules=TopicRules(subscribe=[CHAT_TOPIC], publish=[CHAT_TOPIC]),
            frames=frames,
            on_publish=self.check,
            on_disconnect=self.leave,
            max_subscriptions=1,
        )

    def check(self, ws: WebSocket, topic: str, data: Any) -> dict[str, Any]:
        """Validate a publish and stamp the sender's name on it.

        Raises:
            InvalidInput: not a join or a message, a bad name, no name yet, a bad text.
        """
        if not isinstance(data, dict):
            raise InvalidInput("expected {type, ...}")
        kind = data.get("type")
        if kind == "join":
            name = data.get("name")
            if not isinstance(name, str) or not _NAME.fullmatch(name.strip()):
                raise InvalidInput("invalid name: 1 to 32 letters, digits, spaces, . _ -")
            if ws in self.names:
                raise InvalidInput("already joined")
            name = name.strip()
            if name.casefold() in self._taken:
                raise InvalidInput("name taken")
            self._taken.add(name.casefold())
            self.names[ws] = name
            ws.send_nowait(dumps({"joined": name}))  # to this connection alone
            return {"type": "join", "name": name}
        if kind == "message":
            name = self.names.get(ws)
            if name is None:
                raise InvalidInput("join first")
            text = data.get("text")
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
                raise InvalidInput(f"invalid text: 1 to {MAX_TEXT} characters")
            return {"type": "message", "name": name, "text": text}
        raise InvalidInput("unknown type")

    async def leave(self, ws: WebSocket) -> None:
        """Announce that a connection that joined has left."""
        name = self.names.pop(ws, None)
        if name is not None:
            self._taken.discard(name.casefold())
            # The hub may be down or closing (server shutdown): the notice is best effort.
            with contextlib.suppress(HubUnavailable, RuntimeError):
                await self.hub.publish(CHAT_TOPIC, {"type": "leave", "name": name})
