"""Cross-checks against wsproto, an independent sans-I/O implementation of RFC 6455.

What our connection writes, wsproto's connection of the other side must read as the same
messages, and the other way round, in both directions (our client to a wsproto server, a
wsproto client to our server, and so on). Violations must fail with the code wsproto picks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from wsproto.connection import Connection as WsprotoConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage as WBytes
from wsproto.events import CloseConnection as WClose
from wsproto.events import Event as WEvent
from wsproto.events import Message as WMessage
from wsproto.events import Ping as WPing
from wsproto.events import Pong as WPong
from wsproto.events import TextMessage as WText

from fullduplex.protocol import (
    BinaryMessage,
    CloseReceived,
    Connection,
    Event,
    Opcode,
    Ping,
    Pong,
    Side,
    State,
    TextMessage,
)
from fullduplex.protocol.frames import serialize_frame

SIDES = [Side.SERVER, Side.CLIENT]
TEXTS = ["", "Hello", "héllo wörld €𝄞", "x" * 126, "ü" * 40000]
BINARIES = [b"", b"\x00\xff", bytes(range(256)) * 300]


def wsproto_peer(side: Side) -> WsprotoConnection:
    """The wsproto connection on the other end from our ``side``."""
    return WsprotoConnection(
        ConnectionType.CLIENT if side is Side.SERVER else ConnectionType.SERVER
    )


def wsproto_messages(events: list[WEvent]) -> list[object]:
    """wsproto events with message pieces joined, in comparable tuples."""
    out: list[object] = []
    pending: list[str | bytes] = []
    for event in events:
        if isinstance(event, WMessage):
            pending.append(event.data)
            if event.message_finished:
                kind = "text" if isinstance(event, WText) else "binary"
                joined = "".join(pending) if kind == "text" else b"".join(pending)  # type: ignore[arg-type]
                out.append((kind, joined))
                pending = []
        elif isinstance(event, (WPing, WPong)):
            out.append((type(event).__name__.lower(), bytes(event.payload)))
        elif isinstance(event, WClose):
            out.append(("close", event.code, event.reason or ""))
        else:  # a wsproto event this module never causes
            raise AssertionError(event)
    return out


def ours_to_wsproto(
    side: Side, act: Callable[[Connection], None], **kwargs: object
) -> list[object]:
    ours = Connection(side, **kwargs)  # type: ignore[arg-type]
    act(ours)
    peer = wsproto_peer(side)
    peer.receive_data(ours.data_to_send())
    return wsproto_messages(list(peer.events()))


# -- ours -> wsproto ------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("fragment_size", [None, 1, 7, 4096])
def test_messages_to_wsproto(side: Side, fragment_size: int | None):
    # Tiny fragments split characters between frames; on big messages they only cost time.
    small = fragment_size is not None and fragment_size < 100
    texts = [t for t in TEXTS if not small or len(t) < 1000]
    binaries = [b for b in BINARIES if not small or len(b) < 1000]

    def act(conn: Connection) -> None:
        for text in texts:
            conn.send_text(text)
        for data in binaries:
            conn.send_binary(data)

    expected = [("text", t) for t in texts] + [("binary", b) for b in binaries]
    assert ours_to_wsproto(side, act, fragment_size=fragment_size) == expected


@pytest.mark.parametrize("side", SIDES)
def test_fragmented_messages_to_wsproto(side: Side):
    def act(conn: Connection) -> None:
        conn.send_text(["Hé", "", "llo", "𝄞"])
        conn.send_binary([b"a", b"bc"])
        conn.send_fragment("one ", final=False)
        conn.send_ping(b"in between")
        conn.send_fragment("two", final=True)
        conn.send_fragment(b"\x01", final=False)
        conn.send_fragment(b"\x02", final=True)

    assert ours_to_wsproto(side, act) == [
        ("text", "Héllo𝄞"),
        ("binary", b"abc"),
        ("ping", b"in between"),
        ("text", "one two"),
        ("binary", b"\x01\x02"),
    ]


@pytest.mark.parametrize("side", SIDES)
def test_ping_pong_with_wsproto(side: Side):
    ours = Connection(side)
    peer = wsproto_peer(side)
    ours.send_ping(b"are you there")
    ours.send_pong(b"heartbeat")
    peer.receive_data(ours.data_to_send())
    events = list(peer.events())
    assert wsproto_messages(events) == [("ping", b"are you there"), ("pong", b"heartbeat")]
    assert isinstance(events[0], WPing)
    ours.receive_data(peer.send(events[0].response()))
    assert ours.events_received() == [Pong(b"are you there", (b"are you there",))]
    # And the other way: our automatic pong reaches wsproto.
    ours.receive_data(peer.send(WPing(payload=b"\x00\x01")))
    assert ours.events_received() == [Ping(b"\x00\x01")]
    peer.receive_data(ours.data_to_send())
    assert wsproto_messages(list(peer.events())) == [("pong", b"\x00\x01")]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (1001, "going away"), (4321, "é" * 61)])
def test_we_close_wsproto_answers(side: Side, code: int, reason: str):
    ours = Connection(side)
    peer = wsproto_peer(side)
    ours.send_close(code, reason)
    peer.receive_data(ours.data_to_send())
    events = list(peer.events())
    assert wsproto_messages(events) == [("close", code, reason)]
    assert peer.state is ConnectionState.REMOTE_CLOSING
    assert isinstance(events[0], WClose)
    ours.receive_data(peer.send(events[0].response()))
    assert peer.state is ConnectionState.CLOSED
    assert ours.events_received() == [CloseReceived(code, reason)]  # wsproto echoes the reason
    assert ours.state is State.CLOSED
    assert ours.close_code == code


def test_close_without_code_to_wsproto():
    ours = Connection(Side.CLIENT)
    peer = wsproto_peer(Side.CLIENT)
    ours.send_close(1005)
    peer.receive_data(ours.data_to_send())
    assert wsproto_messages(list(peer.events())) == [("close", 1005, "")]


# -- wsproto -> ours ------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
def test_messages_from_wsproto(side: Side):
    peer = wsproto_peer(side)
    data = b""
    for text in TEXTS:
        data += peer.send(WText(data=text))
    for payload in BINARIES:
        data += peer.send(WBytes(data=payload))
    data += peer.send(WText(data="frag", message_finished=False))
    data += peer.send(WPing(payload=b"p"))
    data += peer.send(WText(data="mé", message_finished=False))
    data += peer.send(WText(data="nts"))
    data += peer.send(WBytes(data=b"1", message_finished=False))
    data += peer.send(WBytes(data=b"23"))
    data += peer.send(WPong(payload=b"unsolicited"))
    expected: list[Event] = [TextMessage(t) for t in TEXTS] + [BinaryMessage(b) for b in BINARIES]
    expected += [Ping(b"p"), TextMessage("fragménts"), BinaryMessage(b"123")]
    for step in (None, 1000, 7):
        ours = Connection(side)
        chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
        for chunk in chunks:
            ours.receive_data(chunk)
        assert ours.events_received() == expected
        assert ours.failure is None
        peer.receive_data(ours.data_to_send())
        assert wsproto_messages(list(peer.events())) == [("pong", b"p")]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (1011, "oops"), (3000, "ü")])
def test_wsproto_closes_we_answer(side: Side, code: int, reason: str):
    ours = Connection(side)
    peer = wsproto_peer(side)
    ours.receive_data(peer.send(WClose(code=code, reason=reason)))
    assert ours.events_received() == [CloseReceived(code, reason)]
    peer.receive_data(ours.data_to_send())
    assert wsproto_messages(list(peer.events())) == [("close", code, "")]
    assert peer.state is ConnectionState.CLOSED
    assert ours.transport_should_close is (side is Side.SERVER)
    assert ours.close_timer_wanted is (side is Side.CLIENT)


# -- violations: the same close code as wsproto ---------------------------------------------


def frame_to(side: Side, opcode: int, payload: bytes = b"", **kwargs: bool) -> bytes:
    return serialize_frame(opcode, payload, mask=side is Side.SERVER, **kwargs)


VIOLATIONS: dict[str, Callable[[Side], bytes]] = {
    "reserved-opcode": lambda s: frame_to(s, 0x5, b"x"),
    "reserved-control-opcode": lambda s: frame_to(s, 0xC),
    "rsv2": lambda s: frame_to(s, Opcode.BINARY, b"x", rsv2=True),
    "ping-126": lambda s: frame_to(s, Opcode.PING, b"x" * 126),
    "fragmented-ping": lambda s: frame_to(s, Opcode.PING, fin=False),
    "orphan-continuation": lambda s: frame_to(s, Opcode.CONT, b"x"),
    "data-mid-message": lambda s: (
        frame_to(s, Opcode.TEXT, b"a", fin=False) + frame_to(s, Opcode.BINARY, b"b")
    ),
    "invalid-utf8": lambda s: frame_to(s, Opcode.TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xed\xa0\x80"),
    "invalid-utf8-fragment": lambda s: frame_to(s, Opcode.TEXT, b"\xf4\x90", fin=False),
    "close-1-byte": lambda s: frame_to(s, Opcode.CLOSE, b"\x03"),
    "close-code-1004": lambda s: frame_to(s, Opcode.CLOSE, struct.pack("!H", 1004)),
    "close-code-2999": lambda s: frame_to(s, Opcode.CLOSE, struct.pack("!H", 2999)),
    "close-reason-utf8": lambda s: frame_to(s, Opcode.CLOSE, b"\x03\xe8\xff"),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violation_codes_match_wsproto(side: Side, name: str):
    data = VIOLATIONS[name](side)
    judge = WsprotoConnection(
        ConnectionType.SERVER if side is Side.SERVER else ConnectionType.CLIENT
    )
    judge.receive_data(data)
    (verdict,) = [e for e in judge.events() if isinstance(e, WClose)]
    ours = Connection(side)
    ours.receive_data(data)
    assert ours.failure is not None
    assert ours.failure.code == verdict.code
    # And wsproto reads our close frame with that code.
    peer = wsproto_peer(side)
    peer.receive_data(ours.data_to_send())
    assert [m[:2] for m in wsproto_messages(list(peer.events()))] == [("close", verdict.code)]
