"""The RFC 6455 state machine, sans-I/O: bytes in, events and bytes out, both sides.

What the connection writes is decoded by :func:`wire_frames`, a small RFC 6455 5.2 reader
written here, so the checks do not go through the parser under test.
"""

from __future__ import annotations

import codecs
import itertools
import os
import struct
import tracemalloc

import pytest

from fullduplex.protocol import (
    BinaryFragment,
    BinaryMessage,
    CloseReceived,
    Connection,
    Frame,
    LocalProtocolError,
    Opcode,
    Ping,
    Pong,
    ProtocolError,
    Side,
    State,
    TextFragment,
    TextMessage,
)
from fullduplex.protocol.connection import OWN_PART_SIZE
from fullduplex.protocol.exceptions import PayloadTooBig
from fullduplex.protocol.extensions import Extension
from fullduplex.protocol.frames import prepare_frame, serialize_frame

SIDES = [Side.SERVER, Side.CLIENT]


# -- helpers --------------------------------------------------------------------------------


def wire_frames(data: bytes, *, masked: bool) -> list[Frame]:
    """Decode frames written by a connection, asserting the masking RFC 6455 5.1 requires."""
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert bool(b1 & 0x80) is masked
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            assert n > 125
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            assert n > 0xFFFF
            pos += 8
        key = data[pos : pos + 4] if masked else b"\0\0\0\0"
        pos += 4 if masked else 0
        payload = bytes(x ^ key[i % 4] for i, x in enumerate(data[pos : pos + n]))
        assert len(payload) == n
        pos += n
        frames.append(
            Frame(
                b0 & 0x0F,
                payload,
                bool(b0 & 0x80),
                bool(b0 & 0x40),
                bool(b0 & 0x20),
                bool(b0 & 0x10),
            )
        )
    return frames


def sent(conn: Connection) -> list[Frame]:
    return wire_frames(conn.data_to_send(), masked=conn.side is Side.CLIENT)


def incoming(side: Side, opcode: int, payload: bytes = b"", **kwargs: bool) -> bytes:
    """A frame as the peer of ``side`` sends it (masked towards a server)."""
    return serialize_frame(opcode, payload, mask=side is Side.SERVER, **kwargs)


def close_frame(code: int, reason: bytes = b"") -> Frame:
    return Frame(Opcode.CLOSE, struct.pack("!H", code) + reason)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def assert_failed(conn: Connection, code: int) -> None:
    assert conn.failure is not None
    assert conn.failure.code == code
    assert conn.state is State.CLOSED
    assert conn.transport_should_close
    frames = sent(conn)
    assert frames[-1].opcode == Opcode.CLOSE
    assert struct.unpack("!H", frames[-1].payload[:2])[0] == code
    # The reason sent never echoes peer data: it is a fixed phrase.
    assert frames[-1].payload[2:].decode() == conn.failure.public_reason
    assert conn.close_code == code
    assert conn.close_reason == conn.failure.public_reason


class FlipExtension(Extension):
    """A test extension claiming RSV1, shaped like permessage-deflate: a message whose first
    frame has RSV1 set carries all its payload bytes inverted."""

    name = "x-flip"
    rsv_mask = 0x40

    def __init__(self) -> None:
        self.budgets: list[int | None] = []
        self._decoding = self._encoding = False

    def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
        self.budgets.append(max_size)
        if frame.opcode != Opcode.CONT:
            self._decoding = frame.rsv1
        if not self._decoding:
            return frame
        return Frame(frame.opcode, flip(frame.payload), frame.fin)

    def encode(self, frame: Frame) -> Frame:
        if frame.opcode != Opcode.CONT:
            self._encoding = True
        payload = flip(frame.payload) if self._encoding else frame.payload
        return Frame(frame.opcode, payload, frame.fin, rsv1=frame.opcode != Opcode.CONT)


def flip(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


# -- receiving messages ---------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
def test_receive_single_frame_messages(side: Side):
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.TEXT, "héllo €".encode()))
    conn.receive_data(incoming(side, Opcode.BINARY, b"\x00\xff"))
    conn.receive_data(incoming(side, Opcode.TEXT, b"") + incoming(side, Opcode.BINARY, b""))
    assert conn.events_received() == [
        TextMessage("héllo €"),
        BinaryMessage(b"\x00\xff"),
        TextMessage(""),
        BinaryMessage(b""),
    ]
    assert conn.events_received() == []
    assert conn.data_to_send() == b""
    assert conn.state is State.OPEN


@pytest.mark.parametrize("side", SIDES)
def test_receive_rfc_fragmented_example(side: Side):
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.TEXT, b"Hel", fin=False))
    assert conn.events_received() == []
    conn.receive_data(incoming(side, Opcode.CONT, b"lo"))
    assert conn.events_received() == [TextMessage("Hello")]


@pytest.mark.parametrize("side", SIDES)
def test_receive_fragmented_binary(side: Side):
    conn = Connection(side)
    parts = [b"a", b"", b"bc", b"\x00" * 300]
    data = incoming(side, Opcode.BINARY, parts[0], fin=False)
    for part in parts[1:-1]:
        data += incoming(side, Opcode.CONT, part, fin=False)
    data += incoming(side, Opcode.CONT, parts[-1])
    conn.receive_data(data)
    assert conn.events_received() == [BinaryMessage(b"".join(parts))]
    # The next message starts afresh.
    conn.receive_data(incoming(side, Opcode.BINARY, b"z"))
    assert conn.events_received() == [BinaryMessage(b"z")]


