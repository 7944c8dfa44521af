"""Keep credentials out of log lines: query parameters that carry tokens are redacted.

Browsers cannot set headers on a ``WebSocket`` or an ``EventSource``, so cross-site pages send
their token in the URL (RFC 6750 2.3, with its warning: "it is likely to be logged"). Every log
line of the server that shows a request target goes through :func:`redact_target`, which
replaces the value of each parameter named in :data:`SENSITIVE_QUERY_PARAMS` with
``[redacted]``. :class:`~fullduplex.auth.tokens.JWTAuth` adds its ``query_param`` there;
add your own names if your tokens travel under another one.
"""

from __future__ import annotations

__all__ = ["REDACTED", "SENSITIVE_QUERY_PARAMS", "redact_target"]

#: What a redacted value is replaced with.
REDACTED = "[redacted]"
#: Query parameters whose values never appear in logs (compared case-insensitively).
SENSITIVE_QUERY_PARAMS: set[str] = {
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "jwt",
    "auth",
    "authorization",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
    "signature",
    "sig",
}


def redact_target(target: str) -> str:
    """``target`` with the values of sensitive query parameters replaced by ``[redacted]``.

    A target without a query is returned as it is (one ``in`` test: the usual cost).
    """
    path, sep, query = target.partition("?")
    if not sep:
        return target
    sensitive = SENSITIVE_QUERY_PARAMS
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if eq and _decoded(name) in sensitive:
            parts[i] = f"{name}={REDACTED}"
    return f"{path}?{'&'.join(parts)}"


def _decoded(name: str) -> str:
    if "%" in name or "+" in name:
        from urllib.parse import unquote_plus

        name = unquote_plus(name)
    return name.lower()
