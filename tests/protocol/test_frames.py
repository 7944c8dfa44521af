"""Frame parsing and serializing (RFC 6455 section 5), close payloads (5.5.1, 7.4).

Expected bytes are the RFC 6455 5.7 examples or derived here from the RFC's rules, never
outputs of fullduplex copied back in.
"""

from __future__ import annotations

import struct

import pytest

from fullduplex.protocol.exceptions import LocalProtocolError, PayloadTooBig, ProtocolError
from fullduplex.protocol.frames import (
    CONTROL_OPCODES,
    DATA_OPCODES,
    CloseCode,
    Frame,
    FrameParser,
    Opcode,
    is_valid_close_code,
    parse_close,
    serialize_close,
    serialize_frame,
)

RFC_KEY = bytes.fromhex("37fa213d")
RESERVED_OPCODES = [*range(0x3, 0x8), *range(0xB, 0x10)]


def rfc_valid_close_code(code: int) -> bool:
    """Close codes allowed on the wire, written out from RFC 6455 7.4 and the IANA registry."""
    # 7.4.1 defines 1000-1003 and 1007-1011 for use; 1004 is reserved, 1005, 1006 and 1015
    # "MUST NOT be set as a status code in a Close control frame". IANA registered 1012, 1013,
    # 1014 since. 7.4.2: 0-999 unused, 1000-2999 reserved for the RFC and extensions (only the
    # assigned ones are usable), 3000-3999 registered, 4000-4999 private; nothing above.
    assigned = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
    return code in assigned or 3000 <= code < 5000


def parse_all(data: bytes, *, require_mask: bool, step: int | None = None) -> list[Frame]:
    parser = FrameParser(require_mask=require_mask)
    frames = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.feed(chunk)
        while (frame := parser.next_frame()) is not None:
            frames.append(frame)
    assert parser.buffered == 0
    return frames


# -- RFC 6455 5.7 examples ------------------------------------------------------------------

RFC_EXAMPLES = [
    # (hex on the wire, opcode, payload, fin, masked)
    ("810548656c6c6f", Opcode.TEXT, b"Hello", True, False),
    ("818537fa213d7f9f4d5158", Opcode.TEXT, b"Hello", True, True),
    ("010348656c", Opcode.TEXT, b"Hel", False, False),
    ("80026c6f", Opcode.CONT, b"lo", True, False),
    ("890548656c6c6f", Opcode.PING, b"Hello", True, False),
    ("8a8537fa213d7f9f4d5158", Opcode.PONG, b"Hello", True, True),
]


@pytest.mark.parametrize(("wire", "opcode", "payload", "fin", "masked"), RFC_EXAMPLES)
def test_rfc_examples_serialize(wire: str, opcode: int, payload: bytes, fin: bool, masked: bool):
    data = serialize_frame(opcode, payload, fin=fin, mask=masked, mask_key=RFC_KEY)
    assert data == bytes.fromhex(wire)


@pytest.mark.parametrize(("wire", "opcode", "payload", "fin", "masked"), RFC_EXAMPLES)
@pytest.mark.parametrize("step", [None, 1, 3])
def test_rfc_examples_parse(
    wire: str, opcode: int, payload: bytes, fin: bool, masked: bool, step: int | None
):
    frames = parse_all(bytes.fromhex(wire), require_mask=masked, step=step)
    assert frames == [Frame(opcode, payload, fin)]


def test_rfc_fragmented_example_as_one_stream():
    wire = bytes.fromhex("010348656c" + "80026c6f")
    frames = parse_all(wire, require_mask=False)
    assert [(f.opcode, f.payload, f.fin) for f in frames] == [
        (Opcode.TEXT, b"Hel", False),
        (Opcode.CONT, b"lo", True),
    ]


