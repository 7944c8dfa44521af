"""RFC 7692 permessage-deflate: compression of WebSocket messages with DEFLATE (zlib).

Three pieces:

- :class:`PerMessageDeflate`, the :class:`~fullduplex.protocol.extensions.Extension` that
  compresses sent messages and decompresses received ones for one connection, built from the
  parameters both sides agreed on;
- :class:`ServerPerMessageDeflateFactory` and :class:`ClientPerMessageDeflateFactory`, which
  negotiate those parameters in the opening handshake (RFC 7692 7.1);
- :func:`enable_server_permessage_deflate` and :func:`enable_client_permessage_deflate`, which
  add a factory with the defaults below to a list of factories.

Memory per connection
---------------------

zlib keeps a compressor (deflate) and a decompressor (inflate) per connection. Measured with
``tracemalloc`` (CPython 3.11, zlib 1.2.13) after a 64 KiB message, they hold:

- deflate: ``2**(window_bits + 2) + 2**(mem_level + 9)`` bytes plus 6 KiB of state;
- inflate: ``2**window_bits`` bytes plus 7.2 KiB of state.

=====================================  =========  ========  ==========
window bits, mem_level                 deflate    inflate   connection
=====================================  =========  ========  ==========
15, 8 (zlib defaults)                  262 KiB    39 KiB    301 KiB
15, 5                                  150 KiB    39 KiB    189 KiB
13, 5                                  54 KiB     15 KiB    69 KiB
12, 5 (server defaults here)           38 KiB     11 KiB    49 KiB
11, 5                                  30 KiB     9 KiB     39 KiB
9, 1                                   9 KiB      8 KiB     17 KiB
=====================================  =========  ========  ==========

Without context takeover a direction holds nothing between messages: its zlib object is
dropped after each message and built again for the next one.
:meth:`PerMessageDeflate.memory_estimate` gives the figure for one negotiated connection.

Defaults and why
----------------

The server asks for 12-bit windows both ways (``server_max_window_bits=12``,
``client_max_window_bits=12`` when the client supports it) with ``mem_level=5``, as websockets
does: 49 KiB a connection instead of 301 KiB with zlib's defaults, so 10,000 connections need
0.5 GB instead of 3 GB. On 5,000 JSON messages of 170 bytes on average, with context takeover,
the output grows from 20.3% of the input (15 bits, mem_level 8) to 22.6% (12 bits, mem_level 5),
and compressing is faster (4.5 us instead of 10.7 us a message). ``compress_level=6`` is zlib's
default: level 1 saved 20% of the CPU time but made the output 31% larger on the same messages.
``compress_threshold=64``: whole messages shorter than 64 bytes are sent uncompressed; below 32
bytes, deflate output was as long as its input or longer without context takeover, and at these
sizes the frame and TCP/TLS overhead dwarfs what compression could save (Node's ``ws`` uses
1024 bytes, which gives up most of the gain on typical 100-200 byte real-time messages).

Windows of 8 bits
-----------------

zlib cannot *compress* raw DEFLATE with a 256-byte window: since 1.2.9 ``deflateInit2`` rejects
``windowBits=-8`` (Python's ``zlib.compressobj`` raises ``ValueError``), and before that it
silently used 9 bits, producing streams a peer that negotiated 8 may reject ("invalid distance
too far back"). It can *decompress* them. So:

- when the window negotiated for *our* compressor is 8 bits, we accept the negotiation but send
  every message uncompressed (RSV1 clear), which RFC 7692 allows for any message; we still
  decompress what the peer sends. Declining would also give up the peer's compression, and a
  client cannot decline an answer at all without failing the handshake.
- when the *peer's* window is 8 bits, we decompress with a 9-bit window: a 9-bit decoder reads
  8-bit streams, and it also reads the 9-bit streams of peers built on zlib before 1.2.9.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from .exceptions import NegotiationError, PayloadTooBig, ProtocolError
from .extensions import (
    ClientExtensionFactory,
    Extension,
    ExtensionParameter,
    ServerExtensionFactory,
)
from .frames import RSV1, Frame, Opcode

__all__ = [
    "DEFAULT_CLIENT_MAX_WINDOW_BITS",
    "DEFAULT_COMPRESS_LEVEL",
    "DEFAULT_COMPRESS_THRESHOLD",
    "DEFAULT_MEM_LEVEL",
    "DEFAULT_SERVER_MAX_WINDOW_BITS",
    "ClientPerMessageDeflateFactory",
    "PerMessageDeflate",
    "ServerPerMessageDeflateFactory",
    "enable_client_permessage_deflate",
    "enable_server_permessage_deflate",
]

#: zlib compression level (0-9, or -1 for zlib's default, 6). See the module docstring.
DEFAULT_COMPRESS_LEVEL = 6
#: zlib memLevel (1-9): 5 as websockets; zlib's default 8 costs 112 KiB more per connection.
DEFAULT_MEM_LEVEL = 5
#: Whole messages shorter than this many bytes are sent uncompressed.
DEFAULT_COMPRESS_THRESHOLD = 64
#: Window the server factory asks its own compressor to use, in bits (websockets: 12).
DEFAULT_SERVER_MAX_WINDOW_BITS = 12
#: Window the server factory asks the client's compressor to use, in bits (websockets: 12).
DEFAULT_CLIENT_MAX_WINDOW_BITS = 12

_NAME = "permessage-deflate"
# RFC 7692 7.2.1 step 3 / 7.2.2 step 1: the tail of an empty stored block after a sync flush.
_EMPTY_BLOCK_TAIL = b"\x00\x00\xff\xff"
# zlib >= 1.2.9 refuses raw deflate with windowBits=8 (see the module docstring).
_MIN_ZLIB_WINDOW_BITS = 9
# RFC 7692 7.1.2.1 and 7.1.2.2: window bits are a decimal integer "without leading zeroes"
# from 8 to 15. Matching these exact strings rejects "08", " 9", "+9", "1_0" and non-ASCII
# digits, which int() would accept.
_WINDOW_BITS_VALUES = {str(bits): bits for bits in range(8, 16)}
# zlib state besides the window and hash buffers, measured with tracemalloc (zlib 1.2.13).
_DEFLATE_STATE_BYTES = 6152
_INFLATE_STATE_BYTES = 7360


def _deflate_bytes(window_bits: int, mem_level: int) -> int:
    return (1 << (window_bits + 2)) + (1 << (mem_level + 9)) + _DEFLATE_STATE_BYTES


def _inflate_bytes(window_bits: int) -> int:
    return (1 << window_bits) + _INFLATE_STATE_BYTES


def _check_window_bits(name: str, bits: int | None) -> None:
    if bits is not None and not 8 <= bits <= 15:
        raise ValueError(f"{name} must be between 8 and 15")


def _check_zlib_options(compress_level: int, compress_threshold: int, mem_level: int) -> None:
    if not -1 <= compress_level <= 9:
        raise ValueError("compress_level must be between -1 and 9")
    if compress_threshold < 0:
        raise ValueError("compress_threshold must not be negative")
    if not 1 <= mem_level <= 9:
        raise ValueError("mem_level must be between 1 and 9")


class PerMessageDeflate(Extension):
    """The permessage-deflate extension for one connection (RFC 7692 7).

    Built by the factories from the agreed parameters, seen from this side: "remote" is the
    peer's compressor (what we decompress), "local" ours.

    Args:
        remote_no_context_takeover: the peer starts each message with an empty window, so our
            decompressor is reset after each message.
        local_no_context_takeover: we must start each message with an empty window.
        remote_max_window_bits: the peer's window, 8-15 bits.
        local_max_window_bits: our window, 8-15 bits; at 8 bits every message is sent
            uncompressed (zlib cannot compress raw DEFLATE with 8 bits).
        compress_level: zlib compression level, -1 to 9.
        compress_threshold: whole messages shorter than this many bytes are sent uncompressed.
        mem_level: zlib memLevel, 1 to 9.

    Raises:
        ValueError: a setting is out of range.
    """

    name = _NAME
    rsv_mask = RSV1

    def __init__(
        self,
        *,
        remote_no_context_takeover: bool = False,
        local_no_context_takeover: bool = False,
        remote_max_window_bits: int = 15,
        local_max_window_bits: int = 15,
        compress_level: int = DEFAULT_COMPRESS_LEVEL,
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        mem_level: int = DEFAULT_MEM_LEVEL,
    ) -> None:
        _check_window_bits("remote_max_window_bits", remote_max_window_bits)
        _check_window_bits("local_max_window_bits", local_max_window_bits)
        _check_zlib_options(compress_level, compress_threshold, mem_level)
        #: Whether the decompressor is reset after each message.
        self.remote_no_context_takeover = remote_no_context_takeover
        #: Whether the compressor is reset after each message.
        self.local_no_context_takeover = local_no_context_takeover
        #: The peer's negotiated window size, in bits.
        self.remote_max_window_bits = remote_max_window_bits
        #: Our negotiated window size, in bits.
        self.local_max_window_bits = local_max_window_bits
        #: zlib compression level.
        self.compress_level = compress_level
        #: Size under which whole messages are sent uncompressed, in bytes.
        self.compress_threshold = compress_threshold
        #: zlib memLevel.
        self.mem_level = mem_level
        #: False when our window is 8 bits: every message is then sent uncompressed.
        self.compression_enabled = local_max_window_bits >= _MIN_ZLIB_WINDOW_BITS
        # A 9-bit decoder also reads 8-bit streams (see the module docstring).
        self._inflate_bits = max(remote_max_window_bits, _MIN_ZLIB_WINDOW_BITS)
        # zlib objects, built on first use and dropped after each message without takeover.
        self._decoder: zlib._Decompress | None = None
        self._encoder: zlib._Compress | None = None
        # Whether the message being received / sent is compressed.
        self._decoding = False
        self._encoding = False

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(remote_no_context_takeover={self.remote_no_context_takeover}, "
            f"local_no_context_takeover={self.local_no_context_takeover}, "
            f"remote_max_window_bits={self.remote_max_window_bits}, "
            f"local_max_window_bits={self.local_max_window_bits})"
        )

    # -- receiving ----------------------------------------------------------------------------

    def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
        """Decompress a received data frame if its message is compressed.

        Args:
            frame: a TEXT, BINARY or CONT frame.
            max_size: the most bytes the decompressed payload may have, or None.

        Returns:
            The frame with its payload decompressed and RSV1 cleared, or the frame itself if
            its message is not compressed.

        Raises:
            ProtocolError: RSV1 on a continuation frame (1002), or a payload that is not valid
                DEFLATE data (1007).
            PayloadTooBig: the payload decompresses to more than ``max_size`` bytes; raised
                after producing at most ``max_size + 1`` bytes.
        """
        if frame.opcode == Opcode.CONT:
            if frame.rsv1:
                # RFC 7692 6: "An endpoint MUST NOT set the "Per-Message Compressed" bit of
                # control frames and non-first fragments of a data message. An endpoint
                # receiving such a frame MUST _Fail the WebSocket Connection_."
                raise ProtocolError("RSV1 set on a continuation frame")
        else:
            # RFC 7692 6: RSV1 on the first frame marks the whole message as compressed.
            self._decoding = frame.rsv1
        if not self._decoding:
            return frame
        data = frame.payload
        if frame.fin:
            # RFC 7692 7.2.2: "1. Append 4 octets of 0x00 0x00 0xff 0xff to the tail end of
            # the payload of the message. 2. Decompress the resulting data using DEFLATE."
            data += _EMPTY_BLOCK_TAIL
        payload = self._inflate(data, max_size, frame.fin)
        if frame.fin and self.remote_no_context_takeover:
            # The peer starts the next message with an empty window: drop ours meanwhile.
            self._decoder = None
        return Frame(frame.opcode, payload, frame.fin, False, frame.rsv2, frame.rsv3)

    def _inflate(self, data: bytes, max_size: int | None, fin: bool) -> bytes:
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = zlib.decompressobj(-self._inflate_bits)
        # Decompression bomb guard: zlib writes at most max_length bytes and keeps the input it
        # did not consume in unconsumed_tail. One byte over the budget proves the payload too
        # big without allocating the rest; max_size=0 must not become 0, zlib's "no limit".
        max_length = 0 if max_size is None else max_size + 1
        try:
            out = decoder.decompress(data, max_length)
            if decoder.eof and (not max_length or len(out) < max_length):
                out += self._restart(decoder, max_length and max_length - len(out), fin)
        except zlib.error:
            # RFC 6455 7.4.1: 1007 "indicates that an endpoint is terminating the connection
            # because it has received data within a message that was not consistent with the
            # type of the message". The framing is intact; the payload is not the DEFLATE data
            # RSV1 announced: the same class of fault as invalid UTF-8 in a text message.
            # wsproto answers 1007 too (websockets 1002). zlib's text stays in our logs.
            raise ProtocolError(
                "invalid compressed data", 1007, "invalid compressed data"
            ) from None
        if max_size is not None and len(out) > max_size:
            raise PayloadTooBig(f"decompressed message exceeds limit of {max_size} bytes")
        return out

    def _restart(self, decoder: zlib._Decompress, max_length: int, fin: bool) -> bytes:
        # A block with BFINAL=1 ended the DEFLATE stream (RFC 7692 7.2.3.4 shows a message
        # ending this way, followed by 0x00 and the appended 0x00 0x00 0xff 0xff). A stream
        # cannot go on after BFINAL, so whatever follows, in this message or the next ones,
        # starts a new stream with an empty window: a peer ending a message with BFINAL cannot
        # take over its context, and a reference back fails loudly (1007), never silently.
        # Only one restart per frame: each would build a zlib object for two bytes of input.
        rest = decoder.unused_data
        decoder = zlib.decompressobj(-self._inflate_bits)
        out = decoder.decompress(rest, max_length)
        if decoder.eof:
            raise zlib.error("more than one final DEFLATE block in a frame")
        # In the last frame, the new stream only holds the padding: RFC 7692 7.2.3.4's 0x00
        # and the appended tail. A peer that omits the 0x00 leaves it mid-block; the next
        # message must start afresh anyway, so drop it rather than decode the next message
        # after that half block.
        self._decoder = None if fin else decoder
        return out

    # -- sending ------------------------------------------------------------------------------

    def encode(self, frame: Frame) -> Frame:
        """Compress a data frame about to be sent.

        The connection calls this for every frame of a message it compresses, and not at all
        for messages sent with ``compress=False``. A whole message (a first frame with FIN)
        shorter than :attr:`compress_threshold` is sent uncompressed.

        Args:
            frame: a TEXT, BINARY or CONT frame.

        Returns:
            The frame with its payload compressed, RSV1 set on the first frame of a compressed
            message; or the frame itself if the message is sent uncompressed.
        """
        if frame.opcode != Opcode.CONT:
            self._encoding = self.compression_enabled and not (
                frame.fin and len(frame.payload) < self.compress_threshold
            )
        if not self._encoding:
            return frame
        encoder = self._encoder
        if encoder is None:
            encoder = self._encoder = zlib.compressobj(
                self.compress_level, zlib.DEFLATED, -self.local_max_window_bits, self.mem_level
            )
        # Each frame is flushed so a fragment can be decompressed as soon as it arrives; a
        # sync flush ends with an empty stored block, 0x00 0x00 0xff 0xff after its header.
        data = encoder.compress(frame.payload) + encoder.flush(zlib.Z_SYNC_FLUSH)
        if frame.fin:
            data = _strip_tail(data)
            if self.local_no_context_takeover:
                # RFC 7692 7.1.1.1/7.1.2: without context takeover each message is compressed
                # with an empty LZ77 window: drop the compressor, build a new one next time.
                self._encoder = None
        first = frame.opcode != Opcode.CONT
        return Frame(frame.opcode, data, frame.fin, first, frame.rsv2, frame.rsv3)

    def memory_estimate(self) -> int:
        """Bytes of zlib state this connection keeps between messages.

        A direction without context takeover keeps nothing between messages (but holds its
        state while a message is in flight); one with takeover keeps its window and buffers.
        Figures are from the measurements in the module docstring.
        """
        total = 0
        if self.compression_enabled and not self.local_no_context_takeover:
            total += _deflate_bytes(self.local_max_window_bits, self.mem_level)
        if not self.remote_no_context_takeover:
            total += _inflate_bytes(self._inflate_bits)
        return total


def _strip_tail(data: bytes) -> bytes:
    # RFC 7692 7.2.1: "2. If the resulting data does not end with an empty DEFLATE block with
    # no compression (the "BTYPE" bits are set to 00), append an empty DEFLATE block with no
    # compression to the tail end. 3. Remove 4 octets (that are 0x00 0x00 0xff 0xff) from the
    # tail end."
    if data.endswith(_EMPTY_BLOCK_TAIL):
        return data[:-4]
    # zlib returns nothing for a second sync flush in a row. encode() always calls compress()
    # first, which re-arms the flush, but should an empty fragment ever yield nothing: after a
    # sync flush the stream is byte-aligned, so the empty stored block is 0x00 0x00 0x00 0xff
    # 0xff, which is 0x00 once stripped (RFC 7692 7.2.3.6, "Generating an Empty Fragment").
    return b"\x00"


# -- negotiation ------------------------------------------------------------------------------


@dataclass
class _Params:
    """The parameters of one offer or answer, checked for form but not yet negotiated."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None
    # client_max_window_bits present, with or without a value.
    client_max_window_bits_offered: bool = False


