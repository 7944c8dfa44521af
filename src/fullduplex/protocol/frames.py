"""WebSocket frames (RFC 6455 section 5): opcodes, close codes, masking, parsing and serializing.

The parser is incremental: :meth:`FrameParser.feed` takes bytes in chunks of any size and
:meth:`FrameParser.next_frame` returns each complete frame, so feeding one byte at a time yields
exactly the frames that feeding everything at once does. It never blocks and never reads a clock.
"""

from __future__ import annotations

import enum
import secrets
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .exceptions import LocalProtocolError, PayloadTooBig, ProtocolError
from .mask import apply_mask, load_speedups

__all__ = [
    "CONTROL_OPCODES",
    "DATA_OPCODES",
    "FIN",
    "LENGTH_16",
    "LENGTH_64",
    "LENGTH_MASK",
    "MASK_BIT",
    "OPCODE_MASK",
    "RSV1",
    "RSV2",
    "RSV3",
    "RSV_BITS",
    "CloseCode",
    "Frame",
    "FrameParser",
    "Opcode",
    "PayloadBuffer",
    "PayloadBufferPython",
    "apply_mask",
    "build_frame",
    "build_frame_python",
    "frame_header",
    "is_valid_close_code",
    "parse_close",
    "prepare_frame",
    "read_message",
    "read_message_python",
    "read_simple_frame",
    "read_simple_frame_python",
    "serialize_close",
    "serialize_frame",
]


# The header bits (RFC 6455 5.2), named once. First byte: FIN, RSV1-3, the opcode.
#: FIN: the final fragment of a message.
FIN = 0x80
#: RSV1 (permessage-deflate's "Per-Message Compressed" bit, RFC 7692 6).
RSV1 = 0x40
#: RSV2.
RSV2 = 0x20
#: RSV3.
RSV3 = 0x10
#: The three RSV bits.
RSV_BITS = RSV1 | RSV2 | RSV3
#: The opcode's four bits.
OPCODE_MASK = 0x0F
# Second byte: MASK and the 7-bit payload length, or one of the two extended-length markers.
#: MASK: a masking key follows the length.
MASK_BIT = 0x80
#: The 7-bit payload length.
LENGTH_MASK = 0x7F
#: 7-bit length value announcing a 16-bit length.
LENGTH_16 = 126
#: 7-bit length value announcing a 64-bit length.
LENGTH_64 = 127
# The smallest payload length a 64-bit length may carry (RFC 6455 5.2: minimal encoding).
_MIN_LENGTH_64 = 2**16


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 5.2); 3-7 and 0xB-0xF are reserved."""

    CONT = 0x0  #: continuation of a fragmented message
    TEXT = 0x1  #: first frame of a text message
    BINARY = 0x2  #: first frame of a binary message
    CLOSE = 0x8  #: close control frame
    PING = 0x9  #: ping control frame
    PONG = 0xA  #: pong control frame


#: Opcodes of data frames.
DATA_OPCODES = frozenset({Opcode.CONT, Opcode.TEXT, Opcode.BINARY})
#: Opcodes of control frames.
CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
_KNOWN_OPCODES = frozenset(int(op) for op in Opcode)


class CloseCode(enum.IntEnum):
    """Close status codes registered with IANA (RFC 6455 7.4.1 and the WebSocket registry)."""

    NORMAL_CLOSURE = 1000  #: the purpose of the connection was fulfilled
    GOING_AWAY = 1001  #: server shutting down or browser navigating away
    PROTOCOL_ERROR = 1002  #: the peer violated the protocol
    UNSUPPORTED_DATA = 1003  #: a data type the endpoint cannot accept (e.g. binary)
    NO_STATUS_RCVD = 1005  #: reserved: a close frame without a code (never on the wire)
    ABNORMAL_CLOSURE = 1006  #: reserved: closed without a close frame (never on the wire)
    INVALID_DATA = 1007  #: data inconsistent with the message type (e.g. invalid UTF-8)
    POLICY_VIOLATION = 1008  #: a message that violates the endpoint's policy
    MESSAGE_TOO_BIG = 1009  #: a message too big to process
    MANDATORY_EXTENSION = 1010  #: the client expected an extension the server did not accept
    INTERNAL_ERROR = 1011  #: the server met an unexpected condition
    SERVICE_RESTART = 1012  #: the service is restarting
    TRY_AGAIN_LATER = 1013  #: temporary overload; try again later
    BAD_GATEWAY = 1014  #: a gateway received an invalid response upstream
    TLS_HANDSHAKE = 1015  #: reserved: TLS handshake failure (never on the wire)


def is_valid_close_code(code: int) -> bool:
    """Tell whether ``code`` may appear in a close frame on the wire.

    RFC 6455 7.4: 1000-1003 and 1007-1014 are defined for use; 3000-3999 are registered for
    libraries and frameworks, 4000-4999 are private. 1004, 1005, 1006 and 1015 are reserved,
    other codes below 3000 are unassigned, and codes below 1000 or from 5000 up are invalid.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


