"""Fuzz the frame parser and the connection state machine with arbitrary bytes.

    python fuzz/fuzz_frames.py -runs=200000            # or -max_total_time=300

The input is split by the fuzzer: the first bytes choose the side and limits and where the
stream is cut into receive_data() chunks; the rest is the stream. Checked, for both sides:

* ``Connection.receive_data`` never raises; a violation is recorded in ``conn.failure`` with a
  close code in {1002, 1007, 1009}, and the close frame queued carries that code;
* every event is one of the documented event types;
* feeding the stream in the fuzzer's chunks and in one piece gives the same events and the same
  failure code (the parsers are incremental);
* with a ``message_handler`` (the fast paths: ``read_message`` for a chunk that is one whole
  message, ``next_simple`` otherwise), the same messages reach the handler, the other events
  and the failure code are the same, as without one;
* ``FrameParser.next_frame`` raises nothing but ``ProtocolError`` (``PayloadTooBig`` included),
  gives the same frames in chunks as in one piece, and every frame it returns serializes back
  to bytes that parse to the same frame.

One option bit lowers the parser's large-frame thresholds (``ASSEMBLE_MIN_SIZE``, 64 KiB) to a
few bytes for that input, so that inputs of fuzzer size reach the ``PayloadBuffer`` assembly.
"""

from __future__ import annotations

import itertools
import sys

import atheris

with atheris.instrument_imports():
    from fullduplex.protocol import (
        BinaryFragment,
        BinaryMessage,
        CloseReceived,
        Connection,
        Frame,
        FrameParser,
        Ping,
        Pong,
        ProtocolError,
        Side,
        TextFragment,
        TextMessage,
        serialize_frame,
    )
    from fullduplex.protocol import frames as frames_module

EVENT_TYPES = (
    BinaryFragment,
    BinaryMessage,
    CloseReceived,
    Ping,
    Pong,
    TextFragment,
    TextMessage,
)
FAILURE_CODES = {1002, 1007, 1009}
DEFAULT_ASSEMBLY = (frames_module.ASSEMBLE_MIN_SIZE, frames_module._ASSEMBLE_AFTER)
LIMITS = (None, 0, 1, 125, 126, 1024, 2**16, 2**20)


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def run_connection(
    side: Side, chunks: list[bytes], handler: bool = False, **kwargs: object
) -> tuple[list[object], int]:
    conn = Connection(side, **kwargs)  # type: ignore[arg-type]
    events: list[object] = []
    if handler:
        # Handler messages first, then the other events: within one chunk the handler runs
        # before events_received() returns; across chunks both keep their order.
        messages: list[object] = []
        conn.message_handler = lambda m: messages.append(
            TextMessage(m) if isinstance(m, str) else BinaryMessage(m)
        )
        events.append(messages)
    for chunk in chunks:
        conn.receive_data(chunk)
        for event in conn.events_received():
            assert isinstance(event, EVENT_TYPES), event
            events.append(event)
        assert isinstance(conn.data_to_send(), bytes)
    code = 0
    if conn.failure is not None:
        code = conn.failure.code
        assert code in FAILURE_CODES, (code, conn.failure)
        if conn.close_sent is not None:
            assert conn.close_sent[0] == code, (conn.close_sent, code)
        assert conn.transport_should_close
    return events, code


def run_parser(
    chunks: list[bytes], require_mask: bool, max_frame_size: int | None, rsv_mask: int
) -> tuple[list[Frame], str | None]:
    parser = FrameParser(
        require_mask=require_mask, max_frame_size=max_frame_size, rsv_mask=rsv_mask
    )
    frames: list[Frame] = []
    for chunk in chunks:
        parser.feed(chunk)
        try:
            while (frame := parser.next_frame()) is not None:
                frames.append(frame)
        except ProtocolError as exc:
            return frames, f"{type(exc).__name__} {exc.code}"
    return frames, None


def check_round_trip(frame: Frame, require_mask: bool, rsv_mask: int) -> None:
    data = serialize_frame(
        frame.opcode,
        frame.payload,
        fin=frame.fin,
        rsv1=frame.rsv1,
        rsv2=frame.rsv2,
        rsv3=frame.rsv3,
        mask=require_mask,
    )
    again, error = run_parser([data], require_mask, None, rsv_mask)
    assert error is None and again == [frame], (frame, again, error)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    options = fdp.ConsumeIntInRange(0, 255)
    max_frame_size = LIMITS[fdp.ConsumeIntInRange(0, len(LIMITS) - 1)]
    max_message_size = LIMITS[fdp.ConsumeIntInRange(0, len(LIMITS) - 1)]
    cuts = [fdp.ConsumeIntInRange(0, 2**16) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    chunks = split(stream, cuts)

    side = Side.CLIENT if options & 1 else Side.SERVER
    kwargs = {
        "max_frame_size": max_frame_size,
        "max_message_size": max_message_size,
        "stream_messages": bool(options & 2),
    }
    if options & 128:
        frames_module.ASSEMBLE_MIN_SIZE, frames_module._ASSEMBLE_AFTER = 8, 3
    else:
        frames_module.ASSEMBLE_MIN_SIZE, frames_module._ASSEMBLE_AFTER = DEFAULT_ASSEMBLY
    chunked = run_connection(side, chunks, **kwargs)
    whole = run_connection(side, [stream], **kwargs)
    assert chunked == whole, (chunked, whole)
    if not kwargs["stream_messages"]:
        handled_events, handled_code = run_connection(side, chunks, handler=True, **kwargs)
        handled_messages = handled_events.pop(0)
        messages = [e for e in chunked[0] if isinstance(e, (TextMessage, BinaryMessage))]
        others = [e for e in chunked[0] if not isinstance(e, (TextMessage, BinaryMessage))]
        assert handled_messages == messages, (handled_messages, messages)
        assert handled_events == others, (handled_events, others)
        assert handled_code == chunked[1], (handled_code, chunked[1])

    require_mask = side is Side.SERVER
    rsv_mask = (options >> 2) & 0x70
    frames, error = run_parser(chunks, require_mask, max_frame_size, rsv_mask)
    assert (frames, error) == run_parser([stream], require_mask, max_frame_size, rsv_mask)
    for frame in frames:
        check_round_trip(frame, require_mask, rsv_mask)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
