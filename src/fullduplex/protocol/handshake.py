"""The WebSocket opening handshake (RFC 6455 section 4), both sides, sans-I/O.

A server turns a parsed :class:`~fullduplex.protocol.http11.Request` into a 101 response or
an error response::

    handshake = ServerHandshake(subprotocols=["chat"], extensions=[...])
    try:
        accepted = handshake.process_request(request)    # Accepted(response, subprotocol, ...)
    except InvalidHandshake as exc:
        response = handshake.reject(exc)                 # 400, 403, 426...

A client builds its request and checks the answer::

    handshake = ClientHandshake("wss://example.com/chat", subprotocols=["chat"])
    request = handshake.request()
    ...
    accepted = handshake.process_response(response)

Nothing here reads a clock or does I/O. Error messages are one line, fixed text: they never
echo what the peer sent, so they are safe to send back as a response body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .exceptions import (
    InvalidHandshake,
    InvalidHeader,
    InvalidOrigin,
    InvalidStatus,
    InvalidUpgrade,
    LocalProtocolError,
    NegotiationError,
)
from .extensions import (
    ClientExtensionFactory,
    Extension,
    ExtensionParameter,
    ServerExtensionFactory,
)
from .http11 import Headers, Request, Response

__all__ = [
    "GUID",
    "Accepted",
    "ClientHandshake",
    "ServerHandshake",
    "accept_key",
    "build_extension_header",
    "build_subprotocol_header",
    "generate_key",
    "parse_connection",
    "parse_extension_header",
    "parse_subprotocol_header",
    "parse_upgrade",
]

#: RFC 6455 1.3: the GUID concatenated with the key to compute ``Sec-WebSocket-Accept``.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: An extension offer or answer: its token and its parameters.
ExtensionHeaderItem = tuple[str, list[ExtensionParameter]]

_VERSION = "13"


def accept_key(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key``.

    RFC 6455 4.2.2: "concatenate this with the Globally Unique Identifier ... take the SHA-1
    hash of this concatenated value to obtain a 20-byte value and base64-encode".
    """
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return binascii.b2a_base64(digest, newline=False).decode("ascii")  # base64.b64encode's core


def generate_key() -> str:
    """Return a fresh ``Sec-WebSocket-Key``.

    RFC 6455 4.1: "a randomly selected 16-byte value that has been base64-encoded"; "The nonce
    MUST be selected randomly for each connection".
    """
    return base64.b64encode(secrets.token_bytes(16)).decode("ascii")


# -- header grammars -----------------------------------------------------------------------

