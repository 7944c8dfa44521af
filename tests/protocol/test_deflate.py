"""Tests of RFC 7692 permessage-deflate: vectors, negotiation, limits, and interop with wsproto."""

from __future__ import annotations

import base64
import hashlib
import tracemalloc
import zlib
from collections.abc import Sequence
from typing import Any

import pytest
import wsproto
import wsproto.events as wev
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate as WsprotoDeflate

from fullduplex.protocol.connection import Connection, Side
from fullduplex.protocol.deflate import (
    DEFAULT_COMPRESS_THRESHOLD,
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
    _strip_tail,
    enable_client_permessage_deflate,
    enable_server_permessage_deflate,
)
from fullduplex.protocol.events import BinaryMessage, TextFragment, TextMessage
from fullduplex.protocol.exceptions import NegotiationError, PayloadTooBig, ProtocolError
from fullduplex.protocol.extensions import Extension, ExtensionParameter
from fullduplex.protocol.frames import Frame, FrameParser, Opcode, serialize_frame

TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
HELLO = bytes.fromhex("f248cdc9c90700")  # RFC 7692 7.2.3.1


def pmd(**kwargs: Any) -> PerMessageDeflate:
    kwargs.setdefault("compress_threshold", 0)
    return PerMessageDeflate(**kwargs)


def decode(ext: PerMessageDeflate, *frames: Frame, max_size: int | None = None) -> bytes:
    return b"".join(ext.decode(frame, max_size=max_size).payload for frame in frames)


def client(ext: Extension | None = None, **kwargs: Any) -> Connection:
    return Connection(Side.CLIENT, extensions=[ext or pmd()], **kwargs)


def parse_sent(data: bytes, *, from_client: bool) -> list[Frame]:
    parser = FrameParser(require_mask=from_client, max_frame_size=None, rsv_mask=0x70)
    parser.feed(data)
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    return frames


# -- RFC 7692 7.2.3 examples ------------------------------------------------------------------


def test_7_2_3_1_one_compressed_block() -> None:
    assert decode(pmd(), Frame(TEXT, HELLO, rsv1=True)) == b"Hello"


def test_7_2_3_1_fragmented() -> None:
    ext = pmd()
    first = Frame(TEXT, bytes.fromhex("f248cd"), fin=False, rsv1=True)
    last = Frame(CONT, bytes.fromhex("c9c90700"))
    assert decode(ext, first, last) == b"Hello"


def test_7_2_3_1_through_connection() -> None:
    conn = client()
    conn.receive_data(bytes.fromhex("c107f248cdc9c90700"))
    conn.receive_data(bytes.fromhex("4103f248cd") + bytes.fromhex("8004c9c90700"))
    assert conn.events_received() == [TextMessage("Hello"), TextMessage("Hello")]


def test_7_2_3_2_sharing_window_decode() -> None:
    ext = pmd()
    second = bytes.fromhex("f200110000")
    assert decode(ext, Frame(TEXT, HELLO, rsv1=True), Frame(TEXT, second, rsv1=True)) == (
        b"HelloHello"
    )
    conn = client()
    conn.receive_data(bytes.fromhex("c107f248cdc9c90700") + bytes.fromhex("c105f200110000"))
    assert conn.events_received() == [TextMessage("Hello"), TextMessage("Hello")]


def test_7_2_3_2_sharing_window_encode() -> None:
    ext = pmd()
    assert ext.encode(Frame(TEXT, b"Hello")) == Frame(TEXT, HELLO, rsv1=True)
    assert ext.encode(Frame(TEXT, b"Hello")) == Frame(TEXT, bytes.fromhex("f200110000"), rsv1=True)


def test_no_context_takeover_encode_restarts_each_message() -> None:
    ext = pmd(local_no_context_takeover=True)
    for _ in range(3):
        assert ext.encode(Frame(TEXT, b"Hello")) == Frame(TEXT, HELLO, rsv1=True)


def test_no_context_takeover_decode_forgets_window() -> None:
    # Without takeover the peer may not refer to the previous message: 7.2.3.2's second
    # message is then invalid (a distance into an empty window).
    conn = client(pmd(remote_no_context_takeover=True))
    conn.receive_data(bytes.fromhex("c107f248cdc9c90700") + bytes.fromhex("c105f200110000"))
    assert conn.events_received() == [TextMessage("Hello")]
    assert conn.close_sent == (1007, "invalid compressed data")


def test_7_2_3_3_no_compression_block() -> None:
    payload = bytes.fromhex("000500faff48656c6c6f00")
    assert decode(pmd(), Frame(TEXT, payload, rsv1=True)) == b"Hello"
    conn = client()
    conn.receive_data(bytes.fromhex("c10b") + payload)
    assert conn.events_received() == [TextMessage("Hello")]


