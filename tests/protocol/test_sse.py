"""The pure SSE encoder: bytes out, checked against the WHATWG parsing rules."""

from __future__ import annotations

import pytest

from fullduplex.protocol.sse import encode_comment, encode_event, encode_retry


def whatwg_parse(stream: bytes) -> list[tuple[str, str, str | None]]:
    """A small reference parser after WHATWG 9.2.6: (type, data, last id) per dispatch."""
    events = []
    data: list[str] = []
    event_type = ""
    last_id: str | None = None
    text = stream.decode().replace("\r\n", "\n").replace("\r", "\n")
    for line in text.split("\n"):
        if line == "":
            if data:
                events.append((event_type or "message", "\n".join(data), last_id))
            data, event_type = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\x00" not in value:
            last_id = value
    return events


def test_simple_event() -> None:
    assert encode_event("hello") == b"data: hello\n\n"


def test_event_type_and_id() -> None:
    assert encode_event("x", event="gap", id="7") == b"event: gap\nid: 7\ndata: x\n\n"


@pytest.mark.parametrize("data", ["a\nb", "a\r\nb", "a\rb", "a\n\nb", "\n", "", "line\n"])
def test_multi_line_data_round_trips(data: str) -> None:
    encoded = encode_event(data, id="1")
    assert encoded.count(b"data:") == len(
        data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    )
    expected = data.replace("\r\n", "\n").replace("\r", "\n")
    assert whatwg_parse(encoded) == [("message", expected, "1")]


def test_unicode_is_utf8() -> None:
    assert encode_event("é €") == "data: é €\n\n".encode()


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_id_and_event_must_be_one_line(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_event("x", id=bad)
    with pytest.raises(ValueError):
        encode_event("x", event=bad)


def test_comments_are_heartbeats_the_browser_ignores() -> None:
    assert encode_comment() == b":\n"
    assert encode_comment("hi") == b": hi\n"
    assert encode_comment("a\nb") == b": a\n: b\n"
    assert whatwg_parse(encode_comment("x") + encode_event("d")) == [("message", "d", None)]


def test_retry() -> None:
    assert encode_retry(3000) == b"retry: 3000\n\n"
    with pytest.raises(ValueError):
        encode_retry(-1)


def test_id_only_block_sets_the_last_id_without_an_event() -> None:
    stream = b"id: 5\n\n" + encode_event("later")
    assert whatwg_parse(stream) == [("message", "later", "5")]