def _parse_params(params: Sequence[ExtensionParameter], *, is_offer: bool) -> _Params:
    """Check the form of permessage-deflate parameters (RFC 7692 7.1).

    Raises:
        NegotiationError: unknown or repeated parameter, or a value of the wrong form.
    """
    # RFC 7692 7: "A server MUST decline an extension negotiation offer for this extension if
    # any of the following conditions are met: The negotiation offer contains an extension
    # parameter not defined for use in an offer. The negotiation offer contains an extension
    # parameter with an invalid value. The negotiation offer contains multiple extension
    # parameters with the same name." The client checks the response the same way.
    result = _Params()
    seen: set[str] = set()
    for name, value in params:
        if name in seen:
            raise NegotiationError(f"duplicate {_NAME} parameter: {name}")
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            # RFC 7692 7.1.1.1 and 7.1.1.2: "This extension parameter has no value."
            if value is not None:
                raise NegotiationError(f"{_NAME} parameter {name} takes no value")
            setattr(result, name, True)
        elif name == "server_max_window_bits":
            result.server_max_window_bits = _window_bits(name, value)
        elif name == "client_max_window_bits":
            # RFC 7692 7.1.2.2: in an offer the parameter may come without a value (the client
            # only says it supports it); in a response it must have one.
            result.client_max_window_bits_offered = True
            if value is not None or not is_offer:
                result.client_max_window_bits = _window_bits(name, value)
        else:
            raise NegotiationError(f"unknown {_NAME} parameter: {name}")
    return result