def test_7_2_3_4_bfinal() -> None:
    payload = bytes.fromhex("f348cdc9c9070000")
    ext = pmd()
    assert decode(ext, Frame(TEXT, payload, rsv1=True)) == b"Hello"
    # The stream ended; the next message starts a new one and still decodes.
    assert decode(ext, Frame(TEXT, HELLO, rsv1=True)) == b"Hello"
    conn = client()
    conn.receive_data(bytes.fromhex("c108") + payload + bytes.fromhex("c107") + HELLO)
    assert conn.events_received() == [TextMessage("Hello"), TextMessage("Hello")]


def test_bfinal_without_the_padding_byte() -> None:
    # RFC 7692 7.2.3.4 says the trailing 0x00 "is necessary"; a peer that omits it must not
    # break the next message.
    ext = pmd()
    assert decode(ext, Frame(TEXT, bytes.fromhex("f348cdc9c90700"), rsv1=True)) == b"Hello"
    assert decode(ext, Frame(TEXT, HELLO, rsv1=True)) == b"Hello"


def test_bfinal_then_more_data_in_the_same_frame() -> None:
    # A final block, then a new stream in the same message: decoded as a restart.
    ext = pmd()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = c.compress(b"Hel") + c.flush(zlib.Z_FINISH)
    assert decode(ext, Frame(BINARY, first + HELLO, rsv1=True)) == b"HelHello"


def test_bfinal_restart_cannot_refer_back() -> None:
    # After BFINAL the window is empty: 7.2.3.2's back-reference fails loudly with 1007.
    ext = pmd()
    ext.decode(Frame(TEXT, bytes.fromhex("f348cdc9c9070000"), rsv1=True), max_size=None)
    with pytest.raises(ProtocolError) as info:
        ext.decode(Frame(TEXT, bytes.fromhex("f200110000"), rsv1=True), max_size=None)
    assert info.value.code == 1007


def test_two_final_blocks_in_one_frame_rejected() -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = c.compress(b"x") + c.flush(zlib.Z_FINISH)
    with pytest.raises(ProtocolError) as info:
        pmd().decode(Frame(BINARY, stream + stream + stream, rsv1=True), max_size=None)
    assert info.value.code == 1007


def test_bfinal_on_a_non_final_fragment() -> None:
    ext = pmd()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = c.compress(b"ab") + c.flush(zlib.Z_FINISH)
    first = Frame(BINARY, stream, fin=False, rsv1=True)
    assert decode(ext, first, Frame(CONT, HELLO)) == b"abHello"


def test_7_2_3_5_two_blocks() -> None:
    payload = bytes.fromhex("f248050000 00ffff cac9c90700".replace(" ", ""))
    assert decode(pmd(), Frame(TEXT, payload, rsv1=True)) == b"Hello"
    conn = client()
    conn.receive_data(bytes.fromhex("c10d") + payload)
    assert conn.events_received() == [TextMessage("Hello")]


def test_7_2_3_6_empty_message() -> None:
    ext = pmd()
    assert ext.encode(Frame(BINARY, b"")) == Frame(BINARY, b"\x00", rsv1=True)
    assert decode(pmd(), Frame(BINARY, b"\x00", rsv1=True)) == b""
    conn = client()
    conn.receive_data(bytes.fromhex("c20100"))
    assert conn.events_received() == [BinaryMessage(b"")]


def test_7_2_3_6_empty_last_fragment() -> None:
    # An empty last fragment after a flushed one is 0x00 on the wire.
    ext = pmd()
    first = ext.encode(Frame(TEXT, b"Hello", fin=False))
    last = ext.encode(Frame(CONT, b""))
    assert first.rsv1 and not last.rsv1
    assert last.payload == b"\x00"
    assert decode(pmd(), first, last) == b"Hello"
    # And the context is still usable afterwards.
    assert decode(pmd(), first, last, ext.encode(Frame(TEXT, b"Hello"))) == b"HelloHello"


def test_strip_tail_of_empty_flush() -> None:
    # zlib returns nothing for a second sync flush in a row (no compress() in between).
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    c.compress(b"Hello")
    c.flush(zlib.Z_SYNC_FLUSH)
    assert c.flush(zlib.Z_SYNC_FLUSH) == b""
    assert _strip_tail(b"") == b"\x00"
    assert _strip_tail(HELLO + b"\x00\x00\xff\xff") == HELLO


def test_empty_non_final_fragments() -> None:
    ext, peer = pmd(), pmd()
    frames = [
        ext.encode(Frame(TEXT, b"", fin=False)),
        ext.encode(Frame(CONT, b"", fin=False)),
        ext.encode(Frame(CONT, b"abc", fin=False)),
        ext.encode(Frame(CONT, b"")),
    ]
    assert [f.rsv1 for f in frames] == [True, False, False, False]
    assert decode(peer, *frames) == b"abc"


# -- receiving: violations and limits ---------------------------------------------------------


def test_rsv1_on_continuation_frame() -> None:
    with pytest.raises(ProtocolError) as info:
        pmd().decode(Frame(CONT, b"", rsv1=True), max_size=None)
    assert info.value.code == 1002
    conn = client()
    conn.receive_data(bytes.fromhex("4103f248cd") + bytes.fromhex("c004c9c90700"))
    assert conn.close_sent == (1002, "protocol error")