@dataclass(slots=True)
class Frame:
    """One WebSocket frame, unmasked.

    Attributes:
        opcode: the frame's opcode (an :class:`Opcode` value).
        payload: the application data (after unmasking).
        fin: whether this is the final frame of a message.
        rsv1: the RSV1 bit (permessage-deflate marks compressed messages with it).
        rsv2: the RSV2 bit.
        rsv3: the RSV3 bit.
    """

    opcode: int
    payload: bytes
    fin: bool = True
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False


# First bytes of whole unfragmented data frames without RSV bits.
_FIN_TEXT = FIN | 0x1
_FIN_BINARY = FIN | 0x2

_pack_h = struct.Struct("!BBH").pack
_pack_q = struct.Struct("!BBQ").pack
_unpack_h = struct.Struct("!H").unpack_from
_unpack_q = struct.Struct("!Q").unpack_from


class _MaskKeys:
    """Masking keys drawn from ``secrets`` 4 KiB at a time.

    RFC 6455 5.3 wants each key "derived from a strong source of entropy"; one getrandom() call per
    frame costs a system call per message, so keys are taken from a pooled buffer of the same
    strong source.
    """

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        pos = self._pos
        if pos >= len(self._pool):
            self._pool = secrets.token_bytes(4096)
            pos = 0
        self._pos = pos + 4
        return self._pool[pos : pos + 4]


_mask_keys = _MaskKeys()


def serialize_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bool = False,
    mask_key: bytes | None = None,
) -> bytes:
    """Serialize a frame with the minimal length encoding (RFC 6455 5.2).

    Args:
        opcode: the frame's opcode.
        payload: the unmasked payload.
        fin: the FIN bit.
        rsv1: the RSV1 bit.
        rsv2: the RSV2 bit.
        rsv3: the RSV3 bit.
        mask: mask the payload (clients must, servers must not: RFC 6455 5.1).
        mask_key: the 4-byte masking key; a fresh random key when None.

    Returns:
        The frame as bytes.
    """
    b0 = (FIN if fin else 0) | (RSV1 if rsv1 else 0) | (RSV2 if rsv2 else 0)
    b0 |= (RSV3 if rsv3 else 0) | opcode
    n = len(payload)
    bit = MASK_BIT if mask else 0
    if n < LENGTH_16:
        head = bytes((b0, bit | n))
    elif n < 65536:
        head = _pack_h(b0, bit | LENGTH_16, n)
    else:
        head = _pack_q(b0, bit | LENGTH_64, n)
    if not mask:
        return head + payload
    if mask_key is None:
        mask_key = _mask_keys.next()
    elif len(mask_key) != 4:
        raise LocalProtocolError("mask_key must be 4 bytes")
    return head + mask_key + apply_mask(payload, mask_key)