TEXT = "aé€𝄞z"  # 1-, 2-, 3- and 4-byte characters
TEXT_BYTES = TEXT.encode()


@pytest.mark.parametrize("side", SIDES)
def test_text_split_across_fragments_at_every_byte(side: Side):
    n = len(TEXT_BYTES)
    for i in range(n + 1):
        for j in range(i, n + 1):
            conn = Connection(side)
            conn.receive_data(
                incoming(side, Opcode.TEXT, TEXT_BYTES[:i], fin=False)
                + incoming(side, Opcode.CONT, TEXT_BYTES[i:j], fin=False)
                + incoming(side, Opcode.CONT, TEXT_BYTES[j:])
            )
            assert conn.events_received() == [TextMessage(TEXT)], (i, j)
            assert conn.failure is None


@pytest.mark.parametrize("side", SIDES)
def test_stream_messages_text_fragments(side: Side):
    n = len(TEXT_BYTES)
    for i in range(n + 1):
        conn = Connection(side, stream_messages=True)
        conn.receive_data(incoming(side, Opcode.TEXT, TEXT_BYTES[:i], fin=False))
        first = conn.events_received()
        conn.receive_data(incoming(side, Opcode.CONT, TEXT_BYTES[i:]))
        second = conn.events_received()
        assert len(first) == len(second) == 1
        assert first[0] == TextFragment(first[0].data, False)
        assert second[0] == TextFragment(second[0].data, True)
        # A character split between frames is reported with the frame completing it.
        assert first[0].data == TEXT_BYTES[:i].decode(errors="ignore")
        assert first[0].data + second[0].data == TEXT


@pytest.mark.parametrize("side", SIDES)
def test_stream_messages_binary_and_single_frames(side: Side):
    conn = Connection(side, stream_messages=True)
    conn.receive_data(
        incoming(side, Opcode.BINARY, b"ab", fin=False)
        + incoming(side, Opcode.PING, b"p")
        + incoming(side, Opcode.CONT, b"", fin=False)
        + incoming(side, Opcode.CONT, b"c")
        + incoming(side, Opcode.TEXT, b"whole")
        + incoming(side, Opcode.BINARY, b"one")
    )
    assert conn.events_received() == [
        BinaryFragment(b"ab", False),
        Ping(b"p"),
        BinaryFragment(b"", False),
        BinaryFragment(b"c", True),
        TextFragment("whole", True),
        BinaryFragment(b"one", True),
    ]


@pytest.mark.parametrize("side", SIDES)
def test_control_frames_between_fragments_are_handled_at_once(side: Side):
    conn = Connection(side)
    conn.send_ping(b"mine")
    sent(conn)
    conn.receive_data(incoming(side, Opcode.TEXT, b"a", fin=False))
    conn.receive_data(incoming(side, Opcode.PING, b"1"))
    assert conn.events_received() == [Ping(b"1")]
    assert sent(conn) == [Frame(Opcode.PONG, b"1")]
    conn.receive_data(incoming(side, Opcode.PONG, b"mine"))
    assert conn.events_received() == [Pong(b"mine", (b"mine",))]
    conn.receive_data(incoming(side, Opcode.CONT, b"b"))
    assert conn.events_received() == [TextMessage("ab")]


# -- violations -----------------------------------------------------------------------------


def masking_violation(side: Side) -> bytes:
    # RFC 6455 5.1: clients mask, servers do not.
    return serialize_frame(Opcode.TEXT, b"x", mask=side is Side.CLIENT)


def long_header(side: Side, length_field: bytes, byte0: int = 0x82) -> bytes:
    masked = side is Side.SERVER
    return bytes([byte0, (0x80 if masked else 0) | len_marker(length_field)]) + length_field


def len_marker(field: bytes) -> int:
    return 126 if len(field) == 2 else 127