def test_rsv1_on_continuation_of_uncompressed_message() -> None:
    conn = client()
    conn.receive_data(
        serialize_frame(TEXT, b"He", fin=False) + serialize_frame(CONT, b"", rsv1=True)
    )
    assert conn.close_sent == (1002, "protocol error")


def test_uncompressed_messages_pass_through() -> None:
    ext = pmd()
    frame = Frame(TEXT, b"plain", fin=False)
    assert ext.decode(frame, max_size=1) is frame
    cont = Frame(CONT, b"more")
    assert ext.decode(cont, max_size=None) is cont
    # Uncompressed messages between compressed ones leave the window alone (7.2.3.2 still works).
    conn = client()
    conn.receive_data(
        bytes.fromhex("c107")
        + HELLO
        + serialize_frame(TEXT, b"x")
        + bytes.fromhex("c105f200110000")
    )
    assert conn.events_received() == [TextMessage("Hello"), TextMessage("x"), TextMessage("Hello")]


def test_corrupt_data_fails_with_1007() -> None:
    conn = client()
    conn.receive_data(serialize_frame(BINARY, b"\xff\xff\xff\xff", rsv1=True))
    assert conn.close_sent == (1007, "invalid compressed data")
    assert conn.failure is not None and conn.failure.code == 1007


def test_rsv2_rsv3_preserved() -> None:
    out = pmd().encode(Frame(TEXT, b"Hello", rsv2=True, rsv3=True))
    assert (out.rsv1, out.rsv2, out.rsv3) == (True, True, True)
    back = pmd().decode(out, max_size=None)
    assert (back.rsv1, back.rsv2, back.rsv3, back.payload) == (False, True, True, b"Hello")


@pytest.mark.parametrize("size", [0, 1, 100, 1000])
def test_max_size_is_exact(size: int) -> None:
    data = bytes(range(256)) * 4
    payload = pmd().encode(Frame(BINARY, data[:size])).payload
    assert decode(pmd(), Frame(BINARY, payload, rsv1=True), max_size=size) == data[:size]
    if size:
        with pytest.raises(PayloadTooBig):
            decode(pmd(), Frame(BINARY, payload, rsv1=True), max_size=size - 1)


def test_zero_budget_is_not_unlimited() -> None:
    # zlib's max_length=0 means "no limit"; a budget of 0 must still reject one byte.
    with pytest.raises(PayloadTooBig):
        pmd().decode(Frame(BINARY, HELLO, rsv1=True), max_size=0)


def test_budget_across_fragments_through_connection() -> None:
    conn = client(max_message_size=8)
    ext = pmd()
    first = ext.encode(Frame(BINARY, b"12345", fin=False))
    last = ext.encode(Frame(CONT, b"6789"))
    conn.receive_data(
        serialize_frame(BINARY, first.payload, fin=False, rsv1=True)
        + serialize_frame(CONT, last.payload)
    )
    assert conn.close_sent == (1009, "message too big")


def test_over_budget_after_bfinal_restart() -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = c.compress(b"abcd") + c.flush(zlib.Z_FINISH)
    with pytest.raises(PayloadTooBig):
        pmd().decode(Frame(BINARY, stream + HELLO, rsv1=True), max_size=4)
    with pytest.raises(PayloadTooBig):
        pmd().decode(Frame(BINARY, stream + HELLO, rsv1=True), max_size=6)
    assert decode(pmd(), Frame(BINARY, stream + HELLO, rsv1=True), max_size=9) == b"abcdHello"