@pytest.mark.parametrize(
    ("size", "header"),
    [
        # 256 bytes: "0x82 0x7E 0x0100 [256 bytes of binary data]"
        (256, "827e0100"),
        # 64 KiB: "0x82 0x7F 0x0000000000010000 [65536 bytes of binary data]"
        (65536, "827f0000000000010000"),
    ],
)
def test_rfc_binary_examples(size: int, header: str):
    payload = bytes(range(256)) * (size // 256)
    data = serialize_frame(Opcode.BINARY, payload)
    assert data == bytes.fromhex(header) + payload
    assert parse_all(data, require_mask=False) == [Frame(Opcode.BINARY, payload)]


# -- length encoding ------------------------------------------------------------------------


def rfc_length_header(n: int, masked: bool) -> bytes:
    """Payload length field of RFC 6455 5.2, minimal encoding, written out independently."""
    bit = 0x80 if masked else 0
    if n <= 125:
        return bytes([bit | n])
    if n <= 0xFFFF:
        return bytes([bit | 126]) + struct.pack("!H", n)
    return bytes([bit | 127]) + struct.pack("!Q", n)


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 65537])
@pytest.mark.parametrize("masked", [False, True])
def test_minimal_length_encoding(n: int, masked: bool):
    payload = b"\x5a" * n
    data = serialize_frame(Opcode.BINARY, payload, mask=masked, mask_key=b"\0\0\0\0")
    expected_head = b"\x82" + rfc_length_header(n, masked) + (b"\0\0\0\0" if masked else b"")
    assert data[: len(expected_head)] == expected_head
    assert data[len(expected_head) :] == payload  # zero key: masking is the identity
    assert parse_all(data, require_mask=masked, step=7) == [Frame(Opcode.BINARY, payload)]


@pytest.mark.parametrize(
    ("flags", "byte0"),
    [
        ({"fin": False}, 0x02),
        ({"rsv1": True}, 0xC2),
        ({"rsv2": True}, 0xA2),
        ({"rsv3": True}, 0x92),
        ({"fin": False, "rsv1": True, "rsv2": True, "rsv3": True}, 0x72),
    ],
)
def test_header_bits(flags: dict[str, bool], byte0: int):
    data = serialize_frame(Opcode.BINARY, b"x", **flags)
    assert data == bytes([byte0, 1]) + b"x"
    parser = FrameParser(require_mask=False, rsv_mask=0x70)
    parser.feed(data)
    assert parser.next_frame() == Frame(Opcode.BINARY, b"x", **flags)


def test_masking_with_random_keys():
    payload = bytes(range(200))
    a = serialize_frame(Opcode.BINARY, payload, mask=True)
    b = serialize_frame(Opcode.BINARY, payload, mask=True)
    # Fresh keys: the chance that two strong random keys collide is 2**-32.
    assert a[4:8] != b[4:8]
    key = a[4:8]
    assert bytes(x ^ key[i % 4] for i, x in enumerate(a[8:])) == payload
    # Enough frames to draw past the first pool of keys.
    keys = {serialize_frame(Opcode.PING, b"", mask=True)[2:6] for _ in range(1500)}
    assert len(keys) > 1490
    assert parse_all(a + b, require_mask=True) == [Frame(Opcode.BINARY, payload)] * 2


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde"])
def test_mask_key_must_be_4_bytes(key: bytes):
    with pytest.raises(LocalProtocolError):
        serialize_frame(Opcode.TEXT, b"x", mask=True, mask_key=key)


def test_opcode_sets():
    assert {int(op) for op in DATA_OPCODES} == {0, 1, 2}
    assert {int(op) for op in CONTROL_OPCODES} == {8, 9, 10}


# -- parser violations ----------------------------------------------------------------------


def parse_error(data: bytes, **kwargs: object) -> ProtocolError:
    parser = FrameParser(**kwargs)  # type: ignore[arg-type]
    parser.feed(data)
    with pytest.raises(ProtocolError) as info:
        parser.next_frame()
    return info.value


@pytest.mark.parametrize("opcode", RESERVED_OPCODES)
def test_reserved_opcode(opcode: int):
    assert parse_error(bytes([0x80 | opcode, 0]), require_mask=False).code == 1002


@pytest.mark.parametrize("bit", [0x40, 0x20, 0x10])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.CONT, Opcode.PING])
def test_rsv_without_extension(bit: int, opcode: int):
    assert parse_error(bytes([0x80 | bit | opcode, 0]), require_mask=False).code == 1002


def test_rsv_claimed_by_extension_passes_only_its_bit():
    parser = FrameParser(require_mask=False, rsv_mask=0x40)
    parser.feed(b"\xc1\x00")
    assert parser.next_frame() == Frame(Opcode.TEXT, b"", rsv1=True)
    assert parse_error(b"\xa1\x00", require_mask=False, rsv_mask=0x40).code == 1002


def test_masking_direction():
    assert parse_error(b"\x81\x00", require_mask=True).code == 1002
    assert parse_error(b"\x81\x80\0\0\0\0", require_mask=False).code == 1002


