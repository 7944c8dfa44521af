"""Server-Sent Events encoding: pure functions from events to bytes (no I/O, no clock).

The WHATWG HTML Living Standard, section 9.2 "Server-sent events", defines the
``text/event-stream`` format: UTF-8 lines, each event a block of ``field: value`` lines ended by
a blank line. This module writes that format; the endpoint that streams it, and the cursors it
carries in ``id:``, are in :mod:`fullduplex.transports.sse`.

* :func:`encode_event` - one event: ``event:``, ``id:`` and one ``data:`` line per line of data;
* :func:`encode_comment` - a comment line, used as a heartbeat (proxies see bytes flow, the
  browser ignores it);
* :func:`encode_retry` - the reconnection delay hint.
"""

from __future__ import annotations

import re

__all__ = [
    "encode_comment",
    "encode_event",
    "encode_retry",
]

# WHATWG 9.2.5: "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE FEED
# (CRLF) character pair, a single U+000A LINE FEED (LF) character, or a single U+000D CARRIAGE
# RETURN (CR) character." Any of them in data starts a new data: line.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# An id or event name must be one line; WHATWG 9.2.6: "If the field name is 'id': If the field
# value does not contain U+0000 NULL, then set the last event ID buffer to the field value."
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


def encode_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """Encode one event.

    Args:
        data: the event's data; each line (split at CRLF, CR or LF) becomes a ``data:`` line,
            and the browser joins them back with LF. An empty string sends one empty
            ``data:`` line, which still dispatches an event.
        event: the event type (``event:`` field); None for the default type, ``message``.
        id: the event id (``id:`` field), which the browser sends back in ``Last-Event-ID``;
            None to leave the last id unchanged.

    Returns:
        The UTF-8 bytes of the event, blank line included.

    Raises:
        ValueError: ``event`` or ``id`` contains a line break or NUL.
    """
    lines = []
    if event is not None:
        _check_field("event", event)
        lines.append(f"event: {event}\n")
    if id is not None:
        _check_field("id", id)
        lines.append(f"id: {id}\n")
    lines.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    lines.append("\n")
    return "".join(lines).encode()


def encode_comment(text: str = "") -> bytes:
    """Encode a comment (a line starting with ``:``), e.g. a heartbeat.

    Browsers ignore comments (WHATWG 9.2.6: "If the line starts with a U+003A COLON character
    (:) - Ignore the line."); they keep idle connections alive through proxies.
    Multi-line text becomes several comment lines.
    """
    return "".join(f": {line}\n" if line else ":\n" for line in _LINE_BREAK.split(text)).encode()


def encode_retry(milliseconds: int) -> bytes:
    """Encode the reconnection time hint (``retry:``), in milliseconds.

    Raises:
        ValueError: the value is negative.
    """
    if milliseconds < 0:
        raise ValueError("retry must be a non-negative number of milliseconds")
    # WHATWG 9.2.6: "If the field value consists of only ASCII digits, then interpret the field
    # value as an integer in base ten, and set the event stream's reconnection time to that".
    return b"retry: %d\n\n" % milliseconds


def _check_field(name: str, value: str) -> None:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise ValueError(f"SSE {name} must be a single line without NUL")
