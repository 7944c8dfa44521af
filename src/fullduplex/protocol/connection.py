"""The RFC 6455 state machine, sans-I/O: bytes in, events and bytes out.

After a successful opening handshake the I/O layer creates a :class:`Connection` and then only
ever does four things with it::

    conn.receive_data(chunk)          # every chunk read from the socket
    conn.receive_eof()                # when the peer closed its end of the TCP connection
    for event in conn.events_received(): ...
    transport.write(conn.data_to_send())

and checks :attr:`Connection.transport_should_close` (close TCP now) and
:attr:`Connection.close_timer_wanted` (start the close timeout; when it fires, close TCP).
The connection never sees a clock, a socket or a thread.

An I/O layer may instead take whole messages as they are parsed, by setting
:attr:`Connection.message_handler`: it is called with each ``str`` or ``bytes`` message in place
of a :class:`TextMessage` or :class:`BinaryMessage` event (other events still go through
:meth:`Connection.events_received`). That saves an event object and a list round trip per
message; the sans-I/O API is unchanged when it is not set.

Violations by the peer never raise from :meth:`Connection.receive_data`: the connection *fails*
(RFC 6455 7.1.7) with the right close code, records the exception in
:attr:`Connection.failure`, queues the close frame and asks for the transport to be closed.
"""

from __future__ import annotations

import codecs
import enum
from collections.abc import Callable, Iterable, Sequence

from .events import (
    BinaryFragment,
    BinaryMessage,
    CloseReceived,
    Event,
    Ping,
    Pong,
    TextFragment,
    TextMessage,
)
from .exceptions import InvalidUTF8, LocalProtocolError, PayloadTooBig, ProtocolError
from .extensions import Extension
from .frames import (
    FIN,
    LENGTH_MASK,
    MASK_BIT,
    CloseCode,
    Frame,
    FrameParser,
    Opcode,
    build_frame,
    frame_header,
    parse_close,
    read_message,
    serialize_close,
    serialize_frame,
)
from .mask import apply_mask

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Connection",
    "Side",
    "State",
]

#: Default limit on the payload of one received frame: None, no limit of its own. A frame is
#: part of a message, so the message limit bounds every frame (checked from its header, before
#: the payload is buffered): raising ``max_message_size`` raises the frame limit with it, as
#: websockets' ``max_size`` and wsproto's ``max_message_size`` do. A frame limit set
#: separately (lower than the message limit) still applies.
DEFAULT_MAX_FRAME_SIZE: int | None = None
#: Default limit on a received message, after decompression: 1 MiB, as websockets and
#: aiohttp (4 MiB) cap messages; Node's ws allows 100 MiB, which is too generous for a server.
DEFAULT_MAX_MESSAGE_SIZE = 2**20


class Side(enum.IntEnum):
    """Which end of the connection this is."""

    SERVER = 0
    CLIENT = 1


class State(enum.IntEnum):
    """Connection state (RFC 6455 sections 4-7, after the opening handshake)."""

    OPEN = 1  #: messages flow both ways
    CLOSING = 2  #: a close frame was sent, the peer's has not arrived yet
    CLOSED = 3  #: both close frames exchanged, or the connection failed or was lost


_CONT = int(Opcode.CONT)
_TEXT = int(Opcode.TEXT)
# Enum members as module globals: on Python 3.11, EnumType defines __getattr__, so reading
# ``State.OPEN`` goes through a slot wrapper call (~850 user-space instructions, callgrind)
# where a global costs ~10. A handshake and its close read 16 of them (17k instructions).
_OPEN, _CLOSING, _CLOSED = State.OPEN, State.CLOSING, State.CLOSED
_SERVER, _CLIENT = Side.SERVER, Side.CLIENT
_CONT_OP, _TEXT_OP, _BINARY_OP = Opcode.CONT, Opcode.TEXT, Opcode.BINARY
_CLOSE_OP, _PING, _PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG
_ABNORMAL, _INTERNAL_ERROR = CloseCode.ABNORMAL_CLOSURE, CloseCode.INTERNAL_ERROR
# First bytes of whole unfragmented frames: FIN + opcode.
#: Payloads of at least this many bytes are queued for sending after their own header instead
#: of being copied into one frame: :meth:`Connection.data_to_send` still joins them, and the
#: asyncio layer writes the pieces with ``writelines`` (no copy on uvloop). With
#: :data:`~fullduplex.protocol.frames.ASSEMBLE_MIN_SIZE`: 1 MiB echo at 1,924 MB/s
#: (``bench/run.py``; docs/performance.md).
LARGE_PAYLOAD_SIZE = 64 * 1024