def test_64_bit_length_with_top_bit():
    header = b"\x82\x7f" + struct.pack("!Q", 2**63)
    exc = parse_error(header, require_mask=False)
    assert exc.code == 1002
    assert not isinstance(exc, PayloadTooBig)


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_control_frame_too_long(opcode: int):
    # Rejected from the header: the 126 payload bytes never arrive.
    assert parse_error(bytes([0x80 | opcode, 126, 0, 126]), require_mask=False).code == 1002
    # 125 is fine.
    frame = Frame(opcode, b"\0" * 125)
    assert parse_all(serialize_frame(opcode, frame.payload), require_mask=False) == [frame]


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_fragmented_control_frame(opcode: int):
    assert parse_error(bytes([opcode, 0]), require_mask=False).code == 1002


@pytest.mark.parametrize(
    "header",
    [
        b"\x82\x7e" + struct.pack("!H", 1001),
        b"\x02\x7f" + struct.pack("!Q", 2**40),
        b"\x80\x7e" + struct.pack("!H", 1001),
    ],
)
def test_max_frame_size_from_header_alone(header: bytes):
    exc = parse_error(header, require_mask=False, max_frame_size=1000)
    assert isinstance(exc, PayloadTooBig)
    assert exc.code == 1009


def test_max_frame_size_boundary_and_none():
    payload = b"x" * 1000
    parser = FrameParser(require_mask=False, max_frame_size=1000)
    parser.feed(serialize_frame(Opcode.BINARY, payload))
    assert parser.next_frame() == Frame(Opcode.BINARY, payload)
    big = b"y" * 70000
    assert parse_all(serialize_frame(Opcode.BINARY, big), require_mask=False) == [
        Frame(Opcode.BINARY, big)
    ]


def test_max_frame_size_does_not_apply_to_control_frames():
    parser = FrameParser(require_mask=False, max_frame_size=4)
    parser.feed(serialize_frame(Opcode.PING, b"0123456789"))
    assert parser.next_frame() == Frame(Opcode.PING, b"0123456789")


# -- incremental parsing --------------------------------------------------------------------


def test_partial_headers_and_payloads_wait():
    data = serialize_frame(Opcode.BINARY, b"z" * 300, mask=True, mask_key=b"abcd")
    parser = FrameParser(require_mask=True)
    for i, byte in enumerate(data):
        assert parser.next_frame() is None
        assert parser.buffered == i
        parser.feed(bytes([byte]))
    assert parser.next_frame() == Frame(Opcode.BINARY, b"z" * 300)
    assert parser.next_frame() is None
    assert parser.buffered == 0


def test_several_frames_in_one_chunk_then_a_split_one():
    frames = [Frame(Opcode.TEXT, b"a", False), Frame(Opcode.CONT, b"bc"), Frame(Opcode.PING, b"")]
    wire = b"".join(serialize_frame(f.opcode, f.payload, fin=f.fin) for f in frames)
    tail = serialize_frame(Opcode.BINARY, b"q" * 70000)
    parser = FrameParser(require_mask=False)
    parser.feed(wire + tail[:5])  # three frames and 5 bytes of a 64-bit header
    assert [parser.next_frame() for _ in range(3)] == frames
    assert parser.next_frame() is None
    assert parser.buffered == 5
    parser.feed(tail[5:9])
    assert parser.next_frame() is None
    parser.feed(tail[9:100])
    assert parser.next_frame() is None
    parser.feed(tail[100:])
    assert parser.next_frame() == Frame(Opcode.BINARY, b"q" * 70000)


def test_feed_across_frame_boundaries():
    parser = FrameParser(require_mask=False)
    data = serialize_frame(Opcode.BINARY, b"hello")
    parser.feed(data[:3])
    parser.feed(data[3:])
    parser.feed(serialize_frame(Opcode.TEXT, b"x")[:1])
    assert parser.next_frame() == Frame(Opcode.BINARY, b"hello")
    assert parser.next_frame() is None
    parser.feed(b"\x01x")
    assert parser.next_frame() == Frame(Opcode.TEXT, b"x")


# -- close payloads -------------------------------------------------------------------------


def test_is_valid_close_code_matches_rfc():
    for code in range(0, 5001):
        assert is_valid_close_code(code) is rfc_valid_close_code(code), code
    assert not is_valid_close_code(65535)


def test_parse_close_every_code():
    for code in [*range(0, 5001), 65535]:
        payload = struct.pack("!H", code) + b"why"
        if rfc_valid_close_code(code):
            assert parse_close(payload) == (code, "why")
        else:
            with pytest.raises(ProtocolError) as info:
                parse_close(payload)
            assert info.value.code == 1002, code


