"""Signed tokens out of the box: JSON Web Tokens (RFC 7519) checked with PyJWT.

:class:`JWTAuth` is an authenticator (see :mod:`~fullduplex.auth.identity`)::

    auth = JWTAuth("a long random secret", audience="chat")     # HS256
    auth = JWTAuth(public_pem, algorithms=["RS256"], issuer="https://id.example")
    app = fullduplex.App(auth=auth)

It reads the token, in this order, from

1. ``Authorization: Bearer <token>`` (RFC 6750 2.1), for programs;
2. a cookie (``token`` by default), for pages on the same site: a browser sends it with the
   WebSocket upgrade and the EventSource request, which cannot carry headers;
3. a query parameter (``token`` by default; RFC 6750 2.3), for cross-site pages. The server
   redacts the parameter from every log line (:mod:`~fullduplex.auth.redact`); it still shows
   in browser history and proxy logs of your own, so prefer short-lived tokens there.

It checks the signature (only with the ``algorithms`` given: never ``none``, and never an HMAC
key taken for a public key), ``exp`` (required by default), ``nbf``, ``aud`` and ``iss`` when
configured, with ``leeway`` seconds for clocks that disagree, and needs a string ``sub``: the
identity's id. The claims become ``identity.claims``; a WebSocket is closed with 1008 ("token
expired") when its ``exp`` passes.

Refusals are :class:`~fullduplex.auth.identity.Unauthorized` (401, RFC 6750 3.1
``error="invalid_token"``), with a message that says what is wrong but never echoes the token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jwt

from ..protocol.http11 import Request
from .identity import Identity, Unauthorized
from .redact import SENSITIVE_QUERY_PARAMS

__all__ = [
    "DEFAULT_TOKEN_COOKIE",
    "DEFAULT_TOKEN_PARAM",
    "MIN_HMAC_KEY_BYTES",
    "JWTAuth",
    "bearer_token",
    "cookie",
]

#: Shortest HMAC secret accepted: RFC 7518 3.2, "A key of the same size as the hash output
#: (for instance, 256 bits for "HS256") or larger MUST be used with this algorithm."
MIN_HMAC_KEY_BYTES = 32
#: The cookie :class:`JWTAuth` reads by default.
DEFAULT_TOKEN_COOKIE = "token"
#: The query parameter :class:`JWTAuth` reads by default (and the server redacts from logs).
DEFAULT_TOKEN_PARAM = "token"

_CHALLENGE = 'Bearer error="invalid_token"'
_MISSING = "Bearer"  # RFC 6750 3.1: no error code when the request had no token at all


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def cookie(request: Request, name: str) -> str | None:
    """The value of cookie ``name`` (RFC 6265 5.4 ``Cookie`` header), or None."""
    for header in request.headers.get_all("Cookie"):
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                return value.strip('"') or None
    return None


class JWTAuth:
    """An authenticator for JSON Web Tokens (see the module docstring).

    Args:
        key: the HMAC secret (HS256: at least 32 bytes), or the PEM public key (RS256,
            ES256...).
        algorithms: the algorithms accepted; give one family only.
        audience: the ``aud`` required (a string or several); None: a token with ``aud`` is
            refused, as RFC 7519 4.1.3 asks of a recipient not named in it.
        issuer: the ``iss`` required, or None.
        leeway: seconds of clock skew tolerated for ``exp`` and ``nbf``.
        require: claims a token must have (``exp`` by default: no token lives forever).
        cookie: the cookie to read, None for none.
        query_param: the query parameter to read, None for none.
        anonymous: let requests without any token in as anonymous (a bad token is still
            refused): for routes anyone may read, with more rights for those logged in.
        signing_key: the key :meth:`issue` signs with (the secret for HS256, the PEM private
            key for RS256); ``key`` when None.

    Raises:
        ValueError: no algorithm, ``none``, or an HMAC secret shorter than 32 bytes.
    """

    def __init__(
        self,
        key: str | bytes,
        algorithms: Sequence[str] = ("HS256",),
        *,
        audience: str | Iterable[str] | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        require: Sequence[str] = ("exp",),
        cookie: str | None = DEFAULT_TOKEN_COOKIE,
        query_param: str | None = DEFAULT_TOKEN_PARAM,
        anonymous: bool = False,
        signing_key: str | bytes | None = None,
    ) -> None:
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError("algorithms: at least one, and never 'none'")
        hmac = any(a.upper().startswith("HS") for a in algorithms)
        if hmac and len(key.encode() if isinstance(key, str) else key) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"an HMAC secret of at least {MIN_HMAC_KEY_BYTES} bytes")
        self.key = key
        self.algorithms = list(algorithms)
        self.audience = (
            audience if audience is None or isinstance(audience, str) else list(audience)
        )
        self.issuer = issuer
        self.leeway = leeway
        self.require = list(require)
        self.cookie = cookie
        self.query_param = query_param
        self.anonymous = anonymous
        self.signing_key = signing_key if signing_key is not None else key
        if query_param is not None:
            # Never in a log line: see fullduplex.auth.redact.
            SENSITIVE_QUERY_PARAMS.add(query_param.lower())

    def token(self, request: Request) -> str | None:
        """The token the request carries (header, then cookie, then query), or None."""
        token = bearer_token(request)
        if token is None and self.cookie is not None:
            token = cookie(request, self.cookie)
        if token is None and self.query_param is not None and "?" in request.target:
            values = request.query.get(self.query_param)
            token = values[0] if values else None
        return token

    def __call__(self, request: Request) -> Identity | None:
        """Authenticate ``request``.

        Returns:
            The token's identity, or None (anonymous) when it has none and ``anonymous``.

        Raises:
            Unauthorized: no token (unless ``anonymous``), or an invalid one.
        """
        token = self.token(request)
        if token is None:
            if self.anonymous:
                return None
            raise Unauthorized("authentication required", www_authenticate=_MISSING)
        return self.verify(token)

    def verify(self, token: str) -> Identity:
        """Check a token and return its identity.

        Raises:
            Unauthorized: the token is invalid; the message says why, without the token.
        """
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": self.require},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("token expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise _invalid("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise _invalid("token issuer not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"token lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise _invalid("token signature invalid") from None
        except jwt.InvalidTokenError:
            raise _invalid("token invalid") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _invalid("token has no subject")
        return Identity(sub, claims)

    def issue(self, sub: str, *, expires_in: float = 3600.0, **claims: Any) -> str:
        """Sign a token for ``sub`` valid ``expires_in`` seconds (for tests, demos, logins).

        ``aud`` and ``iss`` are set from this authenticator's settings unless given.
        """
        now = time.time()
        # Whole seconds (RFC 7519 2 NumericDate; PyJWT truncates fractions), rounded up.
        exp = math.ceil(now + expires_in)
        payload: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": exp}
        if self.audience is not None:
            payload["aud"] = self.audience
        if self.issuer is not None:
            payload["iss"] = self.issuer
        payload.update(claims)
        return jwt.encode(payload, self.signing_key, algorithm=self.algorithms[0])


def _invalid(message: str) -> Unauthorized:
    return Unauthorized(message, www_authenticate=f'{_CHALLENGE}, error_description="{message}"')
