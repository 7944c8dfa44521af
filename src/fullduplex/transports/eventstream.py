"""The former name of :mod:`fullduplex.transports.sse` (the SSE route), kept for old imports."""

from __future__ import annotations

from .sse import *  # noqa: F403
from .sse import __all__ as __all__
