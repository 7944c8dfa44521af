"""The sans-I/O WebSocket core: RFC 6455 and RFC 7692, bytes in, events and bytes out.

Nothing in this package opens a socket, starts a thread, or reads a clock.
"""

from __future__ import annotations

from .connection import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    Connection,
    Side,
    State,
)
from .events import (
    BinaryFragment,
    BinaryMessage,
    CloseReceived,
    Event,
    Ping,
    Pong,
    TextFragment,
    TextMessage,
)
from .exceptions import *  # noqa: F403
from .exceptions import __all__ as _exceptions_all
from .frames import (
    CloseCode,
    Frame,
    FrameParser,
    Opcode,
    parse_close,
    prepare_frame,
    serialize_close,
    serialize_frame,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "BinaryFragment",
    "BinaryMessage",
    "CloseCode",
    "CloseReceived",
    "Connection",
    "Event",
    "Frame",
    "FrameParser",
    "Opcode",
    "Ping",
    "Pong",
    "Side",
    "State",
    "TextFragment",
    "TextMessage",
    "parse_close",
    "prepare_frame",
    "serialize_close",
    "serialize_frame",
    *_exceptions_all,
]
