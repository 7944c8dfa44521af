"""Edge cases of the state machine: failures while closing, misuse of fail(), mutable buffers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fullduplex.protocol import Connection, LocalProtocolError, Side, State
from fullduplex.protocol.frames import serialize_frame


def test_failure_while_closing_reports_the_failure_code() -> None:
    server = Connection(Side.SERVER)
    server.send_close(1000)
    server.data_to_send()
    server.receive_data(serialize_frame(0x3, b"", mask=True))  # reserved opcode
    assert server.state is State.CLOSED
    assert server.close_code == 1002
    assert server.close_reason == "protocol error"


def test_fail_with_unsendable_code_changes_nothing() -> None:
    conn = Connection(Side.SERVER)
    with pytest.raises(LocalProtocolError):
        conn.fail(1015)  # reserved: never on the wire
    assert conn.state is State.OPEN
    assert conn.failure is None
    assert not conn.transport_should_close
    assert conn.data_to_send() == b""


def test_fail_1006_sends_no_close_frame() -> None:
    conn = Connection(Side.CLIENT)
    conn.fail(1006)
    assert conn.data_to_send() == b""
    assert conn.transport_should_close
    assert conn.close_code == 1006


def test_feeding_a_reused_bytearray_is_safe() -> None:
    conn = Connection(Side.SERVER)
    frame = serialize_frame(0x1, b"hello world", mask=True)
    buf = bytearray(frame[:5])
    conn.receive_data(buf)  # type: ignore[arg-type]
    buf[:] = b"\xff" * 5  # the caller reuses its buffer
    conn.receive_data(frame[5:])
    [event] = conn.events_received()
    assert event.data == "hello world"  # type: ignore[union-attr]


def test_iterable_raising_mid_message_fails_with_1011() -> None:
    client = Connection(Side.CLIENT)

    def chunks() -> Iterator[str]:
        yield "first"
        yield "second"
        raise ValueError("producer broke")

    with pytest.raises(ValueError):
        client.send_text(chunks())
    assert client.close_sent == (1011, "error while sending a message")
    assert client.transport_should_close
    server = Connection(Side.SERVER)
    server.receive_data(client.data_to_send())
    assert server.close_received == (1011, "error while sending a message")


def test_iterable_raising_before_any_frame_leaves_connection_open() -> None:
    client = Connection(Side.CLIENT)

    def chunks() -> Iterator[str]:
        raise ValueError("nothing produced")
        yield ""  # pragma: no cover

    with pytest.raises(ValueError):
        client.send_text(chunks())
    assert client.state is State.OPEN
    client.send_text("still usable")
    assert client.data_to_send()


def test_sending_fragmented_tracks_send_fragment() -> None:
    conn = Connection(Side.SERVER)
    assert not conn.sending_fragmented
    conn.send_fragment("a", final=False)
    assert conn.sending_fragmented
    conn.send_fragment("b", final=True)
    assert not conn.sending_fragmented