def read_simple_frame_python(
    buf: bytes | bytearray, pos: int, require_mask: bool, max_size: int
) -> tuple[int, bytes, int] | None:
    """Parse the frame at ``buf[pos]`` if it is a whole data message; pure Python.

    The receive fast path (:meth:`FrameParser.next_simple`): a complete text or binary frame
    with FIN set, no RSV bit, masked exactly when ``require_mask``, of at most ``max_size``
    bytes (negative: no limit).

    Returns:
        ``(opcode, payload, end)``, the payload unmasked and ``end`` the position after the
        frame; None for anything else (incomplete, control, continuation, fragmented, reserved
        bits, masking or size violations), which the general parser then handles. It never
        raises for peer data: it can only accept less than :meth:`FrameParser.next_frame`.
    """
    if len(buf) - pos < 2:
        return None
    b0 = buf[pos]
    b1 = buf[pos + 1]
    if (b0 != _FIN_TEXT and b0 != _FIN_BINARY) or (b1 > LENGTH_MASK) is not require_mask:
        return None
    length = b1 & LENGTH_MASK
    head = 2
    if length == LENGTH_16:
        if len(buf) - pos < 4:
            return None
        (length,) = _unpack_h(buf, pos + 2)
        if length < LENGTH_16:
            return None  # not minimal: next_frame reports it
        head = 4
    elif length == LENGTH_64:
        if len(buf) - pos < 10:
            return None
        (length,) = _unpack_q(buf, pos + 2)
        if length < _MIN_LENGTH_64:
            return None
        head = 10
    if 0 <= max_size < length:
        return None
    if require_mask:
        head += 4
    start = pos + head
    end = start + length
    if end > len(buf):
        return None
    if require_mask:
        data = buf[start:end] if length < 4096 else memoryview(buf)[start:end]
        return b0 & OPCODE_MASK, apply_mask(data, buf[start - 4 : start]), end
    return b0 & OPCODE_MASK, bytes(buf[start:end]), end


def read_message_python(data: bytes, require_mask: bool, max_size: int) -> str | bytes | None:
    """Return the message if ``data`` is exactly one whole data message; pure Python.

    The receive fast path of :meth:`~fullduplex.protocol.Connection.receive_data` for the
    commonest read: :func:`read_simple_frame_python` at position 0, accepted only when the
    frame ends where ``data`` ends, with text decoded (strict UTF-8).

    Returns:
        ``str`` for text, ``bytes`` for binary; None for anything else, invalid UTF-8
        included, which the general parser then handles (and reports).
    """
    frame = read_simple_frame_python(data, 0, require_mask, max_size)
    if frame is None or frame[2] != len(data):
        return None
    if frame[0] == 0x2:
        return frame[1]
    try:
        return frame[1].decode()
    except UnicodeDecodeError:
        return None


def frame_header(first_byte: int, length: int) -> bytes:
    """Return the header of an unmasked frame whose payload is ``length`` bytes.

    ``first_byte`` holds FIN, the RSV bits and the opcode; the length is in its minimal
    encoding (RFC 6455 5.2). The payload goes after it.
    """
    if length < LENGTH_16:
        return bytes((first_byte, length))
    if length < 65536:
        return _pack_h(first_byte, LENGTH_16, length)
    return _pack_q(first_byte, LENGTH_64, length)


