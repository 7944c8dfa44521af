"""The frame fast paths, both implementations (pure Python and the C accelerator), and the
connection's message_handler and send fast path.

read_simple_frame may only ever accept less than FrameParser.next_frame: every frame it returns
must be the frame the general parser returns, and None hands the bytes to the general parser.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fullduplex.protocol import BinaryMessage, Connection, Ping, Side, State, TextMessage
from fullduplex.protocol.connection import LARGE_PAYLOAD_SIZE
from fullduplex.protocol.extensions import Extension
from fullduplex.protocol.frames import (
    Frame,
    FrameParser,
    build_frame_python,
    read_message_python,
    read_simple_frame_python,
    serialize_frame,
)

KEY = bytes.fromhex("37fa213d")


def _load_c(name: str) -> Callable[..., Any] | None:
    try:
        from fullduplex.protocol import _speedups
    except ImportError:
        return None
    return getattr(_speedups, name)  # type: ignore[no-any-return]


def _param(name: str) -> Any:
    func = _load_c(name)
    if func is not None:
        return pytest.param(func, id="c")
    if os.environ.get("FULLDUPLEX_REQUIRE_SPEEDUPS") == "1":  # pragma: no cover
        return pytest.param(None, id="c")  # required but missing: these tests fail
    return pytest.param(  # pragma: no cover
        None, id="c", marks=pytest.mark.skip(reason="C accelerator not built")
    )


def masked(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    return serialize_frame(
        opcode,
        payload,
        fin=fin,
        rsv1=bool(rsv & 4),
        rsv2=bool(rsv & 2),
        rsv3=bool(rsv & 1),
        mask=True,
        mask_key=KEY,
    )


ReadFunction = Callable[..., "tuple[int, bytes, int] | None"]


@pytest.mark.parametrize(
    "read",
    [pytest.param(read_simple_frame_python, id="python"), _param("read_simple_frame")],
)
class TestReadSimpleFrame:
    def test_masked_binary_and_text(self, read: ReadFunction) -> None:
        data = masked(2, b"x" * 32) + masked(1, "héllo".encode())
        first = read(data, 0, True, -1)
        assert first == (2, b"x" * 32, 38)
        assert read(data, 38, True, -1) == (1, "héllo".encode(), len(data))

    def test_unmasked_from_the_server(self, read: ReadFunction) -> None:
        data = bytearray(serialize_frame(2, b"abc"))
        result = read(data, 0, False, 10)
        assert result == (2, b"abc", 5)
        assert type(result[1]) is bytes  # type: ignore[index]

    @pytest.mark.parametrize("size", [0, 125, 126, 4095, 4096, 65535, 65536, 70000])
    def test_every_length_encoding(self, read: ReadFunction, size: int) -> None:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        data = b"\x00\x00" + masked(2, payload)
        assert read(data, 2, True, -1) == (2, payload, len(data))
        assert read(bytearray(data), 2, True, size) == (2, payload, len(data))

    def test_incomplete_frames_wait(self, read: ReadFunction) -> None:
        for size in (10, 300, 70000):
            data = masked(2, b"y" * size)
            for cut in (0, 1, 2, 3, 5, 9, len(data) - 1):
                assert read(data[:cut], 0, True, -1) is None

    def test_everything_else_goes_to_the_general_parser(self, read: ReadFunction) -> None:
        cases = [
            masked(2, b"a", fin=False),  # fragmented
            masked(0, b"a"),  # continuation
            masked(9, b"a"),  # ping
            masked(8, b"\x03\xe8"),  # close
            masked(3, b"a"),  # reserved opcode
            masked(2, b"a", rsv=4),  # RSV1
            masked(1, b"a", rsv=1),  # RSV3
            serialize_frame(2, b"a"),  # unmasked from a client
        ]
        for data in cases:
            assert read(data, 0, True, -1) is None
        assert read(masked(2, b"a"), 0, False, -1) is None  # masked from a server
        assert read(masked(2, b"abc"), 0, True, 2) is None  # over the limit
        # 64-bit length with the most significant bit set: the general parser rejects it.
        assert read(b"\x82\xff" + struct.pack("!Q", 2**63) + KEY, 0, True, -1) is None

    @given(
        st.lists(
            st.tuples(st.sampled_from([0, 1, 2, 8, 9, 10]), st.binary(max_size=300), st.booleans()),
            max_size=4,
        ),
        st.integers(min_value=-1, max_value=300),
    )
    def test_agrees_with_the_general_parser(
        self, read: ReadFunction, frames: list[tuple[int, bytes, bool]], limit: int
    ) -> None:
        data = b"".join(masked(op, payload, fin=fin) for op, payload, fin in frames)
        parser = FrameParser(require_mask=True, max_frame_size=None if limit < 0 else limit)
        parser.feed(data)
        pos = 0
        while True:
            simple = read(data, pos, True, limit)
            try:
                frame = parser.next_frame()
            except Exception:
                assert simple is None
                return
            if frame is None:
                assert simple is None
                return
            if simple is not None:
                assert (frame.opcode, frame.payload, frame.fin) == (simple[0], simple[1], True)
                assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)
            pos = len(data) - parser.buffered


MessageFunction = Callable[..., "str | bytes | None"]


@pytest.mark.parametrize(
    "read", [pytest.param(read_message_python, id="python"), _param("read_message")]
)
class TestReadMessage:
    """read_message: the message when the bytes are exactly one whole data message."""

    def test_binary_and_text(self, read: MessageFunction) -> None:
        assert read(masked(2, b"\x00\xff" * 16), True, -1) == b"\x00\xff" * 16
        assert read(masked(1, "héllo €".encode()), True, -1) == "héllo €"
        assert read(masked(1, b""), True, -1) == ""
        assert read(serialize_frame(1, b"from the server"), False, 20) == "from the server"

    @pytest.mark.parametrize("size", [125, 126, 511, 512, 513, 65535, 65536, 70001])
    def test_every_length_encoding_and_both_text_buffers(
        self, read: MessageFunction, size: int
    ) -> None:
        text = "é" * (size // 2) + "a" * (size % 2)
        assert read(masked(1, text.encode()), True, -1) == text
        assert read(masked(2, text.encode()), True, size) == text.encode()

    def test_anything_but_exactly_one_message_is_left_to_the_parser(
        self, read: MessageFunction
    ) -> None:
        one = masked(2, b"abc")
        assert read(one + masked(2, b"d"), True, -1) is None  # two messages
        assert read(one[:-1], True, -1) is None  # incomplete
        assert read(one + b"\x82", True, -1) is None  # the start of another frame
        assert read(masked(9, b"ping"), True, -1) is None  # control
        assert read(masked(2, b"a", fin=False), True, -1) is None  # fragmented
        assert read(masked(2, b"a", rsv=4), True, -1) is None  # reserved bit
        assert read(serialize_frame(2, b"abc"), True, -1) is None  # unmasked from a client
        assert read(one, False, -1) is None  # masked from a server
        assert read(one, True, 2) is None  # over the limit
        assert read(one, True, 3) == b"abc"
        assert read(b"", True, -1) is None

    @pytest.mark.parametrize(
        "payload",
        [b"\xff", b"\xc3", b"\xed\xa0\x80", b"ok\xf4\x90\x80\x80", b"x" * 600 + b"\xc0\x80"],
    )
    def test_invalid_utf8_is_left_to_the_parser(
        self, read: MessageFunction, payload: bytes
    ) -> None:
        assert read(masked(1, payload), True, -1) is None
        assert read(serialize_frame(1, payload), False, -1) is None
        assert read(masked(2, payload), True, -1) == payload  # binary is not decoded

    @given(
        st.lists(
            st.tuples(st.sampled_from([0, 1, 2, 8, 9, 10]), st.binary(max_size=140), st.booleans()),
            min_size=1,
            max_size=2,
        ),
        st.integers(min_value=-1, max_value=150),
    )
    def test_agrees_with_the_connection(
        self, read: MessageFunction, frames: list[tuple[int, bytes, bool]], limit: int
    ) -> None:
        data = b"".join(masked(op, payload, fin=fin) for op, payload, fin in frames)
        message = read(data, True, limit)
        if message is None:
            return
        size = None if limit < 0 else limit
        conn = Connection(Side.SERVER, max_frame_size=size, max_message_size=size)
        conn.receive_data(data)
        event = TextMessage(message) if isinstance(message, str) else BinaryMessage(message)
        assert conn.events_received() == [event]


def test_c_argument_errors() -> None:
    read = _load_c("read_simple_frame")
    build = _load_c("build_frame")
    if read is None or build is None:  # pragma: no cover
        if os.environ.get("FULLDUPLEX_REQUIRE_SPEEDUPS") == "1":
            pytest.fail("FULLDUPLEX_REQUIRE_SPEEDUPS=1 but the C accelerator is not built")
        pytest.skip("C accelerator not built (no compiler at install time)")
    with pytest.raises(TypeError):
        read(b"", 0, True)
    with pytest.raises(TypeError):
        read(b"", "0", True, -1)
    with pytest.raises(TypeError):
        read(b"", 0, True, None)
    with pytest.raises(TypeError):
        read(object(), 0, True, -1)
    assert read(b"\x82\x80" + KEY, -1, True, -1) is None
    one = _load_c("read_message")
    assert one is not None
    with pytest.raises(TypeError):
        one(b"", True)
    with pytest.raises(TypeError):
        one(bytearray(b"\x82\x80" + KEY), True, -1)
    with pytest.raises(TypeError):
        one(b"", True, None)
    with pytest.raises(TypeError):
        build(0x82)
    with pytest.raises(TypeError):
        build("x", b"")
    with pytest.raises(TypeError):
        build(0x82, object())


BuildFunction = Callable[[int, Any], bytes]


@pytest.mark.parametrize(
    "build", [pytest.param(build_frame_python, id="python"), _param("build_frame")]
)
class TestBuildFrame:
    @pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
    def test_matches_serialize_frame(self, build: BuildFunction, size: int) -> None:
        payload = bytes(size % 251 for size in range(size))
        assert build(0x82, payload) == serialize_frame(2, payload)
        assert build(0x01, payload) == serialize_frame(1, payload, fin=False)
        assert build(0xC1, payload) == serialize_frame(1, payload, rsv1=True)

    def test_any_bytes_like_payload(self, build: BuildFunction) -> None:
        assert build(0x82, bytearray(b"ab")) == b"\x82\x02ab"
        view = memoryview(b"\x01\x00\x00\x00\x02\x00\x00\x00").cast("i")
        assert build(0x82, view) == b"\x82\x08" + view.tobytes()

    def test_first_byte_out_of_range(self, build: BuildFunction) -> None:
        for bad in (256, -1):
            with pytest.raises(ValueError):
                build(bad, b"")


class TestMessageHandler:
    def setup_method(self) -> None:
        self.conn = Connection(Side.SERVER)
        self.received: list[str | bytes] = []
        self.conn.message_handler = self.received.append

    def test_whole_messages_skip_the_events(self) -> None:
        self.conn.receive_data(masked(2, b"bin") + masked(9, b"p") + masked(1, b"txt"))
        assert self.received == [b"bin", "txt"]
        assert self.conn.events_received() == [Ping(b"p")]

    def test_fragmented_messages_too(self) -> None:
        self.conn.receive_data(masked(1, b"t", fin=False) + masked(0, b"ext"))
        self.conn.receive_data(masked(2, b"b", fin=False) + masked(0, b"in"))
        assert self.received == ["text", b"bin"]
        assert self.conn.events_received() == []

    def test_a_handler_that_fails_the_connection_stops_parsing(self) -> None:
        def fail(message: str | bytes) -> None:
            self.conn.fail(1008, "policy")

        self.conn.message_handler = fail
        self.conn.receive_data(masked(2, b"a") + masked(9, b"p") + masked(2, b"b"))
        assert self.conn.state is State.CLOSED
        assert self.conn.events_received() == []  # the ping after it was not parsed
        assert self.conn.data_to_send() == b"\x88\x08\x03\xf0policy"


class TestReceiveFastPath:
    def test_events_without_a_handler(self) -> None:
        conn = Connection(Side.SERVER)
        conn.receive_data(masked(2, b"bin") + masked(1, b"txt"))
        assert conn.events_received() == [BinaryMessage(b"bin"), TextMessage("txt")]

    def test_message_size_limit(self) -> None:
        conn = Connection(Side.SERVER, max_message_size=2, max_frame_size=10)
        conn.receive_data(masked(2, b"abc"))
        assert conn.failure is not None and conn.failure.code == 1009

    def test_invalid_utf8(self) -> None:
        conn = Connection(Side.SERVER)
        conn.receive_data(masked(1, b"\xff"))
        assert conn.failure is not None and conn.failure.code == 1007

    def test_one_byte_at_a_time_through_a_large_frame(self) -> None:
        conn = Connection(Side.SERVER)
        data = masked(2, b"z" * 70000) + masked(2, b"next")
        for i in range(0, len(data), 997):
            conn.receive_data(data[i : i + 997])
        assert conn.events_received() == [BinaryMessage(b"z" * 70000), BinaryMessage(b"next")]

    def test_one_message_reads_with_a_handler(self) -> None:
        conn = Connection(Side.SERVER)
        received: list[str | bytes] = []
        conn.message_handler = received.append
        frame = masked(1, "é".encode() * 3)
        conn.receive_data(frame[:3])  # a partial frame is buffered: the general path
        conn.receive_data(frame[3:])
        conn.receive_data(masked(2, b"one"))  # exactly one message: the one-call path
        conn.receive_data(bytearray(masked(2, b"two")))  # not bytes: the general path
        conn.receive_data(masked(9, b"p"))
        assert received == ["ééé", b"one", b"two"]
        assert conn.events_received() == [Ping(b"p")]

    @pytest.mark.parametrize(
        ("frame_limit", "message_limit"), [(None, 2), (2, None), (2, 100), (100, 2)]
    )
    def test_both_limits_with_a_handler(
        self, frame_limit: int | None, message_limit: int | None
    ) -> None:
        conn = Connection(Side.SERVER, max_frame_size=frame_limit, max_message_size=message_limit)
        received: list[str | bytes] = []
        conn.message_handler = received.append
        conn.receive_data(masked(2, b"ab"))
        conn.receive_data(masked(2, b"abc"))
        assert received == [b"ab"]
        assert conn.failure is not None and conn.failure.code == 1009

    def test_invalid_utf8_with_a_handler(self) -> None:
        conn = Connection(Side.SERVER)
        received: list[str | bytes] = []
        conn.message_handler = received.append
        conn.receive_data(masked(1, b"\xed\xa0\x80"))  # an encoded surrogate
        assert received == []
        assert conn.failure is not None and conn.failure.code == 1007

    @pytest.mark.parametrize("handler", [False, True])
    def test_data_after_sending_close_is_discarded(self, handler: bool) -> None:
        conn = Connection(Side.SERVER)
        received: list[str | bytes] = []
        if handler:
            conn.message_handler = received.append
        conn.send_close()
        conn.receive_data(masked(2, b"late"))
        assert conn.events_received() == []
        assert received == []


class TestSendFastPath:
    def test_server_frames(self) -> None:
        conn = Connection(Side.SERVER)
        conn.send_text("hé")
        conn.send_binary(bytearray(b"\x00\x01"))
        assert conn.data_to_send() == b"\x81\x03h\xc3\xa9\x82\x02\x00\x01"

    def test_large_payloads_are_queued_after_their_own_header(self) -> None:
        conn = Connection(Side.SERVER)
        big = b"b" * LARGE_PAYLOAD_SIZE
        text = "t" * LARGE_PAYLOAD_SIZE
        conn.send_binary(big)
        assert conn.pending_output[-1] is big  # not copied
        conn.send_text(text)
        conn.send_binary(bytearray(big))  # mutable: copied into one frame at once
        assert len(conn.pending_output) == 5
        expected = (
            serialize_frame(2, big) + serialize_frame(1, text.encode()) + serialize_frame(2, big)
        )
        assert conn.data_to_send() == expected

    def test_not_while_a_fragmented_message_is_open(self) -> None:
        conn = Connection(Side.SERVER)
        conn.send_fragment("a", final=False)
        with pytest.raises(Exception, match="fragmented"):
            conn.send_text("b")
        with pytest.raises(Exception, match="fragmented"):
            conn.send_binary(b"b")


class _Identity(Extension):
    name = "x-identity"

    def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
        return frame

    def encode(self, frame: Frame) -> Frame:
        return frame


class TestGeneralPathWithAnExtension:
    """With an extension the fast paths are off: the general path gives the same results."""

    def test_messages_and_handler(self) -> None:
        conn = Connection(Side.SERVER, extensions=[_Identity()])
        conn.receive_data(masked(2, b"bin") + masked(1, b"txt"))
        assert conn.events_received() == [BinaryMessage(b"bin"), TextMessage("txt")]
        received: list[str | bytes] = []
        conn.message_handler = received.append
        conn.receive_data(masked(1, b"t2"))
        assert received == ["t2"]

    def test_invalid_utf8(self) -> None:
        conn = Connection(Side.SERVER, extensions=[_Identity()])
        conn.receive_data(masked(1, b"\xc3"))
        assert conn.failure is not None and conn.failure.code == 1007


# -- large frames: assembled in a PayloadBuffer ---------------------------------------------------

from fullduplex.protocol.frames import (  # noqa: E402
    ASSEMBLE_MIN_SIZE,
    PayloadBufferPython,
    apply_mask,
)

BufferFactory = Callable[..., Any]


@pytest.mark.parametrize(
    "factory", [pytest.param(PayloadBufferPython, id="python"), _param("PayloadBuffer")]
)
class TestPayloadBuffer:
    @pytest.mark.parametrize("key", [None, KEY])
    def test_filled_in_pieces_at_every_key_phase(
        self, factory: BufferFactory, key: bytes | None
    ) -> None:
        payload = bytes(range(256)) * 40 + b"tail"
        wire = payload if key is None else apply_mask(payload, key)
        buffer = factory(len(payload), key)
        assert buffer.missing == len(payload)
        pos = 0
        for step in (1, 2, 3, 5, 7, 4096, 1, 6000):
            data = b"junk" + wire[pos : pos + step]
            taken = buffer.write(data, 4)
            assert taken == len(data) - 4
            pos += taken
        assert buffer.write(b"xx" + wire[pos:] + b"next frame", 2) == len(wire) - pos
        assert buffer.missing == 0
        assert buffer.take() == payload
        with pytest.raises(ValueError, match="taken"):
            buffer.take()
        with pytest.raises(ValueError, match="taken"):
            buffer.write(b"x", 0)

    def test_errors(self, factory: BufferFactory) -> None:
        with pytest.raises(ValueError, match="negative"):
            factory(-1, None)
        with pytest.raises(ValueError, match="4 bytes"):
            factory(10, b"abc")
        buffer = factory(10, None)
        with pytest.raises(ValueError, match="incomplete: 0 of 10"):
            buffer.take()
        for bad in (-1, 4):
            with pytest.raises(ValueError, match="pos"):
                buffer.write(b"abc", bad)
        assert buffer.write(bytearray(b"abc"), 3) == 0
        assert buffer.write(memoryview(b"0123456789ab"), 0) == 10
        assert buffer.take() == b"0123456789"
        empty = factory(0, KEY)
        assert empty.missing == 0 and empty.take() == b""


def test_c_payload_buffer_argument_errors() -> None:
    factory = _load_c("PayloadBuffer")
    assert factory is not None
    with pytest.raises(TypeError):
        factory(10)
    with pytest.raises(TypeError):
        factory(size=10, key=None)
    with pytest.raises(TypeError):
        factory(10, 1234)
    buffer = factory(4, None)
    with pytest.raises(TypeError):
        buffer.write(b"x")
    with pytest.raises(TypeError):
        buffer.write(b"x", "0")
    with pytest.raises(TypeError):
        buffer.write(object(), 0)


LARGE = ASSEMBLE_MIN_SIZE + 12345


class TestLargeFrames:
    """A large frame arriving in pieces is assembled; the frames come out as from one feed."""

    def stream(self) -> tuple[bytes, list[Frame]]:
        big = bytes(i % 251 for i in range(LARGE))
        frames = [
            Frame(2, b"small"),
            Frame(2, big),
            Frame(9, b"ping"),
            Frame(1, "é".encode() * (LARGE // 2), fin=False),
            Frame(0, b"!" * 10),
            Frame(2, big[::-1], rsv1=True),
            Frame(2, b"after"),
        ]
        data = b"".join(
            serialize_frame(f.opcode, f.payload, fin=f.fin, rsv1=f.rsv1, mask=True, mask_key=KEY)
            for f in frames
        )
        return data, frames

    @pytest.mark.parametrize("chunk", [1000, 16 * 1024 + 7, 65536, 200_000, 10**7])
    def test_any_chunking(self, chunk: int) -> None:
        data, frames = self.stream()
        parser = FrameParser(require_mask=True, rsv_mask=0x40)
        got: list[Frame] = []
        fed = 0
        for i in range(0, len(data), chunk):
            parser.feed(data[i : i + chunk])
            fed += len(data[i : i + chunk])
            while (frame := parser.next_frame()) is not None:
                got.append(frame)
            consumed = sum(len(serialize_frame(f.opcode, f.payload, mask=True)) for f in got)
            assert parser.buffered == fed - consumed
            assert parser.idle is (fed == consumed)
        assert got == frames

    def test_a_header_alone_allocates_nothing(self) -> None:
        parser = FrameParser(require_mask=True)
        frame = serialize_frame(2, b"z" * LARGE, mask=True, mask_key=KEY)
        parser.feed(frame[: 14 + 16 * 1024 - 1])
        assert parser.next_frame() is None
        assert parser._assembly is None  # still buffered the usual way
        parser.feed(frame[14 + 16 * 1024 - 1 : 14 + 16 * 1024])
        assert parser.next_frame() is None
        assert parser._assembly is not None
        assert parser.next_simple() is None  # never reads past the frame being assembled
        parser.feed(frame[14 + 16 * 1024 :] + masked(2, b"next"))
        assert parser.next_simple() is None
        assert parser.next_frame() == Frame(2, b"z" * LARGE)
        assert parser.next_simple() == (2, b"next", 10)

    def test_a_huge_declared_length_is_buffered_as_it_arrives(self) -> None:
        # No max_frame_size: the header claims 2**40 bytes. Nothing is allocated at that size;
        # the payload is buffered as it arrives, as before the assembly existed.
        parser = FrameParser(require_mask=True, max_frame_size=None)
        parser.feed(b"\x82\xff" + struct.pack("!Q", 2**40) + KEY)
        for _ in range(10):
            parser.feed(b"p" * 65536)
            assert parser.next_frame() is None
        assert parser._assembly is None
        assert parser.buffered == 14 + 10 * 65536
        # A frame of 1 MiB is assembled once 1/16 of it (64 KiB) is here.
        parser = FrameParser(require_mask=True, max_frame_size=None)
        frame = serialize_frame(2, b"m" * 2**20, mask=True, mask_key=KEY)
        parser.feed(frame[: 14 + 65535])
        assert parser.next_frame() is None and parser._assembly is None
        parser.feed(frame[14 + 65535 : 14 + 65536])
        assert parser.next_frame() is None and parser._assembly is not None
        parser.feed(frame[14 + 65536 :])
        assert parser.next_frame() == Frame(2, b"m" * 2**20)

    def test_through_a_connection_with_a_handler(self) -> None:
        # A read in the middle of a large payload that looks like a whole message is payload.
        looks_like_a_message = masked(2, b"x")
        wire = b"q" * 39_986 + looks_like_a_message + b"q" * (LARGE - 39_986 - 7)
        frame = b"\x82\xff" + struct.pack("!Q", LARGE) + KEY + wire
        conn = Connection(Side.SERVER, max_message_size=None, max_frame_size=None)
        received: list[str | bytes] = []
        conn.message_handler = received.append
        conn.receive_data(frame[:40_000])
        conn.receive_data(frame[40_000:40_007])
        assert frame[40_000:40_007] == looks_like_a_message
        assert received == []
        conn.receive_data(frame[40_007:] + masked(1, b"then"))
        assert received == [apply_mask(wire, KEY), "then"]


# -- gaps found by mutation testing (issue 15) ----------------------------------------------


def test_whole_message_path_waits_for_a_buffered_partial_frame() -> None:
    # A header announcing 6 bytes, then 6 bytes that happen to form a whole frame on their
    # own: they are the first frame's payload, not a message of their own.
    for side, inner in [
        (Side.CLIENT, serialize_frame(2, b"abcd")),
        (Side.SERVER, serialize_frame(2, b"", mask=True, mask_key=b"\0\0\0\0")),
    ]:
        received: list[str | bytes] = []
        conn = Connection(side)
        conn.message_handler = received.append
        key = b"\0\0\0\0" if side is Side.SERVER else b""
        conn.receive_data(bytes([0x82, len(inner) | (0x80 if key else 0)]) + key)
        conn.receive_data(inner)
        assert received == [inner]
        assert conn.failure is None


NON_MINIMAL = [
    b"\x82\x7e\x00\x05" + b"hello",  # 16-bit length for 5 bytes
    b"\x81\x7f" + struct.pack("!Q", 5) + b"hello",  # 64-bit length for 5 bytes
    b"\x82\x7f" + struct.pack("!Q", 200) + b"y" * 200,  # 64-bit length for 200 bytes
]


@pytest.mark.parametrize("data", NON_MINIMAL)
def test_c_and_python_agree_on_non_minimal_lengths(data: bytes) -> None:
    # RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the length". Neither
    # fast path takes such a frame, with the frame ending exactly at the end of the buffer and
    # not: the general parser fails it (1002, test_frames).
    read_c, message_c = _load_c("read_simple_frame"), _load_c("read_message")
    if read_c is None or message_c is None:  # pragma: no cover
        pytest.skip("C accelerator not built")
    for buf in (data, data[:-1], data + b"\x82"):
        for limit in (-1, 4, 5, 200):
            assert read_c(buf, 0, False, limit) is None
            assert read_simple_frame_python(buf, 0, False, limit) is None
            assert message_c(buf, False, limit) == read_message_python(buf, False, limit)
            assert read_message_python(buf, False, limit) is None


def _close_outcome(side: Side, data: bytes, handler: bool, max_frame_size: int | None) -> Any:
    conn = Connection(side, max_frame_size=max_frame_size)
    if handler:
        conn.message_handler = lambda message: None
    conn.receive_data(data)
    failure = None if conn.failure is None else (type(conn.failure), conn.failure.code)
    sent = FrameParser(require_mask=side is Side.CLIENT)  # a client masks with a random key
    sent.feed(conn.data_to_send())
    return (
        conn.state,
        conn.close_received,
        conn.close_sent,
        failure,
        conn.transport_should_close,
        conn.close_timer_wanted,
        conn.events_received(),
        sent.next_frame(),
        sent.next_frame(),
    )


CLOSE_PAYLOADS = [
    b"",
    struct.pack("!H", 1000),
    struct.pack("!H", 1001) + b"bye",
    struct.pack("!H", 4999) + "é".encode(),
    struct.pack("!H", 1000) + b"r" * 123,  # 125 bytes: the largest control payload
    struct.pack("!H", 1000) + b"r" * 124,  # 126: too large for a control frame
    b"\x03",  # one byte: no code
    struct.pack("!H", 1005),  # a code never sent on the wire
    struct.pack("!H", 999),
    struct.pack("!H", 1000) + b"\xff\xfe",  # invalid UTF-8 reason
]


@pytest.mark.parametrize("max_frame_size", [None, 5])
@pytest.mark.parametrize("payload", CLOSE_PAYLOADS)
@pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
def test_a_read_that_is_one_close_frame_ends_as_the_general_path(
    side: Side, payload: bytes, max_frame_size: int | None
) -> None:
    # With a message handler, a read holding exactly one close frame skips the parser; it
    # must end exactly as the general path does (no handler), for every frame it may see:
    # masked as the side expects or not, a fragment bit or an RSV bit, extra bytes after it.
    right = serialize_frame(8, payload, mask=side is Side.SERVER, mask_key=KEY)
    wrong = serialize_frame(8, payload, mask=side is Side.CLIENT, mask_key=KEY)
    reads = [right, wrong, right + masked(2, b"x"), right[:-1], right[:1]]
    reads += [bytes([right[0] & 0x7F]) + right[1:], bytes([right[0] | 0x40]) + right[1:]]
    # Non-minimal 16- and 64-bit lengths whose 7-bit code (126, 127) plus the header would
    # match the read's size if it were taken for the length.
    mask = side is Side.SERVER
    for code, extended in [(126, struct.pack("!H", 124)), (127, struct.pack("!Q", 119))]:
        close = struct.pack("!H", 1000) + b"r" * (int.from_bytes(extended, "big") - 2)
        head = bytes([0x88, code | (0x80 if mask else 0)]) + extended
        reads.append(head + (KEY + apply_mask(close, KEY) if mask else close))
    for data in reads:
        fast = _close_outcome(side, data, True, max_frame_size)
        assert fast == _close_outcome(side, data, False, max_frame_size), data
