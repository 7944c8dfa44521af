"""Exceptions raised by fullduplex.

Every exception derives from :class:`FullduplexError`::

    FullduplexError
    ├── ProtocolError                 the peer broke RFC 6455 / RFC 7692 (remote violation)
    │   ├── PayloadTooBig             a frame or message over the configured limit (1009)
    │   └── InvalidUTF8               text that is not UTF-8 (1007)
    ├── InvalidHandshake              the opening handshake failed
    │   ├── InvalidMessage            the HTTP message could not be parsed
    │   │   └── MessageTooBig         the HTTP head or body is over a limit (413/431)
    │   ├── InvalidUpgrade            not a WebSocket upgrade (400/426)
    │   ├── InvalidHeader             a missing or malformed header (400)
    │   ├── InvalidOrigin             an Origin refused by the allow-list (403)
    │   ├── InvalidStatus             the server answered something else than 101
    │   └── NegotiationError          subprotocol or extension negotiation failed
    ├── LocalProtocolError            this side used the API wrongly (local misuse)
    └── ConnectionClosed              raised by the I/O layers once the connection is closed
        ├── ConnectionClosedOK        closed with 1000 or 1001
        └── ConnectionClosedError     closed with any other code, or without a close frame

Remote violations (:class:`ProtocolError`, :class:`InvalidHandshake`) carry what to answer the
peer with: a close code or an HTTP status. Their text is for logs only and is never sent to the
peer verbatim: the peer gets the :attr:`ProtocolError.public_reason`, a short fixed phrase.
"""

from __future__ import annotations

__all__ = [
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "FullduplexError",
    "InvalidHandshake",
    "InvalidHeader",
    "InvalidMessage",
    "InvalidOrigin",
    "InvalidStatus",
    "InvalidUTF8",
    "InvalidUpgrade",
    "LocalProtocolError",
    "MessageTooBig",
    "NegotiationError",
    "PayloadTooBig",
    "ProtocolError",
]


class FullduplexError(Exception):
    """Root of every exception raised by fullduplex."""


class ProtocolError(FullduplexError):
    """The peer violated the WebSocket protocol.

    Args:
        message: what went wrong, for logs.
        code: the close code the connection is failed with (RFC 6455 7.4.1).
        public_reason: the close reason sent to the peer; a short fixed phrase.
    """

    def __init__(self, message: str, code: int = 1002, public_reason: str = "") -> None:
        super().__init__(message)
        #: Close code to fail the connection with.
        self.code = code
        #: Reason sent in the close frame; never contains data from the peer.
        self.public_reason = public_reason or _DEFAULT_REASONS.get(code, "")


class PayloadTooBig(ProtocolError):
    """A frame or a message exceeds the configured size limit (close code 1009)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 1009)


class InvalidUTF8(ProtocolError):
    """A text message or close reason is not valid UTF-8 (close code 1007)."""

    def __init__(self, message: str = "invalid UTF-8 in text") -> None:
        super().__init__(message, 1007, "invalid UTF-8")


_DEFAULT_REASONS = {
    1002: "protocol error",
    1007: "invalid data",
    1009: "message too big",
    1011: "internal error",
}


class InvalidHandshake(FullduplexError):
    """The opening handshake failed.

    Args:
        message: what went wrong, one line; safe to send to the peer as the response body.
        status: the HTTP status a server answers with.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        #: HTTP status code for the error response.
        self.status = status


class InvalidMessage(InvalidHandshake):
    """An HTTP message could not be parsed."""


class MessageTooBig(InvalidMessage):
    """An HTTP head (431) or body (413) exceeds its limit."""


class InvalidUpgrade(InvalidHandshake):
    """The request or response is not a WebSocket upgrade."""


class InvalidHeader(InvalidHandshake):
    """A required header is missing or malformed."""


class InvalidOrigin(InvalidHandshake):
    """The Origin header is not in the server's allow-list (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 403)


class InvalidStatus(InvalidHandshake):
    """The server answered the opening handshake with a status other than 101.

    Args:
        status: the status code received.
        headers: the response headers, as a list of (name, value) pairs.
        body: the response body.
    """

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"server rejected WebSocket connection: HTTP {status}", status)
        #: Response headers.
        self.headers = headers
        #: Response body.
        self.body = body


class NegotiationError(InvalidHandshake):
    """Subprotocol or extension negotiation failed."""


class LocalProtocolError(FullduplexError):
    """This side used the API in a way the protocol forbids (for example, sending after close)."""


class ConnectionClosed(FullduplexError):
    """The WebSocket connection is closed.

    Args:
        code: the close code received (or 1006 if no close frame was received).
        reason: the close reason received.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        #: Close code.
        self.code = code
        #: Close reason.
        self.reason = reason


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed normally (1000 or 1001)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed with an error code, or without a close handshake."""