# RFC 7230 3.2.6: token = 1*tchar
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# RFC 7230 3.2.6: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
_QUOTED = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"')
# RFC 6455 4.2.1: a key is the base64 of 16 bytes: 22 characters and "==" (what
# base64.b64decode(key, validate=True) accepts as 16 bytes, in one C call).
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
_QUOTED_PAIR = re.compile(r"\\(.)")
# RFC 7230 3.2.3: OWS = *( SP / HTAB )
_OWS = re.compile(r"[ \t]*")
# RFC 7230 6.7: protocol = protocol-name ["/" protocol-version], both tokens.
_PROTOCOL = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+(?:/[-!#$%&'*+.^_`|~0-9A-Za-z]+)?")


class _Scanner:
    """Reads a header value element by element; errors name the header and the position."""

    def __init__(self, value: str, header: str) -> None:
        self.value = value
        self.header = header
        self.pos = 0

    def skip_ows(self) -> None:
        match = _OWS.match(self.value, self.pos)
        assert match is not None  # *( SP / HTAB ) always matches
        self.pos = match.end()

    def at_end(self) -> bool:
        return self.pos == len(self.value)

    def peek(self, char: str) -> bool:
        return self.value.startswith(char, self.pos)

    def expect(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        match = pattern.match(self.value, self.pos)
        if match is None:
            raise self.error(f"expected {what}")
        self.pos = match.end()
        return match

    def error(self, what: str) -> InvalidHeader:
        return InvalidHeader(f"invalid {self.header} header: {what} at position {self.pos}")

    def list_items(self, parse_item: Callable[[], None]) -> None:
        """Parse ``#item`` (RFC 7230 7), accepting and ignoring empty elements.

        RFC 7230 7: "a recipient MUST accept and ignore at least a reasonable number of empty
        list elements".
        """
        seen = False
        while True:
            self.skip_ows()
            if self.at_end():
                break
            if not self.peek(","):
                parse_item()
                seen = True
                self.skip_ows()
                if self.at_end():
                    break
                if not self.peek(","):
                    raise self.error("expected comma")
            self.pos += 1
        if not seen:
            raise self.error("expected at least one element")


def _parse_list(value: str, header: str, pattern: re.Pattern[str], what: str) -> list[str]:
    scanner = _Scanner(value, header)
    items: list[str] = []
    scanner.list_items(lambda: items.append(scanner.expect(pattern, what).group()))
    return items


def parse_connection(value: str) -> list[str]:
    """Parse a ``Connection`` value: ``1#connection-option`` (RFC 7230 6.1), tokens.

    Raises:
        InvalidHeader: the value is not a comma-separated list of tokens.
    """
    return _parse_list(value, "Connection", _TOKEN, "token")


def parse_upgrade(value: str) -> list[str]:
    """Parse an ``Upgrade`` value: ``1#protocol`` (RFC 7230 6.7), e.g. ``websocket, h2c``.

    Raises:
        InvalidHeader: the value is not a comma-separated list of protocols.
    """
    return _parse_list(value, "Upgrade", _PROTOCOL, "protocol")


def parse_subprotocol_header(value: str) -> list[str]:
    """Parse a ``Sec-WebSocket-Protocol`` value: ``1#token`` (RFC 6455 4.3).

    Raises:
        InvalidHeader: the value is not a comma-separated list of tokens.
    """
    return _parse_list(value, "Sec-WebSocket-Protocol", _TOKEN, "token")


def build_subprotocol_header(subprotocols: Sequence[str]) -> str:
    """Build a ``Sec-WebSocket-Protocol`` value.

    Raises:
        ValueError: a subprotocol is not a token.
    """
    for subprotocol in subprotocols:
        _check_token(subprotocol, "subprotocol")
    return ", ".join(subprotocols)


def parse_extension_header(value: str) -> list[ExtensionHeaderItem]:
    """Parse a ``Sec-WebSocket-Extensions`` value (RFC 6455 9.1).

    The grammar::

        extension-list = 1#extension
        extension = extension-token *( ";" extension-param )
        extension-param = token [ "=" (token | quoted-string) ]

    "When using the quoted-string syntax variant, the value after quoted-string unescaping MUST
    conform to the 'token' ABNF."

    Returns:
        ``(name, [(param, value or None), ...])`` for each extension, in order.

    Raises:
        InvalidHeader: the value does not follow the grammar.
    """
    scanner = _Scanner(value, "Sec-WebSocket-Extensions")
    extensions: list[ExtensionHeaderItem] = []

    def parse_extension() -> None:
        name = scanner.expect(_TOKEN, "extension token").group()
        params: list[ExtensionParameter] = []
        scanner.skip_ows()
        while scanner.peek(";"):
            scanner.pos += 1
            scanner.skip_ows()
            params.append(_parse_param(scanner))
            scanner.skip_ows()
        extensions.append((name, params))

    scanner.list_items(parse_extension)
    return extensions


def _parse_param(scanner: _Scanner) -> ExtensionParameter:
    name = scanner.expect(_TOKEN, "parameter name").group()
    scanner.skip_ows()
    if not scanner.peek("="):
        return name, None
    scanner.pos += 1
    scanner.skip_ows()
    if not scanner.peek('"'):
        return name, scanner.expect(_TOKEN, "parameter value").group()
    start = scanner.pos
    raw = scanner.expect(_QUOTED, "quoted string").group(1)
    value = _QUOTED_PAIR.sub(r"\1", raw)
    if not _TOKEN.fullmatch(value):
        scanner.pos = start
        raise scanner.error("quoted parameter value is not a token")
    return name, value


def build_extension_header(extensions: Sequence[tuple[str, Sequence[ExtensionParameter]]]) -> str:
    """Build a ``Sec-WebSocket-Extensions`` value, e.g. ``permessage-deflate; x=1, other``.

    Raises:
        ValueError: a name or a value is not a token.
    """
    items = []
    for name, params in extensions:
        _check_token(name, "extension name")
        parts = [name]
        for param, value in params:
            _check_token(param, "extension parameter")
            if value is None:
                parts.append(param)
            else:
                _check_token(value, "extension parameter value")
                parts.append(f"{param}={value}")
        items.append("; ".join(parts))
    return ", ".join(items)


def _check_token(value: str, what: str) -> None:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} is not a token: {value!r}")


def _fields(headers: Headers) -> dict[str, list[str]]:
    """A message's header values by lowercased name, gathered in one pass.

    A handshake looks up about ten names, and :meth:`Headers.get_all` lowers every field name
    on each call; this is a plain dict, looked up with ``.get`` (part of 501k -> 368k
    instructions per handshake, ``bench/run.py --callgrind``; docs/performance.md). It is the
    index :meth:`Headers.by_name` keeps, so that a server's lookups before the handshake's
    (proxy headers, ``Upgrade``) and the handshake's own share one pass.
    """
    return headers.by_name()


#: The type of :func:`_fields`' result.
_Fields = dict[str, list[str]]
_NONE: list[str] = []  # never mutated: the value of an absent field


def _header_list(fields: _Fields, key: str, parse: Callable[[str], list[str]]) -> list[str]:
    # RFC 7230 3.2.2: several fields of one list-valued name are one comma-separated list.
    values = fields.get(key)
    if not values:
        return []
    return parse(", ".join(values))


def _extension_offers(fields: _Fields) -> list[ExtensionHeaderItem]:
    values = fields.get("sec-websocket-extensions")
    return parse_extension_header(", ".join(values)) if values else []


def _has_token(fields: _Fields, key: str, token: str, parse: Callable[[str], list[str]]) -> bool:
    values = fields.get(key, _NONE)
    if len(values) == 1:
        # One field holding one token ("Upgrade: websocket", "Connection: Upgrade"), the usual
        # case: a one-element list in both grammars, without the list parser. The token
        # itself first (~1.2k instructions less than the regular expression, callgrind).
        value = values[0]
        if value.lower() == token:
            return True
        if _TOKEN.fullmatch(value):
            return False
    return any(item.lower() == token for item in _header_list(fields, key, parse))


# -- server --------------------------------------------------------------------------------

_UPGRADE_FIELD = ("Upgrade", "websocket")
_CONNECTION_FIELD = ("Connection", "Upgrade")


@dataclass
class Accepted:
    """A successful opening handshake.

    Attributes:
        response: the 101 response (sent by a server, received by a client).
        subprotocol: the subprotocol agreed on, or None.
        extensions: the extensions agreed on, in the order they apply to sent frames.
        data: the 101 as bytes, built along with it by :meth:`ServerHandshake.process_request`
            (``response.serialize()``'s result as long as ``response`` is not changed), for a
            server to write as it is; None on the client side.
    """

    response: Response
    subprotocol: str | None = None
    extensions: list[Extension] = field(default_factory=list)
    data: bytes | None = None


#: Chooses the subprotocol: gets the request and the subprotocols the client offered (in its
#: order) and returns one of them, or None for none.
SubprotocolSelector = Callable[[Request, Sequence[str]], "str | None"]

# Wildcard origins: "*" stands for one or more DNS labels, never "/" or ":".
_LABELS = r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*"


def _compile_origin(origin: str | re.Pattern[str]) -> re.Pattern[str] | str:
    if isinstance(origin, re.Pattern):
        return origin
    if "*" not in origin:
        return origin.lower()
    # Each "*" expands to DNS labels; everything else is literal.
    pattern = _LABELS.join(re.escape(part) for part in origin.split("*"))
    return re.compile(pattern, re.IGNORECASE)


class ServerHandshake:
    """Checks opening handshake requests and builds the answers, for one endpoint.

    Args:
        subprotocols: the subprotocols this server speaks, most preferred first.
        select_subprotocol: decides the subprotocol instead of the preference order. Called
            for every request, with the subprotocols the client offered (maybe none); it may
            return None, never a subprotocol the client did not offer (that is a server bug,
            answered with 500).
        extensions: extension factories, e.g. permessage-deflate.
        origins: None (the default) accepts requests without ``Origin`` and those whose
            ``Origin`` names the host in the ``Host`` header; a sequence is an allow-list of
            exact origins, wildcard strings (``"https://*.example.com"``, where ``*`` stands
            for one or more DNS labels) and regular expressions (which must match the whole
            origin). ``"null"`` is accepted only when listed as such.
        allow_missing_origin: accept requests without ``Origin``, which non-browser clients
            send. Browsers always send it (RFC 6455 10.2).
        server_header: the ``Server`` header value, or None to send none.

    Raises:
        ValueError: a subprotocol is not a token.
    """

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] = (),
        select_subprotocol: SubprotocolSelector | None = None,
        extensions: Sequence[ServerExtensionFactory] = (),
        origins: Sequence[str | re.Pattern[str]] | None = None,
        allow_missing_origin: bool = True,
        server_header: str | None = "fullduplex",
    ) -> None:
        for subprotocol in subprotocols:
            _check_token(subprotocol, "subprotocol")
        #: Subprotocols, most preferred first.
        self.subprotocols = list(subprotocols)
        #: The subprotocol hook, or None.
        self.select_subprotocol = select_subprotocol
        #: Extension factories.
        self.extensions = list(extensions)
        #: The origin allow-list, or None for same-host.
        self.origins = None if origins is None else [_compile_origin(o) for o in origins]
        #: Whether requests without ``Origin`` are accepted.
        self.allow_missing_origin = allow_missing_origin
        if server_header is not None:
            Headers([("Server", server_header)])  # ValueError now for a value that can't be sent
        self._server_header = server_header
        # The 101's fields that every connection has alike: one tuple each for all (a server
        # keeps each connection's response: ~90 bytes less per idle connection).
        self._server_field = None if server_header is None else ("Server", server_header)
        # The 101's bytes around the accept key when there is no extension and no subprotocol
        # to answer: written without Response.serialize() (~11k user-space instructions).
        self._head101 = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: "
        )
        server = b"" if server_header is None else b"\r\nServer: " + server_header.encode("latin-1")
        self._tail101 = server + b"\r\n\r\n"

    @property
    def server_header(self) -> str | None:
        """``Server`` header value, or None (read-only: checked once, when given)."""
        return self._server_header

    def process_request(self, request: Request) -> Accepted:
        """Check an opening handshake request and build the 101 response.

        Raises:
            InvalidHandshake: the request is not an acceptable WebSocket handshake; the
                exception carries the status and the message for :meth:`reject`.
        """
        fields = _fields(request.headers)
        self._check_request(request, fields)
        key = self._check_key(fields)
        self._check_origin(fields)
        subprotocol = self._negotiate_subprotocol(request, fields)
        extensions, answers = self._negotiate_extensions(fields)

        # RFC 6455 4.2.2, step 5: the 101 with Upgrade, Connection and Sec-WebSocket-Accept.
        # Every field is valid by construction, so no name and value checks per handshake: the
        # accept key is base64, the extension answers come from our factories, the subprotocol
        # is one the client offered (a token, parsed) and the Server value was checked once.
        accept = accept_key(key)
        server_field = self._server_field
        if answers or subprotocol is not None:
            response_fields = [_UPGRADE_FIELD, _CONNECTION_FIELD, ("Sec-WebSocket-Accept", accept)]
            if answers:
                extensions_value = build_extension_header(answers)
                response_fields.append(("Sec-WebSocket-Extensions", extensions_value))
            if subprotocol is not None:
                response_fields.append(("Sec-WebSocket-Protocol", subprotocol))
            if server_field is not None:
                response_fields.append(server_field)
            response = Response(101, Headers.from_wire(response_fields))
            return Accepted(response, subprotocol, extensions, response.serialize())
        accept_field = ("Sec-WebSocket-Accept", accept)
        if server_field is None:
            response_fields = [_UPGRADE_FIELD, _CONNECTION_FIELD, accept_field]
        else:
            response_fields = [_UPGRADE_FIELD, _CONNECTION_FIELD, accept_field, server_field]
        response = Response(101, Headers.from_wire(response_fields))
        data = self._head101 + accept.encode() + self._tail101
        return Accepted(response, subprotocol, extensions, data)

    def reject(self, exc: InvalidHandshake) -> Response:
        """Build the error response for a failed handshake.

        It has ``exc.status``, a one-line plain-text body and ``Connection: close``.

        A 426 also carries ``Upgrade: websocket`` (RFC 7231 6.5.15: "The server MUST send an
        Upgrade header field in a 426 response") with ``Connection: Upgrade, close`` (RFC 7230
        6.7: "When Upgrade is sent, the sender MUST also send a Connection header field ...
        that contains an "upgrade" connection option") and ``Sec-WebSocket-Version: 13``
        (RFC 6455 4.4).
        """
        message = str(exc).splitlines()[0] if str(exc) else "WebSocket handshake failed"
        headers = Headers([("Content-Type", "text/plain; charset=utf-8")])
        if exc.status == 426:
            headers.add("Upgrade", "websocket")
            headers.add("Connection", "Upgrade, close")
            headers.add("Sec-WebSocket-Version", _VERSION)
        else:
            headers.add("Connection", "close")
        if self.server_header is not None:
            headers.add("Server", self.server_header)
        return Response(exc.status, headers, (message + "\n").encode())

    # -- checks ------------------------------------------------------------------------------

    def _check_request(self, request: Request, fields: _Fields) -> None:
        # RFC 6455 4.1: "The method of the request MUST be GET, and the HTTP version MUST be at
        # least 1.1." RFC 6455 4.2.2 answers a malformed handshake with "an appropriate error
        # code (such as 400 Bad Request)"; 405 would claim the resource has other methods.
        if request.method != "GET":
            raise InvalidUpgrade("WebSocket handshake requires GET")
        if request.version != "1.1":
            raise InvalidUpgrade("WebSocket handshake requires HTTP/1.1")
        # RFC 6455 4.2.1, item 2: "A |Host| header field containing the server's authority."
        if len(fields.get("host", _NONE)) != 1:
            raise InvalidHeader("missing or duplicate Host header")
        # RFC 6455 4.2.1, item 3: "An |Upgrade| header field containing the value
        # "websocket", treated as an ASCII case-insensitive value." Without it this is not a
        # WebSocket request: 426 tells the client which protocol to upgrade to.
        if not _has_token(fields, "upgrade", "websocket", parse_upgrade):
            raise InvalidUpgrade("Upgrade header must include websocket", 426)
        # RFC 6455 4.2.1, item 4: "A |Connection| header field that includes the token
        # "Upgrade", treated as an ASCII case-insensitive value."
        if not _has_token(fields, "connection", "upgrade", parse_connection):
            raise InvalidUpgrade("Connection header must include upgrade")
        # RFC 6455 4.2.1, item 6: "A |Sec-WebSocket-Version| header field, with a value of 13."
        # Checked before the key so that a client of another version learns ours (RFC 6455
        # 4.4: the server "MUST ... send back a |Sec-WebSocket-Version| header field containing
        # the version(s) the server is capable of understanding"), with 426 (RFC 6455 4.2.2).
        versions = fields.get("sec-websocket-version", _NONE)
        if not versions:
            raise InvalidUpgrade("missing Sec-WebSocket-Version header", 426)
        if len(versions) != 1 or versions[0].strip() != _VERSION:
            raise InvalidUpgrade("unsupported WebSocket version: this server speaks 13", 426)

    def _check_key(self, fields: _Fields) -> str:
        # RFC 6455 4.2.1, item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded
        # value that, when decoded, is 16 bytes in length."
        keys = fields.get("sec-websocket-key", _NONE)
        if len(keys) != 1:
            raise InvalidHeader(
                "missing Sec-WebSocket-Key header" if not keys else "duplicate Sec-WebSocket-Key"
            )
        key = keys[0].strip()
        if not _KEY.fullmatch(key):
            raise InvalidHeader("Sec-WebSocket-Key must be the base64 encoding of 16 bytes")
        return key

    def _check_origin(self, fields: _Fields) -> None:
        # RFC 6455 10.2: "servers that are not intended to process input from any web page but
        # only for certain sites SHOULD verify the |Origin| field is an origin they expect. If
        # the origin indicated is unacceptable to the server, then it SHOULD respond to the
        # WebSocket handshake with a reply containing HTTP 403 Forbidden status code."
        origins = fields.get("origin", _NONE)
        if len(origins) > 1:
            raise InvalidHeader("duplicate Origin header")
        if not origins:
            if not self.allow_missing_origin:
                raise InvalidOrigin("missing Origin header")
            return
        origin = origins[0].strip()
        if self.origins is None:
            (host,) = fields.get("host", _NONE)  # exactly one: checked by _check_request
            if not _same_host(origin, host):
                raise InvalidOrigin("cross-origin WebSocket request refused")
        elif not self._origin_allowed(origin):
            raise InvalidOrigin("Origin not allowed")

    def _origin_allowed(self, origin: str) -> bool:
        assert self.origins is not None
        for allowed in self.origins:
            if isinstance(allowed, str):
                if origin.lower() == allowed:
                    return True
            # RFC 6454 7.3: "null" is the origin of privacy-sensitive contexts (sandboxed
            # frames, file: pages); only an explicit "null" entry admits it.
            elif origin != "null" and allowed.fullmatch(origin):
                return True
        return False

    def _negotiate_subprotocol(self, request: Request, fields: _Fields) -> str | None:
        offered = _header_list(fields, "sec-websocket-protocol", parse_subprotocol_header)
        if self.select_subprotocol is not None:
            chosen = self.select_subprotocol(request, offered)
            # RFC 6455 4.2.2: the server's answer must be one of the values the client offered.
            if chosen is not None and chosen not in offered:
                raise NegotiationError(
                    "server selected a subprotocol the client did not offer", 500
                )
            return chosen
        # RFC 6455 4.2.2, /subprotocol/: "the server MUST select one or none of the acceptable
        # protocols"; we take the first in the server's order of preference.
        return next((p for p in self.subprotocols if p in offered), None)

    def _negotiate_extensions(
        self, fields: _Fields
    ) -> tuple[list[Extension], list[tuple[str, list[ExtensionParameter]]]]:
        # RFC 6455 9.1: "The order of extensions is significant"; the client lists them in its
        # order of preference, and each may be offered several times with other parameters.
        accepted: list[Extension] = []
        answers: list[tuple[str, list[ExtensionParameter]]] = []
        for name, params in _extension_offers(fields):
            if any(answer[0] == name for answer in answers):
                continue
            for factory in self.extensions:
                if factory.name != name:
                    continue
                try:
                    response_params, extension = factory.process_request_params(params, accepted)
                except NegotiationError:
                    continue
                accepted.append(extension)
                answers.append((name, response_params))
                break
        return accepted, answers