def _bomb(gib: int = 1) -> bytes:
    """A raw DEFLATE stream of ``gib`` GiB of zeros, about 1 MB: deflate peaks at ~1032:1."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(2**20)
    # After a full flush the compressor starts afresh, so every MiB compresses identically.
    head = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert piece == head
    return piece * (1024 * gib)


def test_decompression_bomb() -> None:
    bomb = _bomb()
    assert len(bomb) < 1_100_000
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooBig):
            pmd().decode(Frame(BINARY, bomb, rsv1=True), max_size=2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 1 GiB would come out; we hold the frame, a copy with the tail, the output budget and
    # zlib's unconsumed tail: a few MB.
    assert peak < 6 * 2**20


def test_decompression_bomb_through_connection() -> None:
    bomb = _bomb()
    conn = client(max_frame_size=2 * 2**20, max_message_size=2**20)
    data = serialize_frame(BINARY, bomb, rsv1=True)
    tracemalloc.start()
    try:
        conn.receive_data(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert conn.close_sent == (1009, "message too big")
    assert peak < 8 * 2**20


def test_fragmented_bomb_through_connection() -> None:
    piece = _bomb()[: 1037 * 64]  # 64 MiB of zeros per frame
    conn = client(max_message_size=2**20)
    data = serialize_frame(BINARY, piece, fin=False, rsv1=True)
    data += serialize_frame(CONT, piece, fin=False) * 3 + serialize_frame(CONT, b"")
    conn.receive_data(data)
    assert conn.close_sent == (1009, "message too big")


# -- sending ----------------------------------------------------------------------------------


def test_threshold() -> None:
    ext = PerMessageDeflate()
    small = b"x" * (DEFAULT_COMPRESS_THRESHOLD - 1)
    big = b"x" * DEFAULT_COMPRESS_THRESHOLD
    assert ext.encode(Frame(TEXT, small)) == Frame(TEXT, small)
    assert ext.encode(Frame(TEXT, big)).rsv1
    # The first frame of a fragmented message is compressed whatever its size.
    first = ext.encode(Frame(TEXT, b"x", fin=False))
    assert first.rsv1
    assert not ext.encode(Frame(CONT, b"")).rsv1


def test_threshold_through_connection() -> None:
    conn = client(PerMessageDeflate(compress_threshold=10))
    conn.send_text("short")
    conn.send_text("long enough to compress")
    frames = parse_sent(conn.data_to_send(), from_client=True)
    assert [f.rsv1 for f in frames] == [False, True]


def test_opt_out_per_message() -> None:
    conn = client()
    conn.send_text("Hello", compress=False)
    conn.send_text("Hello")
    conn.send_binary(b"Hello", compress=False)
    frames = parse_sent(conn.data_to_send(), from_client=True)
    assert frames == [
        Frame(TEXT, b"Hello"),
        Frame(TEXT, HELLO, rsv1=True),
        Frame(BINARY, b"Hello"),
    ]


def test_uncompressed_continuations_pass_through_encode() -> None:
    ext = PerMessageDeflate(compress_threshold=100)
    small = Frame(TEXT, b"x")
    assert ext.encode(small) is small
    cont = Frame(CONT, b"y")
    assert ext.encode(cont) is cont


def test_fragment_size_splits_after_compression() -> None:
    conn = client(fragment_size=3)
    conn.send_text("Hello")
    frames = parse_sent(conn.data_to_send(), from_client=True)
    assert [(f.opcode, f.rsv1, f.fin) for f in frames] == [
        (TEXT, True, False),
        (CONT, False, False),
        (CONT, False, True),
    ]
    assert b"".join(f.payload for f in frames) == HELLO
    peer = Connection(Side.SERVER, extensions=[pmd()])
    peer.receive_data(
        b"".join(
            serialize_frame(f.opcode, f.payload, fin=f.fin, rsv1=f.rsv1, mask=True) for f in frames
        )
    )
    assert peer.events_received() == [TextMessage("Hello")]


def test_send_fragment_and_iterables_compress_frame_by_frame() -> None:
    conn = client()
    conn.send_fragment("Hel", final=False)
    conn.send_fragment("lo", final=True)
    conn.send_binary([b"ab", b"cd", b""])
    frames = parse_sent(conn.data_to_send(), from_client=True)
    assert [(f.opcode, f.rsv1, f.fin) for f in frames] == [
        (TEXT, True, False),
        (CONT, False, True),
        (BINARY, True, False),
        (CONT, False, False),
        (CONT, False, True),
    ]
    peer = Connection(Side.SERVER, extensions=[pmd()], stream_messages=True)
    peer.receive_data(
        b"".join(
            serialize_frame(f.opcode, f.payload, fin=f.fin, rsv1=f.rsv1, mask=True) for f in frames
        )
    )
    events = peer.events_received()
    assert events[:2] == [TextFragment("Hel", False), TextFragment("lo", True)]


def test_eight_bit_local_window_sends_uncompressed() -> None:
    ext = PerMessageDeflate(local_max_window_bits=8, compress_threshold=0)
    assert not ext.compression_enabled
    frame = Frame(TEXT, b"Hello" * 100)
    assert ext.encode(frame) is frame


def test_eight_bit_remote_window_decodes_with_nine() -> None:
    ext = pmd(remote_max_window_bits=8)
    # A stream with distances up to 512 (what zlib < 1.2.9 produced when asked for 8 bits).
    c = zlib.compressobj(9, zlib.DEFLATED, -9)
    data = bytes(range(256)) * 2 + b"abc" + bytes(range(256)) * 2
    payload = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert decode(ext, Frame(BINARY, payload[:-4], rsv1=True)) == data
    # And the 7.2.3 vectors, which fit an 8-bit window.
    assert decode(ext, Frame(TEXT, HELLO, rsv1=True)) == b"Hello"
    # The decompressor kept between messages is the 9-bit one (a gap found by mutating
    # deflate.py: zlib here reads 8 as 9 anyway, so only the memory estimate shows it).
    no_compressor = pmd(remote_max_window_bits=8, local_no_context_takeover=True)
    assert no_compressor.memory_estimate() == (1 << 9) + 7360


def test_zlib_rejects_raw_eight_bit_compression() -> None:
    # The fact the 8-bit decision rests on (zlib >= 1.2.9).
    with pytest.raises(ValueError):
        zlib.compressobj(6, zlib.DEFLATED, -8)


# -- memory -----------------------------------------------------------------------------------


def _measure(ext: PerMessageDeflate) -> int:
    message = bytes(range(256)) * 256
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ext.decode(ext.encode(Frame(BINARY, message)), max_size=None)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


@pytest.mark.parametrize(
    ("bits", "mem_level"), [(15, 8), (15, 5), (13, 5), (12, 5), (11, 5), (9, 1)]
)
def test_memory_estimate_matches_measurement(bits: int, mem_level: int) -> None:
    ext = pmd(local_max_window_bits=bits, remote_max_window_bits=bits, mem_level=mem_level)
    measured = _measure(ext)
    assert abs(measured - ext.memory_estimate()) < 0.05 * measured + 512


def test_memory_without_context_takeover() -> None:
    ext = pmd(local_no_context_takeover=True, remote_no_context_takeover=True)
    assert ext.memory_estimate() == 0
    assert _measure(ext) < 1024
    assert pmd(local_max_window_bits=8).memory_estimate() == (1 << 15) + 7360


def test_default_server_connection_memory() -> None:
    params = ClientPerMessageDeflateFactory().get_request_params()
    _, ext = ServerPerMessageDeflateFactory().process_request_params(params, [])
    assert isinstance(ext, PerMessageDeflate)
    assert ext.memory_estimate() < 50 * 1024


# -- negotiation: server ----------------------------------------------------------------------

P = ExtensionParameter


@pytest.mark.parametrize(
    ("config", "offer", "response", "expected"),
    [
        # No configured limits: answer what was offered.
        (
            {"server_max_window_bits": None, "client_max_window_bits": None},
            [],
            [],
            (False, False, 15, 15),
        ),
        (
            {"server_max_window_bits": None, "client_max_window_bits": None},
            [("client_max_window_bits", None)],
            [],
            (False, False, 15, 15),
        ),
        (
            {"server_max_window_bits": None, "client_max_window_bits": None},
            [("client_max_window_bits", "10"), ("server_max_window_bits", "11")],
            [("server_max_window_bits", "11"), ("client_max_window_bits", "10")],
            (False, False, 10, 11),
        ),
        # Defaults: 12 bits both ways, the client's only if it supports the parameter.
        ({}, [], [("server_max_window_bits", "12")], (False, False, 15, 12)),
        (
            {},
            [("client_max_window_bits", None)],
            [("server_max_window_bits", "12"), ("client_max_window_bits", "12")],
            (False, False, 12, 12),
        ),
        (
            {},
            [("client_max_window_bits", "9"), ("server_max_window_bits", "14")],
            [("server_max_window_bits", "12"), ("client_max_window_bits", "9")],
            (False, False, 9, 12),
        ),
        (
            {},
            [("server_max_window_bits", "8")],
            [("server_max_window_bits", "8")],
            (False, False, 15, 8),
        ),
        # Context takeover: the offer's or the configuration's, whichever asks.
        (
            {},
            [("server_no_context_takeover", None), ("client_no_context_takeover", None)],
            [
                ("server_no_context_takeover", None),
                ("client_no_context_takeover", None),
                ("server_max_window_bits", "12"),
            ],
            (True, True, 15, 12),
        ),
        (
            {"server_no_context_takeover": True, "client_no_context_takeover": True},
            [],
            [
                ("server_no_context_takeover", None),
                ("client_no_context_takeover", None),
                ("server_max_window_bits", "12"),
            ],
            (True, True, 15, 12),
        ),
    ],
)
def test_server_negotiation(
    config: dict[str, Any],
    offer: list[P],
    response: list[P],
    expected: tuple[bool, bool, int, int],
) -> None:
    params, ext = ServerPerMessageDeflateFactory(**config).process_request_params(offer, [])
    assert params == response
    assert isinstance(ext, PerMessageDeflate)
    assert (
        ext.remote_no_context_takeover,
        ext.local_no_context_takeover,
        ext.remote_max_window_bits,
        ext.local_max_window_bits,
    ) == expected


@pytest.mark.parametrize(
    "offer",
    [
        [("server_no_context_takeover", None), ("server_no_context_takeover", None)],
        [("client_max_window_bits", None), ("client_max_window_bits", "10")],
        [("unknown", None)],
        [("Server_No_Context_Takeover", None)],
        [("server_no_context_takeover", "")],
        [("client_no_context_takeover", "1")],
        [("server_max_window_bits", None)],
        [("server_max_window_bits", "7")],
        [("server_max_window_bits", "16")],
        [("server_max_window_bits", "08")],
        [("server_max_window_bits", " 9")],
        [("server_max_window_bits", "+9")],
        [("server_max_window_bits", "1_0")],
        [("server_max_window_bits", "\u0669")],
        [("client_max_window_bits", "abc")],
    ],
)
def test_server_rejects_malformed_offer(offer: list[P]) -> None:
    with pytest.raises(NegotiationError):
        ServerPerMessageDeflateFactory().process_request_params(offer, [])


def test_server_rejects_second_rsv1_extension() -> None:
    _, ext = ServerPerMessageDeflateFactory().process_request_params([], [])
    with pytest.raises(NegotiationError):
        ServerPerMessageDeflateFactory().process_request_params([], [ext])


# -- negotiation: client ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "request_params"),
    [
        ({}, [("client_max_window_bits", None)]),
        (
            {
                "server_no_context_takeover": True,
                "client_no_context_takeover": True,
                "server_max_window_bits": 10,
                "client_max_window_bits": 11,
            },
            [
                ("server_no_context_takeover", None),
                ("client_no_context_takeover", None),
                ("server_max_window_bits", "10"),
                ("client_max_window_bits", "11"),
            ],
        ),
    ],
)
def test_client_offer(config: dict[str, Any], request_params: list[P]) -> None:
    assert ClientPerMessageDeflateFactory(**config).get_request_params() == request_params


@pytest.mark.parametrize(
    ("config", "response", "expected"),
    [
        ({}, [], (False, False, 15, 15)),
        (
            {},
            [
                ("server_no_context_takeover", None),
                ("client_no_context_takeover", None),
                ("server_max_window_bits", "9"),
                ("client_max_window_bits", "8"),
            ],
            (True, True, 9, 8),
        ),
        ({"client_no_context_takeover": True}, [], (False, True, 15, 15)),
        ({"client_max_window_bits": 11}, [], (False, False, 15, 11)),
        (
            {"client_max_window_bits": 11},
            [("client_max_window_bits", "11")],
            (False, False, 15, 11),
        ),
        (
            {"client_max_window_bits": 11},
            [("client_max_window_bits", "10")],
            (False, False, 15, 10),
        ),
        (
            {"server_no_context_takeover": True, "server_max_window_bits": 10},
            [("server_no_context_takeover", None), ("server_max_window_bits", "10")],
            (True, False, 10, 15),
        ),
        ({"server_max_window_bits": 10}, [("server_max_window_bits", "8")], (False, False, 8, 15)),
    ],
)
def test_client_negotiation(
    config: dict[str, Any], response: list[P], expected: tuple[bool, bool, int, int]
) -> None:
    ext = ClientPerMessageDeflateFactory(**config).process_response_params(response, [])
    assert isinstance(ext, PerMessageDeflate)
    assert (
        ext.remote_no_context_takeover,
        ext.local_no_context_takeover,
        ext.remote_max_window_bits,
        ext.local_max_window_bits,
    ) == expected


@pytest.mark.parametrize(
    ("config", "response"),
    [
        # Malformed.
        ({}, [("client_max_window_bits", None)]),  # a response needs the value
        ({}, [("server_max_window_bits", "16")]),
        ({}, [("server_no_context_takeover", "x")]),
        ({}, [("foo", None)]),
        ({}, [("client_max_window_bits", "9"), ("client_max_window_bits", "9")]),
        # Less strict than the offer required.
        ({"server_no_context_takeover": True}, []),
        ({"server_max_window_bits": 10}, []),
        ({"server_max_window_bits": 10}, [("server_max_window_bits", "11")]),
        ({"client_max_window_bits": 10}, [("client_max_window_bits", "11")]),
    ],
)
def test_client_rejects_answer(config: dict[str, Any], response: list[P]) -> None:
    with pytest.raises(NegotiationError):
        ClientPerMessageDeflateFactory(**config).process_response_params(response, [])


def test_client_rejects_duplicate_extension() -> None:
    factory = ClientPerMessageDeflateFactory()
    ext = factory.process_response_params([], [])
    with pytest.raises(NegotiationError):
        factory.process_response_params([], [ext])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_max_window_bits": 7},
        {"client_max_window_bits": 16},
        {"compress_level": 10},
        {"compress_level": -2},
        {"compress_threshold": -1},
        {"mem_level": 0},
        {"mem_level": 10},
    ],
)
def test_factory_settings_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ServerPerMessageDeflateFactory(**kwargs)
    with pytest.raises(ValueError):
        ClientPerMessageDeflateFactory(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"local_max_window_bits": 7}, {"remote_max_window_bits": 16}, {"mem_level": 0}]
)
def test_extension_settings_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PerMessageDeflate(**kwargs)


def test_enable_helpers() -> None:
    (server,) = enable_server_permessage_deflate()
    assert isinstance(server, ServerPerMessageDeflateFactory)
    custom = ServerPerMessageDeflateFactory(server_max_window_bits=9)
    assert enable_server_permessage_deflate([custom]) == [custom]
    (cl,) = enable_client_permessage_deflate()
    assert isinstance(cl, ClientPerMessageDeflateFactory)
    custom_client = ClientPerMessageDeflateFactory(client_max_window_bits=9)
    assert enable_client_permessage_deflate([custom_client]) == [custom_client]


def test_repr() -> None:
    assert repr(PerMessageDeflate(local_max_window_bits=9)) == (
        "PerMessageDeflate(remote_no_context_takeover=False, local_no_context_takeover=False, "
        "remote_max_window_bits=15, local_max_window_bits=9)"
    )


# -- round trips between two Connections ------------------------------------------------------


def negotiate(
    client_factory: ClientPerMessageDeflateFactory, server_factory: ServerPerMessageDeflateFactory
) -> tuple[Extension, Extension]:
    response, server_ext = server_factory.process_request_params(
        client_factory.get_request_params(), []
    )
    return client_factory.process_response_params(response, []), server_ext


bits_or_none = st.one_of(st.none(), st.integers(8, 15))
messages = st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=600)), max_size=8)


def deliver(data: Any, payload: bytes, receiver: Connection) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=6)))
    start = 0
    for cut in [*cuts, len(payload)]:
        receiver.receive_data(payload[start:cut])
        start = cut


def expected_event(message: str | bytes) -> TextMessage | BinaryMessage:
    return TextMessage(message) if isinstance(message, str) else BinaryMessage(message)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    client_settings=st.fixed_dictionaries(
        {
            "server_no_context_takeover": st.booleans(),
            "client_no_context_takeover": st.booleans(),
            "server_max_window_bits": bits_or_none,
            "client_max_window_bits": bits_or_none,
            "compress_threshold": st.integers(0, 100),
        }
    ),
    server_settings=st.fixed_dictionaries(
        {
            "server_no_context_takeover": st.booleans(),
            "client_no_context_takeover": st.booleans(),
            "server_max_window_bits": bits_or_none,
            "client_max_window_bits": bits_or_none,
            "compress_level": st.integers(-1, 9),
            "mem_level": st.integers(1, 9),
        }
    ),
    to_server=messages,
    to_client=messages,
    fragment_size=st.one_of(st.none(), st.integers(1, 50)),
)
def test_round_trip_between_connections(
    data: Any,
    client_settings: dict[str, Any],
    server_settings: dict[str, Any],
    to_server: list[str | bytes],
    to_client: list[str | bytes],
    fragment_size: int | None,
) -> None:
    client_ext, server_ext = negotiate(
        ClientPerMessageDeflateFactory(**client_settings),
        ServerPerMessageDeflateFactory(**server_settings),
    )
    cl = Connection(Side.CLIENT, extensions=[client_ext], fragment_size=fragment_size)
    sv = Connection(Side.SERVER, extensions=[server_ext], fragment_size=fragment_size)
    for sender, receiver, batch in ((cl, sv, to_server), (sv, cl, to_client)):
        for message in batch:
            if isinstance(message, str) and len(message) > 3 and data.draw(st.booleans()):
                sender.send_text([message[:3], message[3:]])  # frame-by-frame compression
            elif isinstance(message, str):
                sender.send_text(message, compress=data.draw(st.booleans()))
            else:
                sender.send_binary(message)
        deliver(data, sender.data_to_send(), receiver)
        assert receiver.failure is None
        assert receiver.events_received() == [expected_event(m) for m in batch]


# -- interop with wsproto ---------------------------------------------------------------------

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def header_value(head: bytes, name: str) -> str | None:
    for line in head.decode().split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def parse_extension(value: str) -> list[P]:
    """Parse one ``permessage-deflate; a; b=1`` item (no quoted strings in these tests)."""
    token, *items = (item.strip() for item in value.split(";"))
    assert token == "permessage-deflate"
    params: list[P] = []
    for item in items:
        name, eq, val = item.partition("=")
        params.append((name.strip(), val.strip() if eq else None))
    return params


def format_extension(params: Sequence[P]) -> str:
    return "; ".join(
        ["permessage-deflate"] + [name if v is None else f"{name}={v}" for name, v in params]
    )


def wsproto_client_handshake(
    wsproto_ext: WsprotoDeflate, server_factory: ServerPerMessageDeflateFactory
) -> tuple[wsproto.WSConnection, Connection]:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = ws.send(wev.Request(host="localhost", target="/", extensions=[wsproto_ext]))
    offer = header_value(request, "Sec-WebSocket-Extensions")
    assert offer is not None
    params, ext = server_factory.process_request_params(parse_extension(offer), [])
    key = header_value(request, "Sec-WebSocket-Key")
    accept = base64.b64encode(hashlib.sha1(f"{key}{GUID}".encode()).digest()).decode()
    ws.receive_data(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n"
            f"Sec-WebSocket-Extensions: {format_extension(params)}\r\n\r\n"
        ).encode()
    )
    (accepted,) = ws.events()
    assert isinstance(accepted, wev.AcceptConnection)
    assert accepted.extensions and accepted.extensions[0].enabled()
    return ws, Connection(Side.SERVER, extensions=[ext], max_message_size=None)


def wsproto_server_handshake(
    client_factory: ClientPerMessageDeflateFactory, wsproto_ext: WsprotoDeflate
) -> tuple[wsproto.WSConnection, Connection]:
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    offer = format_extension(client_factory.get_request_params())
    ws.receive_data(
        (
            "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Extensions: {offer}\r\n\r\n"
        ).encode()
    )
    (request,) = ws.events()
    assert isinstance(request, wev.Request)
    response = ws.send(wev.AcceptConnection(extensions=[wsproto_ext]))
    answer = header_value(response, "Sec-WebSocket-Extensions")
    assert answer is not None
    ext = client_factory.process_response_params(parse_extension(answer), [])
    return ws, Connection(Side.CLIENT, extensions=[ext], max_message_size=None)


def wsproto_messages(ws: wsproto.WSConnection) -> list[str | bytes]:
    out: list[str | bytes] = []
    parts: list[Any] = []
    for event in ws.events():
        assert isinstance(event, wev.Message), event
        parts.append(event.data)
        if event.message_finished:
            out.append("".join(parts) if isinstance(event, wev.TextMessage) else b"".join(parts))
            parts = []
    return out


INTEROP_MESSAGES: list[str | bytes] = [
    "Hello",
    "Hello",
    '{"type": "trade", "price": 101.5, "symbol": "BTC"}' * 20,
    bytes(range(256)) * 40,
    "",
    b"",
    "é" * 3000,
]

# (no context takeover for the side we talk to, window bits asked of both sides)
INTEROP_SETTINGS = [(False, None), (True, None), (False, 9), (True, 10), (False, 12)]


def check_exchange(ws: wsproto.WSConnection, ours: Connection) -> None:
    # Ours -> wsproto: whole messages, fragmented sends, and a streamed message.
    for message in INTEROP_MESSAGES:
        if isinstance(message, str):
            ours.send_text(message)
        else:
            ours.send_binary(message)
    ours.send_text(["Hel", "lo ", "world" * 50])
    ours.fragment_size = 100
    ours.send_binary(bytes(range(256)) * 10)
    ws.receive_data(ours.data_to_send())
    assert wsproto_messages(ws) == [
        *INTEROP_MESSAGES,
        "Hello " + "world" * 50,
        bytes(range(256)) * 10,
    ]
    # wsproto -> ours, including a message wsproto fragments.
    for message in INTEROP_MESSAGES:
        event: wev.Event = (
            wev.TextMessage(data=message)
            if isinstance(message, str)
            else wev.BytesMessage(data=message)
        )
        ours.receive_data(ws.send(event))
    ours.receive_data(ws.send(wev.TextMessage(data="abc" * 100, message_finished=False)))
    ours.receive_data(ws.send(wev.TextMessage(data="def" * 100, message_finished=True)))
    assert ours.failure is None
    assert ours.events_received() == [
        *(expected_event(m) for m in INTEROP_MESSAGES),
        TextMessage("abc" * 100 + "def" * 100),
    ]


@pytest.mark.parametrize(("no_takeover", "bits"), INTEROP_SETTINGS)
def test_interop_wsproto_client_our_server(no_takeover: bool, bits: int | None) -> None:
    ws, ours = wsproto_client_handshake(
        WsprotoDeflate(
            client_no_context_takeover=no_takeover,
            server_no_context_takeover=no_takeover,
            client_max_window_bits=bits,
            server_max_window_bits=bits,
        ),
        ServerPerMessageDeflateFactory(compress_threshold=0),
    )
    ext = ours.extensions[0]
    assert isinstance(ext, PerMessageDeflate)
    assert ext.local_no_context_takeover is no_takeover
    if bits is not None:
        assert ext.local_max_window_bits == min(bits, 12)
    check_exchange(ws, ours)


@pytest.mark.parametrize(("no_takeover", "bits"), INTEROP_SETTINGS)
def test_interop_our_client_wsproto_server(no_takeover: bool, bits: int | None) -> None:
    ws, ours = wsproto_server_handshake(
        ClientPerMessageDeflateFactory(
            server_no_context_takeover=no_takeover,
            client_no_context_takeover=no_takeover,
            server_max_window_bits=bits,
            client_max_window_bits=bits,
            compress_threshold=0,
        ),
        WsprotoDeflate(),
    )
    ext = ours.extensions[0]
    assert isinstance(ext, PerMessageDeflate)
    assert ext.remote_no_context_takeover is no_takeover
    assert ext.remote_max_window_bits == (bits or 15)
    check_exchange(ws, ours)


def test_interop_wsproto_server_limits_our_window() -> None:
    ws, ours = wsproto_server_handshake(
        ClientPerMessageDeflateFactory(compress_threshold=0),
        WsprotoDeflate(client_max_window_bits=9, client_no_context_takeover=True),
    )
    ext = ours.extensions[0]
    assert isinstance(ext, PerMessageDeflate)
    assert (ext.local_max_window_bits, ext.local_no_context_takeover) == (9, True)
    check_exchange(ws, ours)
