"""Events the sans-I/O :class:`~fullduplex.protocol.connection.Connection` reports.

Each is a small frozen dataclass named after what happened. By default whole messages are
reported (:class:`TextMessage`, :class:`BinaryMessage`); with ``stream_messages=True`` each data
frame is reported as it arrives (:class:`TextFragment`, :class:`BinaryFragment`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BinaryFragment",
    "BinaryMessage",
    "CloseReceived",
    "Event",
    "Ping",
    "Pong",
    "TextFragment",
    "TextMessage",
]


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A whole text message was received.

    Attributes:
        data: the message, decoded from UTF-8.
    """

    data: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    """A whole binary message was received.

    Attributes:
        data: the message.
    """

    data: bytes


@dataclass(frozen=True, slots=True)
class TextFragment:
    """Part of a text message was received (streaming mode).

    Attributes:
        data: the text decoded so far from this frame (a character split across frames is
            reported with the frame that completes it).
        final: True on the last fragment of the message.
    """

    data: str
    final: bool


@dataclass(frozen=True, slots=True)
class BinaryFragment:
    """Part of a binary message was received (streaming mode).

    Attributes:
        data: the payload of this frame.
        final: True on the last fragment of the message.
    """

    data: bytes
    final: bool


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping was received; the connection has already queued the pong.

    Attributes:
        payload: the ping's application data.
    """

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong answering one or more pings sent by :meth:`Connection.send_ping` was received.

    Unsolicited pongs (RFC 6455 5.5.3 allows them as heartbeats) are ignored and not reported.

    Attributes:
        payload: the pong's application data.
        acknowledged: payloads of every outstanding ping this pong completes, oldest first (a
            pong acknowledges the ping with the same payload and every ping sent before it).
    """

    payload: bytes
    acknowledged: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's close frame was received.

    Attributes:
        code: the close code, 1005 when the frame carried none.
        reason: the close reason.
    """

    code: int
    reason: str


#: Any event.
Event = TextMessage | BinaryMessage | TextFragment | BinaryFragment | Ping | Pong | CloseReceived