VIOLATIONS = {
    **{
        f"reserved-opcode-{op:#x}": (lambda s, op=op: incoming(s, op, b"x"), 1002)
        for op in [*range(3, 8), *range(0xB, 0x10)]
    },
    "rsv1": (lambda s: incoming(s, Opcode.TEXT, b"x", rsv1=True), 1002),
    "rsv2": (lambda s: incoming(s, Opcode.BINARY, b"x", rsv2=True), 1002),
    "rsv3": (lambda s: incoming(s, Opcode.TEXT, b"x", rsv3=True), 1002),
    "rsv1-ping": (lambda s: incoming(s, Opcode.PING, b"x", rsv1=True), 1002),
    "rsv3-close": (lambda s: incoming(s, Opcode.CLOSE, b"", rsv3=True), 1002),
    "masking": (masking_violation, 1002),
    "64-bit-top-bit": (lambda s: long_header(s, struct.pack("!Q", 2**63 + 5)), 1002),
    "ping-126": (lambda s: incoming(s, Opcode.PING, b"x" * 126), 1002),
    "close-126": (lambda s: incoming(s, Opcode.CLOSE, b"\x03\xe8" + b"x" * 124), 1002),
    "fragmented-ping": (lambda s: incoming(s, Opcode.PING, b"x", fin=False), 1002),
    "fragmented-pong": (lambda s: incoming(s, Opcode.PONG, b"", fin=False), 1002),
    "orphan-continuation": (lambda s: incoming(s, Opcode.CONT, b"x"), 1002),
    "orphan-continuation-nonfinal": (lambda s: incoming(s, Opcode.CONT, b"x", fin=False), 1002),
    "text-mid-message": (
        lambda s: incoming(s, Opcode.TEXT, b"a", fin=False) + incoming(s, Opcode.TEXT, b"b"),
        1002,
    ),
    "binary-mid-message": (
        lambda s: incoming(s, Opcode.TEXT, b"a", fin=False) + incoming(s, Opcode.BINARY, b"b"),
        1002,
    ),
    "invalid-utf8": (lambda s: incoming(s, Opcode.TEXT, b"ok\xff"), 1007),
    "surrogate-utf8": (lambda s: incoming(s, Opcode.TEXT, b"\xed\xa0\x80"), 1007),
    "overlong-utf8": (lambda s: incoming(s, Opcode.TEXT, b"\xc0\xaf"), 1007),
    "truncated-utf8-final": (
        lambda s: incoming(s, Opcode.TEXT, b"a", fin=False) + incoming(s, Opcode.CONT, b"\xe2\x82"),
        1007,
    ),
    "invalid-utf8-continuation": (
        lambda s: incoming(s, Opcode.TEXT, b"a", fin=False) + incoming(s, Opcode.CONT, b"\x80"),
        1007,
    ),
    "close-1-byte": (lambda s: incoming(s, Opcode.CLOSE, b"\x03"), 1002),
    "close-code-999": (lambda s: incoming(s, Opcode.CLOSE, close_payload(999)), 1002),
    "close-code-1005": (lambda s: incoming(s, Opcode.CLOSE, close_payload(1005)), 1002),
    "close-code-1006": (lambda s: incoming(s, Opcode.CLOSE, close_payload(1006)), 1002),
    "close-code-5000": (lambda s: incoming(s, Opcode.CLOSE, close_payload(5000)), 1002),
    "close-reason-utf8": (lambda s: incoming(s, Opcode.CLOSE, b"\x03\xe8\xc3"), 1007),
    "frame-too-big": (lambda s: long_header(s, struct.pack("!H", 1001)), 1009),
    "frame-too-big-64": (lambda s: long_header(s, struct.pack("!Q", 2**40)), 1009),
    "message-too-big": (
        lambda s: (
            incoming(s, Opcode.BINARY, b"x" * 600, fin=False) + incoming(s, Opcode.CONT, b"y" * 600)
        ),
        1009,
    ),
    "text-frame-too-big": (lambda s: incoming(s, Opcode.TEXT, b"x" * 1001), 1009),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violation_fails_with_code(side: Side, name: str):
    build, code = VIOLATIONS[name]
    conn = Connection(side, max_frame_size=1000, max_message_size=1000)
    data = build(side)
    # Whatever follows the violation is never processed.
    conn.receive_data(data + incoming(side, Opcode.TEXT, b"after"))
    assert conn.events_received() == []
    assert_failed(conn, code)
    conn.receive_data(incoming(side, Opcode.PING, b"later"))
    assert conn.events_received() == []
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violation_fed_one_byte_at_a_time(side: Side, name: str):
    build, code = VIOLATIONS[name]
    conn = Connection(side, max_frame_size=1000, max_message_size=1000)
    for byte in build(side):
        conn.receive_data(bytes([byte]))
    assert conn.events_received() == []
    assert_failed(conn, code)


@pytest.mark.parametrize("side", SIDES)
def test_frame_limit_checked_before_payload_arrives(side: Side):
    conn = Connection(side, max_frame_size=10)
    header = incoming(side, Opcode.BINARY, b"x" * 11)[:2]
    conn.receive_data(header)  # the 11 payload bytes never come
    assert_failed(conn, 1009)
    assert isinstance(conn.failure, PayloadTooBig)


@pytest.mark.parametrize("side", SIDES)
def test_limits_at_boundary_and_disabled(side: Side):
    conn = Connection(side, max_frame_size=10, max_message_size=15)
    conn.receive_data(
        incoming(side, Opcode.BINARY, b"x" * 10, fin=False) + incoming(side, Opcode.CONT, b"y" * 5)
    )
    conn.receive_data(incoming(side, Opcode.TEXT, b"z" * 10))
    assert conn.events_received() == [BinaryMessage(b"x" * 10 + b"y" * 5), TextMessage("z" * 10)]
    big = b"b" * (2**20 + 1)  # over both default limits
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.BINARY, big))
    assert_failed(conn, 1009)
    conn = Connection(side, max_frame_size=None, max_message_size=None)
    conn.receive_data(incoming(side, Opcode.BINARY, big))
    assert conn.events_received() == [BinaryMessage(big)]
    assert conn.failure is None


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("opcode", [Opcode.BINARY, Opcode.TEXT])
def test_empty_fragments_cost_no_memory(side: Side, opcode: int):
    # Issue 15: 2,000,000 empty continuation frames held 17 MiB until the message ended, then
    # joining them took +170 MiB (a list entry per frame, a Py_buffer each in the join).
    # 100,000 here: that was 0.8 MB held and an 8 MB peak; now the parts cost their bytes.
    conn = Connection(side)
    empty = incoming(side, Opcode.CONT, b"", fin=False) * 10_000
    conn.receive_data(incoming(side, opcode, b"x", fin=False))
    tracemalloc.start()
    try:
        for _ in range(10):
            conn.receive_data(empty)
        conn.receive_data(incoming(side, Opcode.CONT, b"y"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = TextMessage("xy") if opcode == Opcode.TEXT else BinaryMessage(b"xy")
    assert conn.events_received() == [message]
    assert peak < 512 * 1024


@pytest.mark.parametrize("side", SIDES)
def test_fragments_small_and_large_reassemble_in_order(side: Side):
    # Fragments under OWN_PART_SIZE are copied into one buffer, larger ones kept as they are:
    # every mix must come out in order, text included (a character split across fragments).
    sizes = [0, 1, OWN_PART_SIZE - 1, OWN_PART_SIZE, 3, OWN_PART_SIZE + 1, 0, 2, 5 * OWN_PART_SIZE]
    pieces = [os.urandom(n) for n in sizes]
    text = "".join(chr(0x100 + i % 0x500) for i in range(3 * OWN_PART_SIZE))  # 2-byte chars
    encoded = text.encode()
    cuts = [0, 1, OWN_PART_SIZE + 1, OWN_PART_SIZE + 2, 2 * OWN_PART_SIZE + 7, len(encoded)]
    for opcode, parts, expected in [
        (Opcode.BINARY, pieces, BinaryMessage(b"".join(pieces))),
        (Opcode.TEXT, [encoded[a:b] for a, b in itertools.pairwise(cuts)], TextMessage(text)),
    ]:
        conn = Connection(side, max_message_size=None)
        data = b"".join(
            incoming(side, opcode if i == 0 else Opcode.CONT, part, fin=i == len(parts) - 1)
            for i, part in enumerate(parts)
        )
        conn.receive_data(data)
        assert conn.events_received() == [expected]


@pytest.mark.parametrize("side", SIDES)
def test_message_limit_in_streaming_mode(side: Side):
    conn = Connection(side, max_message_size=4, stream_messages=True)
    conn.receive_data(incoming(side, Opcode.BINARY, b"abc", fin=False))
    assert conn.events_received() == [BinaryFragment(b"abc", False)]
    conn.receive_data(incoming(side, Opcode.CONT, b"d", fin=False))
    assert conn.events_received() == [BinaryFragment(b"d", False)]
    conn.receive_data(incoming(side, Opcode.CONT, b"e"))
    assert conn.events_received() == []
    assert_failed(conn, 1009)


# -- UTF-8: failing as early as possible ----------------------------------------------------


def _utf8_tables() -> tuple[set[bytes], set[bytes]]:
    """Encoded characters and their proper prefixes, from the encoder (not the decoder)."""
    chars, partial = set(), set()
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue  # surrogates are not characters
        enc = chr(cp).encode()
        chars.add(enc)
        partial.update(enc[:i] for i in range(1, len(enc)))
    return chars, partial


CHARS, PARTIAL = _utf8_tables()


def can_begin_utf8(data: bytes) -> bool:
    """Whether some continuation makes ``data`` valid UTF-8: a run of whole characters then
    at most a proper prefix of one character."""
    if not data or data in PARTIAL:
        return True
    return any(
        data[:k] in CHARS and can_begin_utf8(data[k:]) for k in range(1, min(4, len(data)) + 1)
    )


def test_utf8_tables_agree_with_the_decoder_on_whole_strings():
    # Spot-check the independent model against strict decoding of complete byte strings.
    def decodes(b: bytes) -> bool:
        try:
            b.decode()
        except UnicodeDecodeError:
            return False
        return True

    for a in range(256):
        for b in range(256):
            two = bytes([a, b])
            whole = two in CHARS or (bytes([a]) in CHARS and bytes([b]) in CHARS)
            assert decodes(two) is whole


def fails_early(side: Side, prefix: bytes) -> bool:
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.TEXT, prefix, fin=False))
    if conn.failure is None:
        return False
    assert conn.failure.code == 1007
    assert conn.transport_should_close
    return True


