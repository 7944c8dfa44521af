"""Counters of the hub and the transports over it, as plain integers, for metrics.

The hub counts what it does with one integer add where it happens (a publish, a fan-out, a
dropped message, a gap sent to a client) and never formats or exports anything:
:mod:`fullduplex.metrics` reads :data:`STATS` when it is scraped, as picows keeps its hot path
free of anything optional. The counters are per process, like prometheus-client's default
registry: every hub of the process adds to them (a process is one scrape target).
"""

from __future__ import annotations

__all__ = ["STATS", "HubStats"]


class HubStats:
    """What the hubs and transports of this process did, since it started."""

    __slots__ = ("delivered", "gaps", "published", "slow")

    def __init__(self) -> None:
        #: Messages published through :meth:`Hub.publish <fullduplex.hub.Hub.publish>`.
        self.published = 0
        #: Messages and gaps handed to subscriptions (one per subscription; a WebSocket
        #: fan-out is one subscription for all its connections).
        self.delivered = 0
        #: Gaps sent to clients by the transports, by reason (``trimmed``, ``dropped``,
        #: ``reset``).
        self.gaps: dict[str, int] = {"trimmed": 0, "dropped": 0, "reset": 0}
        #: Slow-consumer actions by ``(policy, action)``: ``drop`` (a message dropped, a gap
        #: will tell), ``conflate`` (superseded by a newer one), ``disconnect`` (a consumer
        #: closed).
        self.slow: dict[tuple[str, str], int] = {}

    def slow_action(self, policy: str, action: str, count: int = 1) -> None:
        """Count ``count`` slow-consumer actions of a policy (not on a keeping-up path)."""
        key = (str(policy), action)
        self.slow[key] = self.slow.get(key, 0) + count

    def gap(self, reason: str) -> None:
        """Count a gap sent to a client."""
        key = str(reason)
        self.gaps[key] = self.gaps.get(key, 0) + 1


#: The counters of this process.
STATS = HubStats()
