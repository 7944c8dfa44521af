"""The exception tree, the accelerator loader's fallbacks, and the extension base class."""

from __future__ import annotations

import sys

import pytest

from fullduplex.protocol import exceptions as exc
from fullduplex.protocol import mask
from fullduplex.protocol.extensions import Extension
from fullduplex.protocol.frames import Frame


def test_connection_closed_carries_code_and_reason() -> None:
    closed = exc.ConnectionClosedOK(1000, "bye")
    assert (closed.code, closed.reason) == (1000, "bye")
    assert str(closed) == "connection closed: 1000 bye"
    assert str(exc.ConnectionClosedError(1006, "")) == "connection closed: 1006"
    assert isinstance(closed, exc.ConnectionClosed)
    assert isinstance(closed, exc.FullduplexError)


def test_remote_errors_carry_what_to_answer() -> None:
    assert exc.PayloadTooBig("x").code == 1009
    assert exc.InvalidUTF8().public_reason == "invalid UTF-8"
    assert exc.ProtocolError("detail", 1007).public_reason == "invalid data"
    assert exc.ProtocolError("detail with peer data").public_reason == "protocol error"
    assert exc.InvalidOrigin("no").status == 403
    status = exc.InvalidStatus(404, [("Content-Type", "text/plain")], b"not found")
    assert (status.status, status.body) == (404, b"not found")
    assert "404" in str(status)
    assert issubclass(exc.MessageTooBig, exc.InvalidHandshake)


def test_extension_memory_estimate_defaults_to_zero() -> None:
    class Identity(Extension):
        name = "x-identity"

        def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
            return frame

        def encode(self, frame: Frame) -> Frame:
            return frame

    assert Identity().memory_estimate() == 0


def test_loader_honours_no_speedups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULLDUPLEX_NO_SPEEDUPS", "1")
    assert mask._load_accelerator() is None


def test_loader_falls_back_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FULLDUPLEX_NO_SPEEDUPS", raising=False)
    monkeypatch.setitem(sys.modules, "fullduplex.protocol._speedups", None)  # import fails
    assert mask._load_accelerator() is None


def test_has_accelerator_tells_which_function_is_used() -> None:
    assert mask.has_accelerator() == (mask.apply_mask is not mask.apply_mask_python)