def _window_bits(name: str, value: str | None) -> int:
    bits = _WINDOW_BITS_VALUES.get(value) if value is not None else None
    if bits is None:
        raise NegotiationError(f"{_NAME} parameter {name} needs a value from 8 to 15")
    return bits


def _build_params(params: _Params) -> list[ExtensionParameter]:
    result: list[ExtensionParameter] = []
    if params.server_no_context_takeover:
        result.append(("server_no_context_takeover", None))
    if params.client_no_context_takeover:
        result.append(("client_no_context_takeover", None))
    if params.server_max_window_bits is not None:
        result.append(("server_max_window_bits", str(params.server_max_window_bits)))
    if params.client_max_window_bits is not None:
        result.append(("client_max_window_bits", str(params.client_max_window_bits)))
    elif params.client_max_window_bits_offered:
        result.append(("client_max_window_bits", None))
    return result


def _check_rsv1_free(accepted: Sequence[Extension]) -> None:
    # RFC 7692 6: PMCEs use RSV1; two extensions cannot both claim it, and this also rejects
    # a second permessage-deflate.
    if any(ext.rsv_mask & RSV1 for ext in accepted):
        raise NegotiationError(f"{_NAME} needs RSV1, already used by an accepted extension")


def _smallest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


class _FactoryOptions:
    """The settings both factories keep, checked once.

    What each means on each side is in the factories' docstrings.
    """

    def __init__(
        self,
        server_no_context_takeover: bool,
        client_no_context_takeover: bool,
        server_max_window_bits: int | None,
        client_max_window_bits: int | None,
        compress_level: int,
        compress_threshold: int,
        mem_level: int,
    ) -> None:
        _check_window_bits("server_max_window_bits", server_max_window_bits)
        _check_window_bits("client_max_window_bits", client_max_window_bits)
        _check_zlib_options(compress_level, compress_threshold, mem_level)
        #: The server resets its compressor between messages (server: always; client:
        #: required of the server).
        self.server_no_context_takeover = server_no_context_takeover
        #: The client resets its compressor between messages (server: asked of the client).
        self.client_no_context_takeover = client_no_context_takeover
        #: Largest server window, in bits, or None.
        self.server_max_window_bits = server_max_window_bits
        #: Largest client window, in bits, or None.
        self.client_max_window_bits = client_max_window_bits
        #: zlib compression level.
        self.compress_level = compress_level
        #: Size under which whole messages are sent uncompressed, in bytes.
        self.compress_threshold = compress_threshold
        #: zlib memLevel.
        self.mem_level = mem_level


