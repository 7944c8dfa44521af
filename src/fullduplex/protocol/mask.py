"""Masking (RFC 6455 5.3): XOR the payload with a repeating 4-byte key.

:func:`apply_mask` is the C accelerator ``fullduplex.protocol._speedups`` when the package was
built with a compiler, else the pure-Python :func:`apply_mask_python`, which picks between two
methods by payload size (see :data:`TRANSLATE_MIN`).
"""

from __future__ import annotations

__all__ = ["TRANSLATE_MIN", "apply_mask", "apply_mask_python", "has_accelerator"]

# 256 translation tables, one per key byte value: _TABLES[k][b] == b ^ k.
_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]

#: Payloads shorter than this are masked with one big-integer XOR; longer ones with four
#: ``bytes.translate`` calls over strided slices. Measured (CPython 3.11, this machine): the XOR
#: takes 0.3 us at 32 B against 0.7 us for translate, but only 0.3 GB/s at 1 MiB against 1.2 GB/s.
TRANSLATE_MIN = 2048


def _mask_translate(data: bytes, key: bytes) -> bytes:
    out = bytearray(data)
    for i in range(4):
        out[i::4] = out[i::4].translate(_TABLES[key[i]])
    return bytes(out)


def _mask_int(data: bytes, key: bytes) -> bytes:
    n = len(data)
    repeated = key * ((n >> 2) + 1)
    mask = int.from_bytes(repeated[:n], "little")
    return (int.from_bytes(data, "little") ^ mask).to_bytes(n, "little")


def apply_mask_python(data: bytes, key: bytes) -> bytes:
    """Mask or unmask ``data`` with the 4-byte ``key``, in pure Python.

    Args:
        data: the payload.
        key: the masking key, exactly 4 bytes.

    Returns:
        The masked (or unmasked: the operation is its own inverse) payload.
    """
    if len(key) != 4:
        raise ValueError("masking key must be 4 bytes")
    if len(data) < TRANSLATE_MIN:
        return _mask_int(data, key)
    return _mask_translate(data, key)


try:
    from ._speedups import apply_mask as _c_apply_mask  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # no compiler at install time: the pure-Python path, silently
    _c_apply_mask = None


def has_accelerator() -> bool:
    """Tell whether the C masking accelerator is in use."""
    return _c_apply_mask is not None


apply_mask = apply_mask_python if _c_apply_mask is None else _c_apply_mask
