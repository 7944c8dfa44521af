"""HTTP/1.1 messages (RFC 7230) with limits: the framing under the opening handshake.

Tokenizing is left to ``httptools`` (a binding of llhttp, the parser of Node.js); this module adds
what a server needs on top: size limits checked before memory is spent, pipelining, a clean stop
at an upgrade so that the bytes after the handshake reach the WebSocket, and errors that are safe
to show the peer.

::

    parser = RequestParser()
    parser.feed(data)                        # every chunk read from the socket
    while (request := parser.next_request()) is not None:
        ...                                  # answer it; after an upgrade:
    websocket_bytes = parser.trailing_data()

How the parsers stay exact at any chunk boundary: bytes are handed to llhttp in pieces that never
cross the end of a message (a message ends at the LF closing its head or its last chunk, or after
``Content-Length`` body bytes) nor the first byte over a limit. So every limit trips at the same
byte and every message ends at a piece boundary, whether the data came at once or byte by byte.
"""

from __future__ import annotations

import abc
import http
import re
import types
import urllib.parse
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# The compiled module itself: its exception classes are the ones it raises. The ``httptools``
# package re-exports them, but a tool that purges and re-imports modules (coverage does, to find
# a ``--cov`` source) can leave the package with fresh copies that never match.
from httptools.parser import parser as _llhttp

from .exceptions import InvalidMessage, MessageTooBig
from .mask import load_speedups

_ParserUpgrade: type[Exception] = vars(_llhttp)["HttpParserUpgrade"]
_ParserError: type[Exception] = vars(_llhttp)["HttpParserError"]

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_COUNT",
    "DEFAULT_MAX_HEAD_SIZE",
    "DEFAULT_MAX_LINE_SIZE",
    "Headers",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "check_version",
    "only_chunked",
]

# Limits. Each is a keyword argument of the parsers; None disables it.

#: Bytes of one message head (start line, header lines, blank line). h11 and Node.js allow
#: 16 KiB (h11 ``DEFAULT_MAX_INCOMPLETE_EVENT_SIZE``, Node ``--max-http-header-size``).
DEFAULT_MAX_HEAD_SIZE = 16 * 1024
#: Header fields in one head. Like uvicorn/h11-based servers and aiohttp's ``max_headers`` (32768
#: is aiohttp's byte limit; 100 is the field count Apache's ``LimitRequestFields`` defaults to).
DEFAULT_MAX_HEADER_COUNT = 100
#: Bytes of one line, CRLF included: the request line, a header line, a chunk-size line or a
#: trailer line. nginx's ``large_client_header_buffers`` is 8k; Apache's ``LimitRequestLine`` 8190.
DEFAULT_MAX_LINE_SIZE = 8 * 1024
#: Bytes of one message body after de-chunking: 1 MiB, nginx's ``client_max_body_size``.
DEFAULT_MAX_BODY_SIZE = 2**20

# RFC 7230 3.2.6: token = 1*tchar; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" /
# "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# CR, LF and NUL in a value or a start line would let a caller split the message (RFC 7230 3.2.4:
# "field-content = field-vchar [ 1*( SP / HTAB ) field-vchar ]", no CR, LF or NUL allowed).
_FORBIDDEN = re.compile(r"[\r\n\x00]")
# Request.path_params of a request no parameterised route matched: one shared, read-only.
_NO_PARAMS: Mapping[str, Any] = types.MappingProxyType({})
# RFC 7231 6.1 / RFC 7230 3.3: 1xx, 204 and 304 responses never carry a body.
_NO_BODY_STATUSES = frozenset({204, 304})


