"""Property tests of the sans-I/O core (hypothesis).

- Whatever one side sends, the other side reports exactly the messages sent, and feeding the
  bytes in arbitrary chunks (down to one byte at a time) gives the same events and the same
  answers as feeding them whole.
- Arbitrary bytes give events or a failure with 1002, 1007 or 1009; nothing raises.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fullduplex.protocol import (
    BinaryFragment,
    BinaryMessage,
    CloseReceived,
    Connection,
    Event,
    Ping,
    Pong,
    Side,
    State,
    TextFragment,
    TextMessage,
)
from fullduplex.protocol.frames import serialize_frame

SIDES = st.sampled_from([Side.SERVER, Side.CLIENT])
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=40)
binary = st.binary(max_size=300)

# One action of the sending side, applied by send() below.
actions = st.one_of(
    st.tuples(st.just("text"), text),
    st.tuples(st.just("binary"), binary),
    st.tuples(st.just("text-iter"), st.lists(text, max_size=4)),
    st.tuples(st.just("binary-iter"), st.lists(binary, max_size=4)),
    st.tuples(st.just("fragments"), st.lists(text, min_size=1, max_size=4)),
    st.tuples(st.just("fragments"), st.lists(binary, min_size=1, max_size=4)),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
    st.tuples(st.just("pong"), st.binary(max_size=125)),
)
close = st.one_of(
    st.none(),
    st.tuples(st.sampled_from([1000, 1001, 1011, 3000, 4999]), st.text(max_size=20)),
)


def peer_of(side: Side) -> Side:
    return Side.CLIENT if side is Side.SERVER else Side.SERVER


def send(conn: Connection, action: tuple[str, object]) -> list[Event]:
    """Apply an action; return the events the peer should report for it."""
    kind, arg = action
    if kind == "text":
        assert isinstance(arg, str)
        conn.send_text(arg)
        return [TextMessage(arg)]
    if kind == "binary":
        assert isinstance(arg, bytes)
        conn.send_binary(arg)
        return [BinaryMessage(arg)]
    if kind == "text-iter":
        assert isinstance(arg, list)
        conn.send_text(arg)
        return [TextMessage("".join(arg))]
    if kind == "binary-iter":
        assert isinstance(arg, list)
        conn.send_binary(arg)
        return [BinaryMessage(b"".join(arg))]
    if kind == "fragments":
        assert isinstance(arg, list)
        for i, part in enumerate(arg):
            conn.send_fragment(part, final=i == len(arg) - 1)
        whole = "".join(arg) if isinstance(arg[0], str) else b"".join(arg)
        return [TextMessage(whole) if isinstance(whole, str) else BinaryMessage(whole)]
    assert isinstance(arg, bytes)
    if kind == "ping":
        conn.send_ping(arg)
        return [Ping(arg)]
    conn.send_pong(arg)
    return []  # unsolicited pongs are not reported


def unique_pings(seq: list[tuple[str, object]]) -> list[tuple[str, object]]:
    seen: set[object] = set()
    out = []
    for kind, arg in seq:
        if kind == "ping":
            if arg in seen:
                continue
            seen.add(arg)
        out.append((kind, arg))
    return out


def feed(conn: Connection, data: bytes, cuts: list[int]) -> tuple[list[Event], list[bytes]]:
    """Feed ``data`` split at ``cuts``; return the events and what the connection wrote."""
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    events: list[Event] = []
    out = []
    for a, b in itertools.pairwise(bounds):
        conn.receive_data(data[a:b])
        events += conn.events_received()
        out.append(conn.data_to_send())
    return events, out


def unmasked(data: bytes) -> bytes:
    """Strip client masking from a stream of frames so two streams can be compared."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            (n,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif n == 127:
            (n,), pos = struct.unpack_from("!Q", data, pos), pos + 8
        key = data[pos : pos + 4] if b1 & 0x80 else b"\0\0\0\0"
        pos += 4 if b1 & 0x80 else 0
        out += bytes([b0, n]) + bytes(x ^ key[i % 4] for i, x in enumerate(data[pos : pos + n]))
        pos += n
    return bytes(out)


@FAST
@given(
    side=SIDES,
    seq=st.lists(actions, max_size=8).map(unique_pings),
    ending=close,
    fragment_size=st.one_of(st.none(), st.integers(1, 64)),
    cuts=st.lists(st.integers(0, 10**6), max_size=20),
    stream=st.booleans(),
)
def test_round_trip_at_any_chunking(
    side: Side,
    seq: list[tuple[str, object]],
    ending: tuple[int, str] | None,
    fragment_size: int | None,
    cuts: list[int],
    stream: bool,
):
    sender = Connection(side, fragment_size=fragment_size)
    expected: list[Event] = []
    for action in seq:
        expected += send(sender, action)
    if ending is not None:
        sender.send_close(*ending)
        expected.append(CloseReceived(*ending))
    data = sender.data_to_send()

    whole = Connection(peer_of(side), stream_messages=stream)
    chunked = Connection(peer_of(side), stream_messages=stream)
    bytewise = Connection(peer_of(side), stream_messages=stream)
    events_whole, out_whole = feed(whole, data, [])
    events_chunked, out_chunked = feed(chunked, data, cuts)
    events_bytewise, out_bytewise = feed(bytewise, data, list(range(len(data))))

    assert events_chunked == events_whole
    assert events_bytewise == events_whole
    # Answers (pongs, close echo) are the same frames, whatever the masking keys drawn.
    answer = unmasked(b"".join(out_whole))
    assert unmasked(b"".join(out_chunked)) == answer
    assert unmasked(b"".join(out_bytewise)) == answer
    if not stream:
        assert events_whole == expected
    else:
        assert merge_fragments(events_whole) == expected
    for conn in (whole, chunked, bytewise):
        assert conn.failure is None
        assert conn.state is (State.OPEN if ending is None else State.CLOSED)