def _split_host_port(hostport: str) -> tuple[str, int | None]:
    # host [":" port]; an IPv6 literal is in brackets (RFC 3986 3.2.2).
    host, sep, port = hostport.rpartition(":")
    if not sep or host.endswith(":") or (hostport.startswith("[") and not host.endswith("]")):
        return hostport.lower(), None
    return host.lower(), int(port) if port.isdigit() else -1


def _same_host(origin: str, host_header: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) names the authority in ``Host``.

    The scheme is ignored (a page served over https may open ws:// and the reverse), and the
    default ports 80 and 443 match an absent port either side.
    """
    scheme, sep, authority = origin.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not authority:
        return False
    origin_host, origin_port = _split_host_port(authority)
    host, port = _split_host_port(host_header.strip())
    defaults = (None, 80, 443)
    return origin_host == host and (
        origin_port == port or (origin_port in defaults and port in defaults)
    )


# -- client --------------------------------------------------------------------------------


class ClientHandshake:
    """Builds opening handshake requests for a WebSocket URI and checks the answers.

    Args:
        uri: the WebSocket URI (RFC 6455 3), e.g. ``"wss://example.com/chat?room=1"``.
        subprotocols: the subprotocols to offer, most preferred first.
        extensions: extension factories, offered in this order.
        origin: the ``Origin`` header to send, or None (non-browser clients usually send none).
        headers: more header fields; each name given replaces the generated fields of that
            name.
        user_agent: the ``User-Agent`` header value, or None to send none.

    Raises:
        ValueError: the URI is not a valid WebSocket URI, or a subprotocol is not a token.
    """

    def __init__(
        self,
        uri: str,
        *,
        subprotocols: Sequence[str] = (),
        extensions: Sequence[ClientExtensionFactory] = (),
        origin: str | None = None,
        headers: Iterable[tuple[str, str]] | Mapping[str, str] | Headers = (),
        user_agent: str | None = "fullduplex/0.1",
    ) -> None:
        parts = _parse_uri(uri)
        #: The URI as given.
        self.uri = uri
        #: True for ``wss://``.
        self.secure: bool = parts[0]
        #: The host name or address, without brackets.
        self.host: str = parts[1]
        #: The port, 80 or 443 unless given.
        self.port: int = parts[2]
        #: The request-target: path and query, ``"/"`` at least.
        self.resource: str = parts[3]
        self._authorization = parts[4]
        for subprotocol in subprotocols:
            _check_token(subprotocol, "subprotocol")
        #: Subprotocols offered.
        self.subprotocols = list(subprotocols)
        #: Extension factories.
        self.extensions = list(extensions)
        #: ``Origin`` sent, or None.
        self.origin = origin
        pairs = headers.items() if isinstance(headers, (Mapping, Headers)) else headers
        #: Extra header fields.
        self.headers = Headers(pairs)
        #: ``User-Agent`` sent, or None.
        self.user_agent = user_agent
        #: The ``Sec-WebSocket-Key`` of the last request, or None before :meth:`request`.
        self.key: str | None = None

    @property
    def host_header(self) -> str:
        """The ``Host`` value: the port only when not the default, IPv6 in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    def request(self) -> Request:
        """Build a handshake request, with a fresh key (RFC 6455 4.1)."""
        self.key = generate_key()
        headers = Headers(
            [
                ("Host", self.host_header),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", self.key),
                ("Sec-WebSocket-Version", _VERSION),
            ]
        )
        if self.origin is not None:
            headers.add("Origin", self.origin)
        if self._authorization is not None:
            headers.add("Authorization", self._authorization)
        if self.extensions:
            offers = [(f.name, f.get_request_params()) for f in self.extensions]
            headers.add("Sec-WebSocket-Extensions", build_extension_header(offers))
        if self.subprotocols:
            headers.add("Sec-WebSocket-Protocol", build_subprotocol_header(self.subprotocols))
        if self.user_agent is not None:
            headers.add("User-Agent", self.user_agent)
        for name in {n.lower(): n for n in self.headers}.values():
            if name in headers:
                del headers[name]
        for name, value in self.headers.items():
            headers.add(name, value)
        return Request("GET", self.resource, headers)

    def process_response(self, response: Response) -> Accepted:
        """Check the server's answer to the last :meth:`request`.

        Raises:
            InvalidStatus: the status is not 101.
            InvalidHandshake: the response is not a valid acceptance of the request (a
                subclass says which part is wrong).
            LocalProtocolError: :meth:`request` was never called.
        """
        if self.key is None:
            raise LocalProtocolError("call request() before process_response()")
        headers = response.headers
        # RFC 6455 4.1: "If the status code received from the server is not 101, the client
        # handles the response per HTTP [RFC2616] procedures."
        if response.status != 101:
            raise InvalidStatus(response.status, headers.items(), response.body)
        # RFC 6455 4.1, step 2: "If the response lacks an |Upgrade| header field or the
        # |Upgrade| header field contains a value that is not an ASCII case-insensitive match
        # for the value "websocket", the client MUST _Fail the WebSocket Connection_."
        fields = _fields(headers)
        upgrade = _header_list(fields, "upgrade", parse_upgrade)
        if [u.lower() for u in upgrade] != ["websocket"]:
            raise InvalidUpgrade("response Upgrade header is not websocket")
        # RFC 6455 4.1, step 3: "If the response lacks a |Connection| header field or the
        # |Connection| header field doesn't contain a token that is an ASCII case-insensitive
        # match for the value "Upgrade", the client MUST _Fail the WebSocket Connection_."
        if not _has_token(fields, "connection", "upgrade", parse_connection):
            raise InvalidUpgrade("response Connection header does not include upgrade")
        # RFC 6455 4.1, step 4: the |Sec-WebSocket-Accept| must be the base64-encoded SHA-1 of
        # the key and the GUID, "ignoring any leading and trailing whitespace".
        accepts = fields.get("sec-websocket-accept", _NONE)
        if len(accepts) != 1:
            raise InvalidHeader("missing or duplicate Sec-WebSocket-Accept header")
        if accepts[0].strip() != accept_key(self.key):
            raise InvalidHeader("Sec-WebSocket-Accept does not match the key")
        extensions = self._check_extensions(fields)
        subprotocol = self._check_subprotocol(fields)
        return Accepted(response, subprotocol, extensions)

    def _check_extensions(self, fields: _Fields) -> list[Extension]:
        # RFC 6455 4.1, step 5: "If the response includes a |Sec-WebSocket-Extensions| header
        # field and this header field indicates the use of an extension that was not present in
        # the client's handshake ..., the client MUST _Fail the WebSocket Connection_."
        accepted: list[Extension] = []
        names: set[str] = set()
        for name, params in _extension_offers(fields):
            if name in names:
                raise NegotiationError("server accepted an extension twice")
            factory = next((f for f in self.extensions if f.name == name), None)
            if factory is None:
                raise NegotiationError("server accepted an extension that was not offered")
            accepted.append(factory.process_response_params(params, accepted))
            names.add(name)
        return accepted

    def _check_subprotocol(self, fields: _Fields) -> str | None:
        # RFC 6455 4.1, step 6: "If the response includes a |Sec-WebSocket-Protocol| header
        # field and this header field indicates the use of a subprotocol that was not present
        # in the client's handshake ..., the client MUST _Fail the WebSocket Connection_."
        values = fields.get("sec-websocket-protocol", _NONE)
        if not values:
            return None
        chosen = parse_subprotocol_header(", ".join(values))
        if len(chosen) != 1:
            raise NegotiationError("server selected more than one subprotocol")
        if chosen[0] not in self.subprotocols:
            raise NegotiationError("server selected a subprotocol that was not offered")
        return chosen[0]


def _parse_uri(uri: str) -> tuple[bool, str, int, str, str | None]:
    """Parse a WebSocket URI (RFC 6455 3) into secure, host, port, resource, authorization.

    Raises:
        ValueError: not a ws:// or wss:// URI, no host, a bad port or a fragment.
    """
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid WebSocket URI {uri!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"invalid WebSocket URI {uri!r}: the scheme must be ws or wss")
    # RFC 6455 3: "Fragment identifiers are meaningless in the context of WebSocket URIs and
    # MUST NOT be used on these URIs."
    if parts.fragment or uri.endswith("#"):
        raise ValueError(f"invalid WebSocket URI {uri!r}: fragments are not allowed")
    if not parts.hostname:
        raise ValueError(f"invalid WebSocket URI {uri!r}: no host")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"invalid WebSocket URI {uri!r}: invalid host name") from None
    secure = scheme == "wss"
    # RFC 6455 3: the resource name is the path ("/" if empty) and the query.
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    # Percent-encode what may not appear in a request-target (spaces, non-ASCII).
    resource = urllib.parse.quote(resource, safe="/?#[]@!$&'()*+,;=:%~")
    authorization = None
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:"
        credentials += urllib.parse.unquote(parts.password or "")
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return secure, host, port or (443 if secure else 80), resource, authorization