@pytest.mark.parametrize("side", SIDES)
def test_utf8_prefixes_of_one_and_two_bytes(side: Side):
    checked = 0
    for a in range(256):
        one = bytes([a])
        assert fails_early(side, one) is not can_begin_utf8(one), one
        for b in range(256):
            two = bytes([a, b])
            assert fails_early(side, two) is not can_begin_utf8(two), two
            checked += 1
    assert checked == 65536


# Leads with their own second-byte rule, and both ends of each run of leads sharing one
# (E1-EC, EE-EF, F1-F3); FULLDUPLEX_EXHAUSTIVE=1 checks every lead from E0 to F4 (~4 s more).
THREE_BYTE_LEADS = (
    range(0xE0, 0xF5)
    if os.environ.get("FULLDUPLEX_EXHAUSTIVE")
    else [0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4]
)


def test_utf8_prefixes_of_three_bytes():
    # Every 3-byte prefix whose third byte continues a character begun by the first two (the
    # lead, every second byte that can follow it, then all 256 third bytes). Other 3-byte
    # strings are a whole character or ASCII followed by a 1- or 2-byte prefix, or have an
    # invalid 2-byte start: the cases above.
    side = Side.CLIENT  # the server side runs the same code; its masking is tested elsewhere
    starts = [bytes([a, b]) for a in THREE_BYTE_LEADS for b in range(256)]
    starts = [s for s in starts if s in PARTIAL]
    assert len(starts) == sum(
        {0xE0: 32, 0xED: 32, 0xF0: 48, 0xF4: 16}.get(a, 64) for a in THREE_BYTE_LEADS
    )
    for start in starts:
        for c in range(256):
            three = start + bytes([c])
            assert fails_early(side, three) is not can_begin_utf8(three), three
    # A few with a complete character first.
    for three in [b"a\xed\xa0", b"\xc3\xa9\xf4\x90", b"a\xe0\x80", b"ab\xff", b"a\xf0\x90"]:
        assert fails_early(side, three) is not can_begin_utf8(three), three


