"""Cross-Origin Resource Sharing (the Fetch standard's CORS protocol) for HTTP routes.

A page of another origin may read an HTTP route's answer only if the server says so; a
request that is not "simple" (``POST`` with ``Content-Type: application/json``, an
``Authorization`` header...) is first asked about with a preflight ``OPTIONS``. Give the
application a :class:`CORS` policy::

    app = fullduplex.App(cors=CORS(["https://app.example"], credentials=True))

and every HTTP route (the hub's ``/sse``, ``/longpoll``, ``/poll``, ``/publish`` included)
answers preflights and marks its responses for the allowed origins. WebSocket routes are not
concerned: browsers do not apply CORS to WebSockets; they send ``Origin``, which a route's
``origins=`` allow-list checks (see docs/security.md, CSWSH).

Without a policy (the default), no CORS header is sent: browsers keep other origins' pages
from reading any answer, and ``OPTIONS`` gets 405.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..protocol.http11 import Headers, Request, Response

__all__ = ["CORS", "DEFAULT_CORS_MAX_AGE"]

#: Seconds a browser may cache a preflight answer (Chromium caps it at 7,200; Firefox 86,400).
DEFAULT_CORS_MAX_AGE = 600

#: Exposed to allowed origins whenever an answer has them (a 429's Retry-After...).
_REFUSAL_FIELDS = ("Retry-After", "WWW-Authenticate")

_SIMPLE_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type"})


class CORS:
    """Which other origins may call the HTTP routes.

    Args:
        origins: allowed origins, exactly as browsers send them (``https://app.example``,
            scheme and port included), or ``["*"]`` for any (not with ``credentials``).
        methods: methods allowed in preflights (also limited by each route's own).
        headers: request headers allowed (``Content-Type`` for JSON bodies,
            ``Authorization`` for Bearer tokens, ``Last-Event-ID`` for event streams).
        credentials: let pages send cookies and ``Authorization`` (then origins are echoed,
            never ``*``).
        expose_headers: response headers pages may read besides the simple ones;
            ``Retry-After`` and ``WWW-Authenticate`` are exposed whenever an answer has them
            (a 429's wait, a 401's challenge).
        max_age: seconds a preflight answer is cached, None for the browser's default.

    Raises:
        ValueError: ``*`` with ``credentials`` (the Fetch standard forbids it and browsers
            refuse it: listing origins is the safe form).
    """

    def __init__(
        self,
        origins: Iterable[str],
        *,
        methods: Sequence[str] = ("GET", "HEAD", "POST"),
        headers: Sequence[str] = ("Content-Type", "Authorization", "Last-Event-ID"),
        credentials: bool = False,
        expose_headers: Sequence[str] = (),
        max_age: int | None = DEFAULT_CORS_MAX_AGE,
    ) -> None:
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.any_origin = "*" in self.origins
        if self.any_origin and credentials:
            raise ValueError("CORS: origins '*' with credentials; list the origins instead")
        self.methods = tuple(m.upper() for m in methods)
        self.headers = tuple(headers)
        self._allowed_headers = frozenset(h.lower() for h in headers) | _SIMPLE_HEADERS
        self.credentials = credentials
        self.expose_headers = tuple(expose_headers)
        self._exposed = frozenset(h.lower() for h in expose_headers)
        self.max_age = max_age

    def allows(self, origin: str | None) -> bool:
        """Whether a page of ``origin`` may read answers."""
        return origin is not None and (self.any_origin or origin in self.origins)

    def add_headers(self, request: Request, headers: Headers) -> None:
        """Mark a response to ``request`` for its origin (nothing for other origins)."""
        headers.add("Vary", "Origin")  # the answer depends on Origin: caches must know
        origin = request.headers.get("Origin")
        if not self.allows(origin):
            return
        assert origin is not None
        if self.credentials:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Allow-Credentials"] = "true"
        else:
            headers["Access-Control-Allow-Origin"] = "*" if self.any_origin else origin
        exposed = list(self.expose_headers)
        # Fields of the server's own refusals that a page needs and the Fetch standard does not
        # expose by default: when to retry a 429 or 503, the challenge of a 401.
        for name in _REFUSAL_FIELDS:
            if name in headers and name.lower() not in self._exposed:
                exposed.append(name)
        if exposed:
            headers["Access-Control-Expose-Headers"] = ", ".join(exposed)

    @staticmethod
    def is_preflight(request: Request) -> bool:
        """Whether ``request`` is a CORS preflight (``OPTIONS`` with the request method)."""
        return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers

    def preflight(self, request: Request, route_methods: Iterable[str]) -> Response:
        """Answer a preflight for a route accepting ``route_methods``.

        204 with the allowed methods and headers, or 403 (and no CORS header, so the browser
        refuses the real request) for an origin, method or header not allowed.
        """
        origin = request.headers.get("Origin")
        method = (request.headers.get("Access-Control-Request-Method") or "").strip().upper()
        asked = request.headers.get("Access-Control-Request-Headers") or ""
        names = [h.strip().lower() for h in asked.split(",") if h.strip()]
        allowed = [m for m in self.methods if m in route_methods]
        reason = None
        if not self.allows(origin):
            reason = "origin not allowed"
        elif method not in allowed:
            reason = "method not allowed"
        elif any(n not in self._allowed_headers for n in names):
            reason = "header not allowed"
        if reason is not None:
            body = b'{"error":"CORS: ' + reason.encode() + b'"}'
            headers = Headers([("Content-Type", "application/json"), ("Vary", "Origin")])
            return Response(403, headers, body)
        headers = Headers()
        self.add_headers(request, headers)
        headers["Access-Control-Allow-Methods"] = ", ".join(allowed)
        if self.headers:
            headers["Access-Control-Allow-Headers"] = ", ".join(self.headers)
        if self.max_age is not None:
            headers["Access-Control-Max-Age"] = str(self.max_age)
        return Response(204, headers, b"")