_FIN_TEXT = FIN | _TEXT
_FIN_BINARY = FIN | int(Opcode.BINARY)
_FIN_CLOSE = FIN | int(Opcode.CLOSE)
# What a connection without extensions, or without pending events, holds: one for all.
_NO_EXTENSIONS: tuple[Extension, ...] = ()
_NO_EVENTS: tuple[Event, ...] = ()


def _smaller(a: int | None, b: int | None) -> int | None:
    """The smaller of two limits, where None is no limit."""
    if a is None:
        return b
    return a if b is None or a < b else b


#: Fragments of a received message of at least this many bytes are kept as they arrive;
#: smaller ones are copied into one buffer. A message being assembled then costs its bytes and
#: at most two objects per this many bytes, never an object per frame: 2,000,000 empty
#: continuation frames hold nothing (``bench/fragment_flood.py``; docs/performance.md).
OWN_PART_SIZE = 4096


class _MessageParts:
    """The payloads of a fragmented message being received, joined once it ends."""

    __slots__ = ("chunks", "tail")

    def __init__(self) -> None:
        self.chunks: list[bytes | bytearray] = []
        self.tail = bytearray()

    def add(self, payload: bytes) -> None:
        if len(payload) < OWN_PART_SIZE:
            self.tail += payload
            return
        if self.tail:
            self.chunks.append(self.tail)
            self.tail = bytearray()
        self.chunks.append(payload)

    def join(self) -> bytes:
        if self.tail:
            self.chunks.append(self.tail)
        return b"".join(self.chunks)