@pytest.mark.parametrize("side", SIDES)
def test_utf8_failure_after_earlier_fragments(side: Side):
    # The invalid prefix is only visible across a fragment boundary.
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.TEXT, b"ok\xed", fin=False))
    assert conn.failure is None
    conn.receive_data(incoming(side, Opcode.CONT, b"\xa0", fin=False))
    assert_failed(conn, 1007)


def test_utf8_decoder_state_is_what_the_early_check_reads():
    # _check_utf8_prefix relies on CPython buffering 0xED 0xA0 rather than rejecting it.
    dec = codecs.getincrementaldecoder("utf-8")()
    assert dec.decode(b"\xed\xa0", False) == ""
    assert dec.getstate()[0] == b"\xed\xa0"


# -- closing --------------------------------------------------------------------------------


def test_client_initiated_close():
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    client.send_close(1000, "done")
    assert client.state is State.CLOSING
    assert client.close_timer_wanted and not client.transport_should_close
    data = client.data_to_send()
    assert wire_frames(data, masked=True) == [Frame(Opcode.CLOSE, close_payload(1000, "done"))]
    server.receive_data(data)
    assert server.events_received() == [CloseReceived(1000, "done")]
    assert server.state is State.CLOSED
    # RFC 6455 7.1.1: the server closes TCP first, at once.
    assert server.transport_should_close
    assert not server.close_timer_wanted
    echo = server.data_to_send()
    assert wire_frames(echo, masked=False) == [close_frame(1000)]  # code echoed, no reason
    client.receive_data(echo)
    assert client.events_received() == [CloseReceived(1000, "")]
    assert client.state is State.CLOSED
    # The client waits for the server's FIN, with a timer.
    assert client.close_timer_wanted and not client.transport_should_close
    assert client.data_to_send() == b""
    client.receive_eof()
    assert client.transport_should_close
    for conn, code, reason in [(client, 1000, ""), (server, 1000, "done")]:
        assert (conn.close_code, conn.close_reason) == (code, reason)
        assert conn.failure is None
    assert client.close_sent == (1000, "done")
    assert server.close_sent == (1000, "")


def test_server_initiated_close():
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    server.send_close(4001, "restart")
    assert server.state is State.CLOSING
    assert server.close_timer_wanted and not server.transport_should_close
    client.receive_data(server.data_to_send())
    assert client.events_received() == [CloseReceived(4001, "restart")]
    assert client.state is State.CLOSED
    assert client.close_timer_wanted and not client.transport_should_close
    echo = client.data_to_send()
    assert wire_frames(echo, masked=True) == [close_frame(4001)]
    server.receive_data(echo)
    assert server.events_received() == [CloseReceived(4001, "")]
    assert server.state is State.CLOSED
    assert server.transport_should_close
    assert (client.close_code, client.close_reason) == (4001, "restart")
    assert (server.close_code, server.close_reason) == (4001, "")


@pytest.mark.parametrize("side", SIDES)
def test_close_without_code_is_echoed_empty(side: Side):
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.CLOSE))
    assert conn.events_received() == [CloseReceived(1005, "")]
    assert sent(conn) == [Frame(Opcode.CLOSE, b"")]
    assert (conn.close_code, conn.close_reason) == (1005, "")
    assert conn.close_sent == (1005, "")


@pytest.mark.parametrize("side", SIDES)
def test_send_close_without_code(side: Side):
    conn = Connection(side)
    conn.send_close(1005)
    assert sent(conn) == [Frame(Opcode.CLOSE, b"")]
    conn.receive_data(incoming(side, Opcode.CLOSE))
    assert conn.events_received() == [CloseReceived(1005, "")]
    assert conn.data_to_send() == b""  # no second close frame


@pytest.mark.parametrize("side", SIDES)
def test_data_after_our_close_is_ignored_but_pings_answered(side: Side):
    conn = Connection(side)
    conn.send_close(1001)
    sent(conn)
    conn.receive_data(
        incoming(side, Opcode.TEXT, b"late", fin=False)
        + incoming(side, Opcode.CONT, b"!")
        + incoming(side, Opcode.BINARY, b"x")
        + incoming(side, Opcode.CONT, b"not even checked")
        + incoming(side, Opcode.PING, b"still there?")
    )
    # RFC 6455 5.5.2: pong "unless it already received a Close frame"; sending one is no excuse.
    assert conn.events_received() == [Ping(b"still there?")]
    assert sent(conn) == [Frame(Opcode.PONG, b"still there?")]
    assert conn.state is State.CLOSING
    conn.receive_data(incoming(side, Opcode.CLOSE, close_payload(1001)))
    assert conn.events_received() == [CloseReceived(1001, "")]
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("side", SIDES)
def test_nothing_processed_after_peer_close(side: Side):
    conn = Connection(side)
    conn.receive_data(
        incoming(side, Opcode.CLOSE, close_payload(1000, "bye"))
        + incoming(side, Opcode.PING, b"in the same chunk")
    )
    assert conn.events_received() == [CloseReceived(1000, "bye")]
    assert sent(conn) == [close_frame(1000)]
    conn.receive_data(incoming(side, Opcode.CLOSE, close_payload(1001, "again")))
    conn.receive_data(b"\xff\xff\xff garbage")
    assert conn.events_received() == []
    assert conn.data_to_send() == b""
    assert conn.failure is None
    assert (conn.close_code, conn.close_reason) == (1000, "bye")


@pytest.mark.parametrize("side", SIDES)
def test_close_mid_message_drops_it(side: Side):
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.TEXT, b"part", fin=False))
    conn.receive_data(incoming(side, Opcode.CLOSE, close_payload(1000)))
    assert conn.events_received() == [CloseReceived(1000, "")]


