"""Masking (RFC 6455 5.3), both implementations: pure Python and the C accelerator."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fullduplex.protocol.mask import TRANSLATE_MIN, apply_mask_python

MaskFunction = Callable[..., bytes]


def _load_c() -> MaskFunction | None:
    try:
        from fullduplex.protocol._speedups import apply_mask
    except ImportError:
        return None
    return apply_mask


def _c_missing(*args: object) -> bytes:
    # CI sets FULLDUPLEX_REQUIRE_SPEEDUPS=1: a build that silently lost the accelerator fails.
    pytest.fail("FULLDUPLEX_REQUIRE_SPEEDUPS=1 but fullduplex.protocol._speedups is not built")


_C = _load_c()
if _C is not None:
    _C_PARAM = pytest.param(_C, id="c")
elif os.environ.get("FULLDUPLEX_REQUIRE_SPEEDUPS") == "1":
    _C_PARAM = pytest.param(_c_missing, id="c")
else:
    _C_PARAM = pytest.param(
        None,
        id="c",
        marks=pytest.mark.skip(
            reason="C accelerator not built (no compiler at install time); "
            "set FULLDUPLEX_REQUIRE_SPEEDUPS=1 to fail instead"
        ),
    )


def reference(data: bytes, key: bytes) -> bytes:
    """RFC 6455 5.3, word for word: "j = i MOD 4; transformed-octet-i = original-octet-i XOR
    masking-key-octet-j"."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


KEY = bytes.fromhex("37fa213d")
keys = st.binary(min_size=4, max_size=4)


@pytest.mark.parametrize("apply_mask", [pytest.param(apply_mask_python, id="python"), _C_PARAM])
class TestApplyMask:
    def test_rfc6455_hello(self, apply_mask: MaskFunction) -> None:
        # RFC 6455 5.7: "A single-frame masked text message ... contains "Hello""
        frame = bytes.fromhex("81 85 37 fa 21 3d 7f 9f 4d 51 58")
        key, masked = frame[2:6], frame[6:]
        assert apply_mask(masked, key) == b"Hello"
        assert apply_mask(b"Hello", key) == masked

    @pytest.mark.parametrize("n", range(71))
    def test_short_lengths(self, apply_mask: MaskFunction, n: int) -> None:
        data = os.urandom(n)
        assert apply_mask(data, KEY) == reference(data, KEY)

    @pytest.mark.parametrize("delta", range(-5, 6))
    def test_around_crossover(self, apply_mask: MaskFunction, delta: int) -> None:
        data = os.urandom(TRANSLATE_MIN + delta)
        assert apply_mask(data, KEY) == reference(data, KEY)

    @pytest.mark.parametrize("n", [63, 64, 65, 127, 128, 129, 4095, 4096, 4097, 65536 + 13])
    def test_vector_boundaries(self, apply_mask: MaskFunction, n: int) -> None:
        data = os.urandom(n)
        assert apply_mask(data, KEY) == reference(data, KEY)

    def test_one_mebibyte(self, apply_mask: MaskFunction) -> None:
        data = os.urandom(2**20)
        key = os.urandom(4)
        assert apply_mask(data, key) == reference(data, key)

    @pytest.mark.parametrize("offset", range(8))
    def test_unaligned_memoryview(self, apply_mask: MaskFunction, offset: int) -> None:
        buf = os.urandom(300)
        view = memoryview(buf)[offset : offset + 200]
        assert apply_mask(view, KEY) == reference(buf[offset : offset + 200], KEY)

    @pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda t: t.__name__)
    def test_bytes_like_inputs(self, apply_mask: MaskFunction, wrap: type) -> None:
        for n in (0, 5, 100, TRANSLATE_MIN + 3):
            data = os.urandom(n)
            result = apply_mask(wrap(data), wrap(KEY))
            assert type(result) is bytes
            assert result == reference(data, KEY)

    def test_input_untouched(self, apply_mask: MaskFunction) -> None:
        for n in (10, TRANSLATE_MIN * 2):
            data = bytearray(os.urandom(n))
            before = bytes(data)
            apply_mask(data, KEY)
            assert data == before

    @pytest.mark.parametrize("key", [b"", b"\x01", b"abc", b"abcde", b"12345678"])
    def test_bad_key_length(self, apply_mask: MaskFunction, key: bytes) -> None:
        with pytest.raises(ValueError, match="4 bytes"):
            apply_mask(b"payload", key)
        with pytest.raises(ValueError, match="4 bytes"):
            apply_mask(bytearray(2 * TRANSLATE_MIN), bytearray(key))

    def test_not_bytes_like(self, apply_mask: MaskFunction) -> None:
        with pytest.raises(TypeError):
            apply_mask("text", KEY)
        with pytest.raises(TypeError):
            apply_mask(b"data", "abcd")

    # The property tests call apply_mask once outside @given, so a missing accelerator under
    # FULLDUPLEX_REQUIRE_SPEEDUPS=1 fails the test plainly instead of inside hypothesis.
    def test_matches_reference(self, apply_mask: MaskFunction) -> None:
        assert apply_mask(b"", KEY) == b""

        @given(data=st.binary(max_size=3 * TRANSLATE_MIN), key=keys)
        def check(data: bytes, key: bytes) -> None:
            assert apply_mask(data, key) == reference(data, key)

        check()

    def test_involution(self, apply_mask: MaskFunction) -> None:
        assert apply_mask(b"", KEY) == b""

        @given(data=st.binary(max_size=3 * TRANSLATE_MIN), key=keys)
        def check(data: bytes, key: bytes) -> None:
            assert apply_mask(apply_mask(data, key), key) == data

        check()


def test_implementations_agree_on_large_payload() -> None:
    if _C is None:
        if os.environ.get("FULLDUPLEX_REQUIRE_SPEEDUPS") == "1":
            pytest.fail("FULLDUPLEX_REQUIRE_SPEEDUPS=1 but the C accelerator is not built")
        pytest.skip("C accelerator not built (no compiler at install time)")
    data = os.urandom(3 * 2**20 + 3)
    key = os.urandom(4)
    assert _C(data, key) == apply_mask_python(data, key)


@pytest.mark.parametrize(("value", "expected"), [("1", False), ("0", _C is not None)])
def test_no_speedups_env_var(value: str, expected: bool) -> None:
    code = "from fullduplex.protocol.mask import has_accelerator; print(has_accelerator())"
    env = {**os.environ, "FULLDUPLEX_NO_SPEEDUPS": value}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(expected)