class Connection:
    """A WebSocket connection after the opening handshake.

    Args:
        side: :attr:`Side.SERVER` or :attr:`Side.CLIENT`; decides masking and who closes TCP.
        extensions: extensions negotiated in the handshake, in negotiation order.
        max_frame_size: largest received frame payload (on the wire), None for no limit of
            its own (the default: frames are bounded by ``max_message_size``). Larger frames
            fail the connection with 1009 before their payload is buffered.
        max_message_size: largest received message after decompression, None for no limit.
            Larger messages fail the connection with 1009; in streaming mode this still
            bounds each message.
        stream_messages: report each data frame as a :class:`TextFragment` or
            :class:`BinaryFragment` instead of buffering whole messages.
        fragment_size: split sent messages into frames of at most this many payload bytes;
            None sends each message in one frame.
    """

    __slots__ = (
        "_decoder",
        "_fast_receive",
        "_is_client",
        "_msg_opcode",
        "_msg_parts",
        "_msg_size",
        "_one_limit",
        "_parser",
        "_pings",
        "_plain_frames",
        "_receiving",
        "_require_mask",
        "_send_compress",
        "_send_opcode",
        "close_received",
        "close_sent",
        "close_timer_wanted",
        "eof_received",
        "extensions",
        "failure",
        "fragment_size",
        "max_frame_size",
        "max_message_size",
        "message_handler",
        "pending_events",
        "pending_output",
        "sending_fragmented",
        "side",
        "state",
        "stream_messages",
        "takes_prepared",
        "transport_should_close",
    )

    def __init__(
        self,
        side: Side,
        *,
        extensions: Sequence[Extension] = (),
        # Limits
        max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        stream_messages: bool = False,
        fragment_size: int | None = None,
    ) -> None:
        if fragment_size is not None and fragment_size < 1:
            raise ValueError("fragment_size must be at least 1")
        #: Which end this is.
        self.side = side
        #: The negotiated extensions (a shared empty tuple when none: no list per connection).
        self.extensions: Sequence[Extension] = list(extensions) if extensions else _NO_EXTENSIONS
        #: Largest frame payload accepted, or None.
        self.max_frame_size = max_frame_size
        #: Largest message accepted after decompression, or None.
        self.max_message_size = max_message_size
        #: Whether data frames are reported as they arrive.
        self.stream_messages = stream_messages
        #: Fragment size for sent messages, or None.
        self.fragment_size = fragment_size
        #: Current state.
        self.state = _OPEN
        #: The close frame received, as ``(code, reason)``, or None.
        self.close_received: tuple[int, str] | None = None
        #: The close frame sent, as ``(code, reason)``, or None.
        self.close_sent: tuple[int, str] | None = None
        #: Why this side failed the connection, or None.
        self.failure: ProtocolError | None = None
        #: True once the I/O layer should close the TCP connection.
        self.transport_should_close = False
        #: True once the I/O layer should start the close timeout; when it fires, close TCP.
        self.close_timer_wanted = False
        #: True once the peer closed its end of the TCP connection.
        self.eof_received = False
        # False once nothing more may be parsed: failed, lost, or the peer's close received.
        self._receiving = True

        self._is_client = side is _CLIENT
        # One frame limit for the parser and both receive fast paths: a frame's payload is
        # part of a message, so the message limit bounds it too, checked from its header
        # before the payload is buffered (a frame limit set separately may be lower). Read
        # here, at construction, like the parser's.
        limit = _smaller(max_frame_size, max_message_size)
        self._one_limit = -1 if limit is None else limit
        self._require_mask = side is _SERVER
        # The frame parser, made by the first read that is not one whole message (see
        # _frame_parser): a connection whose reads all are (the commonest) never needs one,
        # and an idle connection holds none (~100 bytes each).
        self._parser: FrameParser | None = None
        #: Events received and not taken yet by :meth:`events_received` (read-only: an I/O
        #: layer may test it to skip the call when it is empty). A shared empty tuple while
        #: there are none (no list per idle connection), else a list.
        self.pending_events: Sequence[Event] = _NO_EVENTS
        #: Bytes queued for the transport, in order, not taken yet by :meth:`data_to_send`.
        #: An I/O layer may take the pieces instead, replacing the list with a new empty one,
        #: to write them with ``writelines`` (a large payload is a piece of its own: see
        #: :data:`LARGE_PAYLOAD_SIZE`).
        self.pending_output: list[bytes] = []
        self._pings: dict[bytes, None] | None = None  # made by the first ping
        # Receiving: the open message's opcode (None between messages), its parts and size.
        self._msg_opcode: int | None = None
        self._msg_parts: _MessageParts | None = None
        self._msg_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        # Sending: the opcode of a message being sent with send_fragment, or None.
        self._send_opcode: int | None = None
        #: True while a message started with :meth:`send_fragment` is unfinished (read-only).
        #: No other data frame may be sent until it ends (RFC 6455 5.4: fragments of different
        #: messages must not be interleaved); a broadcaster writing prepared frames checks it.
        #: An attribute, not a property: broadcasters read it once per connection per message.
        self.sending_fragmented = False
        self._send_compress = True
        #: Called with each whole received message (``str`` or ``bytes``) instead of queueing
        #: a :class:`TextMessage` / :class:`BinaryMessage` event, when set (None: events).
        #: It runs inside :meth:`receive_data`, before the events of the same data are
        #: returned by :meth:`events_received`; it may send (the frames queue as usual) but
        #: must not raise: an exception propagates out of :meth:`receive_data`.
        self.message_handler: Callable[[str | bytes], None] | None = None
        # Fast paths for the commonest configuration (no extension, whole messages, no
        # fragmentation of sent messages): see receive_data and send_binary.
        self._fast_receive = not self.extensions and not stream_messages
        # Whether sent messages are plain unmasked frames (server, no extension, no
        # fragment_size): what takes_prepared returns to when a fragmented send ends.
        self._plain_frames = not self.extensions and fragment_size is None and not self._is_client
        #: True while this connection can send a frame prepared once for many connections
        #: (:func:`~fullduplex.protocol.frames.prepare_frame`, :meth:`send_prepared`): the
        #: bytes every such connection sends for the same message. That is: open, the server
        #: side (unmasked frames), no extension (no per-connection compression), no
        #: ``fragment_size``, and no fragmented send in progress (RFC 6455 5.4). Read-only;
        #: an attribute, not a property: broadcasters read it once per connection per message,
        #: and the send fast path of :meth:`send_text` and :meth:`send_binary` is this test.
        self.takes_prepared = self._plain_frames

    # -- receiving ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer.

        Never raises for anything the peer sends: a violation fails the connection.
        """
        if not self._receiving:
            # Failed, lost, or the peer's close frame arrived: RFC 6455 7.1.7 "MUST NOT attempt
            # to process further data"; RFC 6455 5.5.1: the close frame is the last the peer
            # sends (a client waiting for the server to close TCP must not parse on).
            return
        parser = self._parser
        handler = self.message_handler
        if (
            handler is not None
            and self._fast_receive
            and self._msg_opcode is None
            and self.state is _OPEN
            and (parser is None or (parser._pos >= len(parser._buf) and parser._assembly is None))
            and type(data) is bytes
        ):
            # Fastest path: the read is exactly one whole message and nothing is buffered, the
            # commonest read of all. One C call parses, unmasks and decodes it, and no parser
            # state changes: no feed, no (opcode, payload, end) tuple, no second parse that
            # finds nothing. Anything else (several frames, a partial one, control frames,
            # invalid UTF-8, over a limit) returns None and takes the general path below.
            # 32 B listener echo: 21.8k -> 14.6k instructions (bench/run.py --callgrind).
            one = read_message(data, self._require_mask, self._one_limit)
            if one is not None:
                handler(one)
                return
            if data and data[0] == _FIN_CLOSE and self._receive_close_frame(data):
                return
        if parser is None:
            parser = self._frame_parser()
        parser.feed(data)
        next_frame = parser.next_frame
        next_simple = parser.next_simple
        fast = self._fast_receive
        try:
            while self._receiving:
                # Fast path: a whole text or binary frame, outside a fragmented message, while
                # open, parsed without a Frame object (in C when built); the parser's limit is
                # the message limit too, so it only needs decoding (see
                # FrameParser.next_simple for what it saves).
                if fast and self._msg_opcode is None and self.state is _OPEN:
                    simple = next_simple()
                    if simple is not None:
                        self._message_received(simple[0], simple[1])
                        continue
                frame = next_frame()
                if frame is None:
                    return
                # _handle_frame inlined: one call less per frame (+7% at 32 B, measured).
                if frame.opcode >= 8:
                    self._handle_control(frame)
                elif self.state is _OPEN:
                    self._handle_data(frame)
                # else: RFC 6455 1.4: after sending a close frame, data is discarded.
        except ProtocolError as exc:
            self.fail(exc.code, exc.public_reason, exc)

    def _receive_close_frame(self, data: bytes) -> bool:
        """Take a read that is exactly one valid-looking close frame; False for anything else.

        The peer's last frame, and most often a read of its own: handled without the parser
        (no feed, no Frame, no second parse finding nothing), ~10k fewer user-space
        instructions per close handshake (callgrind). Its header is checked as
        :meth:`FrameParser.next_frame` would (FIN set and no RSV bit by the caller's first-byte
        test; masked as required; RFC 6455 5.5: "All control frames MUST have a payload length
        of 125 bytes or less", so a 16- or 64-bit length never qualifies; ``max_frame_size``
        does not apply to control frames); anything else takes the general path, which reports
        the violation. The payload is checked by :meth:`_handle_close`.
        """
        b1 = data[1] if len(data) > 1 else 0
        length = b1 & LENGTH_MASK
        masked = b1 & MASK_BIT
        if (
            length > 125
            or len(data) != length + (6 if masked else 2)
            or (masked != 0) is not self._require_mask
        ):
            return False
        try:
            self._handle_close(apply_mask(data[6:], data[2:6]) if masked else data[2:])
        except ProtocolError as exc:
            self.fail(exc.code, exc.public_reason, exc)
        return True

    def _add_event(self, event: Event) -> None:
        events = self.pending_events
        if events:
            events.append(event)  # type: ignore[attr-defined]  # a list once not empty
        else:
            self.pending_events = [event]

    def _frame_parser(self) -> FrameParser:
        limit = self._one_limit
        rsv_mask = 0
        for ext in self.extensions:
            rsv_mask |= ext.rsv_mask
        parser = self._parser = FrameParser(
            require_mask=self._require_mask,
            max_frame_size=None if limit < 0 else limit,
            rsv_mask=rsv_mask,
        )
        return parser

    def receive_eof(self) -> None:
        """Tell the connection the peer closed its end of the TCP connection."""
        if self.eof_received:
            return
        self.eof_received = True
        self._receiving = False
        if self.state is not _CLOSED:
            # RFC 6455 7.1.5: closed without a close frame: code 1006.
            self.state = _CLOSED
        self.takes_prepared = False
        self.transport_should_close = True
        self._msg_parts = None

    def events_received(self) -> list[Event]:
        """Return the events received since the last call, oldest first."""
        events = self.pending_events
        if not events:
            return []
        self.pending_events = _NO_EVENTS
        assert isinstance(events, list)
        return events

    def data_to_send(self) -> bytes:
        """Return the bytes to write to the transport since the last call (maybe empty)."""
        out = self.pending_output
        if not out:
            return b""
        self.pending_output = []
        return out[0] if len(out) == 1 else b"".join(out)

    @property
    def close_code(self) -> int:
        """The close code the connection ended with.

        The code of the close frame received (RFC 6455 7.1.5); if this side failed the
        connection, the code it failed with (even if it had sent another close code before);
        otherwise 1006 (abnormal closure).
        """
        if self.close_received is not None:
            return self.close_received[0]
        if self.failure is not None:
            return self.failure.code
        return _ABNORMAL

    @property
    def close_reason(self) -> str:
        """The close reason matching :attr:`close_code`."""
        if self.close_received is not None:
            return self.close_received[1]
        if self.failure is not None:
            return self.failure.public_reason
        return ""

    def _handle_control(self, frame: Frame) -> None:
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            # No extension defines RSV bits on control frames (RFC 7692 6: "only on data").
            raise ProtocolError("reserved bit set on a control frame")
        opcode = frame.opcode
        if opcode == _PING:
            # RFC 6455 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong
            # frame in response, unless it already received a Close frame ... [with] identical
            # Application data". Having *sent* a close frame (CLOSING) is no exemption, and
            # receive_data stops after the peer's close frame or a failure: every ping that
            # gets here is answered.
            self._write(_PONG, frame.payload)
            self._add_event(Ping(frame.payload))
        elif opcode == _PONG:
            self._handle_pong(frame.payload)
        else:
            self._handle_close(frame.payload)

    def _handle_pong(self, payload: bytes) -> None:
        pings = self._pings
        if not pings or payload not in pings:
            return  # RFC 6455 5.5.3: an unsolicited pong needs no response.
        # A pong acknowledges its ping and every ping sent before it (pings are answered in
        # order, and a peer may answer only the latest: RFC 6455 5.5.3).
        outstanding = list(pings)
        acknowledged = tuple(outstanding[: outstanding.index(payload) + 1])
        for key in acknowledged:
            del pings[key]
        self._add_event(Pong(payload, acknowledged))

    def _handle_close(self, payload: bytes) -> None:
        code, reason = parse_close(payload)
        self.close_received = (code, reason)
        self._receiving = False
        if self.state is _OPEN:
            # RFC 6455 5.5.1: "If an endpoint receives a Close frame and did not previously
            # send a Close frame, the endpoint MUST send a Close frame in response. (When
            # sending a Close frame in response, the endpoint typically echos the status code
            # it received.)"
            self._send_close_frame(code, "")
        self.state = _CLOSED
        self.takes_prepared = False
        self._msg_parts = None
        self._add_event(CloseReceived(code, reason))
        # RFC 6455 7.1.1: the server closes the TCP connection first; the client waits for it,
        # but not forever.
        if self._is_client:
            self.close_timer_wanted = True
        else:
            self.transport_should_close = True

    def _handle_data(self, frame: Frame) -> None:
        # Opcodes compared with module-level ints: an IntEnum attribute lookup costs ~50 ns
        # on CPython 3.11 against ~10 ns for a global: 674k -> 905k messages/s at 32 B
        # (bench/frames_bench.py; docs/performance.md).
        opcode = first_opcode = frame.opcode
        if opcode == _CONT:
            if self._msg_opcode is None:
                raise ProtocolError("continuation frame without a message to continue")
            opcode = self._msg_opcode
        elif self._msg_opcode is not None:
            raise ProtocolError("new data frame while a fragmented message is open")
        else:
            self._msg_size = 0
        if self.extensions:
            for ext in reversed(self.extensions):
                frame = ext.decode(frame, max_size=self._budget())
        payload = frame.payload
        limit = self.max_message_size
        if limit is not None:
            # The one check of a message's size: the parser bounds each frame by it already,
            # this bounds the frames of a message (and a decompressed payload) together.
            self._msg_size += len(payload)
            if self._msg_size > limit:
                raise PayloadTooBig(f"message exceeds limit of {limit} bytes")
        fin = frame.fin
        if self.stream_messages:
            self._msg_opcode = None if fin else opcode
            self._receive_fragment(opcode, payload, fin)
        elif first_opcode != _CONT and fin:
            self._message_received(opcode, payload)  # a whole message in one frame
        else:
            parts = self._msg_parts
            if parts is None:
                parts = self._msg_parts = _MessageParts()
            parts.add(payload)
            if not fin:
                self._msg_opcode = opcode
                if opcode == _TEXT:
                    self._check_text_part(payload)
                return
            self._msg_opcode = None
            self._msg_parts = None
            if opcode == _TEXT:
                self._decoder.reset()  # type: ignore[union-attr]
            self._message_received(opcode, parts.join())

    def _message_received(self, opcode: int, payload: bytes) -> None:
        """The step every whole received message ends in: decode, then handler or event.

        The parser's fast path (:meth:`receive_data`), a one-frame message and the last frame
        of a fragmented one all end here, their size already checked. The whole-read fast
        path's C ``read_message`` does the same checks and the same decoding before it calls
        :attr:`message_handler`.
        """
        handler = self.message_handler
        if opcode == _TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                raise InvalidUTF8() from None
            if handler is not None:
                handler(text)
            elif events := self.pending_events:  # _add_event inlined: once per message
                events.append(TextMessage(text))  # type: ignore[attr-defined]  # a list
            else:
                self.pending_events = [TextMessage(text)]
        elif handler is not None:
            handler(payload)
        elif events := self.pending_events:
            events.append(BinaryMessage(payload))  # type: ignore[attr-defined]
        else:
            self.pending_events = [BinaryMessage(payload)]

    def _budget(self) -> int | None:
        limit = self.max_message_size
        return None if limit is None else limit - self._msg_size

    def _utf8_decoder(self) -> codecs.IncrementalDecoder:
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        return decoder

    def _check_text_part(self, payload: bytes) -> None:
        # A fragment of a text message is assembled as bytes and decoded with the whole
        # message; decoding it here too (output dropped) fails the connection as soon as the
        # bytes cannot be UTF-8 (RFC 6455 8.1), not at the last fragment.
        decoder = self._utf8_decoder()
        try:
            decoder.decode(payload)
        except UnicodeDecodeError:
            raise InvalidUTF8() from None
        _check_utf8_prefix(decoder)

    def _receive_fragment(self, opcode: int, payload: bytes, fin: bool) -> None:
        # stream_messages: each data frame is an event, text decoded as it arrives.
        if opcode != _TEXT:
            self._add_event(BinaryFragment(payload, fin))
            return
        decoder = self._utf8_decoder()
        try:
            text = decoder.decode(payload, fin)
        except UnicodeDecodeError:
            raise InvalidUTF8() from None
        if fin:
            decoder.reset()
        else:
            _check_utf8_prefix(decoder)
        self._add_event(TextFragment(text, fin))

    # -- sending ------------------------------------------------------------------------------

    def send_text(self, data: str | Iterable[str], *, compress: bool = True) -> None:
        """Send a text message.

        Args:
            data: the message, or an iterable of strings sent as one fragmented message, one
                frame per string.
            compress: False to skip negotiated compression for this message.

        Raises:
            LocalProtocolError: the connection is closing, or a fragmented send is open.
        """
        if isinstance(data, str):
            if self.takes_prepared:
                # Fast path: see send_binary.
                payload = data.encode()
                if len(payload) < LARGE_PAYLOAD_SIZE:
                    self.pending_output.append(build_frame(_FIN_TEXT, payload))
                else:
                    self.pending_output += (frame_header(_FIN_TEXT, len(payload)), payload)
                return
            self._send_message(_TEXT_OP, data.encode(), compress)
        else:
            self._send_chunks(_TEXT_OP, (chunk.encode() for chunk in data), compress)

    def send_binary(self, data: bytes | Iterable[bytes], *, compress: bool = True) -> None:
        """Send a binary message.

        Args:
            data: the message (any bytes-like object), or an iterable of bytes sent as one
                fragmented message, one frame per item.
            compress: False to skip negotiated compression (for already compressed payloads).

        Raises:
            LocalProtocolError: the connection is closing, or a fragmented send is open.
        """
        # The exact type first: a tuple isinstance() walks its types (~0.3k instructions).
        if type(data) is bytes or isinstance(data, (bytes, bytearray, memoryview)):
            if self.takes_prepared:
                # Fast path (a server without extensions or fragment_size): one frame built in
                # one call, no Frame object, no keyword arguments (see FrameParser.next_simple).
                if len(data) < LARGE_PAYLOAD_SIZE or type(data) is not bytes:
                    self.pending_output.append(build_frame(_FIN_BINARY, data))
                else:
                    # A large immutable payload is queued as is, after its own header: no
                    # copy here, and the asyncio layer writes both pieces with writelines.
                    self.pending_output += (frame_header(_FIN_BINARY, len(data)), data)
                return
            self._send_message(_BINARY_OP, bytes(data), compress)
        else:
            self._send_chunks(_BINARY_OP, (bytes(chunk) for chunk in data), compress)

    def send_prepared(self, frame: bytes) -> None:
        """Send a frame prepared once for many connections by :func:`prepare_frame`.

        Broadcasting frames a message once and hands the same bytes to every connection
        whose :attr:`takes_prepared` is True; the others send the message with
        :meth:`send_text` or :meth:`send_binary` (their own compression, masking or
        fragmentation).

        Raises:
            LocalProtocolError: :attr:`takes_prepared` is False.
        """
        if not self.takes_prepared:
            raise LocalProtocolError("this connection cannot send a prepared frame now")
        self.pending_output.append(frame)

    def send_fragment(self, data: str | bytes, *, final: bool, compress: bool = True) -> None:
        """Send one frame of a message whose parts are produced over time.

        The first call starts a text (``str``) or binary (``bytes``) message; later calls send
        continuation frames of the same type until one with ``final=True``. Control frames
        (ping, pong, close) may be sent in between; other messages may not.

        Raises:
            LocalProtocolError: the connection is closing, or the type changed mid-message.
        """
        self._check_can_send()
        opcode = _TEXT_OP if isinstance(data, str) else _BINARY_OP
        payload = data.encode() if isinstance(data, str) else bytes(data)
        if self._send_opcode is None:
            self._send_compress = compress
            self._send_opcode = opcode
            self.sending_fragmented = True
            self.takes_prepared = False
            frame_opcode = int(opcode)
        elif self._send_opcode != opcode:
            raise LocalProtocolError("fragment type differs from the message being sent")
        else:
            frame_opcode = _CONT_OP
        if final:
            self._send_opcode = None
            self.sending_fragmented = False
            self.takes_prepared = self._plain_frames
        self._send_data_frame(Frame(frame_opcode, payload, final), self._send_compress)

    def send_ping(self, payload: bytes = b"") -> None:
        """Send a ping; a :class:`Pong` event reports the matching pong.

        Raises:
            LocalProtocolError: payload over 125 bytes, already outstanding, or closing.
        """
        self._check_control(payload)
        pings = self._pings
        if pings is None:
            pings = self._pings = {}
        if payload in pings:
            raise LocalProtocolError("a ping with this payload is already waiting for its pong")
        pings[payload] = None
        self._write(_PING, payload)

    def send_pong(self, payload: bytes = b"") -> None:
        """Send an unsolicited pong (a one-way heartbeat, RFC 6455 5.5.3)."""
        self._check_control(payload)
        self._write(_PONG, payload)

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (or answer one: the connection answers by itself).

        Args:
            code: a close code valid on the wire, or 1005 to send a close frame without one.
            reason: at most 123 bytes of UTF-8.

        Raises:
            LocalProtocolError: the code or reason is invalid, or a close was already sent.
        """
        if self.close_sent is not None or self.state is _CLOSED:
            raise LocalProtocolError("close frame already sent or connection closed")
        self._send_close_frame(code, reason)
        self.state = _CLOSING
        self.takes_prepared = False
        self.close_timer_wanted = True

    def fail(self, code: int, reason: str = "", exc: ProtocolError | None = None) -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame if possible, then close TCP.

        Args:
            code: the close code to send; 1006 fails without sending a close frame (for
                example, when the close handshake timed out).
            reason: the close reason to send (sent as is: never put peer data or exception
                text here).
            exc: the violation that caused it, kept in :attr:`failure`.
        """
        if code != _ABNORMAL:
            serialize_close(code, reason)  # raises LocalProtocolError before any state change
        if self.eof_received:
            return  # the connection is already lost (1006): nothing left to fail
        if exc is None:
            exc = ProtocolError(reason or f"connection failed with {code}", code, reason)
        self.failure = exc
        self._receiving = False
        if self.close_sent is None and code != _ABNORMAL:
            self._send_close_frame(code, reason)
        self.state = _CLOSED
        self.takes_prepared = False
        self.transport_should_close = True
        self._msg_parts = None

    def _send_close_frame(self, code: int, reason: str) -> None:
        payload = serialize_close(code, reason)
        self.close_sent = (code, reason)
        self._write(_CLOSE_OP, payload)

    def _check_can_send(self) -> None:
        if self.state is not _OPEN:
            raise LocalProtocolError("connection is closing or closed: cannot send")

    def _check_control(self, payload: bytes) -> None:
        self._check_can_send()
        if len(payload) > 125:
            raise LocalProtocolError("control frame payload must be at most 125 bytes")

    def _send_message(self, opcode: int, payload: bytes, compress: bool) -> None:
        self._check_can_send()
        if self._send_opcode is not None:
            raise LocalProtocolError("a fragmented message is being sent")
        frame = Frame(opcode, payload)
        if compress:
            for ext in self.extensions:
                frame = ext.encode(frame)
        size = self.fragment_size
        if size is None or len(frame.payload) <= size:
            self._write_frame(frame)
            return
        # Fragment after encoding: the extension sees the message once (RFC 7692 7.2.1
        # compresses the whole message, then it may be fragmented).
        data = frame.payload
        last = len(data) - size
        for start in range(0, len(data), size):
            first = start == 0
            self._write_frame(
                Frame(
                    frame.opcode if first else _CONT_OP,
                    data[start : start + size],
                    start >= last,
                    frame.rsv1 and first,
                    frame.rsv2 and first,
                    frame.rsv3 and first,
                )
            )

    def _send_chunks(self, opcode: int, chunks: Iterable[bytes], compress: bool) -> None:
        self._check_can_send()
        if self._send_opcode is not None:
            raise LocalProtocolError("a fragmented message is being sent")
        pending: bytes | None = None
        frame_opcode = opcode
        try:
            for chunk in chunks:
                if pending is not None:
                    self._send_data_frame(Frame(frame_opcode, pending, False), compress)
                    frame_opcode = _CONT_OP
                pending = chunk
        except Exception:
            if frame_opcode == _CONT_OP:
                # A fragmented message was started and can never be finished: the peer would
                # fail the next message with 1002, so close now with 1011.
                self.fail(_INTERNAL_ERROR, "error while sending a message")
            raise
        self._send_data_frame(Frame(frame_opcode, pending or b"", True), compress)

    def _send_data_frame(self, frame: Frame, compress: bool) -> None:
        if compress:
            for ext in self.extensions:
                frame = ext.encode(frame)
        self._write_frame(frame)

    def _write_frame(self, frame: Frame) -> None:
        self.pending_output.append(
            serialize_frame(
                frame.opcode,
                frame.payload,
                fin=frame.fin,
                rsv1=frame.rsv1,
                rsv2=frame.rsv2,
                rsv3=frame.rsv3,
                mask=self._is_client,
            )
        )

    def _write(self, opcode: int, payload: bytes) -> None:
        # A control frame: a server's unmasked ones in one C call (the close handshake's
        # answer: ~2k user-space instructions less than serialize_frame, callgrind).
        if self._is_client:
            frame = serialize_frame(opcode, payload, mask=True)
        else:
            frame = build_frame(FIN | opcode, payload)
        self.pending_output.append(frame)


def _check_utf8_prefix(decoder: codecs.IncrementalDecoder) -> None:
    """Fail early on a pending UTF-8 prefix that no continuation can make valid.

    CPython's incremental decoder rejects every invalid prefix at once except a surrogate lead
    (0xED followed by 0xA0-0xBF), which it keeps buffered until the next byte. RFC 6455 8.1
    asks to fail "as soon as" the bytes cannot be valid UTF-8 (Autobahn 6.4.x checks this).
    """
    pending = decoder.getstate()[0]
    if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
        raise InvalidUTF8()