@pytest.mark.parametrize("side", SIDES)
def test_eof_without_close(side: Side):
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.TEXT, b"hi"))
    conn.receive_eof()
    assert conn.events_received() == [TextMessage("hi")]
    assert conn.state is State.CLOSED
    assert conn.transport_should_close
    assert conn.eof_received
    assert (conn.close_code, conn.close_reason) == (1006, "")
    assert conn.failure is None
    assert conn.data_to_send() == b""
    conn.receive_data(incoming(side, Opcode.TEXT, b"after eof"))
    conn.receive_eof()
    assert conn.events_received() == []
    with pytest.raises(LocalProtocolError):
        conn.send_text("x")


@pytest.mark.parametrize("side", SIDES)
def test_eof_mid_frame_and_mid_message(side: Side):
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.TEXT, b"a", fin=False))
    conn.receive_data(incoming(side, Opcode.CONT, b"bcdef")[:4])
    conn.receive_eof()
    assert conn.events_received() == []
    assert conn.state is State.CLOSED
    assert conn.transport_should_close
    assert conn.close_code == 1006


@pytest.mark.parametrize("side", SIDES)
def test_eof_while_closing(side: Side):
    conn = Connection(side)
    conn.send_close(1000)
    conn.receive_eof()
    assert conn.state is State.CLOSED
    assert conn.transport_should_close
    assert conn.close_code == 1006  # RFC 6455 7.1.5: no close frame received


def test_eof_after_close_handshake_keeps_code():
    conn = Connection(Side.CLIENT)
    conn.receive_data(incoming(Side.CLIENT, Opcode.CLOSE, close_payload(1001, "away")))
    conn.receive_eof()
    assert (conn.close_code, conn.close_reason) == (1001, "away")
    assert conn.transport_should_close


SENDERS = {
    "text": lambda c: c.send_text("x"),
    "text-iter": lambda c: c.send_text(["x"]),
    "binary": lambda c: c.send_binary(b"x"),
    "binary-iter": lambda c: c.send_binary([b"x"]),
    "fragment": lambda c: c.send_fragment("x", final=True),
    "ping": lambda c: c.send_ping(b"x"),
    "pong": lambda c: c.send_pong(b"x"),
    "close": lambda c: c.send_close(),
}

