"""The transports' caches (JSON envelope, WebSocket frame) serve the message asked for."""

from __future__ import annotations

from fullduplex.hub import Message
from fullduplex.transports.broadcast import FrameCache
from fullduplex.transports.common import EnvelopeCache


def test_envelopes_are_not_served_stale() -> None:
    # A broker that lost its data numbers a topic's messages from 1 again: same (topic, seq).
    envelopes = EnvelopeCache()
    assert "before" in envelopes.text(Message("t", 1, "before", 1.0))
    assert "after" in envelopes.text(Message("t", 1, "after", 2.0))
    again = Message("t", 1, "after", 2.0)  # equal, another object (a replay from Redis)
    assert "after" in envelopes.text(again)
    assert envelopes.encoded == 2


def test_frames_are_not_served_stale() -> None:
    frames = FrameCache()
    _, before = frames.get(Message("t", 1, "before", 1.0))
    text, after = frames.get(Message("t", 1, "after", 2.0))
    assert "after" in text and b"after" in after and before != after
    message = Message("t", 2, {"k": 1}, 3.0)
    assert frames.get(message) == frames.get(message)
    assert frames.framed == 3
