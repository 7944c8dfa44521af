"""Trusted proxy headers: the client address and scheme behind a reverse proxy.

Behind nginx every TCP connection comes from nginx, so ``request.client`` would be nginx's
address for every user, and a connection limit per IP would limit everyone at once. A proxy
says who its client was in ``X-Forwarded-For`` and which scheme it spoke in
``X-Forwarded-Proto``; anyone can send those headers, so they are believed only when the TCP
peer is a trusted proxy (uvicorn's ``--proxy-headers`` and ``--forwarded-allow-ips``, with the
same names, defaults and rules)::

    serve(app, proxy_headers=True, forwarded_allow_ips="127.0.0.1, 10.0.0.0/8")

``X-Forwarded-For`` is a list, one address appended by each proxy on the way
(``client, proxy1, proxy2``). The client is the right-most address that is not a trusted
proxy: addresses to its left were written by the client itself and prove nothing. If every
address is trusted, the left-most one is taken. The port is unknown and becomes 0.

Every other layer (auth, limits, logs, metrics) reads ``request.client`` and
``request.scheme`` only: the rewrite happens once, in the server, before dispatch.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ..config import DEFAULT_FORWARDED_ALLOW_IPS
from ..protocol.http11 import Request

__all__ = ["DEFAULT_FORWARDED_ALLOW_IPS", "TrustedProxies", "apply_proxy_headers"]


# RFC 7239 predates these; X-Forwarded-Proto's values are a scheme, and ws/wss are what a
# WebSocket-aware proxy may write.
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
# Distinct peer addresses whose verdict is cached (a proxy is one or a few addresses).
_MAX_CACHE = 1024


class TrustedProxies:
    """A set of trusted proxy addresses: literal IPs, networks (CIDR) or ``*`` for any.

    Args:
        allowed: a comma-separated string (``"127.0.0.1, 10.0.0.0/8"``) or an iterable of
            entries; ``"*"`` trusts every peer (only behind a proxy that strips what clients
            send). Entries that are neither an IP address nor a network are compared as
            literal strings (a Unix socket path, as uvicorn does).

    Raises:
        ValueError: an entry is empty.
    """

    __slots__ = ("_cache", "_literals", "_networks", "always")

    def __init__(self, allowed: str | Iterable[str] = DEFAULT_FORWARDED_ALLOW_IPS) -> None:
        entries = allowed.split(",") if isinstance(allowed, str) else list(allowed)
        #: Whether every peer is trusted (``*``).
        self.always = False
        self._literals: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._cache: dict[str, bool] = {}
        for raw in entries:
            entry = raw.strip()
            if not entry:
                raise ValueError(f"empty entry in forwarded_allow_ips: {allowed!r}")
            if entry == "*":
                self.always = True
                continue
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                self._literals.add(entry)
                continue
            if network.num_addresses == 1:
                self._literals.add(str(network.network_address))
            else:
                self._networks.append(network)

    def __contains__(self, host: object) -> bool:
        """Whether ``host`` (an address as a string) is a trusted proxy."""
        if self.always:
            return True
        if not isinstance(host, str):
            return False
        verdict = self._cache.get(host)
        if verdict is None:
            verdict = self._check(host)
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[host] = verdict
        return verdict

    def _check(self, host: str) -> bool:
        if host in self._literals:
            return True
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        if str(address) in self._literals:
            return True
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual stack
        if mapped is not None and str(mapped) in self._literals:
            return True
        return any(address in network for network in self._networks)

    def client_host(self, forwarded_for: str) -> str | None:
        """The client in an ``X-Forwarded-For`` value: the right-most untrusted address.

        Returns:
            The address, or None when the value names none.
        """
        hosts = [h.strip() for h in forwarded_for.split(",")]
        hosts = [h for h in hosts if h]
        if not hosts:
            return None
        if self.always:
            return hosts[0]
        for host in reversed(hosts):
            if host not in self:
                return host
        return hosts[0]  # every hop is a trusted proxy: the first one is the client


def apply_proxy_headers(request: Request, trusted: TrustedProxies) -> None:
    """Set ``request.client`` and ``request.scheme`` from proxy headers, if they may be believed.

    Does nothing unless the TCP peer (``request.client`` as set from the socket) is a trusted
    proxy. Unix socket connections (no peer address) count as trusted when ``trusted`` has a
    literal entry such as ``"unix"`` or is ``*``.
    """
    peer = request.client
    peer_host = peer[0] if peer is not None else "unix"
    if peer_host not in trusted:
        return
    # One pass over the fields for both names, kept for the handshake's lookups after this.
    fields = request.headers.by_name()
    protos = fields.get("x-forwarded-proto")
    if protos:
        # The left-most value is the scheme the first proxy (the one the client saw) spoke.
        scheme = _SCHEMES.get(protos[0].split(",")[0].strip().lower())
        if scheme is not None:
            request.scheme = scheme
    forwarded = fields.get("x-forwarded-for")
    if forwarded:
        host = trusted.client_host(",".join(forwarded))
        if host is not None:
            request.client = (host, 0)