ENDINGS = {
    "sent-close": lambda c, s: c.send_close(),
    "received-close": lambda c, s: c.receive_data(incoming(s, Opcode.CLOSE)),
    "failed": lambda c, s: c.fail(1011),
    "violation": lambda c, s: c.receive_data(incoming(s, 3)),
    "eof": lambda c, s: c.receive_eof(),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("sender", list(SENDERS))
def test_sending_after_close_raises(side: Side, ending: str, sender: str):
    conn = Connection(side)
    ENDINGS[ending](conn, side)
    before = conn.data_to_send()
    with pytest.raises(LocalProtocolError):
        SENDERS[sender](conn)
    assert conn.data_to_send() == b""
    assert before == b"" or wire_frames(before, masked=side is Side.CLIENT)[-1].opcode == 8


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("code", [999, 1004, 1006, 1015, 2000, 5000])
def test_send_close_rejects_bad_codes_and_stays_open(side: Side, code: int):
    conn = Connection(side)
    with pytest.raises(LocalProtocolError):
        conn.send_close(code)
    with pytest.raises(LocalProtocolError):
        conn.send_close(1000, "r" * 124)
    assert conn.state is State.OPEN
    assert conn.data_to_send() == b""
    conn.send_text("still open")
    assert sent(conn) == [Frame(Opcode.TEXT, b"still open")]


# -- fail() ---------------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
def test_fail_from_open(side: Side):
    conn = Connection(side)
    conn.fail(1011, "oops")
    assert sent(conn) == [close_frame(1011, b"oops")]
    assert conn.state is State.CLOSED
    assert conn.transport_should_close
    assert isinstance(conn.failure, ProtocolError)
    assert conn.failure.code == 1011
    assert (conn.close_code, conn.close_reason) == (1011, "oops")


@pytest.mark.parametrize("side", SIDES)
def test_fail_with_exception_and_no_reason(side: Side):
    conn = Connection(side)
    exc = ProtocolError("for logs only", 1008)
    conn.fail(1008, exc=exc)
    assert conn.failure is exc
    assert sent(conn) == [close_frame(1008)]
    assert conn.close_reason == ""


@pytest.mark.parametrize("side", SIDES)
def test_fail_while_closing_sends_no_second_close(side: Side):
    conn = Connection(side)
    conn.send_close(1000)
    sent(conn)
    conn.fail(1002)
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED
    assert conn.transport_should_close
    assert conn.failure is not None


@pytest.mark.parametrize("side", SIDES)
def test_fail_after_eof_sends_nothing(side: Side):
    conn = Connection(side)
    conn.receive_eof()
    conn.fail(1002)
    assert conn.data_to_send() == b""
    assert conn.close_code == 1006  # nothing was sent, nothing received


# -- ping and pong --------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("payload", [b"", b"Hello", bytes(range(125))])
def test_ping_is_answered_with_same_payload(side: Side, payload: bytes):
    conn = Connection(side)
    conn.receive_data(incoming(side, Opcode.PING, payload))
    assert conn.events_received() == [Ping(payload)]
    assert sent(conn) == [Frame(Opcode.PONG, payload)]


@pytest.mark.parametrize("side", SIDES)
def test_pong_acknowledges_earlier_pings(side: Side):
    conn = Connection(side)
    for payload in [b"1", b"2", b"3", b""]:
        conn.send_ping(payload)
    assert sent(conn) == [Frame(Opcode.PING, p) for p in [b"1", b"2", b"3", b""]]
    conn.receive_data(incoming(side, Opcode.PONG, b"2"))
    assert conn.events_received() == [Pong(b"2", (b"1", b"2"))]
    conn.receive_data(incoming(side, Opcode.PONG, b"2"))  # no longer outstanding
    conn.receive_data(incoming(side, Opcode.PONG, b"nobody asked"))  # unsolicited
    assert conn.events_received() == []
    conn.receive_data(incoming(side, Opcode.PONG, b""))
    assert conn.events_received() == [Pong(b"", (b"3", b""))]
    # Payloads may be reused once acknowledged.
    conn.send_ping(b"1")
    conn.receive_data(incoming(side, Opcode.PONG, b"1"))
    assert conn.events_received() == [Pong(b"1", (b"1",))]
    assert conn.data_to_send() != b""
    assert conn.failure is None


@pytest.mark.parametrize("side", SIDES)
def test_ping_misuse(side: Side):
    conn = Connection(side)
    conn.send_ping(b"same")
    with pytest.raises(LocalProtocolError):
        conn.send_ping(b"same")
    with pytest.raises(LocalProtocolError):
        conn.send_ping(b"x" * 126)
    with pytest.raises(LocalProtocolError):
        conn.send_pong(b"x" * 126)
    assert sent(conn) == [Frame(Opcode.PING, b"same")]
    conn.send_ping(b"x" * 125)
    conn.send_pong(b"heartbeat")
    conn.send_pong()
    assert sent(conn) == [
        Frame(Opcode.PING, b"x" * 125),
        Frame(Opcode.PONG, b"heartbeat"),
        Frame(Opcode.PONG, b""),
    ]


# -- sending --------------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
def test_send_messages(side: Side):
    conn = Connection(side)
    conn.send_text("héllo")
    conn.send_binary(b"\x00\x01")
    conn.send_binary(bytearray(b"ba"))
    conn.send_binary(memoryview(b"xmvx")[1:3])
    assert sent(conn) == [
        Frame(Opcode.TEXT, "héllo".encode()),
        Frame(Opcode.BINARY, b"\x00\x01"),
        Frame(Opcode.BINARY, b"ba"),
        Frame(Opcode.BINARY, b"mv"),
    ]
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("side", SIDES)
def test_send_iterables(side: Side):
    conn = Connection(side)
    conn.send_text(iter(["a", "é", ""]))
    conn.send_binary([bytearray(b"1"), memoryview(b"23")])
    conn.send_text([])
    conn.send_binary(b for b in [b"only"])
    assert sent(conn) == [
        Frame(Opcode.TEXT, b"a", False),
        Frame(Opcode.CONT, "é".encode(), False),
        Frame(Opcode.CONT, b"", True),
        Frame(Opcode.BINARY, b"1", False),
        Frame(Opcode.CONT, b"23", True),
        Frame(Opcode.TEXT, b"", True),
        Frame(Opcode.BINARY, b"only", True),
    ]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("size", [1, 3, 7, 10, 11, 1000])
def test_fragment_size_splits_and_reassembles(side: Side, size: int):
    conn = Connection(side, fragment_size=size)
    payload = bytes(range(10)) * 2  # 20 bytes
    text = "é€𝄞" * 3  # 27 bytes of UTF-8
    conn.send_binary(payload)
    conn.send_text(text)
    frames = sent(conn)
    expected_counts = [-(-20 // size), -(-27 // size)]
    assert len(frames) == sum(expected_counts)
    assert all(len(f.payload) <= size for f in frames)
    assert all(f.payload for f in frames)  # no empty trailing frame
    messages: list[tuple[int, bytes]] = []
    for f in frames:
        if f.opcode == Opcode.CONT:
            messages[-1] = (messages[-1][0], messages[-1][1] + f.payload)
        else:
            messages.append((f.opcode, f.payload))
        assert f.fin is (f is frames[expected_counts[0] - 1] or f is frames[-1])
    assert messages == [(Opcode.BINARY, payload), (Opcode.TEXT, text.encode())]
    # The peer reassembles them exactly.
    peer = Connection(Side.CLIENT if side is Side.SERVER else Side.SERVER)
    conn.send_binary(payload)
    conn.send_text(text)
    peer.receive_data(conn.data_to_send())
    assert peer.events_received() == [BinaryMessage(payload), TextMessage(text)]


def test_fragment_size_must_be_positive():
    with pytest.raises(ValueError):
        Connection(Side.SERVER, fragment_size=0)


@pytest.mark.parametrize("side", SIDES)
def test_send_fragment_sequences(side: Side):
    conn = Connection(side)
    conn.send_fragment("a", final=False)
    conn.send_ping(b"between")
    conn.send_fragment("b", final=False)
    with pytest.raises(LocalProtocolError):
        conn.send_fragment(b"binary now", final=True)
    with pytest.raises(LocalProtocolError):
        conn.send_text("other message")
    with pytest.raises(LocalProtocolError):
        conn.send_binary([b"other message"])
    conn.send_fragment("c", final=True)
    conn.send_fragment(bytearray(b"x"), final=False)
    conn.send_fragment(b"y", final=True)
    conn.send_fragment(b"whole", final=True)
    conn.send_text("next")
    assert sent(conn) == [
        Frame(Opcode.TEXT, b"a", False),
        Frame(Opcode.PING, b"between"),
        Frame(Opcode.CONT, b"b", False),
        Frame(Opcode.CONT, b"c", True),
        Frame(Opcode.BINARY, b"x", False),
        Frame(Opcode.CONT, b"y", True),
        Frame(Opcode.BINARY, b"whole", True),
        Frame(Opcode.TEXT, b"next", True),
    ]


def test_data_to_send_joins_frames():
    conn = Connection(Side.SERVER)
    assert conn.data_to_send() == b""
    conn.send_text("Hello")
    assert conn.data_to_send() == bytes.fromhex("810548656c6c6f")
    conn.send_text("Hel")
    conn.send_ping(b"Hello")
    assert conn.data_to_send() == bytes.fromhex("810348656c" + "890548656c6c6f")


# -- extensions -----------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
def test_extension_transforms_and_rsv(side: Side):
    ext = FlipExtension()
    conn = Connection(side, extensions=[ext], fragment_size=2, max_message_size=100)
    conn.send_text("abcde")
    conn.send_binary(b"xyz", compress=False)
    conn.send_fragment(b"12", final=False, compress=True)
    conn.send_fragment(b"34", final=True, compress=False)  # the first fragment decides
    conn.send_fragment(b"56", final=False, compress=False)
    conn.send_fragment(b"78", final=True, compress=True)
    conn.send_binary([b"q", b"r"])
    assert sent(conn) == [
        Frame(Opcode.TEXT, flip(b"ab"), False, rsv1=True),
        Frame(Opcode.CONT, flip(b"cd"), False),
        Frame(Opcode.CONT, flip(b"e"), True),
        Frame(Opcode.BINARY, b"xy", False),
        Frame(Opcode.CONT, b"z", True),
        Frame(Opcode.BINARY, flip(b"12"), False, rsv1=True),
        Frame(Opcode.CONT, flip(b"34"), True),
        Frame(Opcode.BINARY, b"56", False),
        Frame(Opcode.CONT, b"78", True),
        Frame(Opcode.BINARY, flip(b"q"), False, rsv1=True),
        Frame(Opcode.CONT, flip(b"r"), True),
    ]
    conn.receive_data(
        incoming(side, Opcode.TEXT, flip(b"hi"), rsv1=True)
        + incoming(side, Opcode.BINARY, b"ab", fin=False)
        + incoming(side, Opcode.CONT, b"c")
    )
    assert conn.events_received() == [TextMessage("hi"), BinaryMessage(b"abc")]
    # The extension is told what remains of the message budget.
    assert ext.budgets == [100, 100, 98]
    # RSV1 belongs to the extension only on data frames.
    conn.receive_data(incoming(side, Opcode.PING, b"", rsv1=True))
    assert_failed(conn, 1002)


# -- prepared frames (one frame for many connections) ---------------------------------------


@pytest.mark.parametrize("message", ["héllo", b"\x00\xff", "x" * 70_000, b""])
def test_prepared_frame_is_what_a_plain_server_sends(message: str | bytes):
    conn = Connection(Side.SERVER)
    assert conn.takes_prepared
    if isinstance(message, str):
        conn.send_text(message)
    else:
        conn.send_binary(message)
    frame = prepare_frame(message)
    assert conn.data_to_send() == frame
    conn.send_prepared(frame)
    assert conn.data_to_send() == frame


@pytest.mark.parametrize(
    "conn",
    [
        Connection(Side.CLIENT),  # masked frames
        Connection(Side.SERVER, extensions=[FlipExtension()]),  # its own encoding
        Connection(Side.SERVER, fragment_size=10),  # its own framing
    ],
    ids=["client", "extension", "fragment_size"],
)
def test_connections_that_never_take_prepared_frames(conn: Connection):
    assert not conn.takes_prepared
    with pytest.raises(LocalProtocolError):
        conn.send_prepared(prepare_frame("x"))
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("ending", ["send_close", "close_received", "fail", "eof"])
def test_takes_prepared_follows_fragmented_sends_and_closing(ending: str):
    conn = Connection(Side.SERVER)
    conn.send_fragment("a", final=False)
    assert not conn.takes_prepared  # RFC 6455 5.4: no other frame inside a fragmented message
    with pytest.raises(LocalProtocolError):
        conn.send_prepared(prepare_frame("x"))
    conn.send_fragment("b", final=True)
    assert conn.takes_prepared
    conn.send_text("plain")  # the fast path again
    assert [f.payload for f in sent(conn)] == [b"a", b"b", b"plain"]
    if ending == "send_close":
        conn.send_close()
    elif ending == "close_received":
        conn.receive_data(incoming(Side.SERVER, Opcode.CLOSE, close_payload(1000)))
    elif ending == "fail":
        conn.fail(1011)
    else:
        conn.receive_eof()
    assert not conn.takes_prepared
    with pytest.raises(LocalProtocolError):
        conn.send_prepared(prepare_frame("x"))


@pytest.mark.parametrize("side", SIDES)
def test_bytes_after_eof_are_not_parsed(side: Side):
    # RFC 6455 7.1.5, 7.1.7: the connection is closed (1006); nothing more is processed.
    conn = Connection(side)
    conn.receive_eof()
    conn.receive_data(incoming(side, Opcode.PING, b"late") + incoming(side, Opcode.TEXT, b"x"))
    conn.receive_data(incoming(side, Opcode.CLOSE, close_payload(1000)))
    assert conn.data_to_send() == b""  # no pong, no close
    assert conn.events_received() == []
    assert conn.close_code == 1006
    assert conn.state is State.CLOSED
