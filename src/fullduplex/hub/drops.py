"""Why a subscriber was dropped, kept for its reconnection: the slow-consumer policy's receipt.

A subscriber closed by the ``disconnect`` policy (:attr:`~fullduplex.hub.Policy.DISCONNECT`)
is by definition not reading: the close frame the server writes waits behind everything it
did not read, and the connection is reset before it gets there. From its side, being dropped
for slowness then looks like a network failure. So the server writes a receipt instead: the
transports name each connection that asks (an id in their ``hello``), and a :class:`DropLog`
remembers, per id, a :class:`Drop` (why, when, which topic). The client gives its previous id
when it reconnects and the answer to its ``hello`` carries the drop (``docs/transports.md``,
"Dropped consumers").

Bounded and expiring: at most ``max_entries`` records (the oldest go first) for at most
``expiry`` seconds each; a record is given once, to the identity it was made for. With a
backend that shares notes (:attr:`Backend.shares_notes <fullduplex.hub.Backend.shares_notes>`:
the Redis backend), every record is also written there (``SET <prefix>n:drop:<id> ... PX``,
batched by one short-lived task), so a client that reconnects to another process learns it
too; such a write lands within a Redis round trip of the drop, and a client that reconnects
to another process faster than that is not told.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import HubUnavailable

if TYPE_CHECKING:
    from .hub import Hub

__all__ = [
    "DEFAULT_DROP_EXPIRY",
    "DEFAULT_MAX_DROPS",
    "Drop",
    "DropLog",
    "check_connection_id",
]

logger = logging.getLogger("fullduplex.hub")

#: Drop records kept per process (~0.3 KiB each: ~3 MiB at most). A burst that drops more
#: consumers at once than this forgets the oldest receipts, never the server's memory.
DEFAULT_MAX_DROPS = 10_000
#: Seconds a drop record is kept: a dropped client reconnects within seconds (its backoff);
#: five minutes cover a laptop's Wi-Fi coming back.
DEFAULT_DROP_EXPIRY = 300.0

# What DropLog.new_id makes: 16 URL-safe characters (96 random bits). A client's previous id
# is checked against this shape before it is looked up.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_connection_id(value: object) -> str:
    """Return ``value`` as a connection id.

    Raises:
        ValueError: it is not 1 to 64 characters among ``A-Z a-z 0-9 _ -``.
    """
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise ValueError("a connection id is 1 to 64 characters among A-Z a-z 0-9 _ -")
    return value


@dataclass(frozen=True, slots=True)
class Drop:
    """Why the server disconnected a subscriber.

    Attributes:
        reason: ``"slow consumer"`` (:data:`~fullduplex.hub.SLOW_CONSUMER`).
        time: when, in seconds since the epoch (the server's clock).
        transport: ``"websocket"`` or ``"sse"``.
        code: the WebSocket close code the server gave (1013, try again later), if any.
        topic: the topic whose backlog overflowed, if one did (an event stream dropped for
            not reading within the server's ``write_timeout`` names none).
    """

    reason: str
    time: float
    transport: str
    code: int | None = None
    topic: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``"dropped"`` object the transports send."""
        out: dict[str, Any] = {"reason": self.reason}
        if self.code is not None:
            out["code"] = self.code
        if self.topic is not None:
            out["topic"] = self.topic
        out["time"] = self.time
        out["transport"] = self.transport
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Drop:
        """Read what :meth:`to_json` wrote (the clients do).

        Raises:
            KeyError, TypeError, ValueError: it is not such an object.
        """
        code = value.get("code")
        topic = value.get("topic")
        return cls(
            reason=str(value["reason"]),
            time=float(value["time"]),
            transport=str(value.get("transport", "")),
            code=int(code) if code is not None else None,
            topic=str(topic) if topic is not None else None,
        )


class DropLog:
    """The drop records of recent connections, by connection id (see the module docstring).

    Args:
        hub: the hub whose backend shares the records between processes, if it can (Redis);
            None keeps them in this process only.
        max_entries: records kept at most (the oldest go first); 0 keeps none (``hello``
            still names connections).
        expiry: seconds a record is kept.
        clock: the monotonic clock the expiry is measured with (tests pass their own).
    """

    def __init__(
        self,
        hub: Hub | None = None,
        *,
        # Limits
        max_entries: int = DEFAULT_MAX_DROPS,
        # Timeouts
        expiry: float = DEFAULT_DROP_EXPIRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be 0 or more")
        if not expiry > 0:
            raise ValueError("expiry must be a positive number of seconds")
        self.hub = hub
        self.max_entries = max_entries
        self.expiry = expiry
        self._clock = clock
        # id -> (deadline on the monotonic clock, owner, drop, written to the shared backend);
        # insertion order is age order.
        self._records: collections.OrderedDict[str, tuple[float, str | None, Drop, bool]] = (
            collections.OrderedDict()
        )
        # Records not written to the shared backend yet (bounded like _records).
        self._unsent: dict[str, str] = {}
        self._writer: asyncio.Task[None] | None = None
        #: Records made, and records given back to a reconnecting client (for tests, metrics).
        self.recorded = 0
        self.reported = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._records)

    @staticmethod
    def new_id() -> str:
        """A new connection id: 16 URL-safe characters, 96 random bits (unguessable)."""
        return secrets.token_urlsafe(12)

    def record(self, connection_id: str, drop: Drop, owner: str | None = None) -> None:
        """Remember that ``connection_id`` was dropped, and why (never blocks, never raises).

        Args:
            connection_id: the id the connection was given (:meth:`new_id`).
            drop: why.
            owner: the identity id of the connection (None: anonymous); only the same
                identity is told.
        """
        if not self.max_entries:
            return
        self._expire()
        records = self._records
        records.pop(connection_id, None)
        records[connection_id] = (self._clock() + self.expiry, owner, drop, False)
        while len(records) > self.max_entries:
            records.popitem(last=False)
        self.recorded += 1
        if self.hub is not None and self.hub.backend.shares_notes:
            self._share(connection_id, owner, drop)

    async def take(self, connection_id: str, owner: str | None = None) -> Drop | None:
        """The drop of ``connection_id`` if it was dropped; forgotten once taken.

        Looks in this process first, then in the shared backend (another process may have
        dropped it). A record made for another identity is not given (and is forgotten).
        A backend that cannot be reached answers None: the client is not told, as after
        the record expired.
        """
        self._expire()
        entry = self._records.pop(connection_id, None)
        self._unsent.pop(_note_name(connection_id), None)
        shared = self.hub is not None and self.hub.backend.shares_notes
        if entry is not None:
            _, recorded_owner, drop, written = entry
            # Read here: the shared copy must not be given a second time elsewhere; and if it
            # was written but is gone, another process gave it already.
            if written:
                reached, note = await self._pop_shared(connection_id)
                if reached and note is None:
                    return None
        elif shared:
            _, note = await self._pop_shared(connection_id)
            if note is None:
                return None
            try:
                value = json.loads(note)
                recorded_owner, drop = value["owner"], Drop.from_json(value["drop"])
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring an unreadable drop record for %s", connection_id)
                return None
        else:
            return None
        if recorded_owner != owner:
            return None
        self.reported += 1
        return drop

    async def close(self) -> None:
        """Write what is still unsent, then stop (at most one backend round trip)."""
        writer = self._writer
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)

    # -- internals ----------------------------------------------------------------------------

    def _expire(self) -> None:
        records = self._records
        now = self._clock()
        while records:
            key = next(iter(records))
            if records[key][0] > now:
                break
            del records[key]

    def _share(self, connection_id: str, owner: str | None, drop: Drop) -> None:
        unsent = self._unsent
        unsent[_note_name(connection_id)] = json.dumps(
            {"owner": owner, "drop": drop.to_json()}, separators=(",", ":")
        )
        while len(unsent) > self.max_entries:
            del unsent[next(iter(unsent))]
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        # One task while records wait, none otherwise: a burst of drops is one pipeline.
        assert self.hub is not None
        try:
            while self._unsent:
                batch, self._unsent = self._unsent, {}
                try:
                    await self.hub.backend.set_notes(batch, self.expiry)
                except Exception as exc:  # HubUnavailable, or a backend closed under it
                    # Kept in this process all the same: a reconnection here is still told.
                    logger.warning("drop records not shared (%d): %s", len(batch), exc)
                    continue
                records = self._records
                for name in batch:
                    connection_id = name.removeprefix("drop:")
                    entry = records.get(connection_id)
                    if entry is not None:
                        records[connection_id] = (*entry[:3], True)
        finally:
            self._writer = None

    async def _pop_shared(self, connection_id: str) -> tuple[bool, str | None]:
        """Whether the backend answered, and the note it had."""
        assert self.hub is not None
        try:
            return True, await self.hub.backend.pop_note(_note_name(connection_id))
        except HubUnavailable as exc:
            logger.info("drop record of %s not read: %s", connection_id, exc)
            return False, None


def _note_name(connection_id: str) -> str:
    return f"drop:{connection_id}"