class ServerPerMessageDeflateFactory(_FactoryOptions, ServerExtensionFactory):
    """Negotiates permessage-deflate on the server (RFC 7692 7.1).

    Args:
        server_no_context_takeover: always compress each message with an empty window.
        client_no_context_takeover: ask the client to compress each message with an empty
            window.
        server_max_window_bits: the largest window we compress with (8-15), or None for 15
            unless the client asks for less. 8 means sending every message uncompressed.
        client_max_window_bits: the largest window we let the client compress with (8-15),
            or None for what the client offers; only applies when the client offers
            ``client_max_window_bits`` (RFC 7692 7.1.2.2), else the client uses 15.
        compress_level: zlib compression level, -1 to 9.
        compress_threshold: whole messages shorter than this many bytes are sent uncompressed.
        mem_level: zlib memLevel, 1 to 9.

    Raises:
        ValueError: a setting is out of range.
    """

    name = _NAME

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int | None = DEFAULT_SERVER_MAX_WINDOW_BITS,
        client_max_window_bits: int | None = DEFAULT_CLIENT_MAX_WINDOW_BITS,
        compress_level: int = DEFAULT_COMPRESS_LEVEL,
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        mem_level: int = DEFAULT_MEM_LEVEL,
    ) -> None:
        _FactoryOptions.__init__(
            self,
            server_no_context_takeover,
            client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits,
            compress_level,
            compress_threshold,
            mem_level,
        )

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], Extension]:
        """Answer one permessage-deflate offer.

        Args:
            params: the parameters of the offer.
            accepted: the extensions accepted so far in this handshake.

        Returns:
            The parameters of the response and the extension for the connection.

        Raises:
            NegotiationError: the offer is malformed, or RSV1 is already taken.
        """
        _check_rsv1_free(accepted)
        offer = _parse_params(params, is_offer=True)
        answer = _Params(
            # RFC 7692 7.1.1.1: the server accepts an offer with server_no_context_takeover
            # by including it in the response; it may include it unasked.
            server_no_context_takeover=(
                offer.server_no_context_takeover or self.server_no_context_takeover
            ),
            # RFC 7692 7.1.1.2: in an offer, client_no_context_takeover is a hint that the
            # client will not use context takeover; echoing it lets us drop the inflater.
            client_no_context_takeover=(
                offer.client_no_context_takeover or self.client_no_context_takeover
            ),
            # RFC 7692 7.1.2.1: the server answers "with the same or smaller value as the
            # offer", and may include the parameter even when the offer did not.
            server_max_window_bits=_smallest(
                offer.server_max_window_bits, self.server_max_window_bits
            ),
        )
        if offer.client_max_window_bits_offered:
            # RFC 7692 7.1.2.2: "If a received extension negotiation offer doesn't have the
            # client_max_window_bits extension parameter, the corresponding extension
            # negotiation response to the offer MUST NOT include the client_max_window_bits
            # extension parameter." With it, the response may carry a value no larger than
            # the offered one.
            answer.client_max_window_bits = _smallest(
                offer.client_max_window_bits, self.client_max_window_bits
            )
        extension = PerMessageDeflate(
            remote_no_context_takeover=answer.client_no_context_takeover,
            local_no_context_takeover=answer.server_no_context_takeover,
            remote_max_window_bits=answer.client_max_window_bits or 15,
            local_max_window_bits=answer.server_max_window_bits or 15,
            compress_level=self.compress_level,
            compress_threshold=self.compress_threshold,
            mem_level=self.mem_level,
        )
        return _build_params(answer), extension


