"""Who is on the other end: :class:`Identity`, refusals, and the authenticator interface.

An *authenticator* is one function of the application's, sync or async, that takes the
:class:`~fullduplex.protocol.http11.Request` (headers, cookies, query, ``request.client``) and

* returns an :class:`Identity`: the request goes on, and handlers and permission checks see it
  as ``request.identity`` (``ws.identity`` on a WebSocket);
* returns None: the request goes on as :data:`ANONYMOUS`;
* raises :class:`AuthError` (:class:`Unauthorized`, 401, or :class:`Forbidden`, 403): the
  request is refused with that status and the error's message, which must be safe to show
  (a WebSocket upgrade is refused before any 101; no handler runs).

Any other exception is a bug of the authenticator: the request gets 500 and the traceback goes
to the log, never to the peer.

Exceptions::

    AuthError(Exception)          status, message, www_authenticate
    ├── Unauthorized              401: no credentials, or invalid ones
    └── Forbidden                 403: valid credentials, not allowed here
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..protocol.http11 import Request

__all__ = [
    "ANONYMOUS",
    "AuthError",
    "Authenticator",
    "Forbidden",
    "Identity",
    "Unauthorized",
    "authenticate",
    "check_result",
    "expires_in",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection or request belongs to.

    Attributes:
        id: the identity's stable name: the JWT ``sub``, or what the application's
            authenticator says (presence and ``{id}`` topic patterns key on it).
        claims: everything else known about it (the JWT's claims; a numeric ``exp``, in
            seconds since the epoch, closes a WebSocket when it passes).
        anonymous: True for a client that gave no credentials where that is allowed.
    """

    id: str
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)
    anonymous: bool = False


#: The identity of a request an authenticator let in without credentials (it returned None).
ANONYMOUS = Identity("", _EMPTY, anonymous=True)


class AuthError(Exception):
    """A refusal: the request is answered with :attr:`status` and ``str(exc)`` (safe to show).

    Args:
        message: what the client is told (never a secret, a token or a stack trace).
        status: 401 or 403.
        www_authenticate: the ``WWW-Authenticate`` value sent with a 401 (RFC 7235 3.1: "The
            server generating a 401 response MUST send a WWW-Authenticate header field").
    """

    #: The default status of this class.
    default_status = 401

    def __init__(
        self,
        message: str = "authentication required",
        status: int | None = None,
        *,
        www_authenticate: str = "Bearer",
    ) -> None:
        super().__init__(message)
        #: The HTTP status of the refusal.
        self.status = status if status is not None else self.default_status
        if self.status not in (401, 403):
            raise ValueError("an AuthError's status is 401 or 403")
        #: The ``WWW-Authenticate`` challenge sent with a 401.
        self.www_authenticate = www_authenticate


class Unauthorized(AuthError):
    """401: no credentials, or credentials that are invalid (bad signature, expired...)."""

    default_status = 401


class Forbidden(AuthError):
    """403: the credentials are valid but do not allow this."""

    default_status = 403

    def __init__(self, message: str = "forbidden", status: int | None = None) -> None:
        super().__init__(message, status)


#: The application's authenticator: ``(request) -> Identity | None``, or a coroutine function
#: doing the same; raises :class:`AuthError` to refuse.
Authenticator = Callable[[Request], "Identity | Awaitable[Identity | None] | None"]


async def authenticate(auth: Authenticator, request: Request) -> Identity:
    """Run ``auth`` on ``request`` (awaiting it if it is async) and return the identity.

    The server calls authenticators itself, without a coroutine for sync ones; this is for
    other layers (ASGI adapters, tests).

    Raises:
        AuthError: the request is refused.
        TypeError: the authenticator returned something else than an Identity or None.
    """
    result = auth(request)
    if inspect.isawaitable(result):
        result = await result
    return check_result(result)


def check_result(result: object) -> Identity:
    """An authenticator's return value as an identity (None is :data:`ANONYMOUS`).

    Raises:
        TypeError: it is neither an Identity nor None.
    """
    if result is None:
        return ANONYMOUS
    if not isinstance(result, Identity):
        raise TypeError(f"authenticator returned {type(result).__name__}, not an Identity")
    return result


def expires_in(identity: Identity | None) -> float | None:
    """Seconds until the identity's ``exp`` claim passes (0 if it has); None without one.

    ``exp`` is a number of seconds since the epoch (RFC 7519 4.1.4); anything else, or no
    claim, never expires. The servers close a WebSocket (1008, "token expired") and end an
    HTTP answer when it passes.
    """
    exp = identity.claims.get("exp") if identity is not None else None
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return None
    return max(0.0, exp - time.time())
