"""Logging helpers: rate-limited warnings, JSON lines, the command line's set-up.

The package logs to ``fullduplex`` (server, hub, transports) and ``fullduplex.access`` (one
line per HTTP request and per closed WebSocket). Nothing here is needed to use them: the
standard :mod:`logging` configuration applies. Two helpers serve operators:

* :class:`RateLimitedLogger` keeps a warning that repeats (a hub outage seen by every tick of
  a publisher) to one record per interval, and says how many it held back;
* :class:`JSONFormatter` writes one JSON object per line (``fullduplex serve --log-format
  json``), with the structured fields a record carries (the close line's ``connection``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = [
    "DEFAULT_RATE_LIMIT_INTERVAL",
    "JSONFormatter",
    "RateLimitedLogger",
    "configure",
]

#: Seconds between two records of the same repeated message (:class:`RateLimitedLogger`).
DEFAULT_RATE_LIMIT_INTERVAL = 10.0

# What every LogRecord has; anything else was passed with extra= and belongs in the JSON.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RateLimitedLogger:
    """Log a repeated message at most once per ``interval`` seconds.

    Messages are told apart by their format string (not their arguments), so "hub
    unavailable (%s)" with a different error each time is one message. The first occurrence
    is logged at once; the next ones within ``interval`` are counted, and the first record
    after the interval ends with ``(N similar messages suppressed)``. Costs one dict lookup
    and one clock read per call.

    Example::

        log = RateLimitedLogger(logging.getLogger(__name__))
        log.warning("ticker: hub unavailable, skipping a price")

    Args:
        logger: where the records go.
        interval: seconds between two records of one message; None logs every one.
    """

    __slots__ = ("_last", "interval", "logger")

    def __init__(
        self, logger: logging.Logger, interval: float | None = DEFAULT_RATE_LIMIT_INTERVAL
    ) -> None:
        if interval is not None and not interval > 0:
            raise ValueError(f"interval must be positive or None, not {interval!r}")
        #: The logger the records go to.
        self.logger = logger
        #: Seconds between two records of one message (None: no limit).
        self.interval = interval
        # Format string -> (when it was last logged, occurrences held back since).
        self._last: dict[str, tuple[float, int]] = {}

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Log ``msg % args`` at ``level`` unless it was logged less than ``interval`` ago.

        Returns:
            True if a record was emitted, False if this one was held back.
        """
        if not self.logger.isEnabledFor(level):
            return False
        if self.interval is None:
            self.logger.log(level, msg, *args, stacklevel=2, **kwargs)
            return True
        now = time.monotonic()
        last = self._last.get(msg)
        if last is not None and now - last[0] < self.interval:
            self._last[msg] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        self._last[msg] = (now, 0)
        if held:
            msg = f"{msg} (%d similar messages suppressed)"
            args = (*args, held)
        self.logger.log(level, msg, *args, stacklevel=2, **kwargs)
        return True

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> bool:
        """:meth:`log` at ERROR."""
        return self.log(logging.ERROR, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> bool:
        """:meth:`log` at INFO."""
        return self.log(logging.INFO, msg, *args, **kwargs)


class JSONFormatter(logging.Formatter):
    """Format each record as one JSON object on one line.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``, then
    every field passed with ``extra=`` (the WebSocket close line's ``connection``: peer,
    route, close code, duration, messages and bytes each way), then ``exception`` (the
    formatted traceback) when there is one. Values JSON cannot encode become strings.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line (no trailing newline)."""
        out: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)

    @staticmethod
    def _time(record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


def configure(level: int | str = logging.INFO, fmt: str = "text") -> None:
    """Send the root logger's records to standard error, as text or JSON lines.

    What ``fullduplex serve --log-level --log-format`` calls; replaces the root logger's
    handlers, so it can be called again.

    Args:
        level: the level, as a number or a name (``"debug"``, ``"INFO"``...).
        fmt: ``"text"`` (time, level, logger, message) or ``"json"`` (:class:`JSONFormatter`).

    Raises:
        ValueError: an unknown format or level name.
    """
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"unknown log level {level!r}")
        level = number
    if fmt == "json":
        formatter: logging.Formatter = JSONFormatter()
    elif fmt == "text":
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