def _check_name(name: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name: {name!r}")


def _check_value(value: str) -> None:
    if _FORBIDDEN.search(value):
        raise ValueError(f"header value contains CR, LF or NUL: {value!r}")


def index_fields_python(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The values of ``(name, value)`` pairs by lowercased name, in order.

    What :meth:`Headers.by_name` keeps; the C accelerator's ``index_fields`` does the same
    (seven fields of a guarded handshake: ~10k -> ~2k user-space instructions, callgrind).
    """
    index: dict[str, list[str]] = {}
    for name, value in pairs:
        key = name.lower()
        values = index.get(key)
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
    return index


_index_fields: Callable[[list[tuple[str, str]]], dict[str, list[str]]] = getattr(
    load_speedups(), "index_fields", index_fields_python
)  # getattr: an accelerator built before index_fields existed has none


def share_fields_python(
    pairs: list[tuple[str, str]],
    table: dict[tuple[str, str], tuple[str, str]],
    names: Container[str],
    limit: int,
) -> None:
    """What :meth:`Headers.share` does to its list of pairs; the accelerator's ``share_fields``."""
    for i, pair in enumerate(pairs):
        shared = table.get(pair)
        if shared is None:
            if pair[0].lower() not in names or len(table) >= limit:
                continue
            table[pair] = shared = pair
        pairs[i] = shared


_share_fields: Callable[
    [list[tuple[str, str]], dict[tuple[str, str], tuple[str, str]], Container[str], int], None
] = getattr(load_speedups(), "share_fields", share_fields_python)


class Headers:
    """A case-insensitive multi-dict of header fields that keeps their order.

    Lookups ignore case; :meth:`items` returns the fields as received or added. Names must be
    RFC 7230 tokens and values must not contain CR, LF or NUL: anything else raises
    :class:`ValueError`, so a header built from user input cannot split a response.

    Args:
        pairs: initial ``(name, value)`` fields, in order.
    """

    __slots__ = ("_by_name", "_pairs")

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._pairs: list[tuple[str, str]] = []
        # The values by lowercased name, once by_name() built it; None after any change.
        self._by_name: dict[str, list[str]] | None = None
        for name, value in pairs:
            self.add(name, value)

    @classmethod
    def from_wire(cls, pairs: list[tuple[str, str]]) -> Headers:
        """Wrap fields that are valid already, without checking them again.

        For fields a parser accepted (llhttp checks names and values) or built from checked
        parts; anything else goes through the constructor or :meth:`add`.

        Args:
            pairs: the ``(name, value)`` fields; the list is kept, not copied.
        """
        headers = cls.__new__(cls)
        headers._pairs = pairs
        headers._by_name = None
        return headers

    def by_name(self) -> dict[str, list[str]]:
        """Every field's values, in order, by lowercased name: built in one pass, then kept.

        For code that looks up several names (a handshake looks up about ten, and each
        :meth:`get` without it lowers every field name: one pass instead of one per lookup).
        Kept until the fields change or :meth:`share` is called; :meth:`get`,
        :meth:`get_all` and ``in`` use it while it is kept. Read-only: do not modify it.
        """
        index = self._by_name
        if index is None:
            index = self._by_name = _index_fields(self._pairs)
        return index

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of the field ``name``, or ``default`` if absent."""
        key = name.lower()
        index = self._by_name
        if index is not None:
            values = index.get(key)
            return default if values is None else values[0]
        for n, v in self._pairs:
            if n.lower() == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Return every value of the field ``name``, in order (empty if absent)."""
        key = name.lower()
        index = self._by_name
        if index is not None:
            return list(index.get(key, ()))
        return [v for n, v in self._pairs if n.lower() == key]

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping existing fields of the same name.

        Raises:
            ValueError: the name is not a token or the value contains CR, LF or NUL.
        """
        _check_name(name)
        _check_value(value)
        self._pairs.append((name, value))
        self._by_name = None

    def items(self) -> list[tuple[str, str]]:
        """Return the fields as ``(name, value)`` pairs, in order, names as given."""
        return list(self._pairs)

    def copy(self) -> Headers:
        """Return an independent copy."""
        return Headers.from_wire(list(self._pairs))

    def share(
        self,
        table: dict[tuple[str, str], tuple[str, str]],
        names: Container[str],
        limit: int,
    ) -> None:
        """Replace fields by equal ones kept in ``table``, so many messages share one copy.

        A server holding thousands of requests (one per open WebSocket) keeps one copy of
        fields every client sends alike (Host, Upgrade, User-Agent...). Only fields whose
        lowercased name is in ``names`` enter the table, and only while it has fewer than
        ``limit`` entries. Names, values and order are unchanged; the :meth:`by_name` index
        is dropped (it would keep the unshared copies alive). In C when the accelerator is
        built (seven fields: ~6k -> ~1.5k user-space instructions, callgrind).
        """
        self._by_name = None
        _share_fields(self._pairs, table, names, limit)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        """Replace every field ``name`` with one field, where the first one was (else last)."""
        _check_name(name)
        _check_value(value)
        self._by_name = None
        key = name.lower()
        index = next((i for i, (n, _) in enumerate(self._pairs) if n.lower() == key), None)
        if index is None:
            self._pairs.append((name, value))
            return
        rest = [p for p in self._pairs[index + 1 :] if p[0].lower() != key]
        self._pairs[index:] = [(name, value), *rest]

    def __delitem__(self, name: str) -> None:
        """Remove every field ``name``; :class:`KeyError` if there is none."""
        key = name.lower()
        self._by_name = None
        kept = [p for p in self._pairs if p[0].lower() != key]
        if len(kept) == len(self._pairs):
            raise KeyError(name)
        self._pairs = kept

    def __len__(self) -> int:
        """The number of fields (a name that occurs twice counts twice)."""
        return len(self._pairs)

    def __iter__(self) -> Iterator[str]:
        """Iterate over the field names, one per field, in order."""
        return iter([n for n, _ in self._pairs])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(n.lower(), v) for n, v in self._pairs] == [(n.lower(), v) for n, v in other._pairs]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._pairs!r})"

    def _serialize_into(self, out: list[str]) -> None:
        for name, value in self._pairs:
            out.append(f"{name}: {value}\r\n")


def _token_in(headers: Headers, name: str, token: str) -> bool:
    # RFC 7230 6.1: Connection = 1#connection-option; option names are case-insensitive.
    return any(
        item.strip(" \t").lower() == token for v in headers.get_all(name) for item in v.split(",")
    )


def _check_start_line(*parts: str) -> None:
    for part in parts:
        if not part or _FORBIDDEN.search(part) or " " in part:
            raise ValueError(f"invalid start line element: {part!r}")


@dataclass(slots=True)
class Request:
    """An HTTP request.

    Attributes:
        method: the method, e.g. ``"GET"``.
        target: the raw request-target (RFC 7230 5.3), e.g. ``"/chat?room=1"``.
        headers: the header fields.
        body: the body, de-chunked.
        version: the HTTP version, ``"1.1"`` or ``"1.0"``.
        client: the client's address ``(host, port)`` as the server sees it (the TCP peer, or
            the address a trusted proxy reported), None when unknown. Set by the I/O layer.
        scheme: ``"http"`` or ``"https"`` (``"ws"``/``"wss"`` are implied by an upgrade), as
            the connection or a trusted proxy says. Set by the I/O layer.
        path_params: the converted ``{parameters}`` of the route path that matched, e.g.
            ``{"id": 42}`` for ``/items/{id:int}``; empty (read-only) otherwise. Set by the
            router; not a constructor argument.
        identity: who sent it (a :class:`fullduplex.auth.Identity`), set by the server when
            the route has an authenticator; None when no authentication is configured.
    """

    method: str
    target: str
    headers: Headers
    body: bytes = b""
    version: str = "1.1"
    client: tuple[str, int] | None = None
    scheme: str = "http"
    identity: Any = None
    # path_params, as the router set it (None: none); not an argument, not compared. Slots:
    # a server keeps each WebSocket's request (~40 bytes less per idle connection).
    _path_params: Mapping[str, Any] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def path_params(self) -> Mapping[str, Any]:
        """The converted ``{parameters}`` of the route path that matched (set by the router)."""
        params = self._path_params
        return _NO_PARAMS if params is None else params

    @path_params.setter
    def path_params(self, params: Mapping[str, Any]) -> None:
        self._path_params = params

    def _split_target(self) -> tuple[str, str]:
        target = self.target
        if target.startswith("/"):
            path, _, query = target.partition("?")
            return path, query
        if "://" in target:  # absolute-form (RFC 7230 5.3.2)
            parts = urllib.parse.urlsplit(target)
            return parts.path or "/", parts.query
        return target, ""  # asterisk-form or authority-form (RFC 7230 5.3.3, 5.3.4)

    @property
    def path(self) -> str:
        """The percent-decoded path of the target, without the query (not normalized)."""
        return urllib.parse.unquote(self._split_target()[0])

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string parsed into lists of values, blank values kept."""
        return urllib.parse.parse_qs(self._split_target()[1], keep_blank_values=True)

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this one.

        RFC 7230 6.3: HTTP/1.1 connections persist unless ``Connection: close``; HTTP/1.0
        connections persist only with ``Connection: keep-alive``.
        """
        if _token_in(self.headers, "Connection", "close"):
            return False
        if self.version == "1.0":
            return _token_in(self.headers, "Connection", "keep-alive")
        return True

    def serialize(self) -> bytes:
        """Return the request as bytes.

        ``Content-Length`` is added when absent, unless ``Transfer-Encoding`` is set, for a
        non-empty body or a method that expects one (RFC 7230 3.3.2: "A user agent SHOULD NOT
        send a Content-Length header field when the request message does not contain a payload
        body and the method semantics do not anticipate such a body").

        Raises:
            ValueError: the method, target or version contain spaces, CR, LF or NUL.
        """
        _check_start_line(self.method, self.target, self.version)
        out = [f"{self.method} {self.target} HTTP/{self.version}\r\n"]
        self.headers._serialize_into(out)
        wants_length = self.body or self.method in ("POST", "PUT", "PATCH")
        if wants_length and not _has_framing(self.headers):
            out.append(f"Content-Length: {len(self.body)}\r\n")
        out.append("\r\n")
        return "".join(out).encode("latin-1") + self.body


def _has_framing(headers: Headers) -> bool:
    return "Content-Length" in headers or "Transfer-Encoding" in headers


# Looked up once: HTTPStatus(status) is an enum call, ~3k instructions per response.
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def _reason_phrase(status: int) -> str:
    return _REASONS.get(status, "")


@dataclass
class Response:
    """An HTTP response.

    Attributes:
        status: the status code.
        headers: the header fields.
        body: the body, de-chunked.
        reason: the reason phrase; defaults to the standard phrase of ``status``.
    """

    status: int
    headers: Headers
    body: bytes = b""
    reason: str = field(default="")

    def __post_init__(self) -> None:
        if not self.reason:
            self.reason = _reason_phrase(self.status)

    def serialize(self) -> bytes:
        """Return the response as bytes.

        ``Content-Length`` is added when absent, unless ``Transfer-Encoding`` is set, for every
        status that allows a body (RFC 7230 3.3.2: "A server MUST NOT send a Content-Length
        header field in any response with a status code of 1xx (Informational) or 204 (No
        Content)").

        Raises:
            ValueError: the reason contains CR, LF or NUL, the status is not three digits, or
                the body is not empty for a status that forbids one.
        """
        if not 100 <= self.status <= 999 or _FORBIDDEN.search(self.reason):
            raise ValueError(f"invalid status line: {self.status} {self.reason!r}")
        allows_body = self.status >= 200 and self.status not in _NO_BODY_STATUSES
        if self.body and not allows_body:
            raise ValueError(f"a {self.status} response cannot have a body")
        out = [f"HTTP/1.1 {self.status} {self.reason}\r\n"]
        self.headers._serialize_into(out)
        if allows_body and not _has_framing(self.headers):
            out.append(f"Content-Length: {len(self.body)}\r\n")
        out.append("\r\n")
        return "".join(out).encode("latin-1") + self.body


def split_head_python(head: bytes | bytearray) -> tuple[list[tuple[str, str]], int]:
    """The header fields of a message head that llhttp accepted, and how many are ``Host``.

    llhttp is strict (no leniency is turned on): every line of a head it accepts ends with
    CRLF (a bare CR or LF fails), a field line is ``name ":" OWS value OWS`` with a token
    name and no whitespace before the colon, and obsolete line folding fails. So splitting
    at CRLF and at the first colon finds exactly the fields that its header callbacks would
    report. RFC 7230 3.2.4: OWS around the value is not part of it; values are latin-1
    (obs-text is opaque data). The C accelerator's ``split_head`` does the same (the fields
    of a handshake from a browser, about a dozen, cost ~3k user-space instructions each
    through llhttp's callbacks, ~0.3k in C: docs/performance.md).
    """
    fields = []
    hosts = 0
    # llhttp skips empty lines (CRLF or LF) before a start line (RFC 7230 3.5: "a server
    # that is expecting to receive and parse a request-line SHOULD ignore at least one empty
    # line (CRLF) received prior to the request-line"); a start line never begins with either.
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    for line in lines[1:]:  # not the start line; up to the empty line that ends the head
        if not line:
            break
        name, _, value = line.partition(":")
        fields.append((name, value.strip(" \t")))
        if len(name) == 4 and name.lower() == "host":
            hosts += 1
    return fields, hosts


_split_head: Callable[[bytes | bytearray], tuple[list[tuple[str, str]], int]] = getattr(
    load_speedups(), "split_head", split_head_python
)  # getattr: an accelerator built before split_head existed has none


class _Message:
    """Callbacks for httptools: accumulates the message being parsed.

    There is no ``on_header``: the fields are split from the head's bytes once the head is
    complete (see :func:`split_head_python`). So trailer fields of a chunked body are never
    reported, which is what RFC 7230 4.1.2 asks: "A recipient MUST NOT merge a received
    trailer field into the header section unless its corresponding header field definition
    explicitly permits". None of ours does.
    """

    __slots__ = (
        "body",
        "complete",
        "fields",
        "head",
        "headers_complete",
        "hosts",
        "keep_alive",
        "parser",
        "reason",
        "url",
    )

    def __init__(self) -> None:
        #: The httptools parser feeding this object. It holds this object's bound methods:
        #: the reference back is dropped once nothing more is parsed (upgrade, close,
        #: failure), so that both are freed at once rather than by the garbage collector.
        self.parser: Any = None
        self.reset()

    def reset(self) -> None:
        self.url = bytearray()
        self.reason = b""  # a status line's: one piece, usually

        #: The head's bytes as fed: the whole head at once, or a bytearray growing piece by
        #: piece (None before the first).
        self.head: bytes | bytearray | None = None
        self.fields: list[tuple[str, str]] = []
        self.hosts = 0  # Host fields (RFC 7230 5.4)
        # A bytearray from the first body byte: a request without a body allocates none.
        self.body: bytes | bytearray = b""
        self.headers_complete = False
        self.complete = False
        self.keep_alive = True

    def on_url(self, data: bytes) -> None:
        self.url += data

    def on_status(self, data: bytes) -> None:
        self.reason += data

    def on_headers_complete(self) -> None:
        self.headers_complete = True
        assert self.head is not None  # fed before llhttp saw it
        self.fields, self.hosts = _split_head(self.head)

    def on_body(self, data: bytes) -> None:
        body = self.body
        if body:
            body += data  # a bytearray once not empty
        else:
            self.body = bytearray(data)

    def on_message_complete(self) -> None:
        self.complete = True
        # llhttp forgets "Connection: close" once the callback returns.
        self.keep_alive = bool(self.parser.should_keep_alive())


# The usual request methods and versions, one string each for every request.
_COMMON = {s: s for s in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "1.1", "1.0")}

# Parser states.
_HEAD, _BODY, _UPGRADED, _CLOSED, _FAILED = range(5)


class _Parser(abc.ABC):
    """What the request and response parsers share: pieces, limits, queue, upgrade, errors."""

    def __init__(
        self,
        *,
        # Limits
        max_head_size: int | None = DEFAULT_MAX_HEAD_SIZE,
        max_header_count: int | None = DEFAULT_MAX_HEADER_COUNT,
        max_line_size: int | None = DEFAULT_MAX_LINE_SIZE,
        max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        #: Bytes allowed in one message head, or None.
        self.max_head_size = max_head_size
        #: Header fields allowed in one message head, or None.
        self.max_header_count = max_header_count
        #: Bytes allowed in one line, CRLF included, or None.
        self.max_line_size = max_line_size
        #: Bytes allowed in one message body, or None.
        self.max_body_size = max_body_size
        self._message = _Message()
        self._parser: Any = self._new_parser(self._message)
        self._message.parser = self._parser
        self._queue: list[Any] = []
        self._trailing = bytearray()
        self._state = _HEAD
        self._error: InvalidMessage | None = None
        self._reset_counters()

    @abc.abstractmethod
    def _new_parser(self, message: _Message) -> Any:
        """Return the httptools parser, calling back ``message``."""

    def _reset_counters(self) -> None:
        self._head_size = 0  # bytes of the current head so far
        self._line_size = 0  # non-body bytes since the last LF
        self._lines = 0  # non-empty lines in the current head
        self._body_remaining: int | None = None  # Content-Length bytes still to read
        self._body_seen = 0  # body bytes accounted for

    # -- public API --------------------------------------------------------------------------

    @property
    def upgraded(self) -> bool:
        """True once a message switching protocols was parsed; the parser then stops.

        The bytes after that message's head are in :meth:`trailing_data`.
        """
        return self._state == _UPGRADED

    @property
    def head_in_progress(self) -> bool:
        """True when bytes of a message not complete yet were received.

        That is its head, or its head and part of its body: for the I/O layer's timeouts.
        """
        return self._state == _BODY or (self._state == _HEAD and self._head_size > 0)

    def trailing_data(self) -> bytes:
        """Return and forget the bytes received after the upgrade message's head.

        They belong to the protocol switched to: the WebSocket frames a peer may send right
        after its handshake. Bytes fed after the upgrade are appended here too.
        """
        data = bytes(self._trailing)
        self._trailing.clear()
        return data

    def feed(self, data: bytes) -> None:
        """Parse bytes received from the peer.

        Complete messages are then available in order. After an upgrade the bytes go to
        :meth:`trailing_data`; after a message that closes the connection they are ignored
        (RFC 7230 6.6: "The server SHOULD NOT process further requests received on that
        connection").

        Raises:
            InvalidMessage: the data is not valid HTTP/1.1 (status 400), or
                :class:`MessageTooBig` over a limit (431 for the head, 413 for the body). When
                complete messages are still queued, the error is raised by ``next_*`` once
                they have been taken instead, so that earlier pipelined requests get answered.
                Once failed, the parser raises the same error forever.
        """
        if self._state == _FAILED:
            self._raise_if_due()
            return
        if self._state == _UPGRADED:
            self._trailing += data
            return
        if self._state == _CLOSED:
            return
        data = bytes(data)
        try:
            self._parse(data)
        except InvalidMessage as exc:
            self._fail(exc)
            self._raise_if_due()

    def feed_eof(self) -> None:
        """Tell the parser the peer closed its end of the connection.

        A response without ``Content-Length`` or chunked encoding ends here (RFC 7230 3.3.3,
        rule 7: "the message body length is determined by the number of octets received prior
        to the server closing the connection").

        Raises:
            InvalidMessage: the connection closed in the middle of a message.
        """
        if self._state == _FAILED:
            self._raise_if_due()
            return
        if self._state == _BODY and self._reads_to_eof():
            self._complete()
        elif self.head_in_progress:
            self._fail(InvalidMessage("connection closed in the middle of an HTTP message"))
            self._raise_if_due()
            return
        if self._state != _UPGRADED:
            self._state = _CLOSED

    # -- parsing -----------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        pos, end = 0, len(data)
        view = memoryview(data)
        while pos < end and self._state in (_HEAD, _BODY):
            head = self._whole_head(data, pos)
            if head is not None:
                size = len(head)
                piece = view[pos : pos + size]
                self._message.head = head
                upgrade_offset = self._feed_piece(piece)
                self._head_size = size  # lines were counted by _whole_head
            else:
                size = self._piece_size(data, pos, end)
                piece = view[pos : pos + size]
                if self._state == _HEAD:
                    self._add_to_head(piece)
                upgrade_offset = self._feed_piece(piece)
                self._account(piece)
            pos += size
            if self._message.complete:
                if upgrade_offset is not None:
                    self._trailing += data[pos - size + upgrade_offset :]
                self._complete()
            elif self._message.headers_complete and self._state == _HEAD:
                self._start_body()

    def _add_to_head(self, piece: memoryview) -> None:
        head = self._message.head
        if head is None:
            self._message.head = bytearray(piece)
        elif isinstance(head, bytearray):
            head += piece
        else:  # bytes from _whole_head that were only empty lines: the head goes on
            self._message.head = bytearray(head) + piece

    def _whole_head(self, data: bytes, pos: int) -> bytes | None:
        """A complete head starting at ``pos`` that is within every limit, else None.

        The common case, a whole handshake in one read, is fed to llhttp in one piece instead
        of line by line (a WebSocket handshake request: 14.3 us -> 7.3 us to parse). Only heads
        with CRLF line ends and no early blank line qualify, so llhttp ends the head exactly
        where the line-by-line path would, with the same counts.
        """
        if self._state != _HEAD or self._head_size or self._line_size:
            return None
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            return None
        size = head_end + 4 - pos
        if self.max_head_size is not None and size > self.max_head_size:
            return None
        head = data[pos : pos + size]
        lines = head.count(b"\n")
        # Every LF preceded by a CR (so no "\n\n" either). Not ``b"\n\n" in head``: bytes
        # containment tries the operand as an int first, and that failure costs an exception
        # (~2.7k instructions, callgrind).
        if head.count(b"\r\n") != lines:
            return None  # a bare LF somewhere: let the careful path decide
        limit = self.max_line_size
        # Every line fits when the whole head does (the usual case: no split, no max()).
        if limit is not None and size > limit and max(map(len, head.split(b"\n"))) + 1 > limit:
            return None
        count = self.max_header_count
        if count is not None and lines - 2 > count:  # minus start line and blank line
            return None
        self._lines = lines - 1  # what _account would count: non-empty lines
        return head

    def _piece_size(self, data: bytes, pos: int, end: int) -> int:
        if self._body_remaining is not None:
            # A Content-Length body: all of it is body, it ends after that many bytes.
            return min(self._body_remaining, end - pos)
        # Head lines, chunk lines, and bodies read to EOF: stop at the next LF, which is where a
        # head or a chunked body can end.
        newline = data.find(b"\n", pos, end)
        size = (newline + 1 if newline >= 0 else end) - pos
        # Stop at the first byte over a limit, so that the limit trips at the same byte however
        # the data was split. Bytes fed may all count against each budget.
        for budget in self._budgets():
            size = min(size, budget + 1)
        return size

    def _budgets(self) -> Iterator[int]:
        if self.max_line_size is not None:
            yield self.max_line_size - self._line_size
        if self._state == _HEAD:
            if self.max_head_size is not None:
                yield self.max_head_size - self._head_size
        elif self.max_body_size is not None:
            yield self.max_body_size - len(self._message.body)

    def _feed_piece(self, piece: memoryview) -> int | None:
        """Feed llhttp; return the offset of the protocol switch in ``piece``, if any."""
        try:
            self._parser.feed_data(piece)
        except _ParserUpgrade as exc:
            return int(exc.args[0])
        except _ParserError as exc:
            if self._message.complete and self._switches_protocols():
                # llhttp pauses after a 101 without Upgrade header too, with a plain error;
                # the message ended with the piece. The handshake reports what is missing.
                return len(piece)
            reason = str(exc).strip() or type(exc).__name__
            raise InvalidMessage(f"malformed HTTP message: {reason}") from None
        return None

    def _account(self, piece: memoryview) -> None:
        body_bytes = len(self._message.body) - self._body_seen
        self._body_seen += body_bytes
        if self._body_remaining is not None:
            self._body_remaining -= body_bytes
            return
        self._line_size += len(piece) - body_bytes
        if self._state == _HEAD:
            self._head_size += len(piece)
        self._check_limits()
        if piece[-1] == 0x0A:  # LF
            if self._state == _HEAD and self._line_size > 2:  # not an empty line (CRLF)
                self._lines += 1
                # The first line is the start line; the others are header fields.
                if self.max_header_count is not None and self._lines - 1 > self.max_header_count:
                    raise MessageTooBig("too many HTTP header fields", 431)
            self._line_size = 0

    def _check_limits(self) -> None:
        if self.max_line_size is not None and self._line_size > self.max_line_size:
            raise MessageTooBig("HTTP line too long", 431)
        if self._state == _HEAD:
            if self.max_head_size is not None and self._head_size > self.max_head_size:
                raise MessageTooBig("HTTP head too large", 431)
        elif self.max_body_size is not None and len(self._message.body) > self.max_body_size:
            self._body_too_large()

    @abc.abstractmethod
    def _check_head(self) -> None:
        """Refuse a head llhttp accepts, before its body is read.

        A request's version and codings; ``_build`` checks the version of one without a body.
        """

    def _start_body(self) -> None:
        self._check_head()
        self._state = _BODY
        length = self._content_length()
        if length is not None and not self._declared_too_large(length):
            self._body_remaining = length

    def _declared_too_large(self, length: int) -> bool:
        """Whether ``Content-Length`` is over ``max_body_size`` (a request: 413 at once).

        True: the body is counted as it arrives instead, and :meth:`_body_too_large` is called
        when it goes over the limit.
        """
        if self.max_body_size is not None and length > self.max_body_size:
            raise MessageTooBig("HTTP body too large", 413)
        return False

    def _body_too_large(self) -> None:
        """The body received went over ``max_body_size``."""
        raise MessageTooBig("HTTP body too large", 413)

    def _content_length(self) -> int | None:
        value = self._fields_get("content-length")
        # llhttp accepted it: digits only, no conflicting duplicate, no Transfer-Encoding.
        return None if value is None else int(value)

    def _fields_get(self, name: str) -> str | None:
        return next((v for n, v in self._message.fields if n.lower() == name), None)

    def _reads_to_eof(self) -> bool:
        if self._content_length() is not None:
            return False
        codings = [
            c.strip(" \t").lower()
            for n, v in self._message.fields
            if n.lower() == "transfer-encoding"
            for c in v.split(",")
        ]
        return not codings or codings[-1] != "chunked"

    def _complete(self) -> None:
        message = self._build()
        upgrade = self._switches_protocols()
        keep_alive = self._message.keep_alive
        if message is not None:
            self._queue.append(message)
        if upgrade:
            self._state = _UPGRADED
        elif not keep_alive:
            self._state = _CLOSED
        else:
            self._state = _HEAD
            self._message.reset()  # for the next message
            self._reset_counters()
            return
        # Nothing more is parsed: no reset (the fields list went to the message), and the
        # reference to the llhttp parser goes (see _Message.parser).
        self._message.complete = False
        self._message.parser = None

    @abc.abstractmethod
    def _switches_protocols(self) -> bool:
        """Whether the message just completed switches protocols."""

    @abc.abstractmethod
    def _build(self) -> Any:
        """Return the message just completed, or None to skip it."""

    def _fail(self, exc: InvalidMessage) -> None:
        self._state = _FAILED
        self._message.parser = None
        self._error = exc
        self._trailing.clear()

    def _raise_if_due(self) -> None:
        if self._error is not None and not self._queue:
            raise self._error

    def _next(self) -> Any:
        if self._queue:
            return self._queue.pop(0)
        self._raise_if_due()
        return None


def check_version(version: str) -> None:
    """Refuse a request's HTTP version other than 1.x (``"1.1"``, as llhttp reports it).

    RFC 9110 15.6.6: 505 refuses a major version (a later 1.x minor version would be read as
    1.1, RFC 9112 2.3). llhttp takes 0.9 and 2.0 and reads what follows as HTTP/1.1.

    Raises:
        InvalidMessage: status 505.
    """
    if version[:2] != "1.":
        raise InvalidMessage("HTTP version not supported", 505)


def only_chunked(fields: Iterable[tuple[str, str]]) -> bool:
    """Whether the ``Transfer-Encoding`` of ``fields`` is absent or ``chunked`` alone.

    RFC 9112 6.1: a server answers 501 to a transfer coding it does not understand; llhttp
    only checks that chunked comes last (``gzip, chunked`` would reach the route still
    encoded).
    """
    codings = [
        c.strip(" \t").lower()
        for n, v in fields
        if n.lower() == "transfer-encoding"
        for c in v.split(",")
    ]
    return not codings or codings == ["chunked"]


class RequestParser(_Parser):
    """Incremental parser of HTTP/1.1 requests, as a server reads them.

    Pipelined requests come out in order. A request that upgrades the connection (``Upgrade``
    with ``Connection: upgrade``, or ``CONNECT``) stops the parser: what follows its head is
    :meth:`trailing_data`.

    Args:
        max_head_size: bytes allowed in a request head (431 beyond).
        max_header_count: header fields allowed in a request head (431 beyond).
        max_line_size: bytes allowed in one line, CRLF included (431 beyond).
        max_body_size: body bytes allowed, checked against ``Content-Length`` before the body
            is read and as a chunked body grows (413 beyond).
    """

    def _new_parser(self, message: _Message) -> Any:
        return _llhttp.HttpRequestParser(message)

    def next_request(self) -> Request | None:
        """Return the next complete request, or None if there is none yet.

        Raises:
            InvalidMessage: a request after the ones returned was malformed or too big.
        """
        request: Request | None = self._next()
        return request

    def _switches_protocols(self) -> bool:
        return bool(self._parser.should_upgrade())

    def _check_head(self) -> None:
        check_version(self._parser.get_http_version())
        # RFC 9112 6.1: "A server that receives a request message with a transfer coding it
        # does not understand SHOULD respond with 501 (Not Implemented)". llhttp only checks
        # that chunked comes last, then hands over the body still encoded (gzip, chunked).
        # Transfer-Encoding always has a body to follow (at least the last chunk): a request
        # without one (a handshake) never gets here.
        if not only_chunked(self._message.fields):
            raise InvalidMessage("Transfer-Encoding not supported: only chunked", 501)

    def _build(self) -> Request:
        m = self._message
        headers = Headers.from_wire(m.fields)
        version = self._parser.get_http_version()
        # RFC 7230 5.4: "A server MUST respond with a 400 (Bad Request) status code to any
        # HTTP/1.1 request message that lacks a Host header field and to any request message
        # that contains more than one Host header field".
        if version != "1.1" and version != "1.0":  # the usual two: no call
            check_version(version)
        hosts = m.hosts
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise InvalidMessage("missing Host header" if hosts == 0 else "duplicate Host header")
        # Positional: keywords to a class call cost a dict (method, target, headers, body,
        # version). The usual method and version strings are shared by every request (a
        # server keeps each WebSocket's request: ~100 bytes less per idle connection).
        method = self._parser.get_method().decode("ascii")
        return Request(
            _COMMON.get(method, method),
            m.url.decode("latin-1"),
            headers,
            bytes(m.body),
            _COMMON.get(version, version),
        )


class ResponseParser(_Parser):
    """Incremental parser of HTTP/1.1 responses, as a client reads them.

    A ``101 Switching Protocols`` response stops the parser: what follows its head, such as the
    frames a server sends right after accepting a WebSocket, is :meth:`trailing_data`. Interim
    1xx responses other than 101 are skipped (RFC 7231 6.2: "A user agent MAY ignore unexpected
    1xx responses"). A response without ``Content-Length`` or chunked encoding ends at
    :meth:`feed_eof`. A body over ``max_body_size`` is cut there: the response is complete
    with its first ``max_body_size`` bytes and the parser stops (a client needs the status and
    head of a refusal, not all of its body). Responses to ``HEAD`` requests are not supported.

    Args:
        max_head_size: bytes allowed in a response head.
        max_header_count: header fields allowed in a response head.
        max_line_size: bytes allowed in one line, CRLF included.
        max_body_size: body bytes kept; a longer body is cut there.
    """

    def _new_parser(self, message: _Message) -> Any:
        return _llhttp.HttpResponseParser(message)

    def next_response(self) -> Response | None:
        """Return the next complete response, or None if there is none yet.

        Raises:
            InvalidMessage: the response was malformed or too big.
        """
        response: Response | None = self._next()
        return response

    def _switches_protocols(self) -> bool:
        return bool(self._parser.get_status_code() == 101)

    def _check_head(self) -> None:
        # A client takes what its server sends: llhttp's checks are enough.
        return

    def _declared_too_large(self, length: int) -> bool:
        return self.max_body_size is not None and length > self.max_body_size

    def _body_too_large(self) -> None:
        # A client reads a response to learn its status (a refused handshake: 401, 403, 404,
        # 503 ...), and the head says it: a large body is cut at max_body_size and the response
        # ends there rather than failing the parse. Nothing more is read on this connection.
        body = self._message.body
        assert isinstance(body, bytearray)  # over the limit, so not empty
        del body[self.max_body_size :]
        self._message.keep_alive = False
        self._complete()

    def _build(self) -> Response | None:
        m = self._message
        status: int = self._parser.get_status_code()
        if status < 200 and status != 101:
            return None
        return Response(
            status=status,
            headers=Headers.from_wire(m.fields),
            body=bytes(m.body),
            reason=m.reason.decode("latin-1"),
        )
