"""Server-Sent Events encoding: pure functions from events to bytes (no I/O, no clock).

The WHATWG HTML Living Standard, section 9.2 "Server-sent events", defines the
``text/event-stream`` format: UTF-8 lines, each event a block of ``field: value`` lines ended by
a blank line. This module writes that format; the endpoint that streams it is
:mod:`fullduplex.transports.eventstream`.

* :func:`encode_event` - one event: ``event:``, ``id:`` and one ``data:`` line per line of data;
* :func:`encode_comment` - a comment line, used as a heartbeat (proxies see bytes flow, the
  browser ignores it);
* :func:`encode_retry` - the reconnection delay hint;
* :func:`format_event_id` / :func:`parse_event_id` - the cursors carried in ``id:`` and given
  back by the browser in ``Last-Event-ID`` on reconnect.

Event ids
---------

A stream of one topic uses the sequence number as the id (``id: 42``). A stream of several
topics uses the whole cursor after the event, one ``topic:seq`` pair per topic, comma
separated, in the order the topics were asked for (``id: chat:17,ticker:42``): ``Last-Event-ID``
then says exactly where every topic stood, so the stream resumes each topic without loss or
duplicates. Topic names never contain ``:`` or ``,`` (see :data:`~.common.TOPIC_RE`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "encode_comment",
    "encode_event",
    "encode_retry",
    "format_event_id",
    "parse_event_id",
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


def format_event_id(cursors: Mapping[str, int]) -> str:
    """Format the ``id:`` of an event from the cursor of every topic of the stream.

    One topic gives its sequence number alone; several give ``topic:seq`` pairs.
    """
    if len(cursors) == 1:
        return str(next(iter(cursors.values())))
    return ",".join(f"{topic}:{seq}" for topic, seq in cursors.items())


def parse_event_id(value: str, topics: list[str]) -> dict[str, int]:
    """Parse a ``Last-Event-ID`` sent back by the browser into cursors for ``topics``.

    Args:
        value: the header's value.
        topics: the topics of the stream; with one topic a bare number is expected.

    Returns:
        The cursor of each topic found in the id (topics absent from it are left out).

    Raises:
        ValueError: the id is not in the format of :func:`format_event_id`.
    """
    value = value.strip()
    if len(topics) == 1 and ":" not in value:
        return {topics[0]: _parse_seq(value)}
    cursors: dict[str, int] = {}
    for pair in value.split(","):
        topic, sep, seq = pair.rpartition(":")
        if not sep or topic not in topics:
            raise ValueError("Last-Event-ID does not match the topics asked for")
        cursors[topic] = _parse_seq(seq)
    return cursors


def _parse_seq(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError("a sequence number must be a non-negative integer")
    return int(text)


def _check_field(name: str, value: str) -> None:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise ValueError(f"SSE {name} must be a single line without NUL")
