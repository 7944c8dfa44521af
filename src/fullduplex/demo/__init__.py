"""The demo application served by ``fullduplex serve``."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