def merge_fragments(events: list[Event]) -> list[Event]:
    merged: list[Event] = []
    parts: list[str | bytes] = []
    for ev in events:
        if isinstance(ev, (TextFragment, BinaryFragment)):
            parts.append(ev.data)
            if ev.final:
                if isinstance(ev, TextFragment):
                    merged.append(TextMessage("".join(p for p in parts if isinstance(p, str))))
                else:
                    merged.append(BinaryMessage(b"".join(p for p in parts if isinstance(p, bytes))))
                parts = []
        else:
            merged.append(ev)
    return merged


@FAST
@given(side=SIDES, payloads=st.lists(st.binary(max_size=125), min_size=1, max_size=6, unique=True))
def test_pongs_acknowledge_in_order(side: Side, payloads: list[bytes]):
    a, b = Connection(side), Connection(peer_of(side))
    for payload in payloads:
        a.send_ping(payload)
    b.receive_data(a.data_to_send())
    assert b.events_received() == [Ping(p) for p in payloads]
    a.receive_data(b.data_to_send())
    assert a.events_received() == [Pong(p, (p,)) for p in payloads]


# -- arbitrary input ------------------------------------------------------------------------

EXPECTED_CODES = {1002, 1007, 1009}


def check_arbitrary(side: Side, data: bytes, cuts: list[int], **kwargs: object) -> None:
    conn = Connection(side, **kwargs)  # type: ignore[arg-type]
    events, out = feed(conn, data, cuts)
    kinds = (TextMessage, BinaryMessage, TextFragment, BinaryFragment, Ping, Pong, CloseReceived)
    assert all(isinstance(e, kinds) for e in events)
    event(f"failure {conn.failure and conn.failure.code}")
    if conn.failure is not None:
        assert conn.failure.code in EXPECTED_CODES
        assert conn.transport_should_close
        assert conn.state is State.CLOSED
        assert not any(isinstance(e, CloseReceived) for e in events)
        # The failing close frame is the last thing written.
        written = unmasked(b"".join(out))
        assert written.endswith(
            struct.pack("!H", conn.failure.code) + conn.failure.public_reason.encode()
        )
        # Feeding the same bytes whole fails the same way.
        again = Connection(side, **kwargs)  # type: ignore[arg-type]
        again.receive_data(data)
        assert again.failure is not None
        assert again.failure.code == conn.failure.code
        assert again.events_received() == events


@FAST
@given(side=SIDES, data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_arbitrary_bytes(side: Side, data: bytes, cuts: list[int]):
    check_arbitrary(side, data, cuts)
    check_arbitrary(side, data, cuts, max_frame_size=16, max_message_size=24, stream_messages=True)


# Frames with arbitrary header bits and payloads reach deeper than raw bytes do.
def raw_frames(side: Side) -> st.SearchStrategy[bytes]:
    right = side is Side.SERVER  # masked towards a server
    return st.builds(
        lambda opcode, fin, rsv, masked, payload, key: serialize_frame(
            opcode,
            payload,
            fin=fin,
            rsv1=rsv & 4 > 0,
            rsv2=rsv & 2 > 0,
            rsv3=rsv & 1 > 0,
            mask=masked,
            mask_key=key,
        ),
        opcode=st.sampled_from([0, 0, 0, 1, 1, 1, 2, 2, 8, 9, 9, 10, 10, 3, 0xB]),
        fin=st.booleans(),
        rsv=st.sampled_from([0] * 12 + [4, 2, 1]),
        masked=st.sampled_from([right] * 15 + [not right]),
        payload=st.one_of(
            st.binary(max_size=40),
            st.text(max_size=20).map(str.encode),
            st.sampled_from(
                [b"\xed\xa0\x80", b"\xf4\x90", b"\xe2\x82", b"\x03\xe8", b"\x03", b"\x0b\xb8\xff"]
            ),
        ),
        key=st.binary(min_size=4, max_size=4),
    )


@pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
@FAST
@given(data=st.data(), cuts=st.lists(st.integers(0, 10**4), max_size=8))
def test_arbitrary_frames(side: Side, data: st.DataObject, cuts: list[int]):
    wire = b"".join(data.draw(st.lists(raw_frames(side), max_size=10)))
    check_arbitrary(side, wire, cuts)
    check_arbitrary(side, wire, cuts, max_frame_size=16, max_message_size=24, stream_messages=True)
