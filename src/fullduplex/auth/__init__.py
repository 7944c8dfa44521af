"""Authentication, topic permissions and CORS: who is connected and what they may do.

One small interface, shared by the router, every hub transport and the permission checks:
an *authenticator* takes the request and returns an :class:`Identity` or refuses::

    from fullduplex.auth import JWTAuth, Unauthorized

    app = fullduplex.App(auth=JWTAuth(secret, audience="chat"))   # every route and transport

    @app.authenticate                                           # or a function of your own
    async def who(request):
        user = await sessions.get(cookie(request, "session"))
        if user is None:
            raise Unauthorized("log in first")
        return Identity(user.name, {"role": user.role})

* :mod:`~fullduplex.auth.identity`: :class:`Identity`, :class:`AuthError` and the interface;
* :mod:`~fullduplex.auth.tokens`: :class:`JWTAuth` (HS256, RS256... through PyJWT);
* :mod:`~fullduplex.auth.permissions`: topic patterns naming the identity (``user.{id}``);
  :class:`~fullduplex.transports.TopicRules` uses them on all four transports;
* :mod:`~fullduplex.auth.cors`: :class:`CORS` for HTTP routes;
* :mod:`~fullduplex.auth.redact`: tokens in query strings never reach the logs.

The threat model and every default: ``docs/security.md``.
"""

from __future__ import annotations

from .cors import CORS, DEFAULT_CORS_MAX_AGE
from .identity import (
    ANONYMOUS,
    Authenticator,
    AuthError,
    Forbidden,
    Identity,
    Unauthorized,
    authenticate,
    check_result,
    expires_in,
)
from .permissions import PatternSet
from .redact import SENSITIVE_QUERY_PARAMS, redact_target
from .tokens import DEFAULT_TOKEN_COOKIE, DEFAULT_TOKEN_PARAM, JWTAuth, bearer_token, cookie

__all__ = [
    "ANONYMOUS",
    "CORS",
    "DEFAULT_CORS_MAX_AGE",
    "DEFAULT_TOKEN_COOKIE",
    "DEFAULT_TOKEN_PARAM",
    "SENSITIVE_QUERY_PARAMS",
    "AuthError",
    "Authenticator",
    "Forbidden",
    "Identity",
    "JWTAuth",
    "PatternSet",
    "Unauthorized",
    "authenticate",
    "bearer_token",
    "check_result",
    "cookie",
    "expires_in",
    "redact_target",
]