def build_frame_python(first_byte: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Return an unmasked frame: ``first_byte`` (FIN, RSV, opcode), length, payload; pure Python.

    The server's send fast path: :func:`serialize_frame` without the keyword arguments and the
    masking branches. ``payload`` is any bytes-like object.
    """
    if type(payload) is not bytes:
        payload = bytes(payload)  # a memoryview's len() counts items, not bytes
    return frame_header(first_byte, len(payload)) + payload


class PayloadBufferPython:
    """The payload of one large frame, filled as its bytes arrive; pure Python.

    ``key`` is the 4-byte masking key, or None for an unmasked frame. :meth:`write` copies
    what fits from ``data[pos:]``; :meth:`take` returns the payload, unmasked, once
    :attr:`missing` is 0. :class:`FrameParser` assembles large frames in one of these (the C
    accelerator's when built, which also unmasks as it copies) instead of growing its buffer.
    """

    __slots__ = ("_data", "_key", "_size", "_taken")

    def __init__(self, size: int, key: bytes | None, /) -> None:
        if size < 0:
            raise ValueError("size must not be negative")
        if key is not None and len(key) != 4:
            raise ValueError("masking key must be 4 bytes")
        # Grown as bytes arrive, not allocated (and zeroed) at ``size`` up front: memory
        # follows what the peer sent, as with the C version's untouched pages.
        self._data = bytearray()
        self._size = size
        self._key = key
        self._taken = False

    @property
    def missing(self) -> int:
        """Bytes still to write."""
        return self._size - len(self._data)

    def write(self, data: bytes | bytearray | memoryview, pos: int, /) -> int:
        """Copy what fits from ``data[pos:]``; return the number of bytes taken."""
        if self._taken:
            raise ValueError("the payload was taken already")
        if not 0 <= pos <= len(data):
            raise ValueError("pos out of range")
        n = min(len(data) - pos, self.missing)
        self._data += memoryview(data)[pos : pos + n]
        return n

    def take(self) -> bytes:
        """Return the complete payload (once)."""
        if self._taken:
            raise ValueError("the payload was taken already")
        if self.missing:
            raise ValueError(f"the payload is incomplete: {len(self._data)} of {self._size} bytes")
        self._taken = True
        data, self._data = self._data, bytearray()
        return bytes(data) if self._key is None else apply_mask(data, self._key)


_speedups = load_speedups()
#: ``read_simple_frame(buf, pos, require_mask, max_size)``: the C accelerator's when built (one
#: C call per 32-byte message; see :meth:`FrameParser.next_simple`), else
#: :func:`read_simple_frame_python`.
read_simple_frame: Callable[[bytes | bytearray, int, bool, int], tuple[int, bytes, int] | None] = (
    read_simple_frame_python if _speedups is None else _speedups.read_simple_frame
)
#: ``read_message(data, require_mask, max_size)``: the C accelerator's when built, else
#: :func:`read_message_python`.
read_message: Callable[[bytes, bool, int], str | bytes | None] = (
    read_message_python if _speedups is None else _speedups.read_message
)
#: ``PayloadBuffer(size, key)``: the C accelerator's when built, else :class:`PayloadBufferPython`.
PayloadBuffer: Callable[[int, bytes | None], PayloadBufferPython] = (
    PayloadBufferPython if _speedups is None else _speedups.PayloadBuffer
)
#: ``build_frame(first_byte, payload)``: the C accelerator's when built, else
#: :func:`build_frame_python`.
build_frame: Callable[[int, bytes | bytearray | memoryview], bytes] = (
    build_frame_python if _speedups is None else _speedups.build_frame
)


def prepare_frame(message: str | bytes) -> bytes:
    """The frame a plain server connection sends for ``message``, to be sent to many.

    One unmasked frame with FIN: TEXT with the UTF-8 of a ``str``, BINARY for bytes. Every
    connection whose :attr:`~fullduplex.protocol.Connection.takes_prepared` is True sends these
    exact bytes for this message (RFC 6455 5.1: servers do not mask), so a broadcaster builds it
    once and hands it to each with :meth:`~fullduplex.protocol.Connection.send_prepared`.
    """
    if isinstance(message, str):
        return build_frame(_FIN_TEXT, message.encode())
    return build_frame(_FIN_BINARY, message)


# A global, not CloseCode.NO_STATUS_RCVD: an enum attribute read is a slot wrapper call on
# Python 3.11 (fullduplex.protocol.connection has the figure).
_NO_STATUS_RCVD = CloseCode.NO_STATUS_RCVD


def parse_close(payload: bytes) -> tuple[int, str]:
    """Parse the payload of a close frame (RFC 6455 5.5.1).

    Returns:
        ``(code, reason)``; ``(1005, "")`` for an empty payload.

    Raises:
        ProtocolError: a 1-byte payload or a code that must not be on the wire (1002), or a
            reason that is not UTF-8 (1007).
    """
    n = len(payload)
    if n == 0:
        return _NO_STATUS_RCVD, ""
    if n == 1:
        raise ProtocolError("close frame with a 1-byte payload")
    (code,) = _unpack_h(payload)
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not UTF-8", 1007) from None
    return code, reason


def serialize_close(code: int, reason: str = "") -> bytes:
    """Serialize a close frame payload.

    Args:
        code: a close code valid on the wire, or 1005 for an empty payload.
        reason: a reason of at most 123 bytes in UTF-8.

    Raises:
        LocalProtocolError: the code may not be sent or the reason is too long.
    """
    if code == _NO_STATUS_RCVD and not reason:
        return b""
    if not is_valid_close_code(code):
        raise LocalProtocolError(f"close code {code} may not be sent")
    data = code.to_bytes(2, "big") + reason.encode()
    if len(data) > 125:
        raise LocalProtocolError("close reason longer than 123 bytes")
    return data


#: Frames with a payload of at least this many bytes are assembled in a :data:`PayloadBuffer`
#: (one allocation at the final size, unmasked as the bytes arrive) rather than in the
#: parser's buffer. With :data:`~fullduplex.protocol.connection.LARGE_PAYLOAD_SIZE`: 1 MiB
#: echo at 1,924 MB/s, no page fault per message (``bench/run.py``; docs/performance.md).
ASSEMBLE_MIN_SIZE = 64 * 1024
# ... once this much of the payload has arrived: a peer that sends only a header claiming a
# large frame makes the parser allocate nothing.
_ASSEMBLE_AFTER = 16 * 1024
# ... and at least 1/_ASSEMBLE_RATIO of it (the buffer is allocated at the declared size).
_ASSEMBLE_RATIO = 16
# FrameParser._need while a frame is assembled: more than can ever be buffered.
_ASSEMBLING = sys.maxsize


def _frame(b0: int, payload: bytes) -> Frame:
    if not b0 & RSV_BITS:
        return Frame(b0 & OPCODE_MASK, payload, b0 >= FIN)
    return Frame(
        b0 & OPCODE_MASK, payload, bool(b0 & FIN), bool(b0 & RSV1), bool(b0 & RSV2), bool(b0 & RSV3)
    )


class _LargeFrame:
    """A large frame whose payload is being assembled (see :data:`ASSEMBLE_MIN_SIZE`)."""

    __slots__ = ("first_byte", "head", "payload", "size")

    def __init__(self, first_byte: int, payload: PayloadBufferPython, head: int, size: int) -> None:
        self.first_byte = first_byte  # FIN, RSV bits, opcode
        self.payload = payload  # filled as the bytes arrive, unmasked
        self.head = head  # header size, masking key included
        self.size = size  # payload size


class FrameParser:
    """Incremental frame parser.

    Args:
        require_mask: True on the server (client frames must be masked), False on the client
            (server frames must not be masked). RFC 6455 5.1: a violation fails with 1002.
        max_frame_size: largest payload accepted in one frame, None for no limit; checked as
            soon as the header arrives, before the payload is buffered (1009).
        rsv_mask: RSV bits (:data:`RSV1`, :data:`RSV2`, :data:`RSV3`) claimed by negotiated
            extensions; any other RSV bit fails with 1002 (RFC 6455 5.2).
    """

    __slots__ = (
        "_assembly",
        "_buf",
        "_limit",
        "_need",
        "_pos",
        "max_frame_size",
        "require_mask",
        "rsv_mask",
    )

    def __init__(
        self,
        *,
        require_mask: bool,
        max_frame_size: int | None = None,
        rsv_mask: int = 0,
    ) -> None:
        self.require_mask = require_mask
        self.max_frame_size = max_frame_size
        self.rsv_mask = rsv_mask
        # max_frame_size for read_simple_frame, where -1 means no limit.
        self._limit = -1 if max_frame_size is None else max_frame_size
        self._buf: bytes | bytearray = b""
        self._pos = 0
        # Bytes that must be buffered before the next frame can complete; lets a large frame
        # arriving in many chunks be appended without reparsing its header each time.
        self._need = 2
        # A large frame whose payload is being assembled. While it is, _buf holds what follows
        # the frame (nothing until the payload is complete) and _need is _ASSEMBLING, so that
        # next_simple never reads past it.
        self._assembly: _LargeFrame | None = None

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet parsed into a frame."""
        buffered = len(self._buf) - self._pos
        assembly = self._assembly
        if assembly is not None:
            buffered += assembly.head + assembly.size - assembly.payload.missing
        return buffered

    @property
    def idle(self) -> bool:
        """True when nothing is buffered: the next byte fed starts a frame."""
        return self._pos >= len(self._buf) and self._assembly is None

    def feed(self, data: bytes) -> None:
        """Add received bytes (copied first if they are a mutable buffer)."""
        assembly = self._assembly
        if assembly is not None and assembly.payload.missing:
            # A large frame's payload goes straight into its buffer, unmasked on the way.
            used = assembly.payload.write(data, 0)
            if used == len(data):
                return
            data = data[used:]  # the frames after it
        if type(data) is not bytes:
            data = bytes(data)  # the parser may keep a reference: never to a reused buffer
        buf = self._buf
        if self._pos >= len(buf):
            # Nothing pending: parse straight from the caller's bytes, no copy.
            self._buf = data
            self._pos = 0
        elif isinstance(buf, bytearray):
            buf += data
        else:
            self._buf = bytearray(memoryview(buf)[self._pos :])
            self._buf += data
            self._pos = 0

    def next_simple(self) -> tuple[int, bytes, int] | None:
        """Return the next frame if it is a whole data message, else None.

        The fast path for the commonest frame: a complete text or binary frame with FIN set
        and no RSV bit, masked as required and within ``max_frame_size``, as ``(opcode,
        payload, end)`` (no :class:`Frame` object). On None, nothing was consumed: call
        :meth:`next_frame`, which handles (or rejects) everything else. With the send fast
        path: 7.8 us of server CPU per 32 B echo, listener API (``bench/run.py``; the history
        is in docs/performance.md).
        """
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < self._need:
            return None
        frame = read_simple_frame(buf, pos, self.require_mask, self._limit)
        if frame is not None:
            self._pos = frame[2]
            self._need = 2  # a large frame next_frame was waiting for may complete here
        return frame

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed.

        Raises:
            ProtocolError: the bytes violate RFC 6455 framing.
            PayloadTooBig: the frame is larger than ``max_frame_size``.
        """
        assembly = self._assembly
        if assembly is not None:
            if assembly.payload.missing:
                return None
            self._assembly = None
            self._need = 2
            return _frame(assembly.first_byte, assembly.payload.take())
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < self._need:
            self._compact()
            return None
        b0 = buf[pos]
        b1 = buf[pos + 1]
        opcode = b0 & OPCODE_MASK
        length = b1 & LENGTH_MASK
        masked = b1 & MASK_BIT
        head = 2
        if length == LENGTH_16:
            head = 4
            if avail < 4:
                self._wait(4)
                return None
            (length,) = _unpack_h(buf, pos + 2)
            # RFC 6455 5.2: "In all cases, the minimal number of bytes MUST be used to encode
            # the length". A peer that pads it may be probing for a parser that disagrees.
            if length < LENGTH_16:
                raise ProtocolError("16-bit payload length for fewer than 126 bytes")
        elif length == LENGTH_64:
            head = 10
            if avail < 10:
                self._wait(10)
                return None
            (length,) = _unpack_q(buf, pos + 2)
            if length >> 63:
                raise ProtocolError("64-bit payload length with the most significant bit set")
            if length < _MIN_LENGTH_64:
                raise ProtocolError("64-bit payload length for fewer than 65536 bytes")
        limit = self.max_frame_size
        # Common case tested inline, the rest in _check_header: a data frame without RSV bits,
        # masked as expected, within the limit. Saves a call per frame (32 B parse: 1.63M ->
        # 1.82M frames/s, bench/frames_bench.py).
        if (
            opcode > 2
            or b0 & RSV_BITS
            or (masked != 0) is not self.require_mask
            or (limit is not None and length > limit)
        ):
            self._check_header(b0, opcode, length, masked)
        if masked:
            head += 4
        total = head + length
        if avail < total:
            if length < ASSEMBLE_MIN_SIZE:
                self._wait(total)
                return None
            # Assembled once enough of it is here: at least _ASSEMBLE_AFTER bytes, and a
            # 1/_ASSEMBLE_RATIO share, so that the buffer allocated at the declared size is
            # never more than _ASSEMBLE_RATIO times what the peer sent (a header claiming 2**62
            # bytes with no max_frame_size is buffered as it arrives, as any frame used to be).
            arrived = avail - head
            start_at = max(_ASSEMBLE_AFTER, -(-length // _ASSEMBLE_RATIO))
            if arrived >= start_at:
                self._assemble(b0, buf, pos + head, length, head, masked)
            else:
                self._wait(min(total, head + start_at))  # then parse the header again
            return None
        start = pos + head
        end = start + length
        if masked:
            # One copy, made by the unmasking itself; large payloads are read through a
            # memoryview instead of being sliced first (1 MiB parse: 10.5k -> 19k frames/s).
            data = buf[start:end] if length < 4096 else memoryview(buf)[start:end]
            payload = apply_mask(data, buf[start - 4 : start])
        elif type(buf) is bytes:
            payload = buf[start:end]
        else:
            payload = bytes(memoryview(buf)[start:end])
        self._pos = pos + total
        self._need = 2
        return _frame(b0, payload)

    def _assemble(
        self, b0: int, buf: bytes | bytearray, start: int, length: int, head: int, masked: int
    ) -> None:
        # Everything buffered from ``start`` on belongs to this frame (it is incomplete).
        key = bytes(buf[start - 4 : start]) if masked else None
        payload = PayloadBuffer(length, key)
        payload.write(buf, start)
        self._assembly = _LargeFrame(b0, payload, head, length)
        self._buf = b""
        self._pos = 0
        self._need = _ASSEMBLING

    def _wait(self, need: int) -> None:
        self._need = need
        self._compact()

    def _compact(self) -> None:
        # Drop consumed bytes so a partial frame never pins what came before it.
        pos = self._pos
        if pos:
            buf = self._buf
            if pos >= len(buf):
                # All consumed (every read of whole frames ends here): no empty bytearray and
                # memoryview to make (32 B listener echo: 8.3 -> 7.6 us, bench/run.py).
                self._buf = b""
            elif isinstance(buf, bytearray):
                del buf[:pos]
            else:
                self._buf = bytearray(memoryview(buf)[pos:])
            self._pos = 0

    def _check_header(self, b0: int, opcode: int, length: int, masked: int) -> None:
        if opcode not in _KNOWN_OPCODES:
            raise ProtocolError(f"reserved opcode {opcode:#x}")
        if b0 & RSV_BITS & ~self.rsv_mask:
            raise ProtocolError("reserved bit set without a negotiated extension")
        if bool(masked) != self.require_mask:
            if masked:
                raise ProtocolError("masked frame from the server")
            raise ProtocolError("unmasked frame from the client")
        if opcode >= 8:
            # RFC 6455 5.5: "All control frames MUST have a payload length of 125 bytes or
            # less and MUST NOT be fragmented."
            if length > 125:
                raise ProtocolError("control frame payload longer than 125 bytes")
            if not b0 & FIN:
                raise ProtocolError("fragmented control frame")
        elif self.max_frame_size is not None and length > self.max_frame_size:
            raise PayloadTooBig(f"frame of {length} bytes exceeds limit of {self.max_frame_size}")