def test_parse_close_empty_and_short():
    assert parse_close(b"") == (1005, "")
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03")
    assert info.value.code == 1002


@pytest.mark.parametrize("reason", [b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_parse_close_invalid_utf8_reason(reason: bytes):
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03\xe8" + reason)
    assert info.value.code == 1007


def test_parse_close_utf8_reason():
    assert parse_close(b"\x0f\xa0" + "adiós €".encode()) == (4000, "adiós €")


def test_serialize_close():
    assert serialize_close(1000) == b"\x03\xe8"
    assert serialize_close(CloseCode.GOING_AWAY, "bye") == b"\x03\xe9bye"
    assert serialize_close(4999, "é") == b"\x13\x87\xc3\xa9"
    assert serialize_close(1005) == b""
    assert serialize_close(1000, "a" * 123) == b"\x03\xe8" + b"a" * 123


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1005, "x"),
        (1006, ""),
        (1015, ""),
        (999, ""),
        (5000, ""),
        (1000, "a" * 124),
        (1000, "é" * 62),
    ],
)
def test_serialize_close_rejects(code: int, reason: str):
    with pytest.raises(LocalProtocolError):
        serialize_close(code, reason)


def test_close_code_enum_values_follow_the_registry():
    assert [c for c in CloseCode if is_valid_close_code(c)] == [
        c for c in CloseCode if c not in (1005, 1006, 1015)
    ]


# -- gaps found by mutation testing (issue 15) ----------------------------------------------


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY, Opcode.CONT])
@pytest.mark.parametrize("bit", [0x20, 0x10])
def test_rsv2_or_rsv3_alone_is_not_read_as_rsv1(opcode: int, bit: int):
    # Claimed by extensions, each bit comes out as itself, on text frames too.
    parser = FrameParser(require_mask=False, rsv_mask=0x70)
    parser.feed(bytes([0x80 | bit | opcode, 0]))
    frame = parser.next_frame()
    assert frame is not None
    assert (frame.rsv1, frame.rsv2, frame.rsv3) == (False, bit == 0x20, bit == 0x10)
    # Claimed only RSV1 (permessage-deflate): RSV2 or RSV3 fails with 1002.
    assert parse_error(bytes([0x80 | bit | opcode, 0]), require_mask=False, rsv_mask=0x40).code == (
        1002
    )


def test_64_bit_length_of_2_to_the_62_is_legal_and_too_big():
    # RFC 6455 5.2: only the most significant bit of a 64-bit length must be 0; 2**62 is a
    # legal length, refused by the size limit (1009), not as a framing error (1002).
    header = b"\x82\x7f" + struct.pack("!Q", 2**62)
    exc = parse_error(header, require_mask=False, max_frame_size=2**20)
    assert (exc.code, type(exc)) == (1009, PayloadTooBig)
    assert parse_error(b"\x82\x7f" + struct.pack("!Q", 2**63), require_mask=False).code == 1002


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"\x82\x7e\x00\x00", "16-bit payload length for fewer than 126 bytes"),
        (b"\x82\x7e\x00\x7d", "16-bit payload length for fewer than 126 bytes"),
        (b"\x81\x7f" + struct.pack("!Q", 5), "64-bit payload length for fewer than 65536 bytes"),
        (b"\x82\x7f" + struct.pack("!Q", 0xFFFF), "64-bit payload length for fewer than 65536"),
    ],
)
def test_non_minimal_length_fails_1002(header: bytes, reason: str):
    # RFC 6455 5.2: "In all cases, the minimal number of bytes MUST be used to encode the
    # length". Failed on the header, before the payload arrives.
    exc = parse_error(header, require_mask=False)
    assert (exc.code, type(exc)) == (1002, ProtocolError)
    assert str(exc).startswith(reason)


def test_minimal_lengths_at_the_boundaries_are_read():
    for header, size in [
        (b"\x82\x7e\x00\x7e", 126),
        (b"\x82\x7f" + struct.pack("!Q", 0x10000), 0x10000),
    ]:
        parser = FrameParser(require_mask=False)
        parser.feed(header + b"x" * size)
        frame = parser.next_frame()
        assert frame is not None and len(frame.payload) == size


def test_masked_frame_from_the_server_has_its_own_message():
    exc = parse_error(b"\x82\x81abcdx", require_mask=False)
    assert (exc.code, str(exc)) == (1002, "masked frame from the server")
    exc = parse_error(b"\x82\x01x", require_mask=True)
    assert (exc.code, str(exc)) == (1002, "unmasked frame from the client")