class ClientPerMessageDeflateFactory(_FactoryOptions, ClientExtensionFactory):
    """Offers permessage-deflate on the client and checks the server's answer (RFC 7692 7.1).

    The offer always includes ``client_max_window_bits``, with a value when one is
    configured: it tells the server that it may limit our window (RFC 7692 7.1.2.2), which
    costs us nothing and saves the server memory.

    Args:
        server_no_context_takeover: require the server to compress each message with an empty
            window (we then keep no decompressor between messages).
        client_no_context_takeover: compress each message with an empty window.
        server_max_window_bits: require the server's window to be at most this (8-15).
        client_max_window_bits: compress with at most this window (8-15), or None for what
            the server answers (15 if nothing). 8 means sending every message uncompressed.
        compress_level: zlib compression level, -1 to 9.
        compress_threshold: whole messages shorter than this many bytes are sent uncompressed.
        mem_level: zlib memLevel, 1 to 9.

    Raises:
        ValueError: a setting is out of range.
    """

    name = _NAME

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int | None = None,
        client_max_window_bits: int | None = None,
        compress_level: int = DEFAULT_COMPRESS_LEVEL,
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        mem_level: int = DEFAULT_MEM_LEVEL,
    ) -> None:
        _FactoryOptions.__init__(
            self,
            server_no_context_takeover,
            client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits,
            compress_level,
            compress_threshold,
            mem_level,
        )

    def get_request_params(self) -> list[ExtensionParameter]:
        """Return the parameters of the offer."""
        return _build_params(
            _Params(
                server_no_context_takeover=self.server_no_context_takeover,
                client_no_context_takeover=self.client_no_context_takeover,
                server_max_window_bits=self.server_max_window_bits,
                client_max_window_bits=self.client_max_window_bits,
                client_max_window_bits_offered=True,
            )
        )

    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted: Sequence[Extension]
    ) -> Extension:
        """Check the server's answer to our offer.

        Args:
            params: the parameters of the response.
            accepted: the extensions accepted so far in this handshake.

        Returns:
            The extension for the connection.

        Raises:
            NegotiationError: the answer is malformed, does not accept what the offer
                required, or RSV1 is already taken.
        """
        _check_rsv1_free(accepted)
        answer = _parse_params(params, is_offer=False)
        # RFC 7692 7.1.1.1: "A server accepts an extension negotiation offer that includes the
        # server_no_context_takeover extension parameter by including the
        # server_no_context_takeover extension parameter in the corresponding extension
        # negotiation response to send back to the client."
        if self.server_no_context_takeover and not answer.server_no_context_takeover:
            raise NegotiationError(f"{_NAME} answer lacks the server_no_context_takeover asked")
        server_bits = answer.server_max_window_bits
        # RFC 7692 7.1.2.1: the server accepts an offer with server_max_window_bits by
        # including it in the response "with the same or smaller value as the offer".
        if self.server_max_window_bits is not None and (
            server_bits is None or server_bits > self.server_max_window_bits
        ):
            raise NegotiationError(f"{_NAME} answer lacks the server_max_window_bits asked")
        client_bits = answer.client_max_window_bits
        # RFC 7692 7.1.2.2: the server may only lower the value we offered. We always offer
        # client_max_window_bits, so its presence in the answer is never unexpected.
        if client_bits is None:
            client_bits = self.client_max_window_bits
        elif self.client_max_window_bits is not None and client_bits > self.client_max_window_bits:
            raise NegotiationError(f"{_NAME} answer raises the client_max_window_bits offered")
        return PerMessageDeflate(
            remote_no_context_takeover=answer.server_no_context_takeover,
            # RFC 7692 7.1.1.2: a client that offered client_no_context_takeover does not use
            # context takeover even if the server does not echo it.
            local_no_context_takeover=(
                answer.client_no_context_takeover or self.client_no_context_takeover
            ),
            remote_max_window_bits=server_bits or 15,
            local_max_window_bits=client_bits or 15,
            compress_level=self.compress_level,
            compress_threshold=self.compress_threshold,
            mem_level=self.mem_level,
        )


def enable_server_permessage_deflate(
    factories: Sequence[ServerExtensionFactory] = (),
) -> list[ServerExtensionFactory]:
    """Return ``factories`` with a default :class:`ServerPerMessageDeflateFactory` added.

    Args:
        factories: server extension factories; if one is already for permessage-deflate, its
            settings are kept and nothing is added.
    """
    if any(factory.name == _NAME for factory in factories):
        return list(factories)
    return [*factories, ServerPerMessageDeflateFactory()]


def enable_client_permessage_deflate(
    factories: Sequence[ClientExtensionFactory] = (),
) -> list[ClientExtensionFactory]:
    """Return ``factories`` with a default :class:`ClientPerMessageDeflateFactory` added.

    Args:
        factories: client extension factories; if one is already for permessage-deflate, its
            settings are kept and nothing is added.
    """
    if any(factory.name == _NAME for factory in factories):
        return list(factories)
    return [*factories, ClientPerMessageDeflateFactory()]
